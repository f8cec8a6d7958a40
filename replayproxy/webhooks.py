"""Which recorded webhooks are due at this point of a replay, and what each looks like sent now.

Pure: the service layer tells `Schedule` which interactions it served and gets back the webhooks
that became due; `outgoing` builds the bytes and headers of one delivery attempt.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .cassette import Cassette, Webhook
from .config import SignatureConfig
from .signing import sign, signature_header_names
from .variables import Bindings

TIMINGS = ("sequence", "recorded", "immediate")

#: Headers that describe one hop or one body, never copied from the recording.
_HOP_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "host",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)


@dataclass(slots=True)
class Due:
    number: int  # 1-based webhook number, as `inspect` shows it
    delay: float  # seconds to wait before the first attempt


class Schedule:
    """Tracks served interactions; a webhook is due once its cause (and, in `sequence` timing,
    the last exchange of its own conversation recorded before it) has been replayed."""

    def __init__(self, cassette: Cassette, timing: str = "sequence", speed: float = 1.0):
        if timing not in TIMINGS:
            raise ValueError(f"timing must be one of {', '.join(TIMINGS)}")
        self.timing = timing
        self.speed = speed if speed > 0 else 1.0
        self.served: set[int] = set()
        self.waiting: dict[int, list[int]] = {}  # interaction number -> webhooks waiting on it
        self.needs: dict[int, set[int]] = {}
        self.uncaused: list[int] = []
        for number, hook in enumerate(cassette.webhooks, start=1):
            needs = {hook.cause} if hook.cause else set()
            if timing == "sequence" and hook.after:
                needs.add(hook.after)
            if not needs:
                self.uncaused.append(number)
                continue
            self.needs[number] = needs
            for interaction in needs:
                self.waiting.setdefault(interaction, []).append(number)
        self.hooks = cassette.webhooks

    def serve(self, interaction: int) -> list[Due]:
        """Mark an interaction replayed; return the webhooks that became due, in recorded order."""
        if interaction in self.served:
            return []
        self.served.add(interaction)
        due = []
        for number in self.waiting.pop(interaction, ()):
            needs = self.needs[number]
            needs.discard(interaction)
            if not needs:
                del self.needs[number]
                due.append(Due(number, self._delay(self.hooks[number - 1])))
        return sorted(due, key=lambda d: d.number)

    def pending(self) -> list[int]:
        """Webhooks never due: their cause was not replayed (or they have none)."""
        return sorted([*self.needs, *self.uncaused])

    def _delay(self, hook: Webhook) -> float:
        return hook.delay / self.speed if self.timing == "recorded" else 0.0


def shuffled(numbers: Sequence[int], seed: int | None) -> list[int]:
    """A deterministic reorder for `--shuffle-webhooks SEED`."""
    out = list(numbers)
    if seed is not None:
        random.Random(seed).shuffle(out)
    return out


@dataclass(slots=True)
class Outgoing:
    url: str
    method: str
    headers: list[tuple[str, str]]
    body: bytes


def _wrong(secret: str, scheme: str) -> str:
    """A key of the same form as `secret` that is not it, for `--bad-signature`."""
    if scheme == "standard-webhooks" or secret.startswith("whsec_"):
        return "whsec_" + base64.b64encode(b"replayproxy: deliberately wrong key").decode()
    return "replayproxy-wrong-" + secret


def target(
    hook: Webhook, bindings: Bindings, variables: frozenset[str], fallback: str | None
) -> str | None:
    """The live URL: the app's live callback URL when it sent one, else the configured one."""
    if hook.target and hook.target in variables:
        return bindings.substitute_text(hook.target, {hook.target})
    return fallback or hook.target


def outgoing(
    hook: Webhook,
    url: str,
    bindings: Bindings,
    secrets: Sequence[str],
    signature: SignatureConfig,
    *,
    now: int,
    bad_signature: bool = False,
    stale_timestamp: bool = False,
) -> Outgoing:
    """One delivery attempt: live values in, stale signatures out, signed now with `secrets`."""
    body = bindings.substitute(hook.body)
    stale = signature_header_names(signature) | _HOP_HEADERS
    headers = [(k, bindings.substitute_text(v)) for k, v in hook.headers if k.lower() not in stale]
    timestamp = now - 3600 if stale_timestamp else now
    keys = [_wrong(s, signature.scheme) for s in secrets] if bad_signature else list(secrets)
    headers.extend(
        sign(body, keys, signature, timestamp=timestamp, webhook_id=hook.event_id).items()
    )
    return Outgoing(url, hook.method, headers, body)
