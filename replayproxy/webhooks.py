"""Which recorded webhooks are due at this point of a replay, and what each looks like sent now.

Pure: the service layer tells `Schedule` which interactions it served and gets back the webhooks
that became due; `outgoing` builds the bytes and headers of one delivery attempt.
"""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .addresses import is_loopback, origin
from .cassette import Cassette, Webhook
from .config import SignatureConfig
from .errors import ConfigError
from .headers import REQUEST_HOP
from .signing import (
    SCHEMES,
    carries_timestamp,
    describe,
    id_header,
    sign,
    signature_header_names,
    webhook_id,
)
from .variables import Bindings

TIMINGS = ("sequence", "recorded", "immediate")

@dataclass(slots=True)
class Due:
    number: int  # 1-based webhook number, as `inspect` shows it
    delay: float  # seconds to wait before the first attempt


class Schedule:
    """Tracks served interactions; a webhook is due once its cause (and, in `sequence` timing,
    the last exchange of its own conversation recorded before it) has been replayed.

    `sequence`: due with no delay once cause and `after` are served. `recorded`: due when the
    cause is served, after the recorded time between the cause's answer and the webhook divided
    by `speed` (the app's polling does not hold it back, as with the real upstream).
    `immediate`: due with no delay once the cause is served.
    """

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
        self.interactions = cassette.interactions

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
        if self.timing != "recorded":
            return 0.0
        return max(0.0, recorded_delay(hook, self.interactions)) / self.speed


def recorded_delay(hook: Webhook, interactions: Sequence[Any]) -> float:
    """Seconds between the answer to the webhook's cause and the webhook, as recorded.

    From the timestamps (`at`, `duration`) when both are known; else the recorded `delay`, which
    counts from `after` (the same exchange when the webhook followed its cause directly).
    """
    if hook.at is not None and hook.cause and 0 < hook.cause <= len(interactions):
        meta = interactions[hook.cause - 1].meta
        at = meta.get("at")
        if isinstance(at, (int, float)):
            duration = meta.get("duration")
            end = at + (duration if isinstance(duration, (int, float)) else 0.0)
            return hook.at - end
    return hook.delay


def shuffled(numbers: Sequence[int], seed: int | None) -> list[int]:
    """A deterministic reorder for `--shuffle-webhooks SEED`."""
    out = list(numbers)
    if seed is not None:
        random.Random(seed).shuffle(out)
    return out


def order(due: Sequence[Due], seed: int | None) -> list[Due]:
    """The order in which webhooks that fell due together are sent, one after the other.

    By due time, then recorded order; with a seed, a deterministic shuffle of the recorded order
    instead (each still waits for its own due time, or for the one before it).
    """
    if seed is None:
        return sorted(due, key=lambda d: (d.delay, d.number))
    by_number = {d.number: d for d in due}
    return [by_number[n] for n in shuffled(sorted(by_number), seed)]


@dataclass(frozen=True)
class Fault:
    """A deliberate fault a replay flag asks for (--bad-signature, --stale-timestamp,
    --duplicate-webhooks, --shuffle-webhooks), done to every webhook of the replay; the report
    (`faults`) and stderr show what it does and what a correct app does about it.

    Not a variant (variants.Variant, played by faults.Faults): a variant is one misbehaviour of
    Camber at one webhook or interaction, one row of `vary`'s matrix, and whether the app must
    survive it is config `vary.expect`. The two meet in one place: a bad or stale webhook, by
    flag or by variant, is sent as a Delivery with `test` set and judged by report.Delivery."""

    fault: str  # bad-signature | stale-timestamp | duplicate-webhooks | shuffle-webhooks
    scheme: str  # the signature scheme the webhooks were signed in
    applied: str  # what replayproxy does to each webhook
    correct_app: str  # what an app that handles webhooks correctly does

    def line(self) -> str:
        what = f"--{self.fault} ({self.scheme} scheme): {self.applied}"
        return f"{what}; a correct app {self.correct_app}"


def faults(
    signature: SignatureConfig,
    *,
    bad_signature: bool = False,
    stale_timestamp: bool = False,
    duplicates: int = 1,
    shuffle_seed: int | None = None,
) -> list[Fault]:
    """The deliberate faults asked for, each described for `signature`'s scheme; ConfigError
    for one that means nothing there (a stale timestamp where the scheme sends none)."""
    scheme, how = signature.scheme, describe(signature)
    if stale_timestamp and not carries_timestamp(signature):
        raise ConfigError(
            f"--stale-timestamp: the {scheme} scheme signs no timestamp, so an old webhook "
            "cannot be told from a new one and no app can reject it for its age; use a scheme "
            "that sends one (stripe, standard-webhooks, slack, custom with {timestamp}) or "
            "leave the option out"
        )
    out = []
    if bad_signature:
        out.append(Fault(
            "bad-signature", scheme, f"every webhook is signed in {how} with a wrong key",
            "answers 4xx (e.g. 401) and does not act on it",
        ))
    if stale_timestamp:
        out.append(Fault(
            "stale-timestamp", scheme,
            f"every webhook is signed in {how} for a timestamp an hour old, with the right key",
            "answers 4xx: the timestamp is outside its tolerance (a few minutes)",
        ))
    if duplicates > 1:
        carrier = id_header(signature)
        same = f"the same body and the same {carrier} header" if carrier else "the same body"
        out.append(Fault(
            "duplicate-webhooks", scheme,
            f"every webhook is sent {duplicates} times with {same} (the event id in it "
            f"unchanged), each copy signed anew in {how}",
            "answers 2xx to every copy and acts on the event once",
        ))
    if shuffle_seed is not None:
        out.append(Fault(
            "shuffle-webhooks", scheme,
            f"webhooks that fall due together are sent in an order shuffled by seed "
            f"{shuffle_seed}, each signed in {how}",
            "ends in the same state whatever the order (e.g. never lets an older status "
            "overwrite a newer one)",
        ))
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
    hook: Webhook,
    bindings: Bindings,
    callbacks: Collection[str],
    configured: Sequence[str | None],
) -> str | None:
    """The live URL: the app's callback URL when the recorded target (its own callback URL, or a
    URL carrying a live value such as the job's id) becomes one on the host of a callback URL
    the app sent in this run; else the first configured one (`webhooks.forward_to`, then
    `--webhook-url`); else the recorded target, live values in. `destination_refused` then
    says whether it may be used: a cassette never decides alone where a signed request goes.
    """
    live = bindings.substitute_text(hook.target) if hook.target else None
    if live and callbacks and origin(live) in {origin(c) for c in callbacks}:
        return live
    for url in configured:
        if url:
            return url
    return live


def destination_refused(
    url: str,
    callbacks: Collection[str],
    configured: Sequence[str | None],
    allow_hosts: Collection[str],
) -> str | None:
    """Why replay must not send a webhook to `url`, or None when it may: the app's callback
    URLs of this run, the configured URLs, loopback and the allow-listed hosts only."""
    where = origin(url)
    if where is None:
        return f"refused the target {url[:200]!r}: not an http(s) URL"
    trusted = {origin(u) for u in (*callbacks, *configured) if u}
    host = where[1]
    if where in trusted or is_loopback(host) or host in {h.lower() for h in allow_hosts}:
        return None
    return (
        f"refused the target host {host!r}: the cassette names it, but it is neither a callback "
        "URL the app sent in this run, webhooks.forward_to, --webhook-url nor loopback (allow it "
        "with webhooks.allow_hosts or --allow-webhook-host)"
    )


@lru_cache(maxsize=64)
def stale_headers(signature: SignatureConfig) -> frozenset[str]:
    """Lowercased header names never copied from a recorded webhook: hop headers, the configured
    scheme's signature/timestamp/id headers, and every named scheme's signature and timestamp
    headers (the upstream may sign in another scheme than the app's; its ids are kept)."""
    names = set(signature_header_names(signature)) | REQUEST_HOP
    for scheme in SCHEMES:
        if scheme != "custom":
            names |= signature_header_names(SignatureConfig(scheme=scheme)) - _ID_HEADERS
    return frozenset(names)


#: Id headers of the named schemes: kept from the recording unless the app's scheme sets them.
_ID_HEADERS = frozenset({"webhook-id", "svix-id"})

#: Recorded headers sent again with a webhook, besides those the app's scheme signs anew: the
#: ones that describe the body, the sender's User-Agent and event id, and extension headers
#: (`X-...`) that are not credentials, forwarding or method overrides. Every other recorded
#: header (Authorization, Cookie, Host, Forwarded, Origin, X-Forwarded-For, ...) is dropped
#: unless `webhooks.keep_headers` names it: a cassette may come from a stranger.
KEPT_HEADERS = frozenset(
    {"content-type", "content-encoding", "content-language", "user-agent", *_ID_HEADERS}
)
CRAFTED_HEADER = re.compile(
    r"^x-(?:forwarded|real-ip|client-ip|cluster-client-ip|original|rewrite|host|http-method"
    r"|method-override)|auth|cookie|token|secret|passw|api[-_]?key|session|csrf|credential",
    re.IGNORECASE,
)


def replayed_header(name: str, keep: Collection[str] = ()) -> bool:
    """Whether a recorded webhook header goes out again (`keep`: lowercased extra names)."""
    lower = name.lower()
    if lower in KEPT_HEADERS or lower in keep:
        return True
    return lower.startswith("x-") and not CRAFTED_HEADER.search(lower)


def event_id(hook: Webhook, signature: SignatureConfig) -> str | None:
    """The recorded event id: the cassette's, else the one in the recorded headers."""
    return hook.event_id or webhook_id(dict(hook.headers), signature)


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
    methods: Collection[str] = ("POST",),
    keep: Collection[str] = (),
) -> Outgoing:
    """One delivery attempt: live values in, stale signatures out, signed now with `secrets`.

    Sent with the recorded method only when `methods` allows it (else POST), and with the
    recorded headers `replayed_header` keeps (`keep`: further lowercased names to keep)."""
    body = bindings.substitute(hook.body)
    stale = stale_headers(signature)
    headers = [
        (k, bindings.substitute_text(v))
        for k, v in hook.headers
        if k.lower() not in stale and replayed_header(k, keep)
    ]
    method = hook.method if hook.method in methods else "POST"
    timestamp = now - 3600 if stale_timestamp else now
    keys = [_wrong(s, signature.scheme) for s in secrets] if bad_signature else list(secrets)
    signed = sign(body, keys, signature, timestamp=timestamp, webhook_id=event_id(hook, signature))
    return Outgoing(url, method, [*headers, *signed.items()], body)
