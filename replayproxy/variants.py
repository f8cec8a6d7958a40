"""The misbehaviours of Camber worth testing an app against, derived from one cassette. Pure.

A `Variant` is one way the recorded conversation could have gone on a bad day: a webhook lost,
late, early, twice, retried by a sender that timed out, badly signed, stale; webhooks in another
order; an answer that is a 503 once, a 429, never comes, resets the connection, or is slow. The
replay plays it (`faults.py`); `vary` runs the app's tests once per variant.

The rules are plain functions, one per kind, listed in `WEBHOOK_RULES`, `CASSETTE_RULES` and
`INTERACTION_RULES`: a rule gets the cassette's facts and a number and returns a Variant, or None
when the kind does not apply there. Add a kind by adding a function to a list.

Which interactions are varied: the app's conversation is what its webhooks are about. For each
webhook, its conversation is every exchange carrying one of its ids (`correlate.exchanges_of`):
the submit that caused it, the polls of that job, the download of its outputs. Of those, the
first exchange of each kind (method and path, with segments that hold a digit counted as ids) is
varied: the first submit, the first poll, the first download. A cassette without webhooks has
no conversation to follow: the first exchange of each kind in the whole cassette is varied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from .cassette import Cassette, Webhook
from .config import ExpectConfig, SignatureConfig
from .correlate import exchanges_of
from .errors import ReplayProxyError
from .inspect import event_type
from .signing import signs_timestamp
from .webhooks import recorded_delay

WEBHOOK_KINDS = (
    "lost",
    "late",
    "early",
    "duplicate",
    "sender-retry",
    "bad-signature",
    "stale-timestamp",
)
INTERACTION_KINDS = ("503-once", "429", "timeout", "reset", "slow")

#: The baseline: the recorded conversation, nothing changed.
RECORDED = "recorded"

SLOW_FACTOR = 20  # a slow answer takes its recorded duration times this...
SLOW_AT_LEAST = 0.5  # ...and at least this many seconds
RETRY_AFTER = 1  # seconds, in the 429's Retry-After
TIMEOUT_HOLD = 30.0  # longest wait for a client that never times out, seconds
LATE_FACTOR = 5  # a late webhook waits at most its recorded delay times this...
LATE_BOUNDS = (1.0, 10.0)  # ...within these bounds, seconds
REORDER_HOLD = 3.0  # reordered webhooks wait at most this long for the rest to fall due


@dataclass(frozen=True)
class Variant:
    """One misbehaviour: its stable name, what the replay does, what of Camber it models, and
    the fault's parameters (interaction and webhook numbers are 1-based, as `inspect` shows)."""

    name: str
    kind: str
    did: str
    models: str
    webhook: int | None = None
    interaction: int | None = None
    wait_for: tuple[int, ...] = ()  # late: exchanges the webhook waits for
    hold: float = 0.0  # late / reordered / timeout: the longest hold; slow: the added delay
    status: int | None = None  # 503-once / 429: the status answered once
    retry_after: int | None = None  # 429
    order: tuple[int, ...] = ()  # reordered: the order webhooks are sent in

    def faults_webhook(self, number: int) -> str | None:
        """This variant's kind when it changes webhook `number`, else None."""
        return self.kind if self.webhook == number else None

    def faults_interaction(self, number: int) -> str | None:
        return self.kind if self.interaction == number else None


#: The variant that changes nothing: the baseline row of a matrix.
BASELINE = Variant(RECORDED, RECORDED, "the recorded conversation, as it was", "a good day")


@dataclass(frozen=True)
class Facts:
    """What the rules need to know of a cassette, computed once."""

    cassette: Cassette
    conversations: tuple[tuple[int, ...], ...]  # per webhook, its exchanges
    signs_timestamp: bool

    def hook(self, number: int) -> Webhook:
        return self.cassette.webhooks[number - 1]

    def exchange(self, number: int) -> str:
        request = self.cassette.interactions[number - 1].request
        return f"exchange {number} ({request.method} {urlsplit(request.uri).path or '/'})"

    def webhook(self, number: int) -> str:
        return f"webhook {number} ({event_type(self.hook(number))})"


def facts(cassette: Cassette, signature: SignatureConfig) -> Facts:
    conversations = tuple(
        tuple(exchanges_of(cassette.interactions, hook.body)) for hook in cassette.webhooks
    )
    return Facts(cassette, conversations, signs_timestamp(signature))


# -- per webhook ----------------------------------------------------------------------------


def lost(f: Facts, n: int) -> Variant:
    return Variant(
        f"webhook-{n}-lost",
        "lost",
        f"{f.webhook(n)} is never sent",
        "Camber gives up on a webhook, or it never leaves: the app must find out by polling",
        webhook=n,
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
    return Variant(
        f"webhook-{n}-late",
        "late",
        f"{f.webhook(n)} held {waits}",
        "a slow webhook queue: the webhook comes after the app gave up waiting and polled",
        webhook=n,
        wait_for=later,
        hold=hold,
    )


def early(f: Facts, n: int) -> Variant | None:
    cause = f.hook(n).cause
    if not cause:
        return None
    return Variant(
        f"webhook-{n}-early",
        "early",
        f"{f.webhook(n)} sent, and all its retries, before the answer to {f.exchange(cause)}",
        "the race where the webhook beats the submit response (or the app's commit)",
        webhook=n,
        interaction=cause,
    )


def duplicate(f: Facts, n: int) -> Variant:
    return Variant(
        f"webhook-{n}-duplicate",
        "duplicate",
        f"{f.webhook(n)} sent twice, same event id",
        "at-least-once delivery: the same event arrives again",
        webhook=n,
    )


def sender_retry(f: Facts, n: int) -> Variant:
    return Variant(
        f"webhook-{n}-sender-retry",
        "sender-retry",
        f"{f.webhook(n)} sent, the connection closed once the app starts answering "
        "(answer unread), then sent again",
        "Camber's sender times out on a slow handler and retries the same event",
        webhook=n,
    )


def bad_signature(f: Facts, n: int) -> Variant:
    return Variant(
        f"webhook-{n}-bad-signature",
        "bad-signature",
        f"{f.webhook(n)} signed with a wrong key; the app must answer 4xx",
        "a forged or corrupted webhook, or a rotated secret the app does not know",
        webhook=n,
    )


def stale_timestamp(f: Facts, n: int) -> Variant | None:
    if not f.signs_timestamp:
        return None
    return Variant(
        f"webhook-{n}-stale-timestamp",
        "stale-timestamp",
        f"{f.webhook(n)} signed over a timestamp an hour old; the app must answer 4xx",
        "a captured webhook replayed by an attacker",
        webhook=n,
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


# -- per interaction ------------------------------------------------------------------------


def error_once(f: Facts, n: int) -> Variant:
    return Variant(
        f"interaction-{n}-503-once",
        "503-once",
        f"{f.exchange(n)} answered 503 once, then as recorded",
        "a deploy or an overloaded node: a transient 5xx",
        interaction=n,
        status=503,
    )


def too_many(f: Facts, n: int) -> Variant:
    return Variant(
        f"interaction-{n}-429",
        "429",
        f"{f.exchange(n)} answered 429 with Retry-After: {RETRY_AFTER} once, then as recorded",
        "rate limiting",
        interaction=n,
        status=429,
        retry_after=RETRY_AFTER,
    )


def timeout(f: Facts, n: int) -> Variant:
    return Variant(
        f"interaction-{n}-timeout",
        "timeout",
        f"{f.exchange(n)} never answered: held until the client hangs up (at most "
        f"{TIMEOUT_HOLD:g} s), and counted as done",
        "Camber did the work (accepted the job) but the answer never arrived",
        interaction=n,
        hold=TIMEOUT_HOLD,
    )


def reset(f: Facts, n: int) -> Variant:
    return Variant(
        f"interaction-{n}-reset",
        "reset",
        f"the connection reset instead of answering {f.exchange(n)}, once; then as recorded",
        "a load balancer or network dropping the connection mid-request",
        interaction=n,
    )


def slow(f: Facts, n: int) -> Variant:
    recorded = float(f.cassette.interactions[n - 1].duration or 0.0)
    hold = round(max(SLOW_AT_LEAST, recorded * SLOW_FACTOR), 3)
    return Variant(
        f"interaction-{n}-slow",
        "slow",
        f"{f.exchange(n)} answered after {hold:g} s ({SLOW_FACTOR}x its recorded "
        f"{recorded:.3f} s, at least {SLOW_AT_LEAST:g} s)",
        "Camber under load",
        interaction=n,
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


# -- the whole set --------------------------------------------------------------------------


def derive(cassette: Cassette, signature: SignatureConfig | None = None) -> list[Variant]:
    """Every variant of `cassette`, in a stable order: per webhook, across webhooks, per
    interaction; each list in rule order."""
    f = facts(cassette, signature or SignatureConfig())
    out: list[Variant | None] = []
    for n in range(1, len(cassette.webhooks) + 1):
        out.extend(rule(f, n) for rule in WEBHOOK_RULES)
    out.extend(rule(f) for rule in CASSETTE_RULES)
    for n in depended_on(f):
        out.extend(rule(f, n) for rule in INTERACTION_RULES)
    return [v for v in out if v is not None]


#: Words `--only` and `vary=` accept besides globs.
GROUPS = {
    "all": ("*",),
    "webhooks": ("webhook-*", "webhooks-*"),
    "interactions": ("interaction-*",),
}


def patterns(only: str | Iterable[str] | bool | None) -> list[tuple[str, tuple[str, ...]]]:
    """`--only` values (comma-separated, repeatable; group words allowed): each as given, with
    the globs it stands for."""
    if only is None or only is True:
        return [("all", ("*",))]
    if only is False:
        return []
    items = [only] if isinstance(only, str) else list(only)
    out = []
    for item in items:
        for word in str(item).split(","):
            word = word.strip()
            if word:
                out.append((word, GROUPS.get(word, (word,))))
    return out


def select(variants: Sequence[Variant], only: str | Iterable[str] | bool | None) -> list[Variant]:
    """The variants the words name, in derivation order; a word naming none is an error."""
    words = patterns(only)
    for word, globs in words:
        if not any(fnmatchcase(v.name, g) for v in variants for g in globs):
            known = ", ".join(v.name for v in variants) or "none"
            raise ReplayProxyError(f"{word!r} matches no variant of this cassette ({known})")
    globs = [g for _, group in words for g in group]
    return [v for v in variants if any(fnmatchcase(v.name, g) for g in globs)]


def find(variants: Sequence[Variant], name: str) -> Variant:
    """The variant called `name`, or an error listing those that exist."""
    if name == RECORDED:
        return BASELINE
    for variant in variants:
        if variant.name == name:
            return variant
    known = ", ".join(v.name for v in variants) or "none"
    raise ReplayProxyError(f"no variant {name!r} for this cassette (known: {known})")


def expectation(name: str, expect: ExpectConfig) -> str | None:
    """'survive' when the app must survive the variant, 'may-fail' when it may fail it, None
    when nothing is expected (shown, never breaks the run). `may_fail` wins over `survive`."""
    if any(fnmatchcase(name, g) for g in expect.may_fail):
        return "may-fail"
    if any(fnmatchcase(name, g) for g in expect.survive):
        return "survive"
    return None
