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
from .matching import Matcher, describe
from .redact import Redactor, scrub_logs
from .report import Attempt, Delivery, Report, Unmatched
from .signing import sign, validate
from .terminal import printable
from .timeshift import recording_delta, shift
from .variables import Finder, dotted_get
from .webhooks import Schedule, destination_refused, event_id, order, outgoing, target

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
    allow_webhook_hosts: tuple[str, ...] = ()


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
        # callback URLs the app sent in this run: where the cassette's webhooks may go
        self.callbacks: list[str] = []
        self.allow_hosts = (*config.webhooks.allow_hosts, *self.options.allow_webhook_hosts)
        self.keep_headers = frozenset(h.lower() for h in config.webhooks.keep_headers)
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
        if self.cassette.webhooks:
            self._note_callbacks(req.body)
        match = self.matcher.match(req)
        if match is None:
            return None
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
        if due:
            # The app must have its answer before the webhook that follows it arrives; if the
            # app hung up meanwhile, the webhooks are still due (and reported), not lost.
            try:
                await resp.prepare(request)
                await resp.write_eof()
            finally:
                self._send(due)
        return resp

    def _note_callbacks(self, body: bytes) -> None:
        """Remember the callback URLs (`webhooks.callback_fields`) a JSON request carries."""
        if not body or body.lstrip()[:1] != b"{":
            return
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        for dotted in self.config.webhooks.callback_fields:
            value = dotted_get(data, dotted.split("."))
            if (
                isinstance(value, str)
                and value.startswith(("http://", "https://"))
                and value not in self.callbacks
                and len(self.callbacks) < 1000
            ):
                self.callbacks.append(value)

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
        log.warning(printable("\n".join(lines), keep_newlines=True))
        body = {
            "error": "no recorded interaction matches this request",
            "request": shown,
            "near_misses": near,
        }
        return web.json_response(body, status=self.config.unmatched_status)

    def _send(self, due) -> None:
        """Webhooks due together go out one after the other, in recorded (or shuffled) order."""
        jobs = [self._job(d.number, d.delay) for d in order(due, self.options.shuffle_webhooks)]
        self.deliverer.submit([job for job in jobs if job is not None])

    def _job(self, number: int, delay: float) -> Job | None:
        """Report entries for webhook `number` and how to build its attempts; None (and the
        entries failed) when it has nowhere to go."""
        hook = self.cassette.webhooks[number - 1]
        configured = (self.config.webhooks.forward_to, self.options.webhook_url)
        bindings = self.matcher.bindings
        url = target(hook, bindings, self.callbacks, configured)
        refused = url and destination_refused(url, self.callbacks, configured, self.allow_hosts)
        test = (
            "bad-signature"
            if self.options.bad_signature
            else ("stale-timestamp" if self.options.stale_timestamp else None)
        )
        signature = self.config.webhooks.signature
        copies = [
            Delivery(number, url or "", copy=n + 1, test=test, event_id=event_id(hook, signature))
            for n in range(max(1, self.options.duplicate_webhooks))
        ]
        self.report.deliveries.extend(copies)
        if not url or refused:
            if refused:
                log.warning("replayproxy: webhook %d not sent: %s", number, refused)
            for d in copies:
                d.outcome = "failed"
                d.attempts.append(Attempt(None, refused, 0.0) if refused else _no_target())
            return None

        def build(now: int):
            return outgoing(
                hook,
                url,
                bindings,
                self.secrets,
                signature,
                now=now,
                bad_signature=self.options.bad_signature,
                stale_timestamp=self.options.stale_timestamp,
                methods=self.config.webhooks.allow_methods,
                keep=self.keep_headers,
            )

        return Job(copies, build, delay)

    async def close(self) -> Report:
        """Wait (bounded) for webhooks in flight, then stop; the report is final after this."""
        await self.deliverer.drain(self.options.drain_timeout)
        await self.deliverer.close()
        self.report.unused = self.matcher.unused()
        self.report.webhooks_never_due = self.schedule.pending()
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
    return printable("\n".join(out), keep_newlines=True) or json.dumps(report.to_dict())
