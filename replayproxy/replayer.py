"""Replay: answer the app from the cassette and deliver the recorded webhooks at their moment."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from multidict import CIMultiDict

from .cassette import Cassette, Request, Response
from .config import Config, env_secrets
from .delivery import Deliverer, Job
from .errors import ReplayProxyError
from .faults import Faults
from .matching import Matcher, describe
from .redact import Redactor, scrub_logs
from .report import Attempt, Delivery, Report, Unmatched
from .signing import sign, validate
from .timeshift import recording_delta, shift
from .variables import Finder
from .variants import Variant
from .webhooks import Schedule, event_id, order, outgoing, target

log = logging.getLogger("replayproxy")

#: Response headers that describe the recorded hop, not the answer: aiohttp sets its own.
_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass(frozen=True)
class ReplayOptions:
    timing: str = "sequence"
    speed: float = 1.0
    webhook_url: str | None = None
    duplicate_webhooks: int = 1
    shuffle_webhooks: int | None = None
    bad_signature: bool = False
    stale_timestamp: bool = False
    drain_timeout: float = 5.0
    shift_time: bool = False
    fast_forward: bool = False
    variant: Variant | None = None  # one misbehaviour of Camber to play (faults.py)


@dataclass(slots=True)
class Prepared:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    values: frozenset[str] = field(default_factory=frozenset)  # variables it carries


def local_secrets(config: Config, needed: bool) -> list[str]:
    """The app's webhook secret(s) from the environment; several (rotation) split on commas."""
    name = config.webhooks.local_secret_env
    secrets = env_secrets(name)
    if needed and not secrets:
        raise ReplayProxyError(
            f"the cassette has webhooks to sign, but the environment variable {name} "
            "(webhooks.local_secret_env) is not set: export the app's webhook secret there"
        )
    return secrets


class Replayer:
    """Stateful for one replay run; `app()` is the aiohttp application that serves it."""

    def __init__(self, cassette: Cassette, config: Config, options: ReplayOptions | None = None):
        self.cassette = cassette
        self.config = config
        self.options = options or ReplayOptions()
        validate(config.webhooks.signature)
        self.secrets = local_secrets(config, needed=bool(cassette.webhooks))
        if self.secrets:  # a malformed key (e.g. not whsec_<base64>) fails now, not per webhook
            sign(b"", self.secrets, config.webhooks.signature, timestamp=0)
        self.matcher = Matcher(cassette, config, fast_forward=self.options.fast_forward)
        # misses are logged and reported with the live request: never with a secret in it
        self.redactor = Redactor.from_config(config)
        scrub_logs(self.redactor)
        self.schedule = Schedule(cassette, self.options.timing, self.options.speed)
        self.report = Report(interactions_total=len(cassette.interactions))
        self.deliverer = Deliverer(
            attempts=config.webhooks.attempts,
            backoff=config.webhooks.backoff,
            timeout=config.webhooks.timeout,
        )
        if self.options.shift_time:
            _shift_cassette(cassette)
        self.faults = Faults(self.options.variant, self) if self.options.variant else None
        find = Finder(self.matcher.variables)
        self.prepared = [self._prepare(i.response, find) for i in cassette.interactions]

    def _prepare(self, response: Response, find: Finder) -> Prepared:
        headers = [(k, v) for k, v in response.headers if k.lower() not in _HOP]
        values = find(response.body)
        for _, value in headers:
            values |= find(value.encode("utf-8"))
        return Prepared(
            response.status, response.reason, tuple(headers), response.body, frozenset(values)
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read() if request.body_exists else b""
        req = Request(request.method, request.raw_path, list(request.headers.items()), body)
        resp = await self.answer(request, req)
        return self._miss(req) if resp is None else resp

    async def answer(self, request: web.BaseRequest, req: Request) -> web.StreamResponse | None:
        """The recorded answer with live values in, and its webhooks scheduled; None on a miss."""
        match = self.matcher.match(req)
        if match is None:
            return None
        if self.faults is not None and (instead := await self.faults.before(request, match)):
            return instead
        self.report.served += 1
        answer = self.prepared[match.number - 1]
        headers, payload = answer.headers, answer.body
        if answer.values:
            bindings = self.matcher.bindings
            payload = bindings.substitute(payload, answer.values)
            headers = tuple((k, bindings.substitute_text(v, answer.values)) for k, v in headers)
        resp = web.Response(
            status=answer.status,
            reason=answer.reason or None,
            body=payload,
            headers=CIMultiDict(headers),
        )
        due = [d for n in (*match.skipped, match.number) for d in self.schedule.serve(n)]
        if self.faults is not None:
            due = self.faults.gate(due)
        if due:
            # The app must have its answer before the webhook that follows it arrives; if the
            # app hung up meanwhile, the webhooks are still due (and reported), not lost.
            try:
                await resp.prepare(request)
                await resp.write_eof()
            except ConnectionError:
                pass
            finally:
                self._send(due)
        return resp

    def _miss(self, req: Request) -> web.Response:
        misses = self.matcher.near_misses(req)
        scrub = self.redactor.text
        near = [
            {
                "interaction": m.number,
                "request": scrub(m.request),
                "differences": [scrub(d) for d in m.differences],
            }
            for m in misses
        ]
        shown = scrub(describe(req))
        self.report.unmatched.append(Unmatched(shown, near))
        lines = [f"replayproxy: no recorded interaction matches {shown}"]
        for m in near:
            differences = "; ".join(m["differences"])
            lines.append(f"  closest #{m['interaction']} {m['request']}: {differences}")
        log.warning("\n".join(lines))
        body = {
            "error": "no recorded interaction matches this request",
            "request": shown,
            "near_misses": near,
        }
        return web.json_response(body, status=self.config.unmatched_status)

    def _send(self, due, ordered: bool = False) -> None:
        """Webhooks due together go out one after the other, in recorded (or shuffled) order;
        `ordered`: in the order given."""
        due = due if ordered else order(due, self.options.shuffle_webhooks)
        jobs = [self._job(d.number, d.delay) for d in due]
        self.deliverer.submit([job for job in jobs if job is not None])

    def _job(self, number: int, delay: float) -> Job | None:
        """Report entries for webhook `number` and how to build its attempts; None (and the
        entries failed) when it has nowhere to go."""
        hook = self.cassette.webhooks[number - 1]
        fallback = self.config.webhooks.forward_to or self.options.webhook_url
        bindings = self.matcher.bindings
        url = target(hook, bindings, self.matcher.variables, fallback)
        kind = self.faults.webhook(number) if self.faults is not None else None
        bad = self.options.bad_signature or kind == "bad-signature"
        stale = self.options.stale_timestamp or kind == "stale-timestamp"
        test = "bad-signature" if bad else ("stale-timestamp" if stale else None)
        signature = self.config.webhooks.signature
        copies = [
            Delivery(number, url or "", copy=n + 1, test=test, event_id=event_id(hook, signature))
            for n in range(max(1, self.options.duplicate_webhooks) + (kind == "duplicate"))
        ]
        self.report.deliveries.extend(copies)
        if not url:
            for d in copies:
                d.outcome = "failed"
                d.attempts.append(_no_target())
            return None

        def build(now: int):
            return outgoing(
                hook,
                url,
                bindings,
                self.secrets,
                signature,
                now=now,
                bad_signature=bad,
                stale_timestamp=stale,
            )

        return Job(copies, build, delay, hang_up_first=kind == "sender-retry")

    async def close(self) -> Report:
        """Wait (bounded) for webhooks in flight, then stop; the report is final after this."""
        if self.faults is not None:
            self.faults.close()
        await self.deliverer.drain(self.options.drain_timeout)
        await self.deliverer.close()
        self.report.unused = self.matcher.unused()
        self.report.webhooks_never_due = self.schedule.pending()
        if self.faults is not None:
            self.report.webhooks_never_due = self.faults.excused(self.report.webhooks_never_due)
        return self.report


def _shift_cassette(cassette: Cassette) -> None:
    """Move every recorded time in answers and webhooks by (now - recording time), once."""
    delta = recording_delta(cassette.meta.get("recorded_at"), datetime.now(UTC))
    for item in cassette.interactions:
        item.response.body = shift(item.response.body, delta)
    for hook in cassette.webhooks:
        hook.body = shift(hook.body, delta)


def _no_target() -> Attempt:
    return Attempt(
        None,
        "no target URL: the recording has none and neither "
        "webhooks.forward_to nor --webhook-url is set",
        0.0,
    )


def near_miss_text(report: Report) -> str:
    """A readable account of every miss, for logs and failing tests."""
    out = []
    for miss in report.unmatched:
        out.append(f"unmatched {miss.request}")
        for near in miss.near_misses:
            out.append(
                f"  closest #{near['interaction']} {near['request']}: "
                + "; ".join(near["differences"])
            )
    return "\n".join(out) or json.dumps(report.to_dict())
