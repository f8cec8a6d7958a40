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
from http import HTTPStatus
from typing import Any

from .coding import KNOWN, codings, decode_body

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
    head = text.lstrip()[:1]
    if head not in ("{", "[", b"{", b"["):
        return None
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None  # a YAML flow mapping, or broken: the YAML reader says where


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
    """One interaction in the shape cassette.py reads (a new dict; `item` is not changed)."""
    if not isinstance(item, dict):
        return item  # the reader names what it should be
    _known(item, INTERACTION_KEYS, path, "an interaction")
    out = dict(item)
    req = item.get("request")
    if isinstance(req, dict):
        out["request"] = _request(req, (*path, "request"))
    res = item.get("response")
    if isinstance(res, dict):
        meta = item.get("replayproxy")
        out["response"], coding = _response(res, (*path, "response"))
        if coding and (meta is None or isinstance(meta, dict)):
            out["replayproxy"] = {**(meta or {}), "content_encoding": coding}
    return out


def _known(data: dict, keys: tuple[str, ...], path: tuple[Any, ...], what: str) -> None:
    for key in data:
        if key not in keys:
            raise Invalid(
                (*path, key),
                f"unknown field {key!r}: {what} has only {', '.join(map(repr, keys))} "
                "(vcrpy's fields and replayproxy's)",
            )


def _request(req: dict, path: tuple[Any, ...]) -> dict:
    _known(req, REQUEST_KEYS, path, "a request")
    out = dict(req)
    out["headers"] = _headers(req.get("headers"), (*path, "headers"))
    out["body"] = _request_body(req.get("body"), (*path, "body"))
    return out


def _request_body(body: Any, path: tuple[Any, ...]) -> Any:
    """Bytes (or text) of a recorded request body. aiohttp's stub records `json=` data as the
    object itself; aiohttp sends it as `json.dumps` writes it, so that is what it stands for."""
    if isinstance(body, (dict, list)):
        return json.dumps(body).encode("utf-8")
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


def _response(res: dict, path: tuple[Any, ...]) -> tuple[dict, str | None]:
    if "status_code" in res and "status" not in res:
        _known(res, OLD_HTTPX_KEYS, path, "a response in vcrpy's old httpx format")
        out: dict[str, Any] = {
            "status": {"code": res["status_code"], "message": _phrase(res["status_code"])},
            "headers": res.get("headers"),
            "body": {"string": res.get("content")},
        }
        body_path = (*path, "content")
    else:
        _known(res, RESPONSE_KEYS, path, "a response")
        out = {k: v for k, v in res.items() if k != "url"}
        body_path = (*path, "body")
        status = res.get("status")
        if isinstance(status, dict) and status.get("message") is None:
            out["status"] = {**status, "message": _phrase(status.get("code"))}
        body = res.get("body")
        if isinstance(body, dict):
            out["body"] = {"string": _response_body(body, body_path)}
            body_path = (*body_path, "string")
    headers = _headers(out.get("headers"), (*path, "headers"))
    out["headers"] = headers
    body = out.get("body")
    coding = None
    if isinstance(body, dict):
        string = _text(body.get("string"), body_path)
        if isinstance(string, bytes) and isinstance(headers, dict):
            string, coding = _false_coding(string, headers)
        out["body"] = {"string": string}
    return out, coding


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
        return {k: _header_text(v) for k, v in data.items()}  # a copy: a false coding goes
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


def _false_coding(body: bytes, headers: dict) -> tuple[bytes, str | None]:
    """A body the headers call coded but that does not decode was stored decoded (vcrpy's
    requests stub with urllib3 2, its aiohttp stub, `decode_compressed_response`): drop the
    false Content-Encoding (and the coded Content-Length) and return the coding it named."""
    name = next((k for k in headers if isinstance(k, str) and k.lower() == "content-encoding"), "")
    value = headers.get(name)
    value = ", ".join(map(str, value)) if isinstance(value, list) else value
    applied = codings(value if isinstance(value, str) else None)
    if not body or not applied or not set(applied) <= KNOWN or applied == ["identity"]:
        return body, None
    if decode_body(body, value)[1] is not None:
        return body, None  # still coded: served as recorded, as vcrpy serves it
    del headers[name]
    for key in list(headers):
        if isinstance(key, str) and key.lower() == "content-length":
            headers[key] = [str(len(body))]
    return body, ", ".join(applied)
