"""What happened during a replay: served, unmatched, unused, and every webhook attempt.

Plain data, filled by the service layer and written as JSON on exit (read back by
`load_report` for the page), with `summary`: the same sentences pytest, the CLI and the log
show. A replay *diverges* on an unmatched request, a webhook that fell due and was not delivered
(failed, or still pending at the end), and a deliberately bad webhook the app accepted.
Interactions never used and webhooks whose cause never came are reported but count only in
strict mode, which requires the whole cassette played.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .clip import clip
from .errors import ReplayProxyError

#: Interactions (or webhooks) named one by one in a sentence; the rest are counted.
NAMED = 10
#: Divergences spelled out in the summary; the rest are counted (all are in the JSON).
SHOWN = 20


@dataclass(slots=True)
class NearMiss:
    """A recorded request close to one that matched nothing (matching.Matcher.near_misses)."""

    number: int  # the recorded interaction, 1-based
    request: str  # `METHOD /target` as recorded
    differences: list[str]  # what differed, one rule each: "query: a=1 vs a=2"

    def describe(self) -> str:
        """`REQUEST: what differed`: the one wording of a near miss, in the sentence of the miss
        (the log, the 502 answer, the report, pytest and the CLI) and on the page."""
        return f"{self.request}: {'; '.join(self.differences) or 'matches, but was not played'}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "interaction": self.number,
            "request": self.request,
            "differences": self.differences,
        }


@dataclass(slots=True)
class Unmatched:
    request: str
    near_misses: list[NearMiss]

    def sentence(self) -> str:
        """The miss and its near misses, closest first, one per line."""
        if not self.near_misses:
            return f"no recorded interaction matches {self.request} (the cassette has none)"
        lines = [f"no recorded interaction matches {self.request}; the closest, first:"]
        lines += [f"  #{near.number} {near.describe()}" for near in self.near_misses]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"request": self.request, "near_misses": [n.to_dict() for n in self.near_misses]}


@dataclass(slots=True)
class Attempt:
    status: int | None  # the app's HTTP status; None when no answer (connection error, timeout)
    error: str | None
    at: float  # seconds since the replay started
    answer: str | None = None  # the start of the app's answer body (see clip)

    def sentence(self) -> str:
        if self.status is None:
            return f"no answer ({self.error or 'unknown error'})"
        return f"{self.status} {self.answer}" if self.answer else f"{self.status} (empty answer)"


@dataclass(slots=True)
class Delivery:
    webhook: int
    url: str
    copy: int = 1
    attempts: list[Attempt] = field(default_factory=list)
    outcome: str = "pending"  # delivered | rejected | failed | pending
    test: str | None = None  # bad-signature / stale-timestamp: what the app was expected to do
    event_id: str | None = None  # the recorded event id, the same for every copy and attempt
    event_type: str = ""  # the recorded body's type/event field, when it has one

    @property
    def rejected_as_expected(self) -> bool | None:
        """For a deliberately bad webhook: did the app refuse it with a 4xx? None otherwise."""
        if self.test is None or not self.attempts:
            return None
        last = self.attempts[-1].status
        return last is not None and 400 <= last < 500

    @property
    def as_expected(self) -> bool:
        if self.test is not None:
            return self.rejected_as_expected is True
        return self.outcome == "delivered"

    def title(self) -> str:
        what = f"webhook {self.webhook}"
        extra = [x for x in (self.event_type, f"copy {self.copy}" if self.copy > 1 else "") if x]
        return f"{what} ({', '.join(extra)})" if extra else what

    def sentence(self, signed_with: str = "") -> str:
        """Why this delivery is not as expected: its attempts and, for 401/403, a hint."""
        where = f" to {self.url}" if self.url else ""
        if self.test is not None:
            last = self.attempts[-1] if self.attempts else None
            if last is not None and last.status is not None and 200 <= last.status < 300:
                return (
                    f"{self.title()}{where}: the app accepted a webhook sent with --{self.test} "
                    f"(a correct app answers 4xx): it answered {last.sentence()}"
                )
            answered = last.sentence() if last is not None else "nothing (never sent)"
            return (
                f"{self.title()}{where}: sent with --{self.test}, the app answered {answered}, "
                "not the 4xx a correct app gives"
            )
        if self.outcome == "pending":
            head = (
                f"{self.title()}{where}: due, not delivered yet ({len(self.attempts)} "
                "attempt(s) so far; at shutdown --drain-timeout sets how long replayproxy waits)"
            )
        else:
            head = f"{self.title()}{where}: failed after {len(self.attempts)} attempt(s)"
        lines = [head]
        lines += [f"  attempt {n}: {a.sentence()}" for n, a in enumerate(self.attempts, 1)]
        hint = signature_hint([a.status for a in self.attempts], signed_with)
        if hint:
            lines.append(f"  {hint}")
        return "\n".join(lines)


def signature_hint(statuses: list[int | None], signed_with: str) -> str | None:
    """For answers 401/403: which secret variable and scheme signed the webhook."""
    refused = sorted({s for s in statuses if s in (401, 403)})
    if not refused or not signed_with:
        return None
    code = "/".join(str(s) for s in refused)
    return (
        f"hint: {code} usually means the app refused the signature: replayproxy signed it "
        f"with {signed_with}; the app must verify with that same secret and scheme"
    )


@dataclass(slots=True)
class Report:
    interactions_total: int = 0
    served: int = 0
    unmatched: list[Unmatched] = field(default_factory=list)
    unused: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    webhooks_never_due: list[int] = field(default_factory=list)
    faults: list[dict[str, str]] = field(default_factory=list)  # deliberate, as asked for
    strict: bool = False  # also require every interaction used and every webhook delivered
    #: how webhooks were signed, for the 401/403 hint: "the secret in $WEBHOOK_SECRET (...)"
    signed_with: str = ""
    #: webhook number -> the interactions it still waited for when the replay ended
    waiting: dict[int, list[int]] = field(default_factory=dict)
    #: interaction number -> "METHOD /target", for the interactions the sentences name
    labels: dict[int, str] = field(default_factory=dict)
    #: webhook number -> its event type, for never-due webhooks
    event_types: dict[int, str] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return bool(self.divergences())

    def divergences(self, strict: bool | None = None) -> list[str]:
        """One sentence (possibly several lines) per way the replay went other than recorded."""
        strict = self.strict if strict is None else strict
        out = [miss.sentence() for miss in self.unmatched]
        out += [d.sentence(self.signed_with) for d in self.deliveries if not d.as_expected]
        if strict:
            out += self._strict_sentences()
        return out

    def _strict_sentences(self) -> list[str]:
        out = []
        if self.unused:
            out.append(
                f"{len(self.unused)} of {self.interactions_total} interaction(s) never used "
                f"(strict): {self._interactions(self.unused)}"
            )
        out += [self._never_due(n) for n in self.webhooks_never_due]
        return out

    def _interactions(self, numbers: list[int]) -> str:
        shown = [f"#{n} {self.labels[n]}" if n in self.labels else f"#{n}" for n in numbers]
        more = len(shown) - NAMED
        return ", ".join(shown[:NAMED]) + (f" and {more} more" if more > 0 else "")

    def _never_due(self, number: int) -> str:
        kind = self.event_types.get(number)
        title = f"webhook {number}" + (f" ({kind})" if kind else "")
        needs = self.waiting.get(number, [])
        if not needs:
            return f"{title} never due: the cassette names no interaction that causes it"
        return f"{title} never due: it waits for {self._interactions(needs)}, never replayed"

    def outcomes(self) -> dict[str, int]:
        count = {"delivered": 0, "rejected": 0, "failed": 0, "pending": 0}
        for d in self.deliveries:
            count[d.outcome] += 1
        return count

    def counts(self) -> str:
        summary = self.outcomes()
        return (
            f"served {self.served}, unmatched {len(self.unmatched)}, unused "
            f"{len(self.unused)} of {self.interactions_total}; webhooks delivered "
            f"{summary['delivered']}, rejected {summary['rejected']}, failed "
            f"{summary['failed']}, pending {summary['pending']}, never due "
            f"{len(self.webhooks_never_due)}"
        )

    def summary(self) -> str:
        """The counts, then why the replay diverged (or that it did not), and, outside strict
        mode, what was left unplayed: the text pytest, the CLI and the report show."""
        problems = self.divergences()
        mode = "strict " if self.strict else ""
        if problems:
            more = len(problems) - SHOWN
            lines = [f"replay diverged ({mode}{self.counts()}):", *problems[:SHOWN]]
            if more > 0:
                lines.append(f"... and {more} more (every one is in the report's JSON)")
        else:
            lines = [f"replay as recorded ({mode}{self.counts()})"]
        if not self.strict and (self.unused or self.webhooks_never_due):
            left = self._strict_sentences()
            lines.append("not counted (strict mode would fail on these):")
            lines += [f"  {line}" for line in left[:SHOWN]]
            if len(left) > SHOWN:
                lines.append(f"  ... and {len(left) - SHOWN} more")
        return "\n".join(lines)

    def webhooks_summary(self) -> dict[str, Any]:
        return {
            **self.outcomes(),
            "never_due": self.webhooks_never_due,
            "faults": self.faults,
            "waiting": {str(n): needs for n, needs in self.waiting.items()},
            "deliveries": [
                {**asdict(d), "rejected_as_expected": d.rejected_as_expected}
                for d in self.deliveries
            ],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": {
                "served": self.served,
                "unmatched": [u.to_dict() for u in self.unmatched],
            },
            "interactions": {"total": self.interactions_total, "unused": self.unused},
            "webhooks": self.webhooks_summary(),
            "strict": self.strict,
            "diverged": self.diverged,
            "summary": self.summary(),
        }

    def write(self, path: str | Path) -> None:
        write_atomic(Path(path), json.dumps(self.to_dict(), indent=2).encode("utf-8") + b"\n")

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        """The report `to_dict` wrote (`replay --report`), as this type again: what the page
        reads. A field left out takes its default; one of the wrong type is a ValueError naming
        its place (`requests.unmatched[2].request`). Counts, `diverged` and `summary` are not
        read: they follow from the entries."""
        if not isinstance(data, dict):
            raise ValueError(f"a report is a JSON object, not {_KINDS.get(type(data), 'that')}")
        requests = _take(data, "requests", dict, "", {})
        interactions = _take(data, "interactions", dict, "", {})
        hooks = _take(data, "webhooks", dict, "", {})
        waiting = _take(hooks, "waiting", dict, "webhooks", {})
        for key in waiting:
            if not (key.isascii() and key.isdigit() and len(key) < 10):
                raise ValueError(f"'webhooks.waiting' is keyed by webhook numbers: {clip(key)!r}")
        return cls(
            interactions_total=_take(interactions, "total", int, "interactions", 0),
            served=_take(requests, "served", int, "requests", 0),
            unmatched=[_unmatched(u, at) for u, at in _objects(requests, "unmatched", "requests")],
            unused=_listed(interactions, "unused", int, "interactions"),
            deliveries=[_delivery(d, at) for d, at in _objects(hooks, "deliveries", "webhooks")],
            webhooks_never_due=_listed(hooks, "never_due", int, "webhooks"),
            faults=[f for f, _ in _objects(hooks, "faults", "webhooks")],
            strict=_take(data, "strict", bool, "", False),
            waiting={int(k): _listed(waiting, k, int, "webhooks.waiting") for k in waiting},
        )


#: How a report's mistakes name a JSON value's type.
_KINDS: dict[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
    type(None): "null",
}
_REQUIRED: Any = object()
_OUTCOMES = ("delivered", "rejected", "failed", "pending")


def _take(
    data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any
) -> Any:
    """`data[key]` when it is of `kind`, else `default` when the key is left out (_REQUIRED: a
    mistake); any other value is a ValueError naming `where.key`."""
    place = f"{where}.{key}" if where else key
    if key not in data:
        if default is _REQUIRED:
            raise ValueError(f"'{place}' is missing")
        return default
    return _checked(data[key], kind, place)


def _checked(value: Any, kind: type | tuple[type, ...], place: str) -> Any:
    """`value` when it is of `kind` (true and false are not integers; where a float may be, a
    number is finite and fits one: json.loads reads NaN, Infinity and any integer); else a
    ValueError."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):
        if float in kinds and isinstance(value, (int, float)) and not _finite(value):
            raise ValueError(f"'{place}' must be a finite number")
        return value
    wanted = " or ".join(_KINDS[k] for k in kinds)
    raise ValueError(f"'{place}' must be {wanted}, not {_KINDS.get(type(value), 'that')}")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past the largest float
        return False


def _listed(
    data: dict[str, Any], key: str, kind: type, where: str, default: Any = ()
) -> list[Any]:
    """The list at `data[key]` (empty when left out, unless `default` is _REQUIRED), every
    item of `kind`."""
    place = f"{where}.{key}" if where else key
    items = _take(data, key, list, where, default)
    return [_checked(item, kind, f"{place}[{n}]") for n, item in enumerate(items)]


def _objects(data: dict[str, Any], key: str, where: str) -> list[tuple[dict[str, Any], str]]:
    """The objects listed at `data[key]` (none when left out), each with its place."""
    items = _listed(data, key, dict, where)
    return [(item, f"{where}.{key}[{n}]") for n, item in enumerate(items)]


def _unmatched(data: dict[str, Any], where: str) -> Unmatched:
    near = [
        NearMiss(
            _take(n, "interaction", int, place, _REQUIRED),
            _take(n, "request", str, place, _REQUIRED),
            _listed(n, "differences", str, place, _REQUIRED),
        )
        for n, place in _objects(data, "near_misses", where)
    ]
    return Unmatched(_take(data, "request", str, where, _REQUIRED), near)


def _delivery(data: dict[str, Any], where: str) -> Delivery:
    outcome = _take(data, "outcome", str, where, "pending")
    if outcome not in _OUTCOMES:
        raise ValueError(f"'{where}.outcome' must be one of {', '.join(_OUTCOMES)}")
    maybe = (str, type(None))
    attempts = [
        Attempt(
            _take(a, "status", (int, type(None)), place, _REQUIRED),
            _take(a, "error", maybe, place, _REQUIRED),
            _take(a, "at", (int, float), place, _REQUIRED),
            _take(a, "answer", maybe, place, None),
        )
        for a, place in _objects(data, "attempts", where)
    ]
    return Delivery(
        webhook=_take(data, "webhook", int, where, _REQUIRED),
        url=_take(data, "url", str, where, ""),
        copy=_take(data, "copy", int, where, 1),
        attempts=attempts,
        outcome=outcome,
        test=_take(data, "test", maybe, where, None),
        event_id=_take(data, "event_id", maybe, where, None),
        event_type=_take(data, "event_type", str, where, ""),
    )


def load_report(path: str | Path) -> Report:
    """A replay report as written by `replay --report`; a user-facing error when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReplayProxyError(f"{path}: no such report") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayProxyError(f"{path}: cannot read the report: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ReplayProxyError(f"{path}: not a JSON replay report: {exc}") from None
    if not isinstance(data, dict) or not {"requests", "webhooks"} <= data.keys():
        raise ReplayProxyError(
            f"{path}: not a replay report (expected 'requests' and 'webhooks', "
            "as written by replay --report)"
        )
    try:
        return Report.from_dict(data)
    except ValueError as exc:
        raise ReplayProxyError(f"{path}: not a replay report: {exc}") from None
