"""The misbehaviours of Camber worth testing an app against, derived from one cassette. Pure.

A `Variant` is one way the recorded conversation could have gone on a bad day: a webhook lost,
late, early, twice, retried by a sender that timed out, badly signed, stale; webhooks in another
order; an answer that is a 503 once, a 429, never comes, resets the connection, or is slow. The
replay plays it (`faults.py`); `vary` runs the app's tests once per variant.

The rules are plain functions, one per kind, one module per family: `webhook.py` (listed in
`WEBHOOK_RULES` and `CASSETTE_RULES`) and `interaction.py` (`INTERACTION_RULES`), on the shared
types of `base.py`. A rule gets the cassette's facts and a number and returns a Variant, or None
when the kind does not apply there. Add a kind by adding a function to a list. This module
derives the whole set and picks variants by name.

Which interactions are varied: the app's conversation is what its webhooks are about. For each
webhook, its conversation is every exchange carrying one of its ids (`correlate.exchanges_of`):
the submit that caused it, the polls of that job, the download of its outputs. Of those, the
first exchange of each kind (method and path, with segments that hold a digit counted as ids) is
varied: the first submit, the first poll, the first download. A cassette without webhooks has
no conversation to follow: the first exchange of each kind in the whole cassette is varied.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from ..cassette import Cassette
from ..config import ExpectConfig, SignatureConfig
from ..errors import ReplayProxyError
from .base import BASELINE, RECORDED, Facts, Variant, facts, on_interaction, on_webhook
from .interaction import (
    INTERACTION_KINDS,
    INTERACTION_RULES,
    RETRY_AFTER,
    SLOW_AT_LEAST,
    SLOW_FACTOR,
    TIMEOUT_HOLD,
    depended_on,
)
from .webhook import (
    CASSETTE_RULES,
    LATE_BOUNDS,
    LATE_FACTOR,
    REORDER_HOLD,
    WEBHOOK_KINDS,
    WEBHOOK_RULES,
)

__all__ = [
    "BASELINE",
    "CASSETTE_RULES",
    "GROUPS",
    "INTERACTION_KINDS",
    "INTERACTION_RULES",
    "LATE_BOUNDS",
    "LATE_FACTOR",
    "RECORDED",
    "REORDER_HOLD",
    "RETRY_AFTER",
    "SLOW_AT_LEAST",
    "SLOW_FACTOR",
    "TIMEOUT_HOLD",
    "WEBHOOK_KINDS",
    "WEBHOOK_RULES",
    "Facts",
    "Variant",
    "depended_on",
    "derive",
    "expectation",
    "facts",
    "find",
    "on_interaction",
    "on_webhook",
    "patterns",
    "select",
]


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


# -- by name --------------------------------------------------------------------------------

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
    wanted = [g for _, group in words for g in group]
    return [v for v in variants if any(fnmatchcase(v.name, g) for g in wanted)]


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
