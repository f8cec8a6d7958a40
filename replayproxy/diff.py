"""What changed between two recordings: interactions and webhooks added, removed, changed.

Pure engine. Recordings are compared as sessions, not by position: interactions pair by
conversation (the upstream id they are about, a job say, found as `correlate.conversations`
finds it), conversations pair by their opening request (the submit with its spec), and within a
pair of conversations, and among the exchanges that belong to none (a listing), interactions pair
by their matching fingerprint (`matching.Normaliser`) in recorded order, then by method and path
shape (numeric segments count as one shape), so a changed request body shows as a change rather
than a removal plus an addition. Webhooks pair through their causes, else by event type in order.

Differences that are not differences are ignored: variables (the same position holding another
minted value), timestamps, header order, redacted values (`<redacted>`), and upstream ids that
were consistently renamed (a job that was 6238 last month and is 7001 today is the same job, when
it is 7001 everywhere 6238 was, inside strings and URLs too). Fields the caller names (`ignore`,
`--ignore`, config `diff.ignore`) are dropped.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .bodies import NOT_JSON, json_body
from .cassette import Cassette, Headers, Interaction, Webhook
from .config import Config
from .correlate import conversations, named_id
from .inspect import event_type
from .matching import Normal, describe, ensure_variables, normaliser
from .variables import number_shape, shape

REDACTED = "<redacted>"

#: Headers whose values are times or per-hop/per-request noise: their values never count.
VOLATILE_HEADERS = frozenset(
    {
        "date",
        "expires",
        "last-modified",
        "age",
        "content-length",
        "etag",
        "x-request-id",
        "request-id",
        "x-correlation-id",
        "traceparent",
        "tracestate",
        "x-amzn-trace-id",
        "x-runtime",
        "server-timing",
        "idempotency-key",
        "x-idempotency-key",
    }
)

#: Minted shapes: two values of the same one of these shapes are equal for a diff.
_MINTED = frozenset({"uuid", "ulid", "token", "time", "url"})
_DIGITS = re.compile(r"^\d+$")


@dataclass(slots=True)
class Change:
    kind: str  # added | removed | changed
    what: str  # interaction | webhook
    a: int | None  # 1-based number in A
    b: int | None  # 1-based number in B
    title: str  # e.g. "POST /v1/jobs" or "job.completed"
    fields: list[str] = field(default_factory=list)  # for `changed`: "field: a -> b"

    def render(self) -> str:
        if self.kind == "added":
            return f"+ {self.what} B#{self.b} {self.title}"
        if self.kind == "removed":
            return f"- {self.what} A#{self.a} {self.title}"
        head = f"~ {self.what} A#{self.a} -> B#{self.b} {self.title}"
        return "\n".join([head, *(f"    {f}" for f in self.fields)])


@dataclass(slots=True)
class Diff:
    changes: list[Change] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # upstream ids, A value -> B value
    repeats: tuple[int, int] = (0, 0)  # unpaired repeated polls in A and in B, not counted

    @property
    def equal(self) -> bool:
        return not self.changes

    def render(self) -> str:
        if self.equal:
            lines = ["no differences"]
        else:
            counts = {k: sum(c.kind == k for c in self.changes) for k in ("added", "removed")}
            counts["changed"] = sum(c.kind == "changed" for c in self.changes)
            lines = [c.render() for c in self.changes]
            lines.append(
                f"{counts['added']} added, {counts['removed']} removed, "
                f"{counts['changed']} changed"
            )
        if self.renamed:
            shown = ", ".join(f"{a} -> {b}" for a, b in list(self.renamed.items())[:10])
            lines.append(f"(upstream ids renamed, not counted: {shown})")
        if any(self.repeats):
            lines.append(
                f"(polls more, answered as the poll before them, not counted: "
                f"{self.repeats[0]} in A, {self.repeats[1]} in B)"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "equal": self.equal,
            "changes": [
                {"kind": c.kind, "what": c.what, "a": c.a, "b": c.b, "title": c.title,
                 "fields": c.fields}
                for c in self.changes
            ],
            "renamed": self.renamed,
            "repeats": {"a": self.repeats[0], "b": self.repeats[1]},
        }


class _Side:
    """One cassette with what the comparison needs: its variables and its normalised requests."""

    def __init__(self, cassette: Cassette, config: Config):
        self.cassette = cassette
        normalise = normaliser(cassette, config)
        ensure_variables(cassette, normalise)
        self.variables = {v.value for v in cassette.variables}
        self.pattern = _values_pattern(self.variables)
        self.normals = [normalise(i.request) for i in cassette.interactions]
        self.conversation = conversations(cassette.interactions)
        self.head = _repeats(cassette.interactions, self.normals, self.conversation)

    def is_repeat(self, index: int) -> bool:
        return self.head[index] != index

    def canonical(self, number: int | None) -> int | None:
        """A 1-based interaction number, a repeated poll standing for the first of its run."""
        if number is None or not 0 < number <= len(self.head):
            return number
        return self.head[number - 1] + 1

    def scrub(self, text: str) -> str:
        """Variable values inside a longer string become `{var}`."""
        if self.pattern is None or text in self.variables:
            return text
        return self.pattern.sub("{var}", text)


def _repeats(
    interactions: Sequence[Interaction], normals: Sequence[Normal], convs: Sequence[str | None]
) -> list[int]:
    """For each interaction, the first of its run of repeats (itself when it is none): a GET or
    HEAD answered exactly as the last same request of its conversation was (the app polled again
    meanwhile; how often depends on timing, not on the session)."""
    head = list(range(len(interactions)))
    last: dict[tuple[Any, ...], int] = {}
    for index, item in enumerate(interactions):
        if item.request.method not in ("GET", "HEAD"):
            continue
        key = (convs[index], normals[index].fingerprint)
        prev = last.get(key)
        if prev is not None:
            before = interactions[prev].response
            if before.status == item.response.status and before.body == item.response.body:
                head[index] = head[prev]
        last[key] = index
    return head


def _values_pattern(values: set[str]) -> re.Pattern[str] | None:
    usable = sorted((v for v in values if len(v) >= 6), key=len, reverse=True)
    if not usable:
        return None
    return re.compile("|".join(re.escape(v) for v in usable))


def diff(
    a: Cassette, b: Cassette, config: Config | None = None, ignore: Sequence[str] = ()
) -> Diff:
    """Compare recording `a` (older) with `b` (newer); `ignore` (and config `diff.ignore`) name
    fields dropped from the comparison, as the diff prints them (`response.body.created_at`)."""
    config = config or Config()
    left, right = _Side(a, config), _Side(b, config)
    result = Diff()
    cmp = _Comparer(left, right, result.renamed)
    pairs = _pair_interactions(left, right, cmp)
    skip = _Ignore([*config.diff.ignore, *ignore])
    paired_a = {i for i, _ in pairs}
    paired_b = {j for _, j in pairs}
    number_map: dict[int, int] = {}
    changes: list[tuple[tuple[int, int], Change]] = []
    for i, j in pairs:
        number_map[i + 1] = j + 1
        item_a, item_b = a.interactions[i], b.interactions[j]
        fields = skip(cmp.interaction(item_a, item_b))
        if fields:
            title = describe(item_a.request)
            other = describe(item_b.request)
            if cmp.rename_text(title) != other:
                title = f"{title} -> {other}"
            changes.append(((i, j), Change("changed", "interaction", i + 1, j + 1, title, fields)))
    for i, item in enumerate(a.interactions):
        if i not in paired_a and not left.is_repeat(i):
            title = describe(item.request)
            changes.append(((i, -1), Change("removed", "interaction", i + 1, None, title)))
    for j, item in enumerate(b.interactions):
        if j not in paired_b and not right.is_repeat(j):
            title = describe(item.request)
            changes.append(((_position(j, pairs), j), Change("added", "interaction", None, j + 1,
                                                              title)))
    changes.sort(key=lambda t: t[0])
    result.changes.extend(c for _, c in changes)
    result.changes.extend(_webhooks(a.webhooks, b.webhooks, cmp, number_map, skip))
    result.repeats = (
        sum(1 for i in range(len(a.interactions)) if i not in paired_a and left.is_repeat(i)),
        sum(1 for j in range(len(b.interactions)) if j not in paired_b and right.is_repeat(j)),
    )
    return result


class _Ignore:
    """Drops the fields whose path (as printed, before ': ') is, or is inside, an ignored path;
    `*` stands for one segment (`response.body.outputs.*`)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = [tuple(p.strip().split(".")) for p in paths if p.strip()]

    def __call__(self, fields: list[str]) -> list[str]:
        if not self.paths:
            return fields
        return [f for f in fields if not self.ignored(f.split(": ", 1)[0].split("."))]

    def ignored(self, path: list[str]) -> bool:
        for pattern in self.paths:
            if len(path) >= len(pattern) and all(
                p == "*" or p == s for p, s in zip(pattern, path, strict=False)
            ):
                return True
        return False


def _position(j: int, pairs: list[tuple[int, int]]) -> int:
    """Where an added B interaction sorts among A's numbers: after the A paired before it."""
    before = [i for i, jj in pairs if jj < j]
    return max(before) if before else -1


def _pair_interactions(left: _Side, right: _Side, cmp: _Comparer) -> list[tuple[int, int]]:
    """Pairs (A index, B index); `cmp` learns the paired conversations' ids (A -> B)."""
    convs_a, convs_b = _groups(left), _groups(right)
    # The exchanges of no conversation: by fingerprint, then shape.
    pairs = _pair_by(convs_a.pop(None, []), convs_b.pop(None, []), _fingerprint, _shape, left,
                     right)
    openers = _pair_by(
        list(convs_a),
        list(convs_b),
        lambda side, conv: _key(side, (convs_a if side is left else convs_b)[conv][0], conv),
        lambda side, conv: _shape(side, (convs_a if side is left else convs_b)[conv][0]),
        left,
        right,
    )
    for conv_a, conv_b in openers:
        cmp.learn(conv_a, conv_b)
    for conv_a, conv_b in openers:
        pairs += _align(convs_a[conv_a], convs_b[conv_b], left, right, conv_a, conv_b, cmp)
    # A conversation one recording has and the other cannot tell (no submit recorded, so its
    # polls carry an id nothing introduced): its exchanges pair with those of none, by shape.
    taken_a, taken_b = {i for i, _ in pairs}, {j for _, j in pairs}
    rest_a = [i for i in range(len(left.normals)) if i not in taken_a and not left.is_repeat(i)]
    rest_b = [j for j in range(len(right.normals)) if j not in taken_b and not right.is_repeat(j)]
    for none_a in (True, False):
        a_side = [i for i in rest_a if (left.conversation[i] is None) == none_a]
        b_side = [j for j in rest_b if (right.conversation[j] is None) != none_a]
        more = _pair_by(a_side, b_side, _shape, _shape, left, right)
        pairs += more
        more_a, more_b = {i for i, _ in more}, {j for _, j in more}
        rest_a = [i for i in rest_a if i not in more_a]
        rest_b = [j for j in rest_b if j not in more_b]
    return sorted(pairs)


def _groups(side: _Side) -> dict[str | None, list[int]]:
    """Interaction indexes by conversation, conversations in order of first appearance."""
    out: dict[str | None, list[int]] = {}
    for index, conv in enumerate(side.conversation):
        out.setdefault(conv, []).append(index)
    return out


def _key(side: _Side, index: int, conv: str | None) -> tuple[Any, ...]:
    """An interaction's fingerprint with its conversation's own id standing for any id."""
    normal: Normal = side.normals[index]
    body = normal.body if isinstance(normal.body, (bytes, tuple)) else json.dumps(
        normal.body, sort_keys=True
    )
    key = (normal.method, normal.template, normal.query, body, normal.headers)
    if conv is None:
        return key
    pattern = _id_pattern(conv)
    return tuple(pattern.sub("{conversation}", str(part)) for part in key)


@functools.lru_cache(maxsize=4096)
def _id_pattern(value: str) -> re.Pattern[str]:
    """`value` as a whole token (not inside a longer number or word)."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])")


def _fingerprint(side: _Side, index: int) -> tuple[Any, ...]:
    return _key(side, index, None)


def _shape(side: _Side, index: int) -> tuple[str, str]:
    normal = side.normals[index]
    return normal.method, _coarse(normal.template)


def _pair_by(
    items_a: list[Any], items_b: list[Any], exact: Any, loose: Any, left: _Side, right: _Side
) -> list[tuple[Any, Any]]:
    """Pair A's items with B's: equal `exact` keys first, in order; then equal `loose` keys."""
    pairs: list[tuple[Any, Any]] = []
    free_b = list(items_b)
    for key in (exact, loose):
        queues: dict[Any, list[Any]] = {}
        for item in free_b:
            queues.setdefault(key(right, item), []).append(item)
        rest = []
        for item in items_a:
            queue = queues.get(key(left, item))
            if queue:
                pairs.append((item, queue.pop(0)))
            else:
                rest.append(item)
        taken = {b for _, b in pairs}
        items_a, free_b = rest, [b for b in free_b if b not in taken]
    return pairs


#: The most comparisons, and bytes compared, an alignment of one request's answers may take
#: (beyond that they pair in order).
_ALIGN_LIMIT = 10_000
_ALIGN_BYTES = 64 * 1024 * 1024


def _align(
    a: list[int],
    b: list[int],
    left: _Side,
    right: _Side,
    conv_a: str,
    conv_b: str,
    cmp: _Comparer,
) -> list[tuple[int, int]]:
    """Interactions of a pair of conversations. The same request (a poll) asked several times
    on each side pairs by its answers: equal answers first (the longest common subsequence),
    the others in order between them, so a poll more or fewer is one addition or removal, not
    a shift of every later one. Other requests pair by fingerprint, then shape, in order."""
    keys_a = {i: _key(left, i, conv_a) for i in a}
    keys_b = {j: _key(right, j, conv_b) for j in b}
    by_key_a: dict[Any, list[int]] = {}
    by_key_b: dict[Any, list[int]] = {}
    for i in a:
        by_key_a.setdefault(keys_a[i], []).append(i)
    for j in b:
        by_key_b.setdefault(keys_b[j], []).append(j)
    pairs: list[tuple[int, int]] = []
    for key, items_a in by_key_a.items():
        items_b = by_key_b.get(key)
        if not items_b:
            continue
        if not _alignable(items_a, items_b, left, right):
            pairs += list(zip(items_a, items_b, strict=False))
            continue
        pairs += _lcs_pairs(items_a, items_b, left, right, cmp)
    taken_a, taken_b = {i for i, _ in pairs}, {j for _, j in pairs}
    keys_both = {k for k in by_key_a if k in by_key_b}
    rest_a = [i for i in a if i not in taken_a and keys_a[i] not in keys_both]
    rest_b = [j for j in b if j not in taken_b and keys_b[j] not in keys_both]
    return pairs + _pair_by(rest_a, rest_b, _shape, _shape, left, right)


def _alignable(a: list[int], b: list[int], left: _Side, right: _Side) -> bool:
    """Whether aligning is worth it and bounded: every answer of one side is compared with
    every answer of the other, so the count and the bytes read stay under fixed limits."""
    if len(a) == len(b) == 1 or len(a) * len(b) > _ALIGN_LIMIT:
        return False
    size_a = sum(len(left.cassette.interactions[i].response.body) for i in a)
    size_b = sum(len(right.cassette.interactions[j].response.body) for j in b)
    return size_a * len(b) + size_b * len(a) <= _ALIGN_BYTES


def _lcs_pairs(
    a: list[int], b: list[int], left: _Side, right: _Side, cmp: _Comparer
) -> list[tuple[int, int]]:
    """Equal answers paired along their longest common subsequence; between two such pairs,
    the unequal ones pair in order (the rest are added or removed). Each comparison asks a
    scratch of `cmp`: ids it would learn from a pair not kept must not become renames."""
    items_a = [left.cassette.interactions[i] for i in a]
    items_b = [right.cassette.interactions[j] for j in b]
    equal = [[not cmp.scratch().interaction(x, y) for y in items_b] for x in items_a]
    n, m = len(a), len(b)
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for x in range(n - 1, -1, -1):
        for y in range(m - 1, -1, -1):
            best[x][y] = (
                best[x + 1][y + 1] + 1 if equal[x][y] else max(best[x + 1][y], best[x][y + 1])
            )
    pairs: list[tuple[int, int]] = []
    gap_a: list[int] = []
    gap_b: list[int] = []
    x = y = 0
    while x < n and y < m:
        if equal[x][y] and best[x][y] == best[x + 1][y + 1] + 1:
            pairs += list(zip(gap_a, gap_b, strict=False))
            gap_a, gap_b = [], []
            pairs.append((a[x], b[y]))
            x, y = x + 1, y + 1
        elif best[x + 1][y] >= best[x][y + 1]:
            gap_a.append(a[x])
            x += 1
        else:
            gap_b.append(b[y])
            y += 1
    gap_a += a[x:]
    gap_b += b[y:]
    return pairs + list(zip(gap_a, gap_b, strict=False))


def _coarse(template: str) -> str:
    return "/".join("{n}" if _DIGITS.match(s) else s for s in template.split("/"))


class _Comparer:
    def __init__(self, left: _Side, right: _Side, renamed: dict[str, str]):
        self.left = left
        self.right = right
        self.renamed = renamed  # shown: ids that differ
        self.ids: dict[str, str] = {}  # every upstream id known, A -> B (identities too)
        self._pattern: tuple[int, re.Pattern[str] | None] = (-1, None)

    def scratch(self) -> _Comparer:
        """A comparer knowing what this one knows, whose own learning goes nowhere: to ask
        whether two items are equal before (or without) pairing them."""
        probe = _Comparer(self.left, self.right, {})
        probe.ids = dict(self.ids)
        probe._pattern = (len(self.ids), self._rename_pattern())
        return probe

    def learn(self, a: str, b: str) -> None:
        self.ids[a] = b
        if a != b:
            self.renamed[a] = b

    # -- values ---------------------------------------------------------------------------------

    def same(self, x: Any, y: Any, key: str = "") -> bool:
        if x == y:
            return True
        if x == REDACTED or y == REDACTED:
            return True
        if isinstance(x, str) and isinstance(y, str):
            if x in self.left.variables and y in self.right.variables:
                return True
            kind = shape(x)
            if kind in _MINTED and kind == shape(y):
                return True
            if self.left.scrub(x) == self.right.scrub(y) and "{var}" in self.left.scrub(x):
                return True
            if self.ids and self.rename_text(x) == y:
                return True  # an upstream id renamed inside a string: "jobs/6238/outputs"
        if _is_number(x) and _is_number(y) and number_shape(x) and number_shape(y):
            return True  # both unix timestamps
        renamed = self.ids.get(str(x))
        if renamed is not None:
            return renamed == str(y)
        if named_id(key, x) is not None and named_id(key, y) is not None:
            if str(y) in self.ids.values():
                return False
            self.learn(str(x), str(y))  # an upstream id, first seen here: learn the rename
            return True
        return False

    def rename_text(self, text: str) -> str:
        """`text` with every known upstream id of A replaced by B's, all at once (so a swap,
        6230 <-> 6232, stays a swap)."""
        pattern = self._rename_pattern()
        if pattern is None:
            return text
        return pattern.sub(lambda m: self.ids[m.group(0)], text)

    def _rename_pattern(self) -> re.Pattern[str] | None:
        """Every known A id as a whole token; compiled again only when an id is learnt (ids
        are never forgotten, so their count tells whether the pattern is current)."""
        if not self.ids:
            return None
        size, pattern = self._pattern
        if size != len(self.ids) or pattern is None:
            alternatives = "|".join(re.escape(k) for k in sorted(self.ids, key=len, reverse=True))
            pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")
            self._pattern = (len(self.ids), pattern)
        return pattern

    # -- parts ----------------------------------------------------------------------------------

    def headers(self, where: str, a: Headers, b: Headers) -> list[str]:
        da, db = _header_map(a), _header_map(b)
        out = []
        for name in sorted(set(da) | set(db)):
            if name in VOLATILE_HEADERS:
                continue
            va, vb = da.get(name), db.get(name)
            if va is None:
                out.append(f"{where}.{name}: added {_short(vb)}")
            elif vb is None:
                out.append(f"{where}.{name}: removed (was {_short(va)})")
            elif len(va) != len(vb) or not all(
                self.same(x, y) for x, y in zip(va, vb, strict=True)
            ):
                out.append(f"{where}.{name}: {_short(va)} -> {_short(vb)}")
        return out

    def body(self, where: str, a: bytes, b: bytes) -> list[str]:
        if a == b:
            return []
        ja, jb = json_body(a), json_body(b)
        if ja is not NOT_JSON and jb is not NOT_JSON:
            out: list[str] = []
            self.json(where, ja, jb, out)
            return out
        try:
            ta, tb = a.decode("utf-8"), b.decode("utf-8")
        except UnicodeDecodeError:
            return [f"{where}: {len(a)} bytes -> {len(b)} bytes"]
        if self.left.scrub(ta) == self.right.scrub(tb) or self.rename_text(ta) == tb:
            return []
        return [f"{where}: {_short(ta)} -> {_short(tb)}"]

    def json(self, where: str, a: Any, b: Any, out: list[str], key: str = "") -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                path = f"{where}.{k}"
                if k not in b:
                    out.append(f"{path}: removed (was {_short(a[k])})")
                elif k not in a:
                    out.append(f"{path}: added {_short(b[k])}")
                else:
                    self.json(path, a[k], b[k], out, str(k))
        elif isinstance(a, list) and isinstance(b, list):
            for n in range(max(len(a), len(b))):
                path = f"{where}.{n}"
                if n >= len(b):
                    out.append(f"{path}: removed (was {_short(a[n])})")
                elif n >= len(a):
                    out.append(f"{path}: added {_short(b[n])}")
                else:
                    self.json(path, a[n], b[n], out, key)
        elif type(a) is not type(b) and not (_is_number(a) and _is_number(b)):
            if not self.same(a, b, key):
                out.append(f"{where}: {_short(a)} -> {_short(b)}")
        elif not self.same(a, b, key):
            out.append(f"{where}: {_short(a)} -> {_short(b)}")

    def target(self, a: str, b: str) -> list[str]:
        """Method-independent comparison of two request targets (path and query)."""
        pa, pb = urlsplit(a), urlsplit(b)
        out = []
        sa, sb = pa.path.split("/"), pb.path.split("/")
        if len(sa) != len(sb) or not all(
            self.same(x, y, "id" if _DIGITS.match(x) and _DIGITS.match(y) else "")
            for x, y in zip(sa, sb, strict=True)
        ):
            out.append(f"request.path: {pa.path} -> {pb.path}")
        qa, qb = dict(parse_qsl(pa.query, True)), dict(parse_qsl(pb.query, True))
        for name in sorted(set(qa) | set(qb)):
            if name not in qb:
                out.append(f"request.query.{name}: removed (was {_short(qa[name])})")
            elif name not in qa:
                out.append(f"request.query.{name}: added {_short(qb[name])}")
            elif not self.same(qa[name], qb[name], name):
                out.append(f"request.query.{name}: {_short(qa[name])} -> {_short(qb[name])}")
        return out

    # -- whole items ----------------------------------------------------------------------------

    def interaction(self, a: Interaction, b: Interaction) -> list[str]:
        out: list[str] = []
        if a.request.method != b.request.method:
            out.append(f"request.method: {a.request.method} -> {b.request.method}")
        out += self.target(a.request.uri, b.request.uri)
        out += self.headers("request.headers", a.request.headers, b.request.headers)
        out += self.body("request.body", a.request.body, b.request.body)
        if a.response.status != b.response.status:
            out.append(f"response.status: {a.response.status} -> {b.response.status}")
        out += self.headers("response.headers", a.response.headers, b.response.headers)
        out += self.body("response.body", a.response.body, b.response.body)
        return out

    def webhook(self, a: Webhook, b: Webhook, number_map: dict[int, int]) -> list[str]:
        out: list[str] = []
        if a.method != b.method:
            out.append(f"method: {a.method} -> {b.method}")
        for name in ("cause", "after"):
            va, vb = getattr(a, name), getattr(b, name)
            canon = self.left.canonical(va)
            mapped = number_map.get(canon) if canon is not None else None
            if mapped != self.right.canonical(vb):
                shown_a = f"#{va}" if va else "none"
                shown_b = f"#{vb}" if vb else "none"
                out.append(f"{name}: interaction A{shown_a} -> B{shown_b}")
        out += self.headers("headers", a.headers, b.headers)
        out += self.body("body", a.body, b.body)
        return out


#: The cause of an A webhook whose cause was paired with nothing: equal to no B cause.
_NOWHERE = object()


def _webhooks(
    a: list[Webhook],
    b: list[Webhook],
    cmp: _Comparer,
    number_map: dict[int, int],
    skip: _Ignore,
) -> list[Change]:
    """Webhooks pair through their causes (A's cause paired with B's), else by event type."""

    def kind(hook: Webhook) -> tuple[str, str]:
        return hook.method, event_type(hook)

    def title(hook: Webhook) -> str:
        return event_type(hook) or f"{hook.method} {hook.path}"

    def cause(side: _Side, j: int) -> tuple[Any, ...]:
        if side is cmp.right:
            return (*kind(b[j]), side.canonical(b[j].cause))
        canon = side.canonical(a[j].cause)
        mapped = number_map.get(canon) if canon is not None else None
        return (*kind(a[j]), _NOWHERE if mapped is None else mapped)

    def loose(side: _Side, j: int) -> tuple[str, str]:
        return kind((a if side is cmp.left else b)[j])

    pairs = dict(_pair_by(list(range(len(a))), list(range(len(b))), cause, loose, cmp.left,
                          cmp.right))
    used = set(pairs.values())
    out: list[Change] = []
    for i, hook in enumerate(a):
        if i not in pairs:
            out.append(Change("removed", "webhook", i + 1, None, title(hook)))
            continue
        j = pairs[i]
        fields = skip(cmp.webhook(hook, b[j], number_map))
        if fields:
            out.append(Change("changed", "webhook", i + 1, j + 1, title(hook), fields))
    for j, hook in enumerate(b):
        if j not in used:
            out.append(Change("added", "webhook", None, j + 1, title(hook)))
    return out


# ---------------------------------------------------------------------------------------------


def _header_map(headers: Headers) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name.lower(), []).append(value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value) and len(value) == 1:
        value = value[0]
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."
