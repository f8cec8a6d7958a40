"""Record: a reverse proxy to the upstream that writes every exchange and every webhook down.

The app talks to the `Recorder` (served by server.py, or by forward.py in forward mode) as it
would to Camber. Each request is forwarded (callback URLs in the body swapped for the webhook
ingress's), the upstream's answer goes back to the app byte for byte, and the exchange, redacted
and decoded, is appended to the journal as soon as it is finished. Webhooks are the
`WebhookIngress`'s (ingress.py): it hands each new one back here to be journaled. `close()`
assembles the cassette, saves it atomically and removes the journal; what the journal could not
take (a full disk) is held in memory until then.

In `new_episodes` mode a request that the existing cassette answers is replayed from it (with its
webhooks); anything else is forwarded and recorded.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .cassette import Cassette, Interaction, Request, Response, Webhook, save
from .coding import TooLarge, decode_body
from .config import Config
from .errors import CassetteError, ConfigError
from .headers import answer_headers, request_headers, storable
from .ingress import Owed, WebhookIngress, error, is_ingress, read_request
from .journal import Claim, Journal, Session, assemble, fingerprint, journal_path, read
from .journal import claim as claim_journal
from .redact import Redactor, scrub_logs
from .replayer import Replayer, ReplayOptions
from .server import UPSTREAM_KEY, Verbatim, origin_form
from .signing import validate
from .tls import upstream_context
from .upstream import Answer, Upstream, UpstreamError
from .upstream import TooLarge as UpstreamTooLarge

log = logging.getLogger("replayproxy")


class Recorder:
    """One recording session; `handle` serves every request, `close()` writes the cassette."""

    def __init__(
        self,
        cassette_path: str | Path,
        config: Config,
        *,
        upstream: str,
        base: Cassette | None = None,
        upstream_ca: str | None = None,
        public_url: str | None = None,
        options: ReplayOptions | None = None,
        forward: bool = False,
        claim: Claim | None = None,
    ):
        if upstream and "@" in urlsplit(upstream).netloc:
            raise ConfigError(  # the URL itself is not echoed: it holds a password
                "the upstream URL carries credentials (user:password@host): they would end up "
                "in the command line, the logs and the cassette. Leave them out; the app's own "
                "Authorization header goes upstream as sent"
            )
        if forward and not upstream:
            upstream = ""  # forward mode: each request names its own upstream
        elif not upstream or urlsplit(upstream).scheme not in ("http", "https"):
            raise ConfigError(
                f"record needs an http(s) upstream URL (--upstream or 'upstream' in the config), "
                f"got {upstream!r}"
            )
        validate(config.webhooks.signature)
        validate(config.webhooks.upstream_scheme)
        self.path = Path(cassette_path)
        self.forward = forward
        self.config = config
        self.upstream = upstream.rstrip("/")
        self.redactor = Redactor.from_config(config)
        scrub_logs(self.redactor)  # nor in what is logged about requests and webhooks
        # explicit: never SSL_CERT_FILE & co., which may name only the local CA (tls.py)
        self.ssl: ssl.SSLContext = upstream_context(upstream_ca)
        # the secrets are read and checked here, before the journal is claimed
        self.ingress = WebhookIngress(
            config, self.redactor, self._keep_webhook, self.now, public_url=public_url
        )
        # new_episodes: what the existing cassette answers is replayed, not forwarded
        self.base = base
        self.replayer = (
            Replayer(base, config, options, forward=forward) if base is not None else None
        )
        meta = {
            "upstream": self.upstream or None,
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "signature_scheme": config.webhooks.signature.scheme,
        }
        if config.webhooks.upstream_signature is not None:
            meta["upstream_signature_scheme"] = config.webhooks.upstream_signature.scheme
        self.session = Session(
            meta=meta,
            base_interactions=len(base.interactions) if base else 0,
            base_webhooks=len(base.webhooks) if base else 0,
        )
        held = claim or claim_journal(self.path, config)
        self.session.origin = fingerprint(self.path)
        # a re-record: the old file stays until a clean stop; a crash recovers beside it
        self.session.replaces = base is None and self.session.origin is not None
        self.journal = Journal(journal_path(self.path), self.session, fd=held.take())
        # Exchanges live in the journal, not in memory: a long session's heap stays flat (no
        # growing work for the garbage collector) and `cassette()` reads them back at stop.
        self.recorded = 0
        self.last: Interaction | None = None  # for the live view
        self.webhooks: list[Webhook] = []
        self.held: list[tuple[int, Interaction | Webhook, int | None]] = []  # not journaled
        self.started = time.monotonic()
        self.replayed = 0
        self.failed = 0
        self.draining = False  # stopping: new app requests get 503 while owed webhooks come
        self.upstream_client = Upstream(
            ssl_context=self.ssl, timeout=config.upstream_timeout, limit=config.max_body_size
        )
        self._closed = False

    # -- wiring ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Our own base URL, set by whoever serves the recorder: the ingress URLs start there."""
        return self.ingress.url

    @url.setter
    def url(self, value: str) -> None:
        self.ingress.url = value

    def now(self) -> float:
        return round(time.monotonic() - self.started, 6)

    # the ingress's counts, as the closing summary and the runner read them
    @property
    def owed(self) -> dict[int, Owed]:
        return self.ingress.owed

    @property
    def refused_webhooks(self) -> int:
        return self.ingress.refused_webhooks

    @property
    def app_refused(self) -> dict[str, tuple[int, str]]:
        return self.ingress.app_refused

    # -- app -> upstream ---------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if is_ingress(request.path):
            return await self.ingress.handle(request)  # never forwarded upstream
        if self.draining:
            return error(
                503,
                f"replayproxy is stopping: it waits for {len(self.owed)} webhook(s) still owed "
                "and forwards no new requests",
                None,
            )
        at = self.now()
        body = await read_request(request, "request body", self.config.max_body_size)
        if not isinstance(body, bytes):
            return body  # too large, or nobody is there to read an answer
        headers = [(str(k), v) for k, v in request.headers.items()]
        req = Request(request.method, request.raw_path, headers, body)  # the raw target
        # before anything about it is logged or written: what it carries under redacted names
        self.redactor.learn_request(req)
        if self.replayer is not None:
            replayed = await self._replay(request, req)
            if replayed is not None:
                return replayed
        sent_headers = request_headers(request.headers)
        sent_body, callbacks = self.ingress.rewrite(body)
        # (a lookup that misses costs a KeyError inside aiohttp: only forward mode sets it)
        upstream = request.get(UPSTREAM_KEY, self.upstream) if self.forward else self.upstream
        target = origin_form(request.raw_path)  # byte for byte as the app sent it
        url = upstream + target
        started = time.monotonic()
        try:
            answer = await self.upstream_client.request(
                request.method, upstream, target, sent_headers, sent_body
            )
        except UpstreamTooLarge:
            self.failed += 1
            return error(
                502,
                f"the upstream's answer to {request.method} {request.rel_url} is larger than "
                f"max_body_size ({self.config.max_body_size} bytes); not recorded",
                upstream,
            )
        except UpstreamError as exc:
            self.failed += 1
            cause = str(exc)
            log.warning(
                "replayproxy: %s %s -> upstream %s: %s",
                request.method,
                request.rel_url,
                upstream,
                cause,
            )
            return error(
                502,
                f"upstream {upstream} failed: {cause}; not recorded",
                upstream,
                cause=cause,
            )
        duration = round(time.monotonic() - started, 6)
        passed = storable(
            answer_headers(answer.pairs, answer.connection, head=request.method == "HEAD")
        )
        try:
            number = self._record(
                request, url, sent_headers, body, answer, passed, at, duration
            )
        except TooLarge:
            self.failed += 1
            limit = self.config.max_body_size
            log.warning(
                "replayproxy: %s %s -> upstream %s: the answer decodes (%s) to more than "
                "max_body_size (%d bytes); not recorded",
                request.method, request.rel_url, upstream, answer.content_encoding, limit,
            )
            return error(
                502,
                f"the upstream's answer to {request.method} {request.rel_url} decodes "
                f"({answer.content_encoding}) to more than max_body_size ({limit} bytes); "
                "not recorded",
                upstream,
            )
        if callbacks:
            self.ingress.sent(number, self.last, callbacks, answer.status)
        return Verbatim(
            status=answer.status, reason=answer.reason, body=answer.body, headers=passed
        )

    def _record(
        self,
        request: web.BaseRequest,
        url: str,
        sent_headers: list[tuple[str, str]],
        body: bytes,
        answer: Answer,
        passed: list[tuple[str, str]],
        at: float,
        duration: float,
    ) -> int:
        """Journal the exchange, redacted and decoded; its 1-based number in the cassette.

        `passed` are the answer's headers as the app got them (no hop-by-hop ones and no
        Content-Length but a HEAD answer's); the cassette's say how long the body it stores is.
        An empty body (HEAD, 204, 304) has nothing to decode: its Content-Encoding stays."""
        meta: dict[str, Any] = {"at": at, "duration": duration}
        decoded, removed = (
            decode_body(answer.body, answer.content_encoding, self.config.max_body_size)
            if answer.body
            else (b"", None)
        )
        stored_headers = passed
        if removed:
            stored_headers = [(k, v) for k, v in passed if k.lower() != "content-encoding"]
            meta["content_encoding"] = removed
        if request.method != "HEAD":
            stored_headers = [*stored_headers, ("Content-Length", str(len(decoded)))]
        item = Interaction(
            Request(request.method, url, storable(sent_headers), body),
            Response(answer.status, answer.reason, stored_headers, decoded),
            meta,
        )
        item = self.redactor.interaction(item)
        self.recorded += 1
        self.last = item
        if not self._journal(self.journal.interaction, item, what=f"exchange {self.recorded}"):
            self.held.append((self.recorded - 1, item, None))
        return self.session.base_interactions + self.recorded

    def _journal(self, write: Any, *args: Any, what: str) -> bool:
        """Append to the journal; when the disk is full or gone read-only, say so and go on.

        The app still gets its answer (the upstream has acted on the request), and the caller
        keeps the item in memory: the cassette written at stop still has it, only a crash
        would lose it.
        """
        try:
            write(*args)
            return True
        except OSError as exc:
            log.error(
                "replayproxy: cannot write the journal %s: %s; %s kept in memory only (a crash "
                "now would lose it; the cassette is written at stop)",
                self.journal.path,
                exc.strerror or exc,
                what,
            )
            return False

    async def _replay(self, request: web.BaseRequest, req: Request) -> web.StreamResponse | None:
        assert self.replayer is not None
        resp = await self.replayer.answer(request, req)
        if resp is not None:
            self.replayed += 1
        return resp

    # -- webhooks: the ingress's, kept here ------------------------------------------------

    def _keep_webhook(self, hook: Webhook, hint: int | None) -> None:
        """A new webhook from the ingress: redacted, counted and journaled like an exchange."""
        stored = self.redactor.webhook(hook)
        self.webhooks.append(stored)
        what = f"webhook {len(self.webhooks)}"
        if not self._journal(self.journal.webhook, stored, hint, what=what):
            self.held.append((len(self.webhooks) - 1, stored, hint))

    async def drain(self, timeout: float, stop_now: asyncio.Event, say: Any) -> None:
        """Stop forwarding new requests (503) and wait, up to `timeout` seconds or until
        `stop_now` is set (a second Ctrl-C), for the webhooks still owed."""
        self.draining = True
        await self.ingress.drain(timeout, stop_now, say)

    def warnings(self) -> list[str]:
        """What went wrong with webhooks this session, for the closing summary."""
        return self.ingress.warnings()

    # -- the end -----------------------------------------------------------------------------

    @property
    def journaled(self) -> int:
        """This session's items the journal holds: all but those the disk refused (held)."""
        return self.recorded + len(self.webhooks) - len(self.held)

    def cassette(self) -> Cassette:
        """This session so far, on top of the base: read back from the journal (the recorder
        keeps in memory only what the journal could not take)."""
        try:
            session = read(self.journal.path)
        except OSError as exc:
            kept = self.journaled
            raise CassetteError(
                f"{self.journal.path}: cannot read the recording journal back "
                f"({exc.strerror or exc}); it held {kept} of this session's items, which are "
                f"lost; {self.path} is unchanged"
            ) from None
        session.meta = self.session.meta
        for index, item, hint in self.held:
            if isinstance(item, Webhook):
                session.webhooks.insert(index, item)
                session.hints.insert(index, hint)
            else:
                session.interactions.insert(index, item)
        return assemble(self.base, session, self.config)

    async def close(self) -> Cassette | None:
        """Save the cassette (when anything was recorded) and remove the journal."""
        if self._closed:
            return None
        self._closed = True
        if self.replayer is not None:
            await self.replayer.close()
        await self.upstream_client.close()
        await self.ingress.close()
        result = None
        if self.owed:  # `check` flags a cassette whose session stopped before they came
            before = self.base.meta.get("webhooks_missing") if self.base is not None else None
            kept = [n for n in before or [] if isinstance(n, int)]  # new_episodes: still missing
            self.session.meta["webhooks_missing"] = sorted({*kept, *self.owed})
        if self.recorded or self.webhooks:
            result = self.cassette()
            try:
                save(result, self.path)
            except OSError as exc:
                self.journal.close()
                journaled, lost = self.journaled, len(self.held)
                raise CassetteError(
                    f"{self.path}: cannot save the cassette: {exc.strerror or exc}; the previous "
                    f"file is unchanged. {self.journal.path} keeps {journaled} of this session's "
                    f"items: `replayproxy recover {self.path}` (or the next `record`) saves them"
                    + (f" ({lost} could not be journaled and are lost)" if lost else "")
                ) from None
            self.journal.saved()
        self.journal.remove()
        return result
