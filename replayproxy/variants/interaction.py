"""The variant rules of Camber's answers, per interaction (a 503 once, a 429, no answer, a reset
connection, a slow answer), and which interactions get them: the first of each kind in the
webhooks' conversations (`depended_on`)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from .base import Facts, Variant, on_interaction

INTERACTION_KINDS = ("503-once", "429", "timeout", "reset", "slow")

SLOW_FACTOR = 20  # a slow answer takes its recorded duration times this...
SLOW_AT_LEAST = 0.5  # ...and at least this many seconds
RETRY_AFTER = 1  # seconds, in the 429's Retry-After
TIMEOUT_HOLD = 30.0  # longest wait for a client that never times out, seconds


def error_once(f: Facts, n: int) -> Variant:
    return on_interaction(
        n,
        "503-once",
        f"{f.exchange(n)} answered 503 once, then as recorded",
        "a deploy or an overloaded node: a transient 5xx",
        status=503,
    )


def too_many(f: Facts, n: int) -> Variant:
    return on_interaction(
        n,
        "429",
        f"{f.exchange(n)} answered 429 with Retry-After: {RETRY_AFTER} once, then as recorded",
        "rate limiting",
        status=429,
        retry_after=RETRY_AFTER,
    )


def timeout(f: Facts, n: int) -> Variant:
    return on_interaction(
        n,
        "timeout",
        f"{f.exchange(n)} never answered: held until the client hangs up (at most "
        f"{TIMEOUT_HOLD:g} s), and counted as done",
        "Camber did the work (accepted the job) but the answer never arrived",
        hold=TIMEOUT_HOLD,
    )


def reset(f: Facts, n: int) -> Variant:
    return on_interaction(
        n,
        "reset",
        f"the connection reset instead of answering {f.exchange(n)}, once; then as recorded",
        "a load balancer or network dropping the connection mid-request",
    )


def slow(f: Facts, n: int) -> Variant:
    recorded = float(f.cassette.interactions[n - 1].duration or 0.0)
    hold = round(max(SLOW_AT_LEAST, recorded * SLOW_FACTOR), 3)
    return on_interaction(
        n,
        "slow",
        f"{f.exchange(n)} answered after {hold:g} s ({SLOW_FACTOR}x its recorded "
        f"{recorded:.3f} s, at least {SLOW_AT_LEAST:g} s)",
        "Camber under load",
        hold=hold,
    )


INTERACTION_RULES: list[Callable[[Facts, int], Variant | None]] = [
    error_once,
    too_many,
    timeout,
    reset,
    slow,
]


def _kind_of(f: Facts, number: int) -> tuple[str, str]:
    request = f.cassette.interactions[number - 1].request
    segments = urlsplit(request.uri).path.split("/")
    shape = "/".join("{id}" if any(c.isdigit() for c in s) else s for s in segments)
    return request.method.upper(), shape


def depended_on(f: Facts) -> list[int]:
    """The interactions varied: the first of each kind in the webhooks' conversations."""
    pool = sorted({i for conv in f.conversations for i in conv})
    if not f.cassette.webhooks:
        pool = list(range(1, len(f.cassette.interactions) + 1))
    first: dict[tuple[str, str], int] = {}
    for number in pool:
        first.setdefault(_kind_of(f, number), number)
    return sorted(first.values())
