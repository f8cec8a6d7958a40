"""vcrpy's cassette shapes, from every version and client stub, made the one cassette.py reads.

vcrpy 4 to 9 write `version: 1` cassettes whose interactions differ by the stub that recorded
them: httpx before vcrpy 6 wrote `status_code`/`content` instead of `status`/`body`; aiohttp
before 5 and tornado add a `url`; tornado writes headers as a list of `[name, [values]]` pairs;
aiohttp records a `json=` request body as the mapping itself. Several stubs store a body
already decoded while the headers still say `Content-Encoding: gzip`: that coding is moved to
the metadata, where replayproxy's own recorder notes it (`replayproxy: {content_encoding: ...}`),
so the body is served as it reads, and coded again only for a request that accepts the coding.

Everything here is pure: data in, data out, `Invalid` (with the path of the bad field) on what
neither vcrpy nor replayproxy would write.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from http import HTTPStatus
from typing import Any

from .bodies import opens_json
from .coding import KNOWN, TooLarge, codings, decode_body
from .config import Config
from .yamlload import MAX_DEPTH, LoadError

#: Keys each level may have: vcrpy's (any version) and replayproxy's own.
TOP_KEYS = ("version", "interactions", "webhooks", "replayproxy", "metadata")
INTERACTION_KEYS = ("request", "response", "replayproxy")
REQUEST_KEYS = ("method", "uri", "body", "headers")
RESPONSE_KEYS = ("status", "headers", "body", "url")
OLD_HTTPX_KEYS = ("status_code", "http_version", "headers", "content")  # vcrpy < 6, httpx stub
BODY_KEYS = ("string", "base64_string")

MIGRATE = "python -m vcr.migration"


class Invalid(Exception):
    """A field no reader would accept; `path` leads to it from the top of the document."""

    def __init__(self, path: tuple[Any, ...], message: str):
        super().__init__(message)
        self.path = path
        self.message = message


def parse_json(text: str | bytes) -> Any:
    """A JSON cassette (vcrpy's `serializer="json"`) as data; None when `text` is not JSON.

    Python's decoder joins escaped surrogate pairs (`"\\ud83d\\ude00"`, how vcrpy writes an
    emoji) into the character; libyaml would keep two lone halves.
    """
    if not opens_json(text):
        return None
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None  # a YAML flow mapping, or broken: the YAML reader says where
    except RecursionError:
        data = _DEEP
    if data is _DEEP or _too_deep(data):
        # as yamlload refuses YAML: before anything recurses on it (a YAMLError without a
        # mark, so the reader does not compose the text to find a line either)
        deep = f"nested deeper than {MAX_DEPTH} levels; a cassette never needs that many"
        raise LoadError(deep, None)
    return data


def composable(text: str | bytes) -> str | bytes:
    """`text` as libyaml can compose it to find a line: a JSON cassette's escaped surrogate
    pairs become one `\\U` escape (libyaml refuses the halves), a lone half U+FFFD."""
    if not opens_json(text):
        return text
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = _PAIR.sub(lambda m: f"\\U{_joined(m.group(1), m.group(2)):08x}", text)
    return _HALF.sub(r"\\ufffd", text)


def _joined(high: str, low: str) -> int:
    return 0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00)


_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)
_HALF = re.compile(r"\\ud[89a-f][0-9a-f]{2}", re.IGNORECASE)


def _too_deep(data: Any) -> bool:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if value.__class__ is dict:
            stack.extend((v, depth + 1) for v in value.values() if v.__class__ in _CONTAINERS)
        elif value.__class__ is list:
            stack.extend((v, depth + 1) for v in value if v.__class__ in _CONTAINERS)
    return False


_CONTAINERS = (dict, list)
_DEEP = object()


def check_top(data: Any) -> None:
    """Refuse the pre-1.0 layout (with the command that converts it) and keys nobody writes."""
    if isinstance(data, list) and data and isinstance(data[0], dict) and "request" in data[0]:
        raise Invalid(
            (),
            "a cassette in vcrpy's pre-1.0 layout (a list without 'version'); convert it "
            f"with `{MIGRATE} FILE` (it rewrites FILE in place), then load it again",
        )
    if isinstance(data, dict):
        _known(data, TOP_KEYS, (), "a cassette")


def interaction(item: Any, path: tuple[Any, ...]) -> Any:
    """One interaction in the shape cassette.py reads, changed in place (it is freshly parsed
    data): the common shape passes with a few checks, paths are built only for an error."""
    if item.__class__ is not dict:
        return item  # the reader names what it should be
    if not item.keys() <= _INTERACTION:
        _unknown(item, INTERACTION_KEYS, path, "an interaction")
    req = item.get("request")
    if req.__class__ is dict:
        _request(req, path)
    res = item.get("response")
    if res.__class__ is dict:
        coding = _response(res, path)
        meta = item.get("replayproxy")
        if coding and (meta is None or meta.__class__ is dict):
            item["replayproxy"] = {**(meta or {}), "content_encoding": coding}
    return item


def _unknown(data: dict, keys: tuple[str, ...], path: tuple[Any, ...], what: str) -> None:
    key = next(k for k in data if k not in keys)
    raise Invalid(
        (*path, key),
        f"unknown field {key!r}: {what} has only {', '.join(map(repr, keys))} "
        "(vcrpy's fields and replayproxy's)",
    )


def _known(data: dict, keys: tuple[str, ...], path: tuple[Any, ...], what: str) -> None:
    if not data.keys() <= set(keys):
        _unknown(data, keys, path, what)


_INTERACTION = frozenset(INTERACTION_KEYS)
_REQUEST = frozenset(REQUEST_KEYS)
_RESPONSE = frozenset(RESPONSE_KEYS)
_STRING = frozenset({"string"})


def _request(req: dict, path: tuple[Any, ...]) -> None:
    if not req.keys() <= _REQUEST:
        _unknown(req, REQUEST_KEYS, (*path, "request"), "a request")
    headers = req.get("headers")
    if headers.__class__ is not dict or _scan(headers)[0]:
        req["headers"] = _headers(headers, (*path, "request", "headers"))
    body = req.get("body")
    if body is not None and body.__class__ is not bytes:
        req["body"] = _request_body(body, (*path, "request", "body"))


def _request_body(body: Any, path: tuple[Any, ...]) -> Any:
    """Bytes (or text) of a recorded request body. aiohttp's stub records `json=` data as the
    object itself; aiohttp sends it as `json.dumps` writes it, so that is what it stands for."""
    if isinstance(body, (dict, list)):
        try:
            return json.dumps(body).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as exc:  # bytes, NaN keys, surrogates
            raise Invalid(path, f"a mapping or list body must hold JSON values ({exc})") from None
    if isinstance(body, (int, float)) and not isinstance(body, bool):
        return str(body).encode("utf-8")  # a YAML scalar that read as a number, e.g. `body: 42`
    return _text(body, path)


def _text(value: Any, path: tuple[Any, ...]) -> Any:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start]
            raise Invalid(
                path,
                f"has a lone UTF-16 surrogate \\u{ord(bad):04x} at character {exc.start} "
                "(half of an escaped pair, not a character)",
            ) from None
    return value


def _phrase(code: Any) -> str:
    """The standard reason phrase, for a format that kept none (a recorded empty one is sent
    empty, so "no phrase" must not be spelled "")."""
    try:
        return HTTPStatus(int(code)).phrase
    except (TypeError, ValueError):
        return ""


def _response(res: dict, path: tuple[Any, ...]) -> str | None:
    """Normalise `res` in place; the coding a false Content-Encoding named, if it had one."""
    if "status_code" in res and "status" not in res:
        _known(res, OLD_HTTPX_KEYS, (*path, "response"), "a response in vcrpy's old httpx format")
        code = res.pop("status_code")
        res["status"] = {"code": code, "message": _phrase(code)}
        res["body"] = {"string": res.pop("content", None)}
        res.pop("http_version", None)
        where = "content"
    else:
        if not res.keys() <= _RESPONSE:
            _unknown(res, RESPONSE_KEYS, (*path, "response"), "a response")
        res.pop("url", None)
        status = res.get("status")
        if status.__class__ is dict and status.get("message") is None:
            status["message"] = _phrase(status.get("code"))
        body = res.get("body")
        if body.__class__ is dict and not body.keys() <= _STRING:
            body["string"] = _response_body(body, (*path, "response", "body"))
            body.pop("base64_string", None)
        where = "body"
    headers = res.get("headers")
    bytes_in, coded = _scan(headers) if headers.__class__ is dict else (True, None)
    if bytes_in:
        headers = res["headers"] = _headers(headers, (*path, "response", "headers"))
        coded = _scan(headers)[1] if headers.__class__ is dict else None
    body = res.get("body")
    if body.__class__ is not dict:
        return None
    string = body.get("string")
    if string.__class__ is str:
        string = body["string"] = _text(string, (*path, "response", where, "string"))
    if coded is None or string.__class__ is not bytes:
        return None
    assert isinstance(headers, dict)  # `coded` is a name found in it
    coding = _false_coding(string, headers, coded)
    if coding:  # a new mapping: YAML aliases may share this one with another interaction
        res["headers"] = {
            k: [str(len(string))] if k.__class__ is str and k.lower() == "content-length" else v
            for k, v in headers.items()
            if k != coded
        }
    return coding


def _scan(headers: dict) -> tuple[bool, str | None]:
    """(whether some value is bytes, the name under which Content-Encoding is), in one pass."""
    has_bytes, coded = False, None
    for name, values in headers.items():
        if values.__class__ is list:
            for value in values:
                if value.__class__ is bytes:
                    has_bytes = True
        elif values.__class__ is bytes:
            has_bytes = True
        if name.__class__ is str and len(name) == 16 and name.lower() == "content-encoding":
            coded = name
    return has_bytes, coded


def _response_body(body: dict, path: tuple[Any, ...]) -> Any:
    _known(body, BODY_KEYS, path, "a body")
    if "base64_string" in body and body.get("string") is None:
        encoded = body["base64_string"]
        if not isinstance(encoded, str):
            raise Invalid((*path, "base64_string"), "must be base64 text")
        try:
            return base64.b64decode("".join(encoded.split()), validate=True)
        except (binascii.Error, ValueError):
            raise Invalid((*path, "base64_string"), "is not base64") from None
    return body.get("string")  # vcrpy's aiohttp stub writes `body: {}` for no body


def _headers(data: Any, path: tuple[Any, ...]) -> Any:
    """Headers as a mapping of name to values; tornado's list of `[name, values]` pairs too.
    Values recorded as bytes (botocore sends some) are their text."""
    if isinstance(data, dict):
        return {k: _header_text(v) for k, v in data.items()}
    if not isinstance(data, list):
        return data
    out: dict[str, list] = {}
    for n, pair in enumerate(data):
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise Invalid(
                (*path, n), "must be a [name, value] or [name, [values]] pair, or headers a mapping"
            )
        name, values = pair
        values = values if isinstance(values, list) else [values]
        out.setdefault(name, []).extend(_header_text(values))
    return out


def _header_text(values: Any) -> Any:
    if isinstance(values, bytes):
        return _latin(values)
    if isinstance(values, list) and any(isinstance(v, bytes) for v in values):
        return [_latin(v) if isinstance(v, bytes) else v for v in values]
    return values


def _latin(value: bytes) -> str:
    """UTF-8 when it is, else Latin-1, HTTP's historical charset (as the recorder stores it)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _false_coding(body: bytes, headers: dict, name: str) -> str | None:
    """The coding `headers[name]` names when `body` is not in it: it was stored decoded
    (vcrpy's requests and urllib3 stubs with urllib3 2, its aiohttp stub)."""
    value = headers.get(name)
    value = ", ".join(map(str, value)) if isinstance(value, list) else value
    applied = codings(value if isinstance(value, str) else None)
    if not body or not applied or not set(applied) <= KNOWN or applied == ["identity"]:
        return None
    try:
        coded = decode_body(body, value, Config.max_body_size)[1] is not None
    except TooLarge:  # it decodes, past what a body may hold: tried no further (a bomb)
        coded = True
    if coded:
        return None  # still coded: served as recorded, as vcrpy serves it
    return ", ".join(applied)
