"""What every variant rule shares: the `Variant` record, the cassette's `Facts` the rules read,
and the two ways a rule names its variant (after the webhook or the interaction it changes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..cassette import Cassette, Webhook
from ..config import SignatureConfig
from ..correlate import exchange_values, exchanges_of
from ..inspect import event_type
from ..signing import signs_timestamp

#: The baseline: the recorded conversation, nothing changed.
RECORDED = "recorded"


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


def on_webhook(n: int, kind: str, did: str, models: str, **params: Any) -> Variant:
    """The `kind` variant of webhook `n`, named `webhook-<n>-<kind>`."""
    return Variant(f"webhook-{n}-{kind}", kind, did, models, webhook=n, **params)


def on_interaction(n: int, kind: str, did: str, models: str, **params: Any) -> Variant:
    """The `kind` variant of interaction `n`, named `interaction-<n>-<kind>`."""
    return Variant(f"interaction-{n}-{kind}", kind, did, models, interaction=n, **params)


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
    # each exchange's ids read once, not once per webhook
    values = [exchange_values(i) for i in cassette.interactions] if cassette.webhooks else []
    conversations = tuple(
        tuple(exchanges_of(cassette.interactions, hook.body, values=values))
        for hook in cassette.webhooks
    )
    return Facts(cassette, conversations, signs_timestamp(signature))
