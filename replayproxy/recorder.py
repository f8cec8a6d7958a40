"""Record: a reverse proxy to the upstream that writes every exchange and every webhook down.

The app talks to `app()` as it would to Camber. Each request is forwarded (callback URLs in the
body swapped for our webhook ingress), the upstream's answer goes back to the app byte for byte,
and the exchange, redacted and decoded, is appended to the journal as soon as it is finished.
Webhooks arrive under `/__replayproxy/webhooks/`: verified with the upstream secret, recorded
byte-exact, re-signed with the local secret and forwarded to the app, whose answer goes back to
the sender. `close()` assembles the cassette, saves it atomically and removes the journal.

In `new_episodes` mode a request that the existing cassette answers is replayed from it (with its
webhooks); anything else is forwarded and recorded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import ssl
import time
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import brotli
from aiohttp import web

from .cassette import HOP_BY_HOP, Cassette, Interaction, Request, Response, Webhook, save
from .config import Config, env_secrets
from .errors import CassetteError, ConfigError
from .journal import Journal, Session, assemble, journal_path, read
from .redact import Redactor, scrub_logs
from .replayer import Replayer, ReplayOptions, local_secrets
from .server import origin_form
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
#: Set on a request by forward mode (forward.py): the origin it goes to, e.g. https://host:8443.
UPSTREAM_KEY: Any = (
    web.RequestKey("replayproxy.upstream", str)  # aiohttp >= 3.12 warns about plain str keys
    if hasattr(web, "RequestKey")
    else "replayproxy.upstream"
)

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


def app_headers(answer: Answer) -> list[tuple[str, str]]:
    """The upstream's answer headers as the app gets them: no hop-by-hop ones; aiohttp writes
    Content-Length anew."""
    skip = hop_by_hop_listed(answer.connection, "content-length")
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


def decode_body(body: bytes, encoding: str | None) -> tuple[bytes, str | None]:
    """(decoded bytes, the encoding that was removed) or (body, None) when it cannot be decoded."""
    if not encoding:
        return body, None
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    out = body
    try:
        for coding in reversed(codings):
            if coding in ("gzip", "x-gzip"):
                out = gzip.decompress(out)
            elif coding == "deflate":
                try:
                    out = zlib.decompress(out)
                except zlib.error:
                    out = zlib.decompress(out, -zlib.MAX_WBITS)  # raw deflate, as some servers send
            elif coding == "br":
                out = brotli.decompress(out)
            elif coding != "identity":
                return body, None
    except (OSError, EOFError, zlib.error, brotli.error):
        return body, None
    return out, ", ".join(codings)


class TooLarge(Exception):
    pass


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
        self.upstream_secrets = env_secrets(config.webhooks.upstream_secret_env)
        if not self.upstream_secrets:
            log.warning(
                "replayproxy: %s (webhooks.upstream_secret_env) is not set: every incoming "
                "webhook will be refused with 401",
                config.webhooks.upstream_secret_env,
            )
        self.local_secrets = local_secrets(config, needed=False)
        # a malformed secret (e.g. not whsec_<base64>) fails now, not with a 500 per webhook
        for what, keys in (
            (config.webhooks.upstream_secret_env, self.upstream_secrets),
            (config.webhooks.local_secret_env, self.local_secrets),
        ):
            if keys:
                try:
                    sign(b"", keys, config.webhooks.signature, timestamp=0)
                except ConfigError as exc:
                    raise ConfigError(f"{what}: {exc}") from None
        # new_episodes: what the existing cassette answers is replayed, not forwarded
        self.base = base
        self.replayer = Replayer(base, config, options) if base is not None else None
        self.session = Session(
            meta={
                "upstream": self.upstream or None,
                "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "signature_scheme": config.webhooks.signature.scheme,
            },
            base_interactions=len(base.interactions) if base else 0,
            base_webhooks=len(base.webhooks) if base else 0,
        )
        self.journal = Journal(journal_path(self.path), self.session)
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
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise TooLarge() from None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith(INGRESS) and path[len(INGRESS):len(INGRESS) + 1] in ("", "/"):
            return await self.webhook(request)  # never forwarded upstream
        at = self.now()
        try:
            body = await self._read_request(request)
        except TooLarge:
            return _too_large("request body", self.config.max_body_size)
        if self.replayer is not None:
            headers = [(str(k), v) for k, v in request.headers.items()]
            replayed = await self._replay(
                request, Request(request.method, request.raw_path, headers, body)
            )
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
        passed = storable(app_headers(answer))
        number = self._record(
            request, url, sent_headers, body, answer, passed, at, duration
        )
        for callback in callbacks:
            self.callback_hint.setdefault(callback, number)
        return web.Response(
            status=answer.status, reason=answer.reason or None, body=answer.body, headers=passed
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
        Content-Length); the cassette's say how long the body it stores is."""
        meta: dict[str, Any] = {"at": at, "duration": duration}
        decoded, removed = decode_body(answer.body, answer.content_encoding)
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

    # -- upstream -> app: webhooks -----------------------------------------------------------

    async def webhook(self, request: web.BaseRequest) -> web.StreamResponse:
        at = self.now()
        try:
            body = await self._read_request(request)
        except TooLarge:
            return _too_large("webhook body", self.config.max_body_size)
        signature = self.config.webhooks.signature
        if not self.upstream_secrets:
            self.refused_webhooks += 1
            return _refuse(
                f"{self.config.webhooks.upstream_secret_env} is not set: cannot verify webhooks"
            )
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
        return await self._forward_webhook(hook, target)

    async def _forward_webhook(self, hook: Webhook, target: str) -> web.StreamResponse:
        if not self.local_secrets:
            return _error(
                502,
                f"{self.config.webhooks.local_secret_env} (webhooks.local_secret_env) is not set: "
                "cannot sign the webhook for the app",
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
                return web.Response(status=resp.status, body=answer, headers=headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            cause = _cause(exc, self.config.webhooks.timeout)
            log.warning("replayproxy: forwarding a webhook to %s failed: %s", target, cause)
            return _error(502, f"the app at {target} did not answer: {cause}", None, cause=cause)

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
                    f"items: the next `record` in this folder recovers them"
                    + (f" ({lost} could not be journaled and are lost)" if lost else "")
                ) from None
        self.journal.remove()
        return result


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
