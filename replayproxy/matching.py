"""Which recorded interaction answers a live request, in O(1), and why none did.

Every request is normalised once: the path becomes a template (minted segments -> `{uuid}`), the
query is sorted, a JSON body becomes canonical data with minted leaves replaced by placeholders.
The resulting fingerprint is a dict key, so a lookup costs the same with 10 or 100,000
interactions. Within a fingerprint group, candidates play in recorded order; the values at
minted positions are compared against the replay's bindings (recorded -> live).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .cassette import Cassette, Request, header
from .config import Config, MatchConfig
from .variables import Bindings, Rules, detect, dotted_get

_PLACEHOLDER = "\x00"


@dataclass(slots=True)
class Normal:
    """A request reduced to what matching compares."""

    method: str
    path: str
    template: str
    query: tuple[tuple[str, str], ...]
    body: Any  # canonical data: JSON with placeholders, form pairs, or raw bytes
    headers: tuple[tuple[str, str], ...]
    slots: dict[str, str] = field(default_factory=dict)  # minted values that are compared
    extra: dict[str, str] = field(default_factory=dict)  # minted values only bound (headers)

    @property
    def fingerprint(self) -> tuple[Any, ...]:
        body = self.body if isinstance(self.body, (bytes, tuple)) else _canonical(self.body)
        return (self.method, self.template, self.query, body, self.headers)


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Normaliser:
    """Turns requests into `Normal`s under one config; shared by matching, recording and diff."""

    def __init__(self, match: MatchConfig, rules: Rules, base_path: str = ""):
        self.match = match
        self.rules = rules
        self.base_path = base_path.rstrip("/")
        self.ignore_query = frozenset(match.ignore_query)
        self.ignore_body = tuple(tuple(p.split(".")) for p in match.ignore_body_fields)
        self.match_headers = tuple(h.lower() for h in match.headers)
        self.key_headers = frozenset({"content-type", *self.match_headers, *rules.headers})
        self.known: dict[tuple[Any, ...], Normal] = {}  # the recording's requests: all of them
        self.cache: dict[tuple[Any, ...], Normal] = {}  # live ones seen lately: bounded

    def key(self, req: Request) -> tuple[Any, ...]:
        """Everything a request's normal form depends on (the host never counts)."""
        uri = req.uri
        if uri[:1] != "/" and "//" in uri:  # absolute, as recorded: keep the path and query
            start = uri.find("/", uri.index("//") + 2)
            if start >= 0:
                uri = uri[start:]
        return (
            req.method,
            uri,
            req.body,
            tuple((k.lower(), v) for k, v in req.headers if k.lower() in self.key_headers),
        )

    def __call__(self, req: Request) -> Normal:
        """Normalise, remembering the result: polls repeat the same request many times, and a
        live request usually has the exact bytes of a recorded one."""
        key = self.key(req)
        normal = self.known.get(key) or self.cache.get(key)
        if normal is None:
            if len(self.cache) >= 20_000:
                self.cache.clear()
            normal = self.cache[key] = self.normalise(req)
        return normal

    def remember(self, req: Request) -> Normal:
        """Normalise a recorded request and keep it for as long as the normaliser lives."""
        key = self.key(req)
        normal = self.known.get(key)
        if normal is None:
            normal = self.known[key] = self.normalise(req)
        return normal

    def normalise(self, req: Request) -> Normal:
        path, query = split_target(req.uri)
        path = path or "/"
        if self.base_path and path.startswith(self.base_path + "/"):
            path = path[len(self.base_path) :]
        slots: dict[str, str] = {}
        template = self._template(path, slots)
        query = self._pairs("query", parse_qsl(query, keep_blank_values=True), slots)
        body = self._body(req, slots)
        headers = []
        for name in self.match_headers:
            value = header(req.headers, name)
            if value is not None:
                headers.append((name, self._value(f"header.{name}", value, slots)))
        extra = {}
        for name, value in req.headers:
            lowered = name.lower()
            position = f"header.{lowered}"
            if lowered in self.rules.headers and position not in slots:
                if self.rules.kind(position, value):
                    extra[position] = value
        return Normal(req.method, path, template, query, body, tuple(headers), slots, extra)

    def _value(self, position: str, value: Any, slots: dict[str, str]) -> Any:
        kind = self.rules.kind(position, value)
        if kind is None:
            return value
        slots[position] = str(value)
        return _PLACEHOLDER + kind

    def _template(self, path: str, slots: dict[str, str]) -> str:
        spans = self.rules.path_variables(path) if self.rules.path_regex else []
        if spans:
            out, last = [], 0
            for n, (start, end) in enumerate(sorted(spans)):
                if start < last:
                    continue
                out.append(path[last:start] + "{configured}")
                slots[f"path@{n}"] = path[start:end]
                last = end
            path = "".join(out) + path[last:]
        segments = path.split("/")
        for i, segment in enumerate(segments):
            if segment and "{" not in segment:
                value = self._value(f"path.{i}", unquote(segment), slots)
                if value is not segment and isinstance(value, str) and value[:1] == _PLACEHOLDER:
                    segments[i] = "{" + value[1:] + "}"
        return "/".join(segments)

    def _pairs(self, section: str, pairs: list[tuple[str, str]], slots: dict[str, str]) -> tuple:
        out, seen = [], {}
        for key, value in sorted(pairs):
            if section == "query" and key in self.ignore_query:
                continue
            n = seen[key] = seen.get(key, -1) + 1
            position = f"{section}.{key}" if n == 0 else f"{section}.{key}.{n}"
            out.append((key, self._value(position, value, slots)))
        return tuple(out)

    def _body(self, req: Request, slots: dict[str, str]) -> Any:
        raw = req.body
        if not raw:
            return b""
        ctype = (header(req.headers, "content-type") or "").lower()
        if "json" in ctype or raw[:1] in (b"{", b"["):
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                return raw
            for path in self.ignore_body:
                _drop(data, path)
            return self._json(data, "body", slots)
        if "application/x-www-form-urlencoded" in ctype:
            try:
                pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
            except UnicodeDecodeError:
                return raw
            return ("form", self._pairs("form", pairs, slots))
        if "multipart/" in ctype and "boundary=" in ctype:
            return ("multipart", _multipart_parts(raw, req.headers))
        return raw

    def _json(self, data: Any, prefix: str, slots: dict[str, str]) -> Any:
        if isinstance(data, dict):
            return {k: self._json(v, f"{prefix}.{k}", slots) for k, v in data.items()}
        if isinstance(data, list):
            return [self._json(v, f"{prefix}.{i}", slots) for i, v in enumerate(data)]
        return self._value(prefix, data, slots)

    def positions(self, req: Request) -> list[tuple[str, Any]]:
        """Every (position, value) a request carries where a variable could be."""
        normal = self(req)
        return [*normal.slots.items(), *normal.extra.items()]


def _drop(data: Any, path: tuple[str, ...]) -> None:
    parent = dotted_get(data, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


def _multipart_parts(raw: bytes, headers: list[tuple[str, str]]) -> tuple[tuple[str, bytes], ...]:
    """Parts without the random boundary: (part headers, part body)."""
    ctype = header(headers, "content-type") or ""
    boundary = ctype.split("boundary=", 1)[1].split(";")[0].strip().strip('"').encode()
    parts = []
    for chunk in raw.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        parts.append((head.decode("latin-1"), body))
    return tuple(parts)


# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Match:
    number: int  # 1-based interaction number
    repeat: bool  # all fitting answers were used: the last one plays again
    skipped: tuple[int, ...] = ()  # earlier answers consumed unseen (fast-forward)


@dataclass(slots=True)
class NearMiss:
    number: int
    request: str
    differences: list[str]


def normaliser(cassette: Cassette, config: Config) -> Normaliser:
    """The normaliser for a cassette: its upstream's base path is not part of the match."""
    upstream = cassette.meta.get("upstream") or config.upstream or ""
    # what was redacted is not in the recording, so it cannot count at replay either
    match = replace(
        config.match,
        ignore_query=(*config.match.ignore_query, *config.redact.query),
        ignore_body_fields=(*config.match.ignore_body_fields, *config.redact.body_fields),
    )
    return Normaliser(match, Rules.from_config(config.variables), urlsplit(upstream).path)


def ensure_variables(cassette: Cassette, normalise: Normaliser) -> None:
    """Cassettes recorded elsewhere (vcrpy) list no variables: find them by shape now."""
    if not cassette.variables and not cassette.meta.get("variables_detected"):
        cassette.variables = detect(cassette, normalise.rules, normalise.positions)


class Matcher:
    """Stateful for one replay: which answers were used, and the bindings made so far."""

    def __init__(self, cassette: Cassette, config: Config, *, fast_forward: bool = False):
        self.fast_forward = fast_forward
        self.normalise = normaliser(cassette, config)
        self.normals = [self.normalise.remember(i.request) for i in cassette.interactions]
        ensure_variables(cassette, self.normalise)
        self.variables = frozenset(v.value for v in cassette.variables)
        self.cassette = cassette
        self.used = bytearray(len(self.normals))
        self.bindings = Bindings()
        self.groups: dict[tuple[Any, ...], list[int]] = {}
        self.by_path: dict[str, list[int]] = {}
        for index, normal in enumerate(self.normals):
            self.groups.setdefault(normal.fingerprint, []).append(index)
            self.by_path.setdefault(normal.template, []).append(index)
        self.cursor = dict.fromkeys(self.groups, 0)

    def match(self, req: Request) -> Match | None:
        live = self.normalise(req)
        key = live.fingerprint
        group = self.groups.get(key)
        if group is None:
            return None
        start = self.cursor[key]
        for j in range(start, len(group)):
            index = group[j]
            if not self.used[index] and self._fits(index, live):
                skipped: list[int] = []
                if self.fast_forward and live.method in ("GET", "HEAD"):
                    # a polling loop: answer with the final recorded state at once
                    for later in group[j + 1 :]:
                        if not self.used[later] and self._fits(later, live):
                            skipped.append(index + 1)
                            self.used[index] = 1
                            index = later
                self.used[index] = 1
                while start < len(group) and self.used[group[start]]:
                    start += 1
                self.cursor[key] = start
                self._bind(index, live)
                return Match(index + 1, repeat=False, skipped=tuple(skipped))
        for index in reversed(group):
            if self._fits(index, live):
                self._bind(index, live)
                return Match(index + 1, repeat=True)
        return None

    def _fits(self, index: int, live: Normal) -> bool:
        for position, recorded in self.normals[index].slots.items():
            value = live.slots.get(position)
            if recorded in self.variables:
                if value is None or not self.bindings.accepts(recorded, value):
                    return False
            elif value != recorded:
                return False
        return True

    def _bind(self, index: int, live: Normal) -> None:
        normal = self.normals[index]
        for slots, live_slots in ((normal.slots, live.slots), (normal.extra, live.extra)):
            for position, recorded in slots.items():
                value = live_slots.get(position)
                if value is not None and recorded in self.variables:
                    self.bindings.bind(recorded, value)

    def unused(self) -> list[int]:
        return [i + 1 for i, used in enumerate(self.used) if not used]

    # -- explaining a miss ---------------------------------------------------------------------

    def near_misses(self, req: Request, limit: int = 3) -> list[NearMiss]:
        """The closest recorded requests, most matching rules first, with what differed."""
        live = self.normalise(req)
        pool = self.by_path.get(live.template, [])
        if len(pool) < limit:
            same_method = (i for i, n in enumerate(self.normals) if n.method == live.method)
            pool = list(dict.fromkeys([*pool, *_take(same_method, 2000)]))
        if len(pool) < limit:
            pool = list(dict.fromkeys([*pool, *range(min(len(self.normals), 2000))]))
        scored = []
        for index in pool:
            differences = self.differences(live, self.normals[index], index)
            scored.append((len(differences), index, differences))
        scored.sort(key=lambda t: (t[0], t[1]))
        return [
            NearMiss(i + 1, describe(self.cassette.interactions[i].request), d)
            for _, i, d in scored[:limit]
        ]

    def differences(self, live: Normal, rec: Normal, index: int) -> list[str]:
        out = []
        if live.method != rec.method:
            out.append(f"method: {live.method} vs {rec.method}")
        if live.template != rec.template:
            out.append(f"path: {live.path} vs {rec.path}")
        if live.query != rec.query:
            out.append("query: " + _pairs_diff(live.query, rec.query))
        if live.body != rec.body:
            out.append(_body_diff(live.body, rec.body))
        if live.headers != rec.headers:
            out.append("headers: " + _pairs_diff(live.headers, rec.headers))
        if not out:
            if live.fingerprint == rec.fingerprint and not self._fits(index, live):
                out.append("values: " + self._slot_diff(live, rec))
            elif self.used[index]:
                out.append("already used (each recorded answer is played once)")
        return out

    def _slot_diff(self, live: Normal, rec: Normal) -> str:
        for position, recorded in rec.slots.items():
            value = live.slots.get(position)
            if recorded in self.variables:
                bound = self.bindings.live.get(recorded)
                if bound is not None and bound != value:
                    return f"{position}: {value} vs {bound} (bound earlier to recorded {recorded})"
                owner = self.bindings.recorded.get(value or "")
                if owner is not None and owner != recorded:
                    return f"{position}: {value} already stands for recorded {owner}"
            elif value != recorded:
                return f"{position}: {value} vs {recorded}"
        return "variables differ"


def _take(items: Any, n: int) -> list[int]:
    out = []
    for item in items:
        out.append(item)
        if len(out) >= n:
            break
    return out


def describe(req: Request) -> str:
    path, query = split_target(req.uri)
    return f"{req.method} {path}" + (f"?{query}" if query else "")


def split_target(uri: str) -> tuple[str, str]:
    """(path, query) of a live request target or a recorded URI, read the same way: an
    origin-form target is its path and query as sent ("//v1/jobs" is a path, never a host)."""
    if uri[:1] == "/":
        path, _, query = uri.partition("#")[0].partition("?")
        return path, query
    parts = urlsplit(uri)
    return parts.path, parts.query


def _show(value: Any) -> str:
    if isinstance(value, str) and value.startswith(_PLACEHOLDER):
        return "{" + value[1:] + "}"
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def _pairs_diff(live: tuple, rec: tuple) -> str:
    live_d, rec_d = dict(live), dict(rec)
    notes = []
    for key in sorted(set(live_d) | set(rec_d)):
        a, b = live_d.get(key), rec_d.get(key)
        if a == b:
            continue
        if a is None:
            notes.append(f"{key} missing (recorded {key}={_show(b)})")
        elif b is None:
            notes.append(f"{key}={_show(a)} not in the recording")
        else:
            notes.append(f"{key}={_show(a)} vs {key}={_show(b)}")
    return ", ".join(notes) or "same values, another order or count"


def _body_diff(live: Any, rec: Any, limit: int = 3) -> str:
    if isinstance(live, (dict, list)) and isinstance(rec, (dict, list)):
        notes: list[str] = []
        _json_diff(live, rec, "body", notes)
        shown = notes[:limit] + ([f"... {len(notes) - limit} more"] if len(notes) > limit else [])
        return "; ".join(shown)
    if isinstance(live, tuple) and isinstance(rec, tuple) and live[0] == rec[0] == "form":
        return "form: " + _pairs_diff(live[1], rec[1])
    size = len(live) if isinstance(live, bytes) else "?"
    other = len(rec) if isinstance(rec, bytes) else "?"
    return f"body: differs ({size} vs {other} bytes)"


def _json_diff(live: Any, rec: Any, where: str, notes: list[str]) -> None:
    if isinstance(live, dict) and isinstance(rec, dict):
        for key in sorted(set(live) | set(rec), key=str):
            if key not in rec:
                notes.append(f"{where}.{key}: {_show(live[key])} not in the recording")
            elif key not in live:
                notes.append(f"{where}.{key}: missing (recorded {_show(rec[key])})")
            else:
                _json_diff(live[key], rec[key], f"{where}.{key}", notes)
    elif isinstance(live, list) and isinstance(rec, list) and len(live) == len(rec):
        for i, (a, b) in enumerate(zip(live, rec, strict=True)):
            _json_diff(a, b, f"{where}.{i}", notes)
    elif live != rec or type(live) is not type(rec):
        notes.append(f"{where}: {_show(live)} vs {_show(rec)}")
