"""What happened during a replay: served, unmatched, unused, and every webhook attempt.

Plain data, filled by the service layer and written as JSON on exit, with `summary`: the same
sentences pytest, the CLI and the log show. A replay *diverges* on an unmatched request, a
webhook that fell due and was not delivered (failed, or still pending at the end), and a
deliberately bad webhook the app accepted. Interactions never used and webhooks whose cause never
came are reported but count only in strict mode, which requires the whole cassette played.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_atomic

#: Interactions (or webhooks) named one by one in a sentence; the rest are counted.
NAMED = 10
#: Divergences spelled out in the summary; the rest are counted (all are in the JSON).
SHOWN = 20


@dataclass(slots=True)
class Unmatched:
    request: str
    near_misses: list[dict[str, Any]]

    def sentence(self) -> str:
        """The miss and its near misses, closest first, one per line."""
        if not self.near_misses:
            return f"no recorded interaction matches {self.request} (the cassette has none)"
        lines = [f"no recorded interaction matches {self.request}; the closest, first:"]
        for near in self.near_misses:
            differences = "; ".join(near["differences"]) or "matches, but was not played"
            lines.append(f"  #{near['interaction']} {near['request']}: {differences}")
        return "\n".join(lines)


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
                "unmatched": [asdict(u) for u in self.unmatched],
            },
            "interactions": {"total": self.interactions_total, "unused": self.unused},
            "webhooks": self.webhooks_summary(),
            "strict": self.strict,
            "diverged": self.diverged,
            "summary": self.summary(),
        }

    def write(self, path: str | Path) -> None:
        write_atomic(Path(path), json.dumps(self.to_dict(), indent=2).encode("utf-8") + b"\n")
