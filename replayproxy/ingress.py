"""The record side's door for webhooks: where the upstream sends them while recording.

An app's request that names a callback URL (`webhooks.callback_fields`) goes upstream with our
ingress URL `/__replayproxy/webhooks/{n}` in its place (`rewrite`); the callback registry maps
`n` back to the app's URL. A webhook arriving there (or on the fixed ingress, forwarded to
`webhooks.forward_to`) is verified with the upstream secrets, recorded once per event (the
sender's retries are the same webhook), re-signed with the local secrets and forwarded to the
app with a second HTTP client; the app's answer goes back to the sender.

An exchange that sent a callback URL owes a webhook until one comes (`owe`, `settle`);
`drain()` is the bounded wait for those at stop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from .bodies import NOT_JSON, json_body
from .cassette import Interaction, Webhook
from .config import Config, env_names, env_secrets
from .correlate import exchange_values, webhook_ids
from .errors import exception_text
from .headers import request_headers, storable
from .redact import Redactor
from .replayer import HungUp, read_body
from .signing import (
    SignatureError,
    check_secrets,
    local_secrets,
    signature_header_names,
    signed_with,
    signing_env,
    verify,
    webhook_id,
)
from .variables import Bindings, dotted_get
from .webhooks import outgoing

log = logging.getLogger("replayproxy")

INGRESS = "/__replayproxy/webhooks"


def is_ingress(path: str) -> bool:
    """`path` is the ingress or one of its numbered callback URLs: never forwarded upstream."""
    return path.startswith(INGRESS) and path[len(INGRESS):len(INGRESS) + 1] in ("", "/")


class WebhookIngress:
    """Callback registry, verification, dedupe, recording and forwarding of one session's
    webhooks. `record(hook, hint)` keeps a new webhook (the recorder journals it; `hint` is
    the exchange whose callback URL it came to); `clock()` is the session's time."""

    def __init__(
        self,
        config: Config,
        redactor: Redactor,
        record: Callable[[Webhook, int | None], None],
        clock: Callable[[], float],
        public_url: str | None = None,
    ):
        self.config = config
        self.redactor = redactor
        self.record = record
        self.clock = clock
        self.public_url = public_url.rstrip("/") if public_url else None
        self.url = ""  # set by whoever serves the recorder: our own base URL
        hooks = config.webhooks
        self.upstream_secrets = env_secrets(hooks.upstream_secret_env)
        if not self.upstream_secrets:
            log.warning(
                "replayproxy: %s (webhooks.upstream_secret_env) is not set: every incoming "
                "webhook will be refused with 401",
                env_names(hooks.upstream_secret_env),
            )
        self.local_secrets = local_secrets(config, needed=False)
        check_secrets(self.upstream_secrets, hooks.upstream_secret_env, hooks.upstream_scheme)
        check_secrets(self.local_secrets, hooks.local_secret_env, hooks.signature)
        self.callbacks: list[str] = []  # original callback URLs; index + 1 is the ingress number
        self.callback_hint: dict[str, int] = {}  # callback URL -> first exchange that carried it
        self.event_ids: set[str] = set()
        self.refused_webhooks = 0
        # exchanges that carried a callback URL and whose webhook has not come (see owe())
        self.owed: dict[int, Owed] = {}
        self._settled = asyncio.Event()
        self.app_refused: dict[str, tuple[int, str]] = {}  # event -> the app's (status, why)
        self.unsigned: set[str] = set()  # events that came while the local secret was unset
        self._app_session: aiohttp.ClientSession | None = None

    @property
    def base(self) -> str:
        return (self.public_url or self.url) + INGRESS

    def app_session(self) -> aiohttp.ClientSession:
        if self._app_session is None:
            self._app_session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.webhooks.timeout),
                skip_auto_headers=("User-Agent", "Content-Type"),
            )
        return self._app_session

    # -- app -> upstream: callback URLs ------------------------------------------------------

    def rewrite(self, body: bytes) -> tuple[bytes, list[str]]:
        """Callback URLs the app sent become our ingress URLs, on the way upstream only."""
        seen: list[str] = []
        if not self.config.webhooks.callback_fields:
            return body, seen
        data = json_body(body, mapping=True)
        if data is NOT_JSON:
            return body, seen
        out = body
        base = self.base
        for dotted in self.config.webhooks.callback_fields:
            value = dotted_get(data, dotted.split("."))
            if not isinstance(value, str) or not value.startswith(("http://", "https://")):
                continue
            if value.startswith(base):
                continue
            if value not in self.callbacks:
                self.callbacks.append(value)
            n = self.callbacks.index(value) + 1
            seen.append(value)
            ours = f"{base}/{n}"
            for literal in {json.dumps(value), json.dumps(value, ensure_ascii=False)}:
                out = out.replace(literal.encode("utf-8"), json.dumps(ours).encode("utf-8"))
        return out, seen

    def sent(
        self, number: int, item: Interaction | None, callbacks: list[str], status: int
    ) -> None:
        """Exchange `number` (`item` as recorded) carried `callbacks` upstream and got `status`:
        its webhooks point back to it, and an accepted one owes a webhook."""
        for callback in callbacks:
            self.callback_hint.setdefault(callback, number)
        if callbacks and 200 <= status < 300 and item is not None:
            self.owe(number, item, callbacks[0])

    # -- upstream -> app: webhooks -----------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        at = self.clock()
        body = await read_request(request, "webhook body", self.config.max_body_size)
        if not isinstance(body, bytes):
            return body
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
                return error(
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
                return error(404, f"no callback URL number {number[:40]!r} was seen", None)
            target = self.callbacks[int(number) - 1]
            hint = self.callback_hint.get(target)
        event_id = webhook_id(headers, signature) or _body_event_id(body)
        signed = signature_header_names(signature)
        hook = Webhook(
            body=body,
            headers=storable(
                [(k, v) for k, v in request_headers(request.headers) if k.lower() not in signed]
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
            self.record(hook, hint)
        self.settle(body, target)
        return await self._forward(hook, target, key)

    async def _forward(self, hook: Webhook, target: str, key: str) -> web.StreamResponse:
        """The webhook re-signed with the local secrets, to the app; its answer to the sender."""
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
            return error(
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
            keep=self.config.webhooks.keep_headers,
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
            return error(502, f"the app at {target} did not answer: {cause}", None, cause=cause)

    def _app_refused(self, key: str, status: int, reason: str, answer: bytes, target: str) -> None:
        """The app said no to a webhook we signed: most often the secrets differ. Said now,
        on each refusal, not when a replay fails much later; counted once per event (the
        sender's retries are the same webhook)."""
        text = " ".join(answer[:200].decode("utf-8", "replace").split())
        why = self.redactor.text(f"{reason} {text}".strip())
        self.app_refused.setdefault(key, (status, why))
        count = len(self.app_refused)
        log.warning("replayproxy: %s (at %s)", self._refused_line(count, status, why), target)

    def _refused_line(self, count: int, status: int, why: str) -> str:
        return (
            f"the app refused {count} webhook(s) signed with {signed_with(self.config, True)}: "
            f"{status} {why}".rstrip()
            + f"; is the app's webhook secret the one in {signing_env(self.config)}?"
        )

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
        """Wait, up to `timeout` seconds or until `stop_now` is set (a second Ctrl-C), for the
        webhooks still owed."""
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

    async def close(self) -> None:
        if self._app_session is not None:
            await self._app_session.close()


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
    data = json_body(body, mapping=True)
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
    return exception_text(exc)


# -- answers the record side gives itself (the recorder's too) --------------------------------


async def read_request(request: web.BaseRequest, what: str, limit: int) -> bytes | web.Response:
    """The whole body of an app's request or a webhook (`what`), or the answer that ends it:
    413 past `limit`, 400 when the client hung up mid-body (nobody is there to read it)."""
    try:
        return await read_body(request)
    except web.HTTPRequestEntityTooLarge:
        return too_large(what, limit)
    except HungUp:
        return web.Response(status=400)


def error(status: int, message: str, upstream: str | None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if upstream:
        body["upstream"] = upstream
    body.update(extra)
    return web.json_response(body, status=status)


def too_large(what: str, limit: int) -> web.Response:
    return web.json_response(
        {"error": f"{what} is larger than max_body_size ({limit} bytes); raise it in the config"},
        status=413,
    )


def _refuse(reason: str) -> web.Response:
    return web.json_response(
        {"error": "webhook signature refused; not recorded, not forwarded", "reason": reason},
        status=401,
    )
