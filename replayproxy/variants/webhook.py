"""The variant rules of webhooks: per webhook (lost, late, early, twice, retried by a sender that
timed out, badly signed, stale) and across them (another order). A rule gets the cassette's
facts (and a webhook's number) and returns a Variant, or None when the kind does not apply."""

from __future__ import annotations

from collections.abc import Callable

from ..webhooks import recorded_delay
from .base import Facts, Variant, on_webhook

WEBHOOK_KINDS = (
    "lost",
    "late",
    "early",
    "duplicate",
    "sender-retry",
    "bad-signature",
    "stale-timestamp",
)

LATE_FACTOR = 5  # a late webhook waits at most its recorded delay times this...
LATE_BOUNDS = (1.0, 10.0)  # ...within these bounds, seconds
REORDER_HOLD = 3.0  # reordered webhooks wait at most this long for the rest to fall due


def lost(f: Facts, n: int) -> Variant:
    return on_webhook(
        n,
        "lost",
        f"{f.webhook(n)} is never sent",
        "Camber gives up on a webhook, or it never leaves: the app must find out by polling",
    )


def late(f: Facts, n: int) -> Variant:
    hook = f.hook(n)
    last = hook.after or hook.cause or 0
    later = tuple(i for i in f.conversations[n - 1] if i > last)
    low, high = LATE_BOUNDS
    delay = recorded_delay(hook, f.cassette.interactions)
    hold = round(min(high, max(low, LATE_FACTOR * delay)), 1)
    waits = (
        f"until the app has made its later calls for that job (exchanges "
        f"{', '.join(map(str, later))}), at most {hold:g} s"
        if later
        else f"{hold:g} s ({LATE_FACTOR}x its recorded delay)"
    )
    return on_webhook(
        n,
        "late",
        f"{f.webhook(n)} held {waits}",
        "a slow webhook queue: the webhook comes after the app gave up waiting and polled",
        wait_for=later,
        hold=hold,
    )


def early(f: Facts, n: int) -> Variant | None:
    cause = f.hook(n).cause
    if not cause:
        return None
    return on_webhook(
        n,
        "early",
        f"{f.webhook(n)} sent, and all its retries, before the answer to {f.exchange(cause)}",
        "the race where the webhook beats the submit response (or the app's commit)",
        interaction=cause,
    )


def duplicate(f: Facts, n: int) -> Variant:
    return on_webhook(
        n,
        "duplicate",
        f"{f.webhook(n)} sent twice, same event id",
        "at-least-once delivery: the same event arrives again",
    )


def sender_retry(f: Facts, n: int) -> Variant:
    return on_webhook(
        n,
        "sender-retry",
        f"{f.webhook(n)} sent, the connection closed once the app starts answering "
        "(answer unread), then sent again",
        "Camber's sender times out on a slow handler and retries the same event",
    )


def bad_signature(f: Facts, n: int) -> Variant:
    return on_webhook(
        n,
        "bad-signature",
        f"{f.webhook(n)} signed with a wrong key; the app must answer 4xx",
        "a forged or corrupted webhook, or a rotated secret the app does not know",
    )


def stale_timestamp(f: Facts, n: int) -> Variant | None:
    if not f.signs_timestamp:
        return None
    return on_webhook(
        n,
        "stale-timestamp",
        f"{f.webhook(n)} signed over a timestamp an hour old; the app must answer 4xx",
        "a captured webhook replayed by an attacker",
    )


WEBHOOK_RULES: list[Callable[[Facts, int], Variant | None]] = [
    lost,
    late,
    early,
    duplicate,
    sender_retry,
    bad_signature,
    stale_timestamp,
]


# -- across webhooks ------------------------------------------------------------------------


def reordered(f: Facts) -> Variant | None:
    numbers = [n for n, hook in enumerate(f.cassette.webhooks, start=1) if hook.cause]
    if len(numbers) < 2:
        return None
    order = tuple(reversed(numbers))
    return Variant(
        "webhooks-reordered",
        "reordered",
        f"webhooks held until all are due (at most {REORDER_HOLD:g} s), then sent in the order "
        + ", ".join(map(str, order)),
        "Camber's queue delivers events of different jobs out of order",
        order=order,
        hold=REORDER_HOLD,
    )


CASSETTE_RULES: list[Callable[[Facts], Variant | None]] = [reordered]
