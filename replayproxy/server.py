"""Serving on a host and port, and stopping cleanly: an aiohttp application (the sandbox, the
sample app), or one handler that answers every path (record and replay) on aiohttp's low-level
server, with no router or middleware chain between the connection and the handler."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from .addresses import is_loopback, origin
from .errors import ReplayProxyError

log = logging.getLogger("replayproxy")

#: What record and replay serve: every request, whatever its path.
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

#: Set on a request by forward mode (forward.py): the origin it goes to, e.g. https://host:8443.
UPSTREAM_KEY: Any = (
    web.RequestKey("replayproxy.upstream", str)  # aiohttp >= 3.12 warns about plain str keys
    if hasattr(web, "RequestKey")
    else "replayproxy.upstream"
)

#: Default for `max_header_size`: the request line, any one header, and all headers together.
DEFAULT_MAX_HEADER_SIZE = 64 * 1024
#: Seconds a client has to send a whole request head, from its first byte (or from connecting).
DEFAULT_HEAD_TIMEOUT = 10.0
#: Seconds a kept-alive connection may sit idle between requests.
DEFAULT_IDLE_TIMEOUT = 60.0


class Verbatim(web.Response):
    """An answer with the headers it is given and no others: aiohttp would add Content-Type
    (application/octet-stream), Date and Server when they are missing, which a replayed or
    passed-on answer must not gain. Framing stays aiohttp's: Content-Length (kept as given for
    a HEAD answer), Transfer-Encoding and Connection."""

    __slots__ = ()

    async def _prepare_headers(self) -> None:
        headers = self._headers
        given = [name for name in _ADDED if name in headers]
        await super()._prepare_headers()
        if len(given) < len(_ADDED):
            for name in _ADDED:
                if name not in given:
                    headers.popall(name, None)


#: What aiohttp adds to an answer that lacks it.
_ADDED = ("Content-Type", "Date", "Server")


def connection_limit(configured: int = 0) -> int:
    """How many client connections to hold at most: `configured` (0: no wish), but never so
    many that the process runs out of file descriptors for the upstream, the cassette and the
    app's webhooks: a quarter of the soft RLIMIT_NOFILE (at least 64) stays free."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 16
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        soft = 1024
    room = max(16, soft - max(64, soft // 4))
    return min(configured, room) if configured > 0 else room


def check_listen(host: str, allow_remote: bool) -> None:
    """Loopback only, unless the user says otherwise: anyone who reaches the proxy can use it."""
    if not is_loopback(host) and not allow_remote:
        raise ReplayProxyError(
            f"refusing to listen on {host}: only loopback by default "
            "(pass --allow-remote to listen on another address; anyone who can reach it "
            "can use the proxy)"
        )


class _Handler(RequestHandler):
    """aiohttp's connection handler, answering malformed requests with one log line, not a
    traceback: oversized request line or headers get 431, other framing errors (such as
    Content-Length together with Transfer-Encoding) 400. The handler never runs for them."""

    __slots__ = ()
    max_header_size = DEFAULT_MAX_HEADER_SIZE
    head_timeout = DEFAULT_HEAD_TIMEOUT

    # A request head must arrive within head_timeout of its first byte (of connecting, for the
    # first): aiohttp's own keep-alive timer closes a connection that is idle (no whole request
    # yet) when it fires, so the deadline is that timer, brought forward.

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_deadline()

    def data_received(self, data: bytes) -> None:
        if not self._request_in_progress and not self._messages:  # the start of a head
            self._head_deadline()
        super().data_received(data)

    def _head_deadline(self) -> None:
        loop = self._loop
        deadline = loop.time() + self.head_timeout
        handle = self._keepalive_handle
        if handle is not None and deadline >= self._next_keepalive_close_time:
            return
        if handle is not None:
            handle.cancel()
        self._next_keepalive_close_time = deadline
        self._keepalive_handle = loop.call_at(deadline, self._process_keepalive)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong) or "Too many headers" in str(exc.message):
            status, text = 431, _header_limit_text(self.max_header_size)
        else:
            status, text = 400, f"malformed HTTP request: {str(exc.message).splitlines()[0]}"
        log.warning("replayproxy: refused a request from %s: %s", request.remote, text)
        resp = web.json_response({"error": text}, status=status)
        resp.force_close()
        return resp


def _header_limit_text(limit: int) -> str:
    return (
        f"request line or headers larger than max_header_size ({limit} bytes); "
        "raise it in the config"
    )


class _WebServer(web.Server):
    """aiohttp's connection manager, holding at most `max_connections`: past it, the oldest
    connection that is not in the middle of a request is closed (idle ones and slow heads
    first, as they come), so clients that only hold sockets open cannot lock the app out."""

    handler_class: type[_Handler] = _Handler
    max_connections: int = 0  # 0: connection_limit()
    _warned_at = -1e9

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = self.handler_class
        return handler

    def connection_made(self, handler: RequestHandler, transport: Any) -> None:
        super().connection_made(handler, transport)
        limit = self.max_connections or connection_limit()
        if len(self._connections) > limit:
            self._shed(handler, limit)

    def _shed(self, newest: RequestHandler, limit: int) -> None:
        victim = next(
            (
                h
                for h in self._connections
                if h is not newest
                and not h._force_close
                and not h._request_in_progress
                and not h._messages
            ),
            None,
        )
        loop = asyncio.get_running_loop()
        if loop.time() - self._warned_at > 10:
            self._warned_at = loop.time()
            log.warning(
                "replayproxy: %d client connections open, more than max_connections (%d): "
                "closing the oldest idle ones as new ones arrive (a client holding connections "
                "open without sending requests?)",
                len(self._connections),
                limit,
            )
        (victim or newest).force_close()


def _limited(
    max_header_size: int,
    head_timeout: float = DEFAULT_HEAD_TIMEOUT,
) -> type[_Handler]:
    handler_class = type("_LimitedHandler", (_Handler,), {"__slots__": ()})
    handler_class.max_header_size = max_header_size
    handler_class.head_timeout = head_timeout
    return handler_class


@dataclass(frozen=True)
class Bounds:
    """How long a client may take and how many connections it may hold (see `_Handler`)."""

    head_timeout: float = DEFAULT_HEAD_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = 0  # 0: connection_limit()


class GuardedRunner(web.AppRunner):
    """An AppRunner whose connections use `_Handler` (aiohttp has no public hook for that)."""

    def __init__(
        self, app: web.Application, max_header_size: int, bounds: Bounds | None = None,
        **kwargs: Any,
    ):
        bounds = bounds or Bounds()
        super().__init__(
            app, max_line_size=max_header_size, max_field_size=max_header_size,
            keepalive_timeout=bounds.idle_timeout, **kwargs
        )
        self.handler_class = _limited(max_header_size, bounds.head_timeout)
        self.bounds = bounds

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _WebServer
        server.handler_class = self.handler_class  # type: ignore[attr-defined]
        server.max_connections = connection_limit(  # type: ignore[attr-defined]
            self.bounds.max_connections
        )
        # the guard wraps the app's entry point: no middleware machinery on every request
        server.request_handler = guarded(server.request_handler, self.handler_class.max_header_size)
        return server


class HandlerRunner(web.ServerRunner):
    """One handler for every request, behind the same guard and `_Handler`.

    `origin_hosts` (reverse mode): only origin-form targets are served, or absolute-form ones
    naming one of these hosts or loopback; None (forward mode) serves every target."""

    __slots__ = ("handler", "max_header_size", "client_max_size", "origin_hosts", "bounds")

    def __init__(
        self,
        handler: Handler,
        max_header_size: int,
        client_max_size: int,
        origin_hosts: Collection[str] | None = None,
        bounds: Bounds | None = None,
    ):
        super().__init__(None, handle_signals=False)  # type: ignore[arg-type]  # made in setup()
        self.handler = handler
        self.max_header_size = max_header_size
        self.client_max_size = client_max_size
        self.origin_hosts = origin_hosts
        self.bounds = bounds or Bounds()

    async def _make_server(self) -> web.Server:
        loop = asyncio.get_running_loop()
        limit = self.client_max_size

        def request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> Any:
            return web.BaseRequest(
                message, payload, protocol, writer, task, loop, client_max_size=limit
            )

        server = _WebServer(
            guarded(expecting(self.handler), self.max_header_size, self.origin_hosts),
            request_factory=request,
            max_line_size=self.max_header_size,
            max_field_size=self.max_header_size,
            access_log=None,
            keepalive_timeout=self.bounds.idle_timeout,
        )
        server.handler_class = _limited(self.max_header_size, self.bounds.head_timeout)
        server.max_connections = connection_limit(self.bounds.max_connections)
        return server


def guarded(
    handler: Any, max_header_size: int, origin_hosts: Collection[str] | None = None
) -> Any:
    """The app's handler behind these checks: 431 when all header lines together exceed
    `max_header_size` bytes; 400 for a path with `.` or `..` segments (plain or
    percent-encoded), which could climb out of the upstream's base path or the webhook ingress;
    with `origin_hosts` (reverse mode), `target_refusal`."""
    hosts = None if origin_hosts is None else frozenset(h.lower() for h in origin_hosts)

    async def guard(request: web.BaseRequest) -> web.StreamResponse:
        if hosts is not None and (request.raw_path[:1] != "/" or request.method == "CONNECT"):
            refused = target_refusal(request, hosts)
            if refused is not None:
                return refused
        if "." in request.path and any(seg in (".", "..") for seg in request.path.split("/")):
            text = "a path with '.' or '..' segments is refused"
            log.warning("replayproxy: refused %s %s: %s", request.method, request.raw_path, text)
            return _refusal(400, text)
        size = len(request.method) + len(request.raw_path) + 11
        for name, value in request.raw_headers:
            size += len(name) + len(value) + 4
        if size > max_header_size:
            text = _header_limit_text(max_header_size)
            log.warning("replayproxy: refused %s %s: %s", request.method, request.path, text)
            return _refusal(431, text)
        return await handler(request)

    return guard


def target_refusal(request: web.BaseRequest, hosts: Collection[str]) -> web.Response | None:
    """Reverse mode proxies origin-form targets only (RFC 9112 3.2): CONNECT gets 405,
    `OPTIONS *` and an absolute-form target naming another host than `hosts` or loopback 400.
    Nothing of them reaches the upstream or the cassette."""
    raw = request.raw_path
    if request.method == "CONNECT":
        status = 405
        text = "CONNECT is for a forward proxy: this one is a reverse proxy (use --forward)"
    elif raw[:1] == "/":
        return None
    elif raw.lower().startswith(("http://", "https://")):
        where = origin(raw)
        if where is not None and (where[1] in hosts or is_loopback(where[1])):
            return None
        text = (
            "an absolute-form target naming another host than the upstream: this is a reverse "
            "proxy (use --forward for a forward proxy)"
        )
        status = 400
    else:
        status, text = 400, "only origin-form request targets (/path?query) are proxied"
    log.warning("replayproxy: refused %s %s: %s", request.method, raw[:200], text)
    resp = _refusal(status, text)
    if status == 405:
        resp.headers["Allow"] = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    return resp


def origin_form(raw: str) -> str:
    """The target that goes upstream, byte for byte as the app sent it: an origin-form target
    as it is ("//v1/jobs?q=a+b%2B" keeps its slashes, escapes and `+`), an absolute-form one
    from its path on ("/" when it has none)."""
    if raw[:1] == "/" or "://" not in raw[:8]:
        return raw
    rest = raw[raw.index("://") + 3 :]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=-1)
    if cut < 0:
        return "/"
    tail = rest[cut:]
    return tail if tail[:1] == "/" else "/" + tail


def expecting(handler: Handler) -> Handler:
    """`Expect: 100-continue` answered with `100 Continue` before the handler reads the body,
    as aiohttp's router does for an Application (curl waits a second for it on every large
    POST). Other expectations are ignored, which RFC 9110 10.1.1 allows."""

    async def expect(request: web.BaseRequest) -> web.StreamResponse:
        value = request.headers.get("Expect")
        if (
            value is not None
            and request.version >= (1, 1)
            and value.strip().lower() == "100-continue"
        ):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer proper has not started
        return await handler(request)

    return expect


def _refusal(status: int, text: str) -> web.Response:
    """The request's body was never read: close the connection rather than guess its end."""
    resp = web.json_response({"error": text}, status=status)
    resp.force_close()
    return resp


def runner(
    app: web.Application | Handler,
    max_header_size: int,
    client_max_size: int,
    origin_hosts: Collection[str] | None = None,
    bounds: Bounds | None = None,
) -> web.BaseRunner:
    """An application's runner, or a lone handler's (`client_max_size` bounds its bodies)."""
    if isinstance(app, web.Application):
        return GuardedRunner(app, max_header_size, bounds, access_log=None, handle_signals=False)
    return HandlerRunner(app, max_header_size, client_max_size, origin_hosts, bounds)


class Server:
    """An app or a handler bound to one address; `url` is known once started (port 0 picks one)."""

    def __init__(
        self,
        app: web.Application | Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        allow_remote: bool = False,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        client_max_size: int = 1024**2,
        origin_hosts: Collection[str] | None = None,
        bounds: Bounds | None = None,
    ):
        check_listen(host, allow_remote)
        self.app = app
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.runner = runner(app, max_header_size, client_max_size, origin_hosts, bounds)
        self.url = ""

    async def start(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, self.host, self.port, ssl_context=self.ssl_context, reuse_address=True
        )
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise ReplayProxyError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        host, port = sock.getsockname()[:2]
        self.port = port
        scheme = "https" if self.ssl_context else "http"
        shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
        self.url = f"{scheme}://{shown}:{port}"
        if not is_loopback(self.host):
            print(
                f"warning: listening on {self.host}, reachable from other machines", file=sys.stderr
            )
        return self.url

    async def stop(self) -> None:
        await self.runner.cleanup()
