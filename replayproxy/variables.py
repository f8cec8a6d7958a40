"""Dynamic values: what the app mints anew on every run, found by shape, bound at replay.

A *position* is where a value sits in a request: `path.2`, `query.page`, `header.idempotency-key`,
`body.spec.callback_url`, `form.name`. The same walk over a recorded and a live request yields
the same positions, so matching can compare everything but the variables and bind recorded -> live.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

from .bodies import NOT_JSON, json_body
from .cassette import Cassette, Variable
from .config import VariablesConfig
from .regex import compile_guarded

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_TOKEN = re.compile(r"(?:[A-Za-z]{1,12}_)?([A-Za-z0-9_-]{16,})")
_ISO_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
)
_URL = re.compile(r"https?://[^\s]+")

#: Headers whose values are minted per request by convention.
MINTED_HEADERS = frozenset(
    {"idempotency-key", "x-idempotency-key", "x-request-id", "x-correlation-id", "traceparent"}
)

#: Shapes that a path segment may take and still be a variable (never URLs or times).
PATH_SHAPES = frozenset({"uuid", "ulid", "token"})


def shape(value: str) -> str | None:
    """The kind of minted value this string looks like, or None for an ordinary value."""
    if len(value) < 16 or len(value) > 2048:
        return None
    if _UUID.fullmatch(value):
        return "uuid"
    if _ULID.fullmatch(value):
        return "ulid"
    if _URL.fullmatch(value):
        return "url"
    if _ISO_TIME.fullmatch(value):
        return "time"
    match = _TOKEN.fullmatch(value)
    if match and _looks_random(match.group(1)):
        return "token"
    return None


def _looks_random(text: str) -> bool:
    has_digit = any(c.isdigit() for c in text)
    has_alpha = any(c.isalpha() for c in text)
    return has_digit and has_alpha and len(set(text)) >= 10 and sum(c.isdigit() for c in text) >= 3


def number_shape(value: float) -> str | None:
    """Unix timestamps in seconds or milliseconds (2001..2096) minted in request bodies."""
    if isinstance(value, bool):
        return None
    if 1e9 <= value < 4e9 or 1e12 <= value < 4e12:
        return "timestamp"
    return None


# ---------------------------------------------------------------------------------------------
# positions


@dataclass(frozen=True, slots=True)
class Rules:
    """Which positions are variables regardless of shape, and which values never are."""

    body_fields: frozenset[str] = frozenset()
    headers: frozenset[str] = frozenset(MINTED_HEADERS)
    query: frozenset[str] = frozenset()
    path_regex: tuple[Any, ...] = ()  # RE2 patterns (regex.py)
    pin: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: VariablesConfig) -> Rules:
        return cls(
            body_fields=frozenset(config.body_fields),
            headers=frozenset(MINTED_HEADERS | {h.lower() for h in config.headers}),
            query=frozenset(config.query),
            path_regex=tuple(
                compile_guarded(p, f"variables.path_regex[{n}]")
                for n, p in enumerate(config.path_regex)
            ),
            pin=frozenset(config.pin),
        )

    def kind(self, position: str, value: Any) -> str | None:
        """The variable kind of `value` at `position`, or None when it is an ordinary value."""
        if isinstance(value, (int, float)):
            if str(value) in self.pin:
                return None
            if position.startswith("body.") and position[5:] in self.body_fields:
                return "configured"
            return number_shape(value) if position.startswith("body.") else None
        if not isinstance(value, str) or value in self.pin:
            return None
        section, _, name = position.partition(".")
        if (
            section.startswith("path@")
            or (section == "body" and name in self.body_fields)
            or (section == "header" and name in self.headers)
            or (section == "query" and name in self.query)
        ):
            return "configured"
        found = shape(value)
        if section == "path" and found not in PATH_SHAPES:
            return None
        return found

    def path_variables(self, path: str) -> list[tuple[int, int]]:
        """Spans of the path that configured regexes mark as variables (group 1, else the match)."""
        spans = []
        for pattern in self.path_regex:
            for m in pattern.finditer(path):
                spans.append(m.span(1) if m.groups() else m.span())
        return spans


def json_leaves(data: Any, prefix: str = "body") -> Iterator[tuple[str, Any]]:
    """Every scalar leaf with its dotted position; keys sorted so the walk is stable."""
    if isinstance(data, dict):
        for key in sorted(data):
            yield from json_leaves(data[key], f"{prefix}.{key}")
    elif isinstance(data, list):
        for index, item in enumerate(data):
            yield from json_leaves(item, f"{prefix}.{index}")
    else:
        yield prefix, data


def dotted_get(data: Any, path: Sequence[str]) -> Any:
    """The value at a JSON dotted path (list indexes as digits), or None."""
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def detect(cassette: Cassette, rules: Rules, split: Any) -> list[Variable]:
    """Find the values the app minted: shaped or configured, and not first seen in an answer.

    `split(request)` gives a request's positions as [(position, value)] (see matching.positions).
    Values the upstream minted (seen in an earlier response) are not variables: the app asks for
    them again and they must match as recorded.
    """
    from_upstream: set[str] = set()
    read = 0  # responses before this index are in from_upstream; read only when needed
    found: dict[str, Variable] = {}
    counts: dict[str, int] = {}
    interactions = cassette.interactions
    for number, item in enumerate(interactions, start=1):
        shaped = [(p, v, k) for p, v in split(item.request) if (k := rules.kind(p, v))]
        if not shaped:
            continue
        for earlier in interactions[read : number - 1]:
            from_upstream.update(_response_values(earlier.response.body, earlier.response.headers))
        read = max(read, number - 1)
        for position, value, kind in shaped:
            text = str(value)
            if text in from_upstream:
                continue
            var = found.get(text)
            if var is None:
                counts[kind] = counts.get(kind, 0) + 1
                var = found[text] = Variable(f"{kind}_{counts[kind]}", text, kind)
            where = f"{number}:{position}"
            if where not in var.positions:
                var.positions.append(where)
    return list(found.values())


def _response_values(body: bytes, headers: list[tuple[str, str]]) -> set[str]:
    values = {v for _, v in headers}
    data = json_body(body, sniff=False)
    if data is NOT_JSON:
        return values
    values.update(str(v) for _, v in json_leaves(data) if isinstance(v, (str, int, float)))
    return values


# ---------------------------------------------------------------------------------------------
# binding and substitution


@dataclass(slots=True)
class Bindings:
    """recorded -> live for the whole replay: minted values are unique, so one map works."""

    live: dict[str, str] = field(default_factory=dict)
    recorded: dict[str, str] = field(default_factory=dict)

    def accepts(self, recorded: str, live: str) -> bool:
        bound = self.live.get(recorded)
        if bound is not None:
            return bound == live
        owner = self.recorded.get(live)
        return owner is None or owner == recorded

    def bind(self, recorded: str, live: str) -> None:
        self.live[recorded] = live
        self.recorded[live] = recorded

    def substitute(self, data: bytes, values: frozenset[str] | set[str] | None = None) -> bytes:
        """Replace recorded values by their live ones in one pass (longest first).

        Each value is also replaced in its JSON-escaped and URL-encoded spellings, so JSON stays
        valid and query strings stay encoded.
        """
        pairs: dict[bytes, bytes] = {}
        for rec in self.live if values is None else values:
            live = self.live.get(rec)
            if live is None or live == rec:
                continue
            for spell in SUBSTITUTED:
                pairs.setdefault(spell(rec), spell(live))
        if not pairs:
            return data
        return _pattern(tuple(sorted(pairs, key=len, reverse=True))).sub(
            lambda m: pairs[m.group(0)], data
        )

    def substitute_text(self, text: str, values: frozenset[str] | set[str] | None = None) -> str:
        return self.substitute(text.encode("utf-8"), values).decode("utf-8")


class Finder:
    """Which of a fixed set of values occur in some bytes, as substitution spells them, in one
    regex pass."""

    def __init__(self, values: frozenset[str]):
        self.spelled: dict[bytes, str] = {}
        for value in values:
            for spelled in spellings(value, SUBSTITUTED):
                self.spelled.setdefault(spelled, value)
        keys = sorted(self.spelled, key=len, reverse=True)
        self.pattern = re.compile(b"|".join(re.escape(k) for k in keys)) if keys else None

    def __call__(self, data: bytes) -> set[str]:
        if self.pattern is None or not data:
            return set()
        return {self.spelled[m] for m in self.pattern.findall(data)}


# ---------------------------------------------------------------------------------------------
# spellings: one value as a URI, a header, a JSON body or a form writes it


def plain(value: str) -> bytes:
    return value.encode("utf-8")


def json_escaped(value: str) -> bytes:
    """Inside a JSON string: `"` and `\\` escaped, non-ASCII as `\\u....` (json's default)."""
    return json.dumps(value)[1:-1].encode("utf-8")


def json_escaped_twice(value: str) -> bytes:
    """JSON inside a JSON string (a payload field that holds a JSON document as text)."""
    return json.dumps(json.dumps(value)[1:-1])[1:-1].encode("utf-8")


def url_encoded(value: str) -> bytes:
    """Strict percent-encoding: every reserved character, `/` too."""
    return quote(value, safe="").encode("ascii")


def url_path(value: str) -> bytes:
    """Percent-encoded as a path writes it, `/` and `:` kept."""
    return quote(value, safe="/:").encode("ascii")


def form_encoded(value: str) -> bytes:
    """As an HTML form writes it: spaces as `+`."""
    return quote_plus(value).encode("ascii")


def base64_unpadded(value: str) -> bytes:
    """Standard base64 without its `=` padding: a prefix of the padded spelling, so one search
    finds both."""
    return base64.b64encode(plain(value)).rstrip(b"=")


def base64_url_unpadded(value: str) -> bytes:
    return base64.urlsafe_b64encode(plain(value)).rstrip(b"=")


Speller = Callable[[str], bytes]

#: Every spelling a value may leak in: what redaction and `check` look for.
EVERY_SPELLING: tuple[Speller, ...] = (
    plain,
    json_escaped,
    json_escaped_twice,
    url_encoded,
    url_path,
    form_encoded,
    base64_unpadded,
    base64_url_unpadded,
)
#: Text spellings: `check --fix` replaces these in the text a secret was found in.
TEXT_SPELLINGS: tuple[Speller, ...] = (plain, json_escaped, url_encoded, url_path, form_encoded)
#: Spellings a recorded value is replaced by its live one in, each by the same spelling of it,
#: so JSON stays valid and query strings stay encoded (substitution and `Finder`).
SUBSTITUTED: tuple[Speller, ...] = (plain, json_escaped, url_encoded)


def spellings(value: str, spellers: Sequence[Speller] = EVERY_SPELLING) -> list[bytes]:
    """The ways `value` is written (`spellers`, by default every one): each once, in order."""
    return list(dict.fromkeys(spell(value) for spell in spellers))


_patterns: dict[tuple[bytes, ...], re.Pattern[bytes]] = {}


def _pattern(keys: tuple[bytes, ...]) -> re.Pattern[bytes]:
    pattern = _patterns.get(keys)
    if pattern is None:
        if len(_patterns) > 4096:
            _patterns.clear()
        alternation = b"|".join(re.escape(k) for k in keys)
        pattern = _patterns[keys] = re.compile(
            rb"(?<![A-Za-z0-9])(?:" + alternation + rb")(?![A-Za-z0-9])"
        )
    return pattern
