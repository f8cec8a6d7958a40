"""The cassette: a vcrpy-compatible YAML file of interactions, plus the webhooks that followed them.

Top level: `version: 1`, `interactions` (vcrpy's exact request/response shape, with our per-exchange
metadata in a sibling `replayproxy` key so vcrpy's `Request(**request)` never sees it), `webhooks`
and `replayproxy` (session metadata and variables). Numbers shown to users start at 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from . import __version__, vcrformat, yamlload
from .atomic import write_atomic
from .errors import CassetteError
from .terminal import printable

try:
    SafeLoader: type = yaml.CSafeLoader
    SafeDumper: type = yaml.CSafeDumper
except AttributeError:  # pragma: no cover - pyyaml built without libyaml
    SafeLoader = yaml.SafeLoader
    SafeDumper = yaml.SafeDumper

FORMAT_VERSION = 1
Headers = list[tuple[str, str]]


@dataclass(slots=True)
class Request:
    method: str
    uri: str
    headers: Headers = field(default_factory=list)
    body: bytes = b""


@dataclass(slots=True)
class Response:
    status: int
    reason: str = ""
    headers: Headers = field(default_factory=list)
    body: bytes = b""


@dataclass(slots=True)
class Interaction:
    """One exchange. On disk its times and `meta` share the `replayproxy` key beside vcrpy's
    request and response (`interaction_meta`)."""

    request: Request
    response: Response
    meta: dict[str, Any] = field(default_factory=dict)  # the rest: content_encoding, ...
    at: float | None = None  # when the request arrived: seconds since the session started
    duration: float | None = None  # seconds from then until the answer was complete


@dataclass(slots=True)
class Webhook:
    """A webhook as it arrived from upstream: `body` is byte-exact, it is what gets signed."""

    body: bytes
    headers: Headers = field(default_factory=list)
    method: str = "POST"
    path: str = "/"
    target: str | None = None
    cause: int | None = None
    after: int | None = None
    delay: float = 0.0
    at: float | None = None
    event_id: str | None = None


@dataclass(slots=True)
class Variable:
    """A value the app minted at record time; at replay it binds to whatever the app sends there."""

    name: str
    value: str
    shape: str
    positions: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Cassette:
    interactions: list[Interaction] = field(default_factory=list)
    webhooks: list[Webhook] = field(default_factory=list)
    variables: list[Variable] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# headers and bodies as they are written


def header(headers: Headers, name: str) -> str | None:
    """The first value of a header, by case-insensitive name."""
    lowered = name.lower()
    for key, value in headers:
        if key.lower() == lowered:
            return value
    return None


def headers_to_yaml(headers: Headers) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in headers:
        out.setdefault(key, []).append(value)
    return out


def body_to_yaml(body: bytes) -> str | bytes:
    """Readable text when the bytes are UTF-8 and survive YAML unchanged, else bytes (!!binary)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body
    if any(ch in text for ch in _YAML_UNSAFE):
        return body
    return text


# YAML 1.1 folds these (NEL, LS, PS, BOM) or refuses control bytes: keep such bodies as !!binary.
_YAML_UNSAFE = (
    frozenset("\x85\u2028\u2029\ufeff")
    | frozenset(chr(c) for c in range(32) if chr(c) not in "\t\n\r")
    | frozenset("\x7f")
)


def _dump_request(req: Request) -> dict[str, Any]:
    return {
        "body": body_to_yaml(req.body) if req.body else None,
        "headers": headers_to_yaml(req.headers),
        "method": req.method,
        "uri": req.uri,
    }


def _dump_interaction(item: Interaction) -> dict[str, Any]:
    res = item.response
    out: dict[str, Any] = {
        "request": _dump_request(item.request),
        "response": {
            "body": {"string": body_to_yaml(res.body)},
            "headers": headers_to_yaml(res.headers),
            "status": {"code": res.status, "message": res.reason},
        },
    }
    meta = interaction_meta(item)
    if meta:
        out["replayproxy"] = meta
    return out


def interaction_meta(item: Interaction) -> dict[str, Any]:
    """The interaction's `replayproxy` mapping as written: `at`, `duration`, then `meta`."""
    if item.at is None and item.duration is None:
        return item.meta
    times = {"at": item.at, "duration": item.duration}
    return {**{k: v for k, v in times.items() if v is not None}, **item.meta}


def _dump_webhook(hook: Webhook) -> dict[str, Any]:
    out: dict[str, Any] = {
        "method": hook.method,
        "path": hook.path,
        "headers": headers_to_yaml(hook.headers),
        "body": body_to_yaml(hook.body),
        "cause": hook.cause,
        "after": hook.after,
        "delay": round(hook.delay, 6),
    }
    for key in ("target", "at", "event_id"):
        if getattr(hook, key) is not None:
            out[key] = getattr(hook, key)
    return out


def _meta(cassette: Cassette) -> dict[str, Any]:
    meta = {"format": FORMAT_VERSION, "tool_version": __version__, **cassette.meta}
    if cassette.variables:
        meta["variables"] = [
            {"name": v.name, "value": v.value, "shape": v.shape, "positions": v.positions}
            for v in cassette.variables
        ]
    return meta


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=SafeDumper, sort_keys=False, allow_unicode=True, width=120)


def chunks(cassette: Cassette) -> Iterator[str]:
    """The file, one entry at a time: saving 100,000 interactions never holds the whole text."""
    yield _yaml({"version": FORMAT_VERSION})
    yield from _entries("interactions", cassette.interactions, _dump_interaction)
    yield from _entries("webhooks", cassette.webhooks, _dump_webhook)
    yield _yaml({"replayproxy": _meta(cassette)})


def _entries(key: str, items: list[Any], dump: Callable[[Any], dict[str, Any]]) -> Iterator[str]:
    if not items:
        yield f"{key}: []\n"
        return
    yield f"{key}:\n"
    for item in items:
        yield _yaml([dump(item)])


def dumps(cassette: Cassette) -> str:
    return "".join(chunks(cassette))


def save(cassette: Cassette, path: str | Path) -> None:
    """Write atomically: a temp file in the same folder, fsynced, then renamed over the old one."""
    write_atomic(Path(path), (chunk.encode("utf-8") for chunk in chunks(cassette)))


# ---------------------------------------------------------------------------------------------
# loading: fast with libyaml; line numbers are looked up only when something is wrong


_Invalid = vcrformat.Invalid


def load(path: str | Path) -> Cassette:
    path = Path(path)
    try:
        raw = path.read_bytes()  # libyaml reads UTF-8 bytes as they are: no decoded copy
    except FileNotFoundError:
        raise CassetteError(f"{path}: no such cassette") from None
    except OSError as exc:
        raise CassetteError(f"{path}: cannot read: {exc.strerror}") from None
    return loads(raw, str(path))


def loads(text: str | bytes, source: str = "<cassette>") -> Cassette:
    try:
        # each interaction becomes objects as soon as it is read: peak memory stays near the result
        data = vcrformat.parse_json(text)
        if data is None:
            data = yamlload.load(text, {"interactions": _read_interaction})
        return from_data(data)
    except yaml.reader.ReaderError as exc:
        head = text[: exc.position]
        line = (head.count(b"\n") if isinstance(head, bytes) else head.count("\n")) + 1
        raise CassetteError(
            f"{source}:{line}: not UTF-8 text ({exc.reason} at byte {exc.position})"
        ) from None
    except yaml.YAMLError as exc:
        raise CassetteError(_yaml_message(exc, source)) from None
    except _Invalid as exc:
        where = _dotted(exc.path)
        found = _line_of(vcrformat.composable(text), exc.path)
        loc = f"{source}:{found}" if found else source
        message = f"{where}: {exc.message}" if where else exc.message
        raise CassetteError(f"{loc}: {message}") from None


def _yaml_message(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{source}:{mark.line + 1}" if mark else source
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
        problem = f"{problem} (only plain YAML is allowed in a cassette; tags are never executed)"
    return f"{where}: not a valid cassette: {problem}"


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        shown = printable(str(part))  # a key may carry CR LF or escape sequences
        out += f"[{part}]" if isinstance(part, int) else (f".{shown}" if out else shown)
    return out


def _line_of(text: str | bytes, path: tuple[Any, ...]) -> int | None:
    """1-based line of the node at `path` (or of its nearest existing parent)."""
    try:
        node = yaml.compose(text, Loader=SafeLoader)
    except yaml.YAMLError:  # pragma: no cover - it loaded a moment ago
        return None
    best = node
    for part in path:
        if isinstance(node, yaml.MappingNode):
            found = [v for k, v in node.value if getattr(k, "value", None) == part]
            if not found:
                break
            node = found[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
        best = node
    return best.start_mark.line + 1 if best is not None else None


def _need(data: Any, key: str, kind: type | tuple[type, ...], path: tuple[Any, ...]) -> Any:
    if not isinstance(data, dict):
        raise _Invalid(path, f"must be a mapping, got {_kind(data)}")
    if key not in data:
        raise _Invalid(path, f"missing field '{key}'")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise _Invalid((*path, key), f"must be {_name(kind)}, got {_kind(value)}")
    return value


def _name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        int: "an integer",
        bytes: "bytes",
        float: "a number",
        type(None): "null",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:60]


def _headers(data: Any, path: tuple[Any, ...]) -> Headers:
    if data is None:
        return []
    if not isinstance(data, dict):
        raise _Invalid(
            path, f"must be a mapping of header name to list of values, got {_kind(data)}"
        )
    out: Headers = []
    for key, values in data.items():
        if isinstance(values, (str, int)):
            values = [values]
        if not isinstance(values, list):
            raise _Invalid((*path, key), f"must be a list of strings, got {_kind(values)}")
        if not isinstance(key, str):
            raise _Invalid(path, f"a header name must be a string, got {_kind(key)}")
        _token(key, (*path, key), "header name")
        for value in values:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise _Invalid((*path, key), f"must be a list of strings, got {_kind(value)}")
            out.append((key, _text_line(str(value), (*path, key))))
    return out


def _body(value: Any, path: tuple[Any, ...]) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise _Invalid(path, f"must be a string or !!binary, got {_kind(value)}")


def _optional(
    data: dict[str, Any], key: str, kind: type | tuple[type, ...], path: tuple[Any, ...]
) -> Any:
    """data[key] when present and of `kind` (None when absent or null); numbers finite."""
    value = data.get(key)
    if value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise _Invalid((*path, key), f"must be {_name(kind)}, got {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid((*path, key), f"must be a finite number, got {value!r}")
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)  # a time or a delay is read as a float wherever it is used
        except OverflowError:
            raise _Invalid((*path, key), f"must be a finite number, got {len(str(value))} "
                           "digits") from None
    return value


#: A header name (RFC 9110 5.1) and a method: a token. Values and reason phrases: no control
#: characters but tab, so nothing loaded can split a response or a request on the wire.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


_TOKENS_SEEN: set[str] = set()  # header names repeat in every interaction: checked once


def _token(value: str, path: tuple[Any, ...], what: str) -> str:
    if value in _TOKENS_SEEN:
        return value
    if not _TOKEN.fullmatch(value):
        raise _Invalid(path, f"{what} {value[:40]!r} is not an HTTP token")
    if len(_TOKENS_SEEN) < 4096:
        _TOKENS_SEEN.add(value)
    return value


def one_line(value: str) -> bool:
    """Whether a text a cassette keeps on one line (a header value, a reason phrase, a URI)
    is free of control characters other than tab: what the loader accepts."""
    return value.isprintable() or not _CONTROL.search(value)  # the first test is C's, and common


def _text_line(value: str, path: tuple[Any, ...]) -> str:
    if not one_line(value):
        raise _Invalid(path, f"carries a control character (CR, LF, NUL...): {value[:40]!r}")
    return value


_NUMBER = (int, float)


def from_data(data: Any) -> Cassette:
    vcrformat.check_top(data)
    if not isinstance(data, dict):
        raise _Invalid(
            (), f"a cassette is a mapping with 'version' and 'interactions', got {_kind(data)}"
        )
    version = _need(data, "version", int, ())
    if version != FORMAT_VERSION:
        raise _Invalid(
            ("version",), f"unknown format version {version} (this tool reads {FORMAT_VERSION})"
        )
    meta = data.get("replayproxy") or {}
    if not isinstance(meta, dict):
        raise _Invalid(("replayproxy",), f"must be a mapping, got {_kind(meta)}")
    fmt = meta.get("format", FORMAT_VERSION)
    if fmt != FORMAT_VERSION:
        raise _Invalid(("replayproxy", "format"), f"unknown replayproxy format {fmt!r}")
    interactions = [
        item if isinstance(item, Interaction) else _interaction(item, ("interactions", n))
        for n, item in enumerate(_need(data, "interactions", list, ()))
    ]
    hooks = data.get("webhooks") or []
    if not isinstance(hooks, list):
        raise _Invalid(("webhooks",), f"must be a list, got {_kind(hooks)}")
    webhooks = [_webhook(item, ("webhooks", n), len(interactions)) for n, item in enumerate(hooks)]
    listed = _optional(meta, "variables", list, ("replayproxy",)) or []
    variables = [_variable(v, ("replayproxy", "variables", n)) for n, v in enumerate(listed)]
    _session_meta(meta)
    rest = {k: v for k, v in meta.items() if k not in ("variables", "format", "tool_version")}
    return Cassette(interactions, webhooks, variables, rest)


def _session_meta(meta: dict[str, Any]) -> None:
    """The session fields replay reads, checked now rather than failing mid-replay."""
    path = ("replayproxy",)
    for key in ("upstream", "signature_scheme", "tool_version"):
        _optional(meta, key, (str, int, float) if key == "tool_version" else str, path)
    _optional(meta, "variables_detected", bool, path)
    recorded_at = _optional(meta, "recorded_at", str, path)
    if recorded_at is not None:
        try:
            datetime.fromisoformat(recorded_at)
        except ValueError:
            raise _Invalid(
                (*path, "recorded_at"), f"must be an ISO 8601 time, got {recorded_at[:40]!r}"
            ) from None


def _read_interaction(item: Any, index: int) -> Interaction:
    return _interaction(item, ("interactions", index))


def _interaction(item: Any, path: tuple[Any, ...]) -> Interaction:
    item = vcrformat.interaction(item, path)
    req = _need(item, "request", dict, path)
    res = _need(item, "response", dict, path)
    rpath, spath = (*path, "request"), (*path, "response")
    uri = _text_line(_need(req, "uri", str, rpath), (*rpath, "uri"))
    try:
        urlsplit(uri)
    except ValueError as exc:
        raise _Invalid((*rpath, "uri"), f"not a valid URI: {exc}") from None
    method = _token(_need(req, "method", str, rpath), (*rpath, "method"), "method")
    request = Request(
        method=method.upper(),
        uri=uri,
        headers=_headers(req.get("headers"), (*rpath, "headers")),
        body=_body(req.get("body"), (*rpath, "body")),
    )
    status = _need(res, "status", dict, spath)
    code = _need(status, "code", int, (*spath, "status"))
    if not 100 <= code <= 999:
        raise _Invalid((*spath, "status", "code"), f"{code} is not an HTTP status")
    if code < 200:  # a client would wait for the final answer after it forever
        raise _Invalid((*spath, "status", "code"), f"{code} is informational, not an answer")
    body = res.get("body")
    if isinstance(body, dict):
        body_bytes = _body(body.get("string"), (*spath, "body", "string"))
    else:
        raise _Invalid((*spath, "body"), f"must be a mapping with 'string', got {_kind(body)}")
    reason = _optional(status, "message", (str, int), (*spath, "status"))
    response = Response(
        status=code,
        reason=_text_line(str(reason or ""), (*spath, "status", "message")),
        headers=_headers(res.get("headers"), (*spath, "headers")),
        body=body_bytes,
    )
    meta = item.get("replayproxy") or {}
    if not isinstance(meta, dict):
        raise _Invalid((*path, "replayproxy"), f"must be a mapping, got {_kind(meta)}")
    at = _optional(meta, "at", _NUMBER, (*path, "replayproxy"))
    duration = _optional(meta, "duration", _NUMBER, (*path, "replayproxy"))
    _optional(meta, "content_encoding", str, (*path, "replayproxy"))
    if "at" in meta or "duration" in meta:
        meta = {k: v for k, v in meta.items() if k not in ("at", "duration")}
    return Interaction(request, response, meta, at, duration)


def _webhook(item: Any, path: tuple[Any, ...], count: int) -> Webhook:
    body = _body(_need(item, "body", (str, bytes), path), (*path, "body"))
    numbers = {}
    for key in ("cause", "after"):
        value = item.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= count
        ):
            raise _Invalid(
                (*path, key), f"must be an interaction number 1..{count}, got {_kind(value)}"
            )
        numbers[key] = value
    delay = item.get("delay") or 0.0
    if (
        not isinstance(delay, (int, float))
        or isinstance(delay, bool)
        or not 0 <= delay < math.inf
    ):
        raise _Invalid((*path, "delay"), f"must be seconds >= 0, got {_kind(delay)}")
    target = item.get("target")
    if target is not None and not isinstance(target, str):
        raise _Invalid((*path, "target"), f"must be a URL string, got {_kind(target)}")
    if target is not None:
        _text_line(target, (*path, "target"))
    method = _token(_optional(item, "method", str, path) or "POST", (*path, "method"), "method")
    hook_path = _text_line(_optional(item, "path", str, path) or "/", (*path, "path"))
    at = _optional(item, "at", _NUMBER, path)
    event_id = _optional(item, "event_id", (str, int), path)
    return Webhook(
        body=body,
        headers=_headers(item.get("headers"), (*path, "headers")),
        method=method.upper(),
        path=hook_path,
        target=target,
        cause=numbers["cause"],
        after=numbers["after"],
        delay=float(delay),
        at=None if at is None else float(at),
        event_id=None if event_id is None else _text_line(str(event_id), (*path, "event_id")),
    )


def _variable(item: Any, path: tuple[Any, ...]) -> Variable:
    name = _need(item, "name", str, path)
    value = _need(item, "value", (str, int, float), path)
    positions = _optional(item, "positions", list, path) or []
    for n, position in enumerate(positions):
        if not isinstance(position, str):
            raise _Invalid((*path, "positions", n), f"must be a string, got {_kind(position)}")
    return Variable(
        name=name,
        value=str(value),
        shape=_optional(item, "shape", str, path) or "configured",
        positions=list(positions),
    )
