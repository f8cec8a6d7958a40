"""What happened during a replay: served, unmatched, unused, and every webhook attempt.

Plain data, filled by the service layer and written as JSON on exit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_atomic


@dataclass(slots=True)
class Unmatched:
    request: str
    near_misses: list[dict[str, Any]]


@dataclass(slots=True)
class Attempt:
    status: int | None  # the app's HTTP status; None when no answer (connection error, timeout)
    error: str | None
    at: float  # seconds since the replay started


@dataclass(slots=True)
class Delivery:
    webhook: int
    url: str
    copy: int = 1
    attempts: list[Attempt] = field(default_factory=list)
    outcome: str = "pending"  # delivered | rejected | failed | pending
    test: str | None = None  # bad-signature / stale-timestamp: what the app was expected to do
    event_id: str | None = None  # the recorded event id, the same for every copy and attempt

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


@dataclass(slots=True)
class Report:
    interactions_total: int = 0
    served: int = 0
    unmatched: list[Unmatched] = field(default_factory=list)
    unused: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    webhooks_never_due: list[int] = field(default_factory=list)
    faults: list[dict[str, str]] = field(default_factory=list)  # deliberate, as asked for

    @property
    def diverged(self) -> bool:
        return (
            bool(self.unmatched)
            or not all(d.as_expected for d in self.deliveries)
            or bool(self.webhooks_never_due)
        )

    def webhooks_summary(self) -> dict[str, Any]:
        count = {"delivered": 0, "rejected": 0, "failed": 0, "pending": 0}
        for d in self.deliveries:
            count[d.outcome] += 1
        return {
            **count,
            "never_due": self.webhooks_never_due,
            "faults": self.faults,
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
            "diverged": self.diverged,
        }

    def write(self, path: str | Path) -> None:
        write_atomic(Path(path), json.dumps(self.to_dict(), indent=2).encode("utf-8") + b"\n")
