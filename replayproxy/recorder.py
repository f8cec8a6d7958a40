"""Record: a reverse proxy to the upstream that writes every exchange and every webhook down.

The app talks to `app()` as it would to Camber. Each request is forwarded (callback URLs in the
body swapped for our webhook ingress), the upstream's answer goes back to the app byte for byte,
and the exchange, redacted and decoded, is appended to the journal as soon as it is finished.
Webhooks arrive under `/__replayproxy/webhooks/`: verified with the upstream secret, recorded
byte-exact, re-signed with the local secret and forwarded to the app, whose answer goes back to
the sender. `close()` assembles the cassette, saves it atomically and removes the journal.

An exchange that sent a callback URL owes a webhook until one comes (`owe`, `settle`); `drain()`
is the bounded wait for those at stop, and what never came is noted in the cassette's metadata.

In `new_episodes` mode a request that the existing cassette answers is replayed from it (with its
webhooks); anything else is forwarded and recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from .cassette import HOP_BY_HOP, Cassette, Interaction, Request, Response, Webhook, save
from .coding import TooLarge, decode_body
from .config import Config, env_names, env_secrets
from .correlate import exchange_values, webhook_ids
from .errors import CassetteError, ConfigError
from .journal import Claim, Journal, Session, assemble, fingerprint, journal_path, read
from .journal import claim as claim_journal
from .redact import Redactor, scrub_logs
from .replayer import HungUp, Replayer, ReplayOptions, local_secrets, read_body
from .server import UPSTREAM_KEY, Verbatim, origin_form
from .signing import (
    SignatureError,
    sign,
    signature_header_names,
    validate,
    verify,
    webhook_id,
)
from .tls import upstream_context
from .upstream import Answer, Upstream, UpstreamError
from .upstream import TooLarge as UpstreamTooLarge
from .variables import Bindings, dotted_get
from .webhooks import outgoing

log = logging.getLogger("replayproxy")

INGRESS = "/__replayproxy/webhooks"

def hop_by_hop(headers: Any, *also: str) -> frozenset[str]:
    """The fixed hop-by-hop names, any the Connection header lists, and `also`."""
    listed = headers.getall("Connection", ()) if hasattr(headers, "getall") else ()
    return hop_by_hop_listed(listed, *also)


def hop_by_hop_listed(listed: Iterable[str], *also: str) -> frozenset[str]:
    """The same, from the Connection header values themselves."""
    if not listed:
        return _hop_by_hop_and(also)
    named = set(HOP_BY_HOP).union(also)
    for value in listed:
        named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(named)


@lru_cache(maxsize=16)
def _hop_by_hop_and(also: tuple[str, ...]) -> frozenset[str]:
    return HOP_BY_HOP.union(also)


def upstream_headers(headers: Any) -> list[tuple[str, str]]:
    """The app's request headers as they go upstream: no hop-by-hop ones; the client writes
    Host and Content-Length anew."""
    skip = hop_by_hop(headers, "host", "content-length")
    return [(str(k), v) for k, v in headers.items() if k.lower() not in skip]


def app_headers(answer: Answer, head: bool = False) -> list[tuple[str, str]]:
    """The upstream's answer headers as the app gets them: no hop-by-hop ones; aiohttp writes
    Content-Length anew, except for a HEAD answer (no body to count), whose own is kept."""
    skip = hop_by_hop_listed(answer.connection, *(() if head else ("content-length",)))
    return [(k, v) for k, v in answer.pairs if k.lower() not in skip]


def storable(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header text a cassette can hold. Bytes that are not UTF-8 (kept by aiohttp and httptools
    as lone surrogates) are read as Latin-1, HTTP's historical charset, so `filename="r\xe9sum\xe9"`
    is stored, answered and replayed as "résumé" rather than making the cassette unwritable."""
    if all(k.isascii() and v.isascii() for k, v in headers):
        return headers
    return [(_text(k), _text(v)) for k, v in headers]


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("latin-1")


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
        self.public_url = public_url.rstrip("/") if public_url else None
        self.url = ""  # set by whoever serves app(): our own base URL
        self.redactor = Redactor.from_config(config)
        scrub_logs(self.redactor)  # nor in what is logged about requests and webhooks
        # explicit: never SSL_CERT_FILE & co., which may name only the local CA (tls.py)
        self.ssl: ssl.SSLContext = upstream_context(upstream_ca)
        hooks = config.webhooks
        self.upstream_secrets = env_secrets(hooks.upstream_secret_env)
        if not self.upstream_secrets:
            log.warning(
                "replayproxy: %s (webhooks.upstream_secret_env) is not set: every incoming "
                "webhook will be refused with 401",
                env_names(hooks.upstream_secret_env),
            )
        self.local_secrets = local_secrets(config, needed=False)
        # a malformed secret (e.g. not whsec_<base64>) fails now, not with a 500 per webhook
        for names, keys, scheme in (
            (hooks.upstream_secret_env, self.upstream_secrets, hooks.upstream_scheme),
            (hooks.local_secret_env, self.local_secrets, hooks.signature),
        ):
            if keys:
                try:
                    sign(b"", keys, scheme, timestamp=0)
                except ConfigError as exc:
                    raise ConfigError(f"{env_names(names)}: {exc}") from None
        # new_episodes: what the existing cassette answers is replayed, not forwarded
        self.base = base
        self.replayer = (
            Replayer(base, config, options, forward=forward) if base is not None else None
        )
        meta = {
            "upstream": self.upstream or None,
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "signature_scheme": hooks.signature.scheme,
        }
        if hooks.upstream_signature is not None:
            meta["upstream_signature_scheme"] = hooks.upstream_signature.scheme
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
        self.callbacks: list[str] = []  # original callback URLs; index + 1 is the ingress number
        self.callback_hint: dict[str, int] = {}  # callback URL -> first exchange that carried it
        self.event_ids: set[str] = set()
        self.replayed = 0
        self.refused_webhooks = 0
        self.failed = 0
        # exchanges that carried a callback URL and whose webhook has not come (see owe())
        self.owed: dict[int, Owed] = {}
        self._settled = asyncio.Event()
        self.draining = False  # stopping: new app requests get 503 while owed webhooks come
        self.app_refused: dict[str, tuple[int, str]] = {}  # event -> the app's (status, why)
        self.unsigned: set[str] = set()  # events that came while the local secret was unset
        self.upstream_client = Upstream(
            ssl_context=self.ssl, timeout=config.upstream_timeout, limit=config.max_body_size
        )
        self._app_session: aiohttp.ClientSession | None = None
        self._closed = False

    # -- wiring ------------------------------------------------------------------------------

    def app_session(self) -> aiohttp.ClientSession:
        if self._app_session is None:
            self._app_session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.webhooks.timeout),
                skip_auto_headers=("User-Agent", "Content-Type"),
            )
        return self._app_session

    @property
    def ingress_base(self) -> str:
        return (self.public_url or self.url) + INGRESS

    def now(self) -> float:
        return round(time.monotonic() - self.started, 6)

    # -- app -> upstream ---------------------------------------------------------------------

    async def _read_request(self, request: web.BaseRequest) -> bytes:
        try:
            return await read_body(request)
        except web.HTTPRequestEntityTooLarge:
            raise TooLarge() from None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith(INGRESS) and path[len(INGRESS):len(INGRESS) + 1] in ("", "/"):
            return await self.webhook(request)  # never forwarded upstream
        if self.draining:
            return _error(
                503,
                f"replayproxy is stopping: it waits for {len(self.owed)} webhook(s) still owed "
                "and forwards no new requests",
                None,
            )
        at = self.now()
        try:
            body = await self._read_request(request)
        except TooLarge:
            return _too_large("request body", self.config.max_body_size)
        except HungUp:
            return web.Response(status=400)  # nobody is there to read it
        headers = [(str(k), v) for k, v in request.headers.items()]
        req = Request(request.method, request.raw_path, headers, body)  # the raw target
        # before anything about it is logged or written: what it carries under redacted names
        self.redactor.learn_request(req)
        if self.replayer is not None:
            replayed = await self._replay(request, req)
            if replayed is not None:
                return replayed
        sent_headers = upstream_headers(request.headers)
        sent_body, callbacks = self._rewrite_callbacks(body)
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
            return _error(
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
            return _error(
                502,
                f"upstream {upstream} failed: {cause}; not recorded",
                upstream,
                cause=cause,
            )
        duration = round(time.monotonic() - started, 6)
        passed = storable(app_headers(answer, head=request.method == "HEAD"))
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
            return _error(
                502,
                f"the upstream's answer to {request.method} {request.rel_url} decodes "
                f"({answer.content_encoding}) to more than max_body_size ({limit} bytes); "
                "not recorded",
                upstream,
            )
        for callback in callbacks:
            self.callback_hint.setdefault(callback, number)
        if callbacks and 200 <= answer.status < 300 and self.last is not None:
            self.owe(number, self.last, callbacks[0])
        return Verbatim(
            status=answer.status, reason=answer.reason, body=answer.body, headers=passed
        )

    def _rewrite_callbacks(self, body: bytes) -> tuple[bytes, list[str]]:
        """Callback URLs the app sent become our ingress URLs, on the way upstream only."""
        seen: list[str] = []
        if not body or not self.config.webhooks.callback_fields or body.lstrip()[:1] != b"{":
            return body, seen
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body, seen
        out = body
        for dotted in self.config.webhooks.callback_fields:
            value = dotted_get(data, dotted.split("."))
            if not isinstance(value, str) or not value.startswith(("http://", "https://")):
                continue
            if value.startswith(self.ingress_base):
                continue
            if value not in self.callbacks:
                self.callbacks.append(value)
            n = self.callbacks.index(value) + 1
            seen.append(value)
            ours = f"{self.ingress_base}/{n}"
            for literal in {json.dumps(value), json.dumps(value, ensure_ascii=False)}:
                out = out.replace(literal.encode("utf-8"), json.dumps(ours).encode("utf-8"))
        return out, seen

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
        meta: dict[str, Any] = {}
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
            at,
            duration,
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

    # -- upstream -> app: webhooks -----------------------------------------------------------

    async def webhook(self, request: web.BaseRequest) -> web.StreamResponse:
        at = self.now()
        try:
            body = await self._read_request(request)
        except TooLarge:
            return _too_large("webhook body", self.config.max_body_size)
        except HungUp:
            return web.Response(status=400)
        signature = self.config.webhooks.upstream_scheme
        if not self.upstream_secrets:
            self.refused_webhooks += 1
            names = env_names(self.config.webhooks.upstream_secret_env)
            if self.refused_webhooks == 1:
                log.error(
                    "replayproxy: refused a webhook on %s: %s (webhooks.upstream_secret_env) is "
                    "not set, so no webhook can be verified, recorded or forwarded",
                    request.path, names,
                )
            return _refuse(f"{names} is not set: cannot verify webhooks")
        headers = {str(k): v for k, v in request.headers.items()}
        try:
            verify(body, request.headers, self.upstream_secrets, signature)
        except SignatureError as exc:
            self.refused_webhooks += 1
            log.warning("replayproxy: refused a webhook on %s: %s", request.path, exc)
            return _refuse(str(exc))
        number = request.path[len(INGRESS) + 1:] if request.path != INGRESS else None
        if number is None:
            target = self.config.webhooks.forward_to
            if not target:
                return _error(
                    404,
                    "webhook received on the fixed ingress, but webhooks.forward_to is not set: "
                    "the proxy does not know where the app receives webhooks",
                    None,
                )
            hint = None
        else:
            if not re.fullmatch(r"[0-9]{1,9}", number) or not 1 <= int(number) <= len(
                self.callbacks
            ):
                return _error(404, f"no callback URL number {number[:40]!r} was seen", None)
            target = self.callbacks[int(number) - 1]
            hint = self.callback_hint.get(target)
        event_id = webhook_id(headers, signature) or _body_event_id(body)
        skip = signature_header_names(signature) | hop_by_hop(
            request.headers, "host", "content-length"
        )
        hook = Webhook(
            body=body,
            headers=storable(
                [(str(k), v) for k, v in request.headers.items() if k.lower() not in skip]
            ),
            method=request.method,
            path=request.path,
            target=target,
            at=at,
            event_id=event_id,
        )
        key = event_id or _body_key(body)
        if key not in self.event_ids:  # the sender's retries of one event are recorded once
            self.event_ids.add(key)
            stored = self.redactor.webhook(hook)
            self.webhooks.append(stored)
            what = f"webhook {len(self.webhooks)}"
            if not self._journal(self.journal.webhook, stored, hint, what=what):
                self.held.append((len(self.webhooks) - 1, stored, hint))
        self.settle(body, target)
        return await self._forward_webhook(hook, target, key)

    # -- webhooks owed: a session that stops before they came records them as missing ----------

    def owe(self, number: int, item: Interaction, callback: str) -> None:
        """Exchange `number` sent a callback URL and was accepted: a webhook is owed for it."""
        self.owed[number] = Owed(
            number, item.request.method, urlsplit(item.request.uri).path, callback,
            exchange_values(item),
        )

    def settle(self, body: bytes, target: str) -> None:
        """A webhook came: it pays the owed exchange that shares an id with it (the job id),
        else the earliest one owed on that callback URL."""
        if not self.owed:
            return
        ids = webhook_ids(body)
        paid = [n for n, o in self.owed.items() if ids & o.values]
        if not paid:
            paid = [n for n, o in self.owed.items() if o.callback == target][:1]
        for n in paid:
            del self.owed[n]
        if paid:
            self._settled.set()

    async def drain(self, timeout: float, stop_now: asyncio.Event, say: Any) -> None:
        """Stop forwarding new requests (503) and wait, up to `timeout` seconds or until
        `stop_now` is set (a second Ctrl-C), for the webhooks still owed."""
        self.draining = True
        if not self.owed:
            return
        say(
            f"replayproxy: stopping: waiting up to {timeout:g}s for {len(self.owed)} webhook(s) "
            f"still owed ({_owed_list(self.owed.values())}); new requests get 503; "
            "Ctrl-C again to stop now"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiting = len(self.owed)
        while self.owed and not stop_now.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            self._settled.clear()
            settled = asyncio.ensure_future(self._settled.wait())
            stopped = asyncio.ensure_future(stop_now.wait())
            await asyncio.wait({settled, stopped}, timeout=left,
                               return_when=asyncio.FIRST_COMPLETED)
            settled.cancel()
            stopped.cancel()
            if self.owed and len(self.owed) < waiting:
                waiting = len(self.owed)
                say(f"replayproxy: still waiting for {waiting}: {_owed_list(self.owed.values())}")

    def warnings(self) -> list[str]:
        """What went wrong with webhooks this session, for the closing summary."""
        out = []
        if self.app_refused:
            first = next(iter(self.app_refused.values()))
            out.append(self._refused_line(len(self.app_refused), *first))
        if self.unsigned:
            out.append(
                f"{len(self.unsigned)} webhook(s) came but "
                f"{env_names(self.config.webhooks.local_secret_env)} "
                "(webhooks.local_secret_env) is not set: none reached the app"
            )
        if self.owed:
            out.append(
                f"{len(self.owed)} webhook(s) never came before the recording stopped: "
                f"{_owed_list(self.owed.values())}; the cassette notes them (`check` flags it)"
            )
        return out

    def _refused_line(self, count: int, status: int, why: str) -> str:
        names = self.config.webhooks.local_secret_env
        scheme = self.config.webhooks.signature.scheme
        current = names[0] if names else "(none)"  # the first variable's secret signs
        return (
            f"the app refused {count} webhook(s) signed with ${current} (scheme {scheme}): "
            f"{status} {why}".rstrip()
            + f"; is the app's webhook secret the one in {current}?"
        )

    async def _forward_webhook(self, hook: Webhook, target: str, key: str) -> web.StreamResponse:
        if not self.local_secrets:
            first = not self.unsigned
            self.unsigned.add(key)
            if first:
                log.error(
                    "replayproxy: a webhook came for %s, but %s (webhooks.local_secret_env) is "
                    "not set: it cannot be signed for the app, so the app never gets it "
                    "(recorded; the sender gets 502)",
                    target, env_names(self.config.webhooks.local_secret_env),
                )
            return _error(
                502,
                f"{env_names(self.config.webhooks.local_secret_env)} (webhooks.local_secret_env) "
                "is not set: cannot sign the webhook for the app",
                None,
            )
        out = outgoing(
            hook,
            target,
            Bindings(),
            self.local_secrets,
            self.config.webhooks.signature,
            now=int(time.time()),
            methods=self.config.webhooks.allow_methods,  # as replay will send it
            keep=frozenset(h.lower() for h in self.config.webhooks.keep_headers),
        )
        try:
            async with self.app_session().request(
                out.method, out.url, data=out.body, headers=out.headers, allow_redirects=False
            ) as resp:
                answer = await resp.read()
                headers = {}
                if "Content-Type" in resp.headers:
                    headers["Content-Type"] = resp.headers["Content-Type"]
                if 400 <= resp.status < 500:
                    self._app_refused(key, resp.status, resp.reason or "", answer, target)
                return web.Response(status=resp.status, body=answer, headers=headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            cause = _cause(exc, self.config.webhooks.timeout)
            log.warning("replayproxy: forwarding a webhook to %s failed: %s", target, cause)
            return _error(502, f"the app at {target} did not answer: {cause}", None, cause=cause)

    def _app_refused(self, key: str, status: int, reason: str, answer: bytes, target: str) -> None:
        """The app said no to a webhook we signed: most often the secrets differ. Said now,
        on each refusal, not when a replay fails much later; counted once per event (the
        sender's retries are the same webhook)."""
        text = " ".join(answer[:200].decode("utf-8", "replace").split())
        why = self.redactor.text(f"{reason} {text}".strip())
        self.app_refused.setdefault(key, (status, why))
        count = len(self.app_refused)
        log.warning("replayproxy: %s (at %s)", self._refused_line(count, status, why), target)

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
        if self._app_session is not None:
            await self._app_session.close()
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
                kept, lost = self.journaled, len(self.held)
                raise CassetteError(
                    f"{self.path}: cannot save the cassette: {exc.strerror or exc}; the previous "
                    f"file is unchanged. {self.journal.path} keeps {kept} of this session's "
                    f"items: `replayproxy recover {self.path}` (or the next `record`) saves them"
                    + (f" ({lost} could not be journaled and are lost)" if lost else "")
                ) from None
            self.journal.saved()
        self.journal.remove()
        return result


@dataclass(slots=True)
class Owed:
    number: int  # the exchange, as `inspect` numbers it
    method: str
    path: str
    callback: str  # the app's callback URL it sent
    values: set[str]  # its ids (correlate.exchange_values): the webhook carries one of them


def _owed_list(owed: Iterable[Owed]) -> str:
    return ", ".join(f"interaction {o.number} {o.method} {o.path}" for o in owed)


def _body_event_id(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict):
        for key in ("event_id", "id"):
            value = data.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return str(value)
    return None


def _body_key(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _cause(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection refused or unreachable ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the upstream closed the connection before answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the connection was reset mid-body ({exc})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error(status: int, message: str, upstream: str | None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if upstream:
        body["upstream"] = upstream
    body.update(extra)
    return web.json_response(body, status=status)


def _too_large(what: str, limit: int) -> web.Response:
    return web.json_response(
        {"error": f"{what} is larger than max_body_size ({limit} bytes); raise it in the config"},
        status=413,
    )


def _refuse(reason: str) -> web.Response:
    return web.json_response(
        {"error": "webhook signature refused; not recorded, not forwarded", "reason": reason},
        status=401,
    )
