"""Which recorded interaction answers a live request, in O(1), and why none did.

Every request is normalised once: the path becomes a template (minted segments -> `{uuid}`), the
query is sorted, a JSON body becomes canonical data with minted leaves replaced by placeholders.
The resulting fingerprint is a dict key, so a lookup costs the same with 10 or 100,000
interactions. Within a fingerprint group, candidates play in recorded order; the values at
minted positions are compared against the replay's bindings (recorded -> live). The host is not
in the fingerprint: where the live request's origin is known (forward mode) and the cassette has
answers from it, only those fit; otherwise (reverse mode) the recorded order decides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .bodies import NOT_JSON, json_body
from .cassette import Cassette, Request, header
from .clip import LIMIT, clip
from .config import Config, MatchConfig
from .redact import MARKER as REDACTED
from .report import NearMiss
from .variables import Bindings, Rules, detect, dotted_get, json_leaves

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


def origin_of(url: str) -> str | None:
    """'scheme://host:port' of an absolute URL (host lowercased, default port spelled out), so
    that a recorded URI and forward mode's origin compare; None for a bare path."""
    if url[:1] == "/" or "//" not in url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".")
    if not parts.scheme or not host:
        return None
    scheme = parts.scheme.lower()
    return f"{scheme}://{host}:{port or (443 if scheme == 'https' else 80)}"


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Normaliser:
    """Turns requests into `Normal`s under one config; shared by matching, recording and diff."""

    def __init__(
        self,
        match: MatchConfig,
        rules: Rules,
        base_path: str = "",
        redacted: Redacted | None = None,
    ):
        self.match = match
        self.redacted = redacted or Redacted()
        self.rules = rules
        self.base_path = base_path.rstrip("/")
        self.ignore_query = frozenset((*match.ignore_query, *self.redacted.query))
        self.ignore_form = frozenset(self.redacted.form)
        self.ignore_body = tuple(
            tuple(p.split(".")) for p in (*match.ignore_body_fields, *self.redacted.body_fields)
        )
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
        path, raw_query = split_target(req.uri)
        path = local_path(path, self.base_path)
        slots: dict[str, str] = {}
        template = self._template(path, slots)
        query = self._pairs("query", parse_qsl(raw_query, keep_blank_values=True), slots)
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
        for pattern in self.redacted.paths.get(len(segments), ()):
            if _fits_redacted(segments, pattern):
                segments = list(pattern)
                break
        for i, segment in enumerate(segments):
            if segment and "{" not in segment and REDACTED not in segment:
                value = self._value(f"path.{i}", unquote(segment), slots)
                if value is not segment and isinstance(value, str) and value[:1] == _PLACEHOLDER:
                    segments[i] = "{" + value[1:] + "}"
        return "/".join(segments)

    def _pairs(self, section: str, pairs: list[tuple[str, str]], slots: dict[str, str]) -> tuple:
        out: list[tuple[str, Any]] = []
        seen: dict[str, int] = {}
        for key, value in sorted(pairs):
            if section == "query" and key in self.ignore_query:
                continue
            if section == "form" and key in self.ignore_form:
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
        if "json" in ctype or raw[:1] in (b"{", b"["):  # as every cassette was matched so far
            data = json_body(raw, sniff=False)
            if data is NOT_JSON:
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
class Redacted:
    """Where a cassette's requests hold the marker: whatever the app sends there matches.

    A value recorded as `<redacted>` (by the recorder, by `check --fix`, by hand) is not in the
    recording, so it cannot count at replay: the query parameter, form field or JSON field is
    left out of matching; a path with a segment `bot<redacted>` matches the same path with `bot`
    + anything there (every other segment as recorded)."""

    query: set[str] = field(default_factory=set)
    form: set[str] = field(default_factory=set)
    body_fields: set[str] = field(default_factory=set)
    paths: dict[int, list[tuple[str, ...]]] = field(default_factory=dict)  # by segment count

    @classmethod
    def of(cls, cassette: Cassette, base_path: str = "") -> Redacted:
        out = cls()
        base = base_path.rstrip("/")
        for item in cassette.interactions:
            req = item.request
            if REDACTED in req.uri:
                path, raw_query = split_target(req.uri)
                path = local_path(path, base)
                segments = tuple(path.split("/"))
                if any(REDACTED in segment for segment in segments):
                    known = out.paths.setdefault(len(segments), [])
                    if segments not in known:
                        known.append(segments)
                for key, value in parse_qsl(raw_query, keep_blank_values=True):
                    if REDACTED in value:
                        out.query.add(key)
            if req.body and REDACTED.encode() in req.body:
                ctype = (header(req.headers, "content-type") or "").lower()
                if "application/x-www-form-urlencoded" in ctype:
                    pairs = parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True)
                    out.form.update(k for k, v in pairs if REDACTED in v)
                else:
                    data = json_body(req.body, sniff=False)
                    if data is NOT_JSON:
                        continue
                    out.body_fields.update(
                        position[len("body.") :]
                        for position, value in json_leaves(data)
                        if isinstance(value, str) and REDACTED in value
                    )
        return out


def _fits_redacted(segments: list[str], pattern: tuple[str, ...]) -> bool:
    for segment, recorded in zip(segments, pattern, strict=True):
        if REDACTED in recorded:
            prefix, _, suffix = recorded.partition(REDACTED)
            if not (segment.startswith(prefix) and segment.endswith(suffix)):
                return False
        elif segment != recorded:
            return False
    return True


def normaliser(cassette: Cassette, config: Config) -> Normaliser:
    """The normaliser for a cassette: its upstream's base path is not part of the match."""
    upstream = cassette.meta.get("upstream") or config.upstream or ""
    # what was redacted is not in the recording, so it cannot count at replay either
    match = replace(
        config.match,
        ignore_query=(*config.match.ignore_query, *config.redact.query),
        ignore_body_fields=(*config.match.ignore_body_fields, *config.redact.body_fields),
    )
    base = urlsplit(upstream).path
    return Normaliser(
        match, Rules.from_config(config.variables), base, Redacted.of(cassette, base)
    )


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

    @cached_property
    def origins(self) -> list[str | None]:
        """Each interaction's recorded origin; read only when a live request names a host."""
        return [origin_of(i.request.uri) for i in self.cassette.interactions]

    @cached_property
    def recorded_origins(self) -> frozenset[str | None]:
        return frozenset(self.origins)

    def match(self, req: Request, origin: str | None = None) -> Match | None:
        """The answer for `req`; `origin` (forward mode: the one it was sent to) narrows the
        candidates to those recorded for the same origin."""
        live = self.normalise(req)
        host = self._host(origin)
        key = live.fingerprint
        group = self.groups.get(key)
        if group is None:
            return None
        start = self.cursor[key]
        for j in range(start, len(group)):
            index = group[j]
            if not self.used[index] and self._fits(index, live, host):
                skipped: list[int] = []
                if self.fast_forward and live.method in ("GET", "HEAD"):
                    # a polling loop: answer with the final recorded state at once
                    for later in group[j + 1 :]:
                        if not self.used[later] and self._fits(later, live, host):
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
            if self._fits(index, live, host):
                self._bind(index, live)
                return Match(index + 1, repeat=True)
        return None

    def _host(self, origin: str | None) -> str | None:
        """The live origin to match on, when the cassette has answers recorded for it; else
        None and the host does not count (a cassette recorded against one host, or in
        reverse mode, replays whatever host the app now names)."""
        host = origin_of(origin) if origin else None
        if host is None:
            return None
        return host if host in self.recorded_origins else None

    def _fits(self, index: int, live: Normal, host: str | None = None) -> bool:
        if host is not None and self.origins[index] not in (None, host):
            return False
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

    def release(self, number: int) -> None:
        """Make answer `number` unused again: a fault answered in its place (faults.py)."""
        index = number - 1
        self.used[index] = 0
        key = self.normals[index].fingerprint
        self.cursor[key] = min(self.cursor[key], self.groups[key].index(index))

    def unused(self) -> list[int]:
        return [i + 1 for i, used in enumerate(self.used) if not used]

    # -- explaining a miss ---------------------------------------------------------------------

    def near_misses(
        self, req: Request, limit: int = 3, origin: str | None = None
    ) -> list[NearMiss]:
        """The closest recorded requests, most matching rules first, with what differed."""
        live = self.normalise(req)
        host = self._host(origin)
        pool = self.by_path.get(live.template, [])
        if len(pool) < limit:
            same_method = (i for i, n in enumerate(self.normals) if n.method == live.method)
            pool = list(dict.fromkeys([*pool, *_take(same_method, 2000)]))
        if len(pool) < limit:
            pool = list(dict.fromkeys([*pool, *range(min(len(self.normals), 2000))]))
        scored = []
        for index in pool:
            differences = self.differences(live, self.normals[index], index, host)
            scored.append((len(differences), index, differences))
        scored.sort(key=lambda t: (t[0], t[1]))
        return [
            NearMiss(i + 1, describe(self.cassette.interactions[i].request), d)
            for _, i, d in scored[:limit]
        ]

    def differences(
        self, live: Normal, rec: Normal, index: int, host: str | None = None
    ) -> list[str]:
        out = []
        if host is not None and self.origins[index] not in (None, host):
            out.append(f"host: {host} vs {self.origins[index]}")
        if live.method != rec.method:
            out.append(f"method: {live.method} vs {rec.method}")
        if live.template != rec.template:
            out.append(f"path: {clip(live.path)} vs {clip(rec.path)}")
        if live.query != rec.query:
            out.append("query: " + _pairs_diff(live.query, rec.query))
        if live.body != rec.body:
            out.append(_body_diff(live.body, rec.body))
        if live.headers != rec.headers:
            out.append("headers: " + _pairs_diff(live.headers, rec.headers))
        if not out:
            if live.fingerprint == rec.fingerprint and not self._fits(index, live, host):
                out.append("values: " + self._slot_diff(live, rec))
            elif self.used[index]:
                out.append("already used (each recorded answer is played once)")
        return [clip(note, 10 * LIMIT) for note in out]  # each part is cut; this bounds the rest

    def _slot_diff(self, live: Normal, rec: Normal) -> str:
        for position, recorded in rec.slots.items():
            value = live.slots.get(position)
            if recorded in self.variables:
                bound = self.bindings.live.get(recorded)
                if bound is not None and bound != value:
                    return (
                        f"{position}: {_show(value)} vs {_show(bound)} "
                        f"(bound earlier to recorded {_show(recorded)})"
                    )
                owner = self.bindings.recorded.get(value or "")
                if owner is not None and owner != recorded:
                    return f"{position}: {_show(value)} already stands for recorded {_show(owner)}"
            elif value != recorded:
                return f"{position}: {_show(value)} vs {_show(recorded)}"
        return "variables differ"


def _take(items: Any, n: int) -> list[int]:
    out = []
    for item in items:
        out.append(item)
        if len(out) >= n:
            break
    return out


def describe(req: Request) -> str:
    """`METHOD /path?query`, the target cut to a bounded length (see `clip`)."""
    path, query = split_target(req.uri)
    target = path + (f"?{query}" if query else "")
    return f"{clip(req.method, 40)} {clip(target)}"


def split_target(uri: str) -> tuple[str, str]:
    """(path, query) of a live request target or a recorded URI, read the same way: an
    origin-form target is its path and query as sent ("//v1/jobs" is a path, never a host)."""
    if uri[:1] == "/":
        path, _, query = uri.partition("#")[0].partition("?")
        return path, query
    parts = urlsplit(uri)
    return parts.path, parts.query


def local_path(path: str, base: str) -> str:
    """A request path as matching reads it: "/" when empty, the upstream's base path (given
    without its trailing slash) taken off."""
    path = path or "/"
    if base and path.startswith(base + "/"):
        path = path[len(base) :]
    return path


def _show(value: Any) -> str:
    """A compared value as a person reads it, cut to a bounded length."""
    if isinstance(value, str) and value.startswith(_PLACEHOLDER):
        return "{" + value[1:] + "}"
    return clip(json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value)


def _pairs_diff(live: tuple, rec: tuple, limit: int = 3) -> str:
    live_d, rec_d = dict(live), dict(rec)
    notes = []
    for key in sorted(set(live_d) | set(rec_d)):
        a, b = live_d.get(key), rec_d.get(key)
        if a == b:
            continue
        name = clip(key, 100)
        if a is None:
            notes.append(f"{name} missing (recorded {name}={_show(b)})")
        elif b is None:
            notes.append(f"{name}={_show(a)} not in the recording")
        else:
            notes.append(f"{name}={_show(a)} vs {name}={_show(b)}")
    more = [f"... {len(notes) - limit} more"] if len(notes) > limit else []
    return ", ".join(notes[:limit] + more) or "same values, another order or count"


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
            path = clip(f"{where}.{key}", 200)
            if key not in rec:
                notes.append(f"{path}: {_show(live[key])} not in the recording")
            elif key not in live:
                notes.append(f"{path}: missing (recorded {_show(rec[key])})")
            else:
                _json_diff(live[key], rec[key], f"{where}.{key}", notes)
    elif isinstance(live, list) and isinstance(rec, list) and len(live) == len(rec):
        for i, (a, b) in enumerate(zip(live, rec, strict=True)):
            _json_diff(a, b, f"{where}.{i}", notes)
    elif live != rec or type(live) is not type(rec):
        notes.append(f"{clip(where, 200)}: {_show(live)} vs {_show(rec)}")
