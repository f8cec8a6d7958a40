"""Replay: answer the app from the cassette and deliver the recorded webhooks at their moment."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .bodies import NOT_JSON, json_body
from .cassette import Cassette, Interaction, Request
from .coding import accepts, encode_body
from .config import Config
from .delivery import Deliverer, Job
from .faults import Faults
from .headers import replayed_headers
from .inspect import event_type
from .matching import Matcher, describe
from .redact import Redactor, scrub_logs
from .report import NAMED, Attempt, Delivery, NearMiss, Report, Unmatched
from .server import UPSTREAM_KEY, Verbatim
from .signing import check_secrets, local_secrets, signed_with, validate
from .terminal import printable
from .timeshift import recording_delta, shift
from .variables import Finder, dotted_get
from .variants import Variant
from .webhooks import (
    Due,
    Outgoing,
    Schedule,
    destination_refused,
    event_id,
    faults,
    order,
    outgoing,
    target,
)

log = logging.getLogger("replayproxy")

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
    allow_webhook_hosts: tuple[str, ...] = ()


@dataclass(slots=True)
class Prepared:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    values: frozenset[str] = field(default_factory=frozenset)  # variables it carries
    coding: str | None = None  # the Content-Encoding it was recorded in (the body is decoded)
    coded: bytes | None = None  # the body in that coding, made at its first use


class HungUp(Exception):
    """The client went away before its request body was whole (logged where it is raised)."""


async def read_body(request: web.BaseRequest) -> bytes:
    """The whole request body; HungUp, said in one log line, when the client hung up (or broke
    the framing) mid-body: that exchange ends there, nothing is forwarded or recorded."""
    try:
        return await request.read()
    except (ConnectionError, HttpProcessingError) as exc:
        got = request.content.total_bytes
        length = f" of {request.content_length}" if request.content_length else ""
        log.warning(
            "replayproxy: %s %s: the client hung up after %d%s bytes of the body (%s); "
            "not forwarded, not recorded",
            request.method, request.rel_url, got, length, exc or type(exc).__name__,
        )
        raise HungUp() from None


class Replayer:
    """Stateful for one replay run; `handle()` answers every request. `forward`: requests come
    through forward mode, which names each one's origin, and the host takes part in matching."""

    def __init__(
        self,
        cassette: Cassette,
        config: Config,
        options: ReplayOptions | None = None,
        *,
        forward: bool = False,
    ):
        self.cassette = cassette
        self.forward = forward
        self.config = config
        self.options = options or ReplayOptions()
        validate(config.webhooks.signature)
        opts = self.options
        self.deliberate = faults(
            config.webhooks.signature,
            bad_signature=opts.bad_signature,
            stale_timestamp=opts.stale_timestamp,
            duplicates=opts.duplicate_webhooks,
            shuffle_seed=opts.shuffle_webhooks,
        )
        self.secrets = local_secrets(config, needed=bool(cassette.webhooks))
        check_secrets(self.secrets, config.webhooks.local_secret_env, config.webhooks.signature)
        self.matcher = Matcher(cassette, config, fast_forward=self.options.fast_forward)
        # misses are logged and reported with the live request: never with a secret in it
        self.redactor = Redactor.from_config(config)
        scrub_logs(self.redactor)
        self.schedule = Schedule(cassette, self.options.timing, self.options.speed)
        self.report = Report(
            interactions_total=len(cassette.interactions),
            faults=[asdict(f) for f in self.deliberate],
            signed_with=signed_with(config),
        )
        for fault in self.deliberate:
            log.warning("replayproxy: %s", fault.line())
        self.deliverer = Deliverer(
            attempts=config.webhooks.attempts,
            backoff=config.webhooks.backoff,
            timeout=config.webhooks.timeout,
            scrub=self.redactor.text,
        )
        if self.options.shift_time:
            _shift_cassette(cassette)
        self.faults = Faults(self.options.variant, self) if self.options.variant else None
        # callback URLs the app sent in this run: where the cassette's webhooks may go
        self.callbacks: list[str] = []
        self.allow_hosts = (*config.webhooks.allow_hosts, *self.options.allow_webhook_hosts)
        find = Finder(self.matcher.variables)
        self.prepared = [self._prepare(i, find) for i in cassette.interactions]

    def _prepare(self, item: Interaction, find: Finder) -> Prepared:
        response = item.response
        coding = item.meta.get("content_encoding")
        headers = replayed_headers(response.headers, head=item.request.method == "HEAD")
        values = find(response.body)
        for _, value in headers:
            values |= find(value.encode("utf-8"))
        return Prepared(
            response.status,
            response.reason,  # one line: the loader refuses control characters in it
            tuple(headers),
            response.body,
            frozenset(values),
            coding if isinstance(coding, str) and response.body else None,
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            body = await read_body(request) if request.body_exists else b""
        except HungUp:
            return web.Response(status=400)  # nobody is there to read it
        req = Request(request.method, request.raw_path, list(request.headers.items()), body)
        resp = await self.answer(request, req)
        if resp is None:
            return self._miss(req, request.get(UPSTREAM_KEY) if self.forward else None)
        return resp

    def _log_served(self, req: Request, number: int, status: int, repeat: bool) -> None:
        again = ", played again" if repeat else ""
        log.info("%s -> interaction %d (%d%s)", describe(req), number, status, again)

    async def answer(self, request: web.BaseRequest, req: Request) -> web.StreamResponse | None:
        """The recorded answer with live values in, and its webhooks scheduled; None on a miss."""
        if self.cassette.webhooks:
            self._note_callbacks(req.body)
        origin = request.get(UPSTREAM_KEY) if self.forward else None
        match = self.matcher.match(req, origin)
        if match is None:
            return None
        if self.faults is not None and (instead := await self.faults.before(request, match)):
            return instead
        self.report.served += 1
        answer = self.prepared[match.number - 1]
        if log.isEnabledFor(logging.INFO):
            self._log_served(req, match.number, answer.status, match.repeat)
        headers, payload = answer.headers, answer.body
        if answer.values:
            bindings = self.matcher.bindings
            payload = bindings.substitute(payload, answer.values)
            headers = tuple((k, bindings.substitute_text(v, answer.values)) for k, v in headers)
        if answer.coding and _accepts(req, answer.coding):
            headers, payload = _coded(answer, answer.coding, headers, payload)
        resp = Verbatim(status=answer.status, reason=answer.reason, body=payload, headers=headers)
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

    def _note_callbacks(self, body: bytes) -> None:
        """Remember the callback URLs (`webhooks.callback_fields`) a JSON request carries."""
        data = json_body(body, mapping=True)
        if data is NOT_JSON:
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

    def _miss(self, req: Request, origin: str | None = None) -> web.Response:
        misses = self.matcher.near_misses(req, origin=origin)
        self.redactor.learn_request(req)  # a redacted query value, token or cookie: never shown
        scrub = self.redactor.text
        near = [
            NearMiss(m.number, scrub(m.request), [scrub(d) for d in m.differences]) for m in misses
        ]
        shown = scrub(describe(req))
        miss = Unmatched(shown, near)
        self.report.unmatched.append(miss)
        text = miss.sentence()
        log.warning("replayproxy: %s", printable(text, keep_newlines=True))
        body = {
            "error": "no recorded interaction matches this request",
            "request": shown,
            "near_misses": miss.to_dict()["near_misses"],
            "message": text,
        }
        return web.json_response(body, status=self.config.unmatched_status)

    def _send(self, due: Sequence[Due], ordered: bool = False) -> None:
        """Webhooks due together go out one after the other, in recorded (or shuffled) order;
        `ordered`: in the order given."""
        due = due if ordered else order(due, self.options.shuffle_webhooks)
        jobs = [self._job(d.number, d.delay) for d in due]
        self.deliverer.submit([job for job in jobs if job is not None])

    def _job(self, number: int, delay: float) -> Job | None:
        """Report entries for webhook `number` and how to build its attempts; None (and the
        entries failed) when it has nowhere to go."""
        hook = self.cassette.webhooks[number - 1]
        configured = (self.config.webhooks.forward_to, self.options.webhook_url)
        bindings = self.matcher.bindings
        url = target(hook, bindings, self.callbacks, configured)
        refused = url and destination_refused(url, self.callbacks, configured, self.allow_hosts)
        kind = self.faults.webhook(number) if self.faults is not None else None
        bad = self.options.bad_signature or kind == "bad-signature"
        stale = self.options.stale_timestamp or kind == "stale-timestamp"
        test = "bad-signature" if bad else ("stale-timestamp" if stale else None)
        signature = self.config.webhooks.signature
        event = event_type(hook)
        copies = [
            Delivery(
                number,
                url or "",
                copy=n + 1,
                test=test,
                event_id=event_id(hook, signature),
                event_type=event,
            )
            for n in range(max(1, self.options.duplicate_webhooks) + (kind == "duplicate"))
        ]
        self.report.deliveries.extend(copies)
        if not url or refused:
            if refused:
                log.warning("replayproxy: webhook %d not sent: %s", number, refused)
            for d in copies:
                d.outcome = "failed"
                d.attempts.append(Attempt(None, refused, 0.0) if refused else _no_target())
            return None

        def build(now: int) -> Outgoing:
            return outgoing(
                hook,
                url,
                bindings,
                self.secrets,
                signature,
                now=now,
                bad_signature=bad,
                stale_timestamp=stale,
                methods=self.config.webhooks.allow_methods,
                keep=self.config.webhooks.keep_headers,
            )

        return Job(copies, build, delay, hang_up_first=kind == "sender-retry")

    async def close(self) -> Report:
        """Wait (bounded) for webhooks in flight, then stop; the report is final after this."""
        if self.faults is not None:
            self.faults.close()
        await self.deliverer.drain(self.options.drain_timeout)
        await self.deliverer.close()
        return self.refresh()

    def refresh(self) -> Report:
        """Bring the report's unused interactions and not-yet-due webhooks up to now (and what
        their sentences name), so it reads true while the replay still runs."""
        report, interactions = self.report, self.cassette.interactions
        report.unused = self.matcher.unused()
        report.webhooks_never_due = self.schedule.pending()
        if self.faults is not None:  # a lost webhook is never due by design
            report.webhooks_never_due = self.faults.excused(report.webhooks_never_due)
        report.waiting, report.event_types, report.labels = {}, {}, {}
        for number in report.webhooks_never_due:
            report.waiting[number] = sorted(self.schedule.needs.get(number, ()))
            report.event_types[number] = event_type(self.cassette.webhooks[number - 1])
        named = {*report.unused[:NAMED], *(n for ns in report.waiting.values() for n in ns)}
        for number in sorted(named):
            if 0 < number <= len(interactions):
                label = describe(interactions[number - 1].request)
                report.labels[number] = self.redactor.text(label)
        return report


def _accepts(req: Request, coding: str) -> bool:
    asked = ", ".join(v for k, v in req.headers if k.lower() == "accept-encoding")
    return accepts(asked, coding)


def _coded(
    answer: Prepared, coding: str, headers: tuple, payload: bytes
) -> tuple[tuple, bytes]:
    """The answer in `coding`, the one it was recorded in, as the upstream sent it to a client
    that accepts it. A body without live values is coded once and kept."""
    try:
        if payload is answer.body:
            if answer.coded is None:
                answer.coded = encode_body(payload, coding)
            coded = answer.coded
        else:
            coded = encode_body(payload, coding)
    except ValueError:  # a coding replayproxy cannot make: the readable body, unlabelled
        return headers, payload
    return (*headers, ("Content-Encoding", coding)), coded


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
