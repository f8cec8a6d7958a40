"""Serving on a host and port, and stopping cleanly: an aiohttp application (the sandbox, the
sample app), or one handler that answers every path (record and replay) on aiohttp's low-level
server, with no router or middleware chain between the connection and the handler."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from aiohttp import __version__ as aiohttp_version
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


#: The aiohttp internals this module builds on, where aiohttp has no public API for the same
#: behaviour (pyproject.toml pins the tested aiohttp range, `TESTED_AIOHTTP`): `Verbatim` overrides
#: `StreamResponse._prepare_headers` and reads `_headers`; `_Handler` subclasses `RequestHandler`
#: and moves its keep-alive timer (`_keepalive_handle`, `_next_keepalive_close_time`,
#: `_process_keepalive`) and reads `_loop`, `_request_in_progress`, `_messages`; `_WebServer`
#: reads `web.Server._connections` and each handler's `_force_close`.
_HANDLER_INTERNALS = (
    "_loop",
    "_keepalive_handle",
    "_next_keepalive_close_time",
    "_request_in_progress",
    "_messages",
    "_force_close",
)
_HANDLER_METHODS = ("_process_keepalive", "handle_error", "connection_made", "data_received")


def missing_internals(
    handler_class: type = RequestHandler, response_class: type = web.StreamResponse
) -> list[str]:
    """The aiohttp internals this module needs that `handler_class` (aiohttp's RequestHandler)
    or `response_class` (its StreamResponse) lack: empty within the tested aiohttp range."""
    slots = {name for cls in handler_class.__mro__ for name in getattr(cls, "__slots__", ())}
    missing = [
        f"{handler_class.__name__}.{name}" for name in _HANDLER_INTERNALS if name not in slots
    ]
    missing += [
        f"{handler_class.__name__}.{name}()"
        for name in _HANDLER_METHODS
        if not callable(getattr(handler_class, name, None))
    ]
    if not callable(getattr(response_class, "_prepare_headers", None)):
        missing.append(f"{response_class.__name__}._prepare_headers()")
    elif not hasattr(response_class(), "_headers"):
        missing.append(f"{response_class.__name__}._headers")
    return missing


#: The aiohttp releases the wire tests pass on, as pyproject.toml pins them (a test keeps the two
#: equal): 3.12 and 3.13 have every name above, but their keep-alive timer lets a slow head
#: outlive the head timeout.
TESTED_AIOHTTP = ((3, 14), (3, 15))
_checked = False


def cannot_listen(host: str, port: int, exc: OSError) -> ReplayProxyError:
    """The one line every listener (replay, record, forward mode) gives for an address it
    cannot take: in use, not ours, or not allowed."""
    return ReplayProxyError(f"cannot listen on {host}:{port}: {exc.strerror}")


def check_aiohttp() -> None:
    """One clear error, before anything listens, when the installed aiohttp is outside the
    tested range or lacks an internal this module needs (rather than answers that silently
    differ): once per process."""
    global _checked
    if _checked:
        return
    (low, high), wanted = TESTED_AIOHTTP, aiohttp_range()
    try:
        version = tuple(int(part) for part in aiohttp_version.split(".")[:2])
    except ValueError:
        version = ()
    if not low <= version < high:
        raise ReplayProxyError(
            f"aiohttp {aiohttp_version} is outside the range replayproxy's server is tested "
            f"with, which relies on aiohttp internals: install 'aiohttp{wanted}'"
        )
    missing = missing_internals()
    if missing:
        raise ReplayProxyError(
            f"aiohttp {aiohttp_version} lacks what replayproxy's server needs "
            f"({', '.join(missing)}): install 'aiohttp{wanted}'"
        )
    _checked = True


def aiohttp_range() -> str:
    """`TESTED_AIOHTTP` as a requirement specifier: ">=3.14,<3.15"."""
    (low, high) = TESTED_AIOHTTP
    return f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"


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
    """aiohttp's connection manager, making `handler_class` connections and holding at most
    `max_connections`: past it, the oldest connection that is not in the middle of a request is
    closed (idle ones and slow heads first, as they come), so clients that only hold sockets
    open cannot lock the app out."""

    _warned_at = -1e9

    def __init__(
        self,
        handler: Any,
        *,
        handler_class: type[_Handler],
        max_connections: int,
        **kwargs: Any,
    ):
        super().__init__(handler, **kwargs)
        if not isinstance(getattr(self, "_connections", None), dict):
            raise ReplayProxyError(
                f"aiohttp {aiohttp_version} lacks what replayproxy's server needs "
                f"(Server._connections): install 'aiohttp{aiohttp_range()}'"
            )
        kwargs.pop("request_factory", None)
        kwargs.pop("handler_cancellation", None)
        self.handler_class = handler_class
        self.max_connections = max_connections
        self._handler_loop = asyncio.get_running_loop()
        self._handler_kwargs = kwargs

    def __call__(self) -> RequestHandler:
        return self.handler_class(self, loop=self._handler_loop, **self._handler_kwargs)

    def connection_made(self, handler: RequestHandler, transport: Any) -> None:
        super().connection_made(handler, transport)
        if len(self._connections) > self.max_connections:
            self._shed(handler, self.max_connections)

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
    attrs = {"__slots__": (), "max_header_size": max_header_size, "head_timeout": head_timeout}
    return type("_LimitedHandler", (_Handler,), attrs)


@dataclass(frozen=True)
class Bounds:
    """How long a client may take and how many connections it may hold (see `_Handler`)."""

    head_timeout: float = DEFAULT_HEAD_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = 0  # 0: connection_limit()


class HandlerRunner:
    """One handler for every request, behind the guard and `_Handler`, served by aiohttp's
    public `ServerRunner` (`runner`, made by `setup()`) on our `_WebServer`.

    `origin_hosts` (reverse mode): only origin-form targets are served, or absolute-form ones
    naming one of these hosts or loopback; None (forward mode) serves every target."""

    def __init__(
        self,
        handler: Handler,
        max_header_size: int,
        client_max_size: int,
        origin_hosts: Collection[str] | None = None,
        bounds: Bounds | None = None,
    ):
        check_aiohttp()
        self.handler = handler
        self.max_header_size = max_header_size
        self.client_max_size = client_max_size
        self.origin_hosts = origin_hosts
        self.bounds = bounds or Bounds()
        self.runner: web.ServerRunner | None = None

    @property
    def server(self) -> web.Server | None:
        """The connection manager (a protocol factory), once set up."""
        return None if self.runner is None else self.runner.server

    @property
    def addresses(self) -> list[Any]:
        """The bound sockets' addresses (`getsockname()`), once a site has started."""
        return [] if self.runner is None else self.runner.addresses

    def _web_server(self, handler: Any, **kwargs: Any) -> _WebServer:
        return _WebServer(
            guarded(handler, self.max_header_size, self.origin_hosts),
            handler_class=_limited(self.max_header_size, self.bounds.head_timeout),
            max_connections=connection_limit(self.bounds.max_connections),
            max_line_size=self.max_header_size,
            max_field_size=self.max_header_size,
            access_log=None,
            keepalive_timeout=self.bounds.idle_timeout,
            **kwargs,
        )

    async def _make_server(self) -> _WebServer:
        loop = asyncio.get_running_loop()
        limit = self.client_max_size

        def request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> Any:
            return web.BaseRequest(
                message, payload, protocol, writer, task, loop, client_max_size=limit
            )

        return self._web_server(expecting(self.handler), request_factory=request)

    async def setup(self) -> None:
        self.runner = web.ServerRunner(await self._make_server(), handle_signals=False)
        await self.runner.setup()

    async def cleanup(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class GuardedRunner(HandlerRunner):
    """An aiohttp application behind the same guard and `_Handler`: aiohttp's `AppRunner` runs
    its start-up and clean-up and makes its entry point (`request_handler`, `request_factory`),
    which our `_WebServer` serves; the guard wraps that entry point, so no middleware machinery
    runs on every request. (`AppRunner` has no public hook for the connection handler.)"""

    def __init__(self, app: web.Application, max_header_size: int, bounds: Bounds | None = None):
        super().__init__(self._unused, max_header_size, 0, None, bounds)
        self.app = app
        self.app_runner: web.AppRunner | None = None

    @staticmethod
    async def _unused(request: web.BaseRequest) -> web.StreamResponse:  # pragma: no cover
        raise AssertionError("an application answers through its own entry point")

    async def _make_server(self) -> _WebServer:
        self.app_runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self.app_runner.setup()
        made = self.app_runner.server
        assert made is not None
        return self._web_server(made.request_handler, request_factory=made.request_factory)

    async def cleanup(self) -> None:
        await super().cleanup()
        if self.app_runner is not None:
            await self.app_runner.cleanup()
            self.app_runner = None


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
) -> HandlerRunner:
    """An application's runner, or a lone handler's (`client_max_size` bounds its bodies)."""
    if isinstance(app, web.Application):
        return GuardedRunner(app, max_header_size, bounds)
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
        assert self.runner.runner is not None
        site = web.TCPSite(
            self.runner.runner,
            self.host,
            self.port,
            ssl_context=self.ssl_context,
            reuse_address=True,
        )
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise cannot_listen(self.host, self.port, exc) from None
        address = self.runner.addresses[0]
        host, port = address[:2]
        self.port = port
        scheme = "https" if self.ssl_context else "http"
        shown = f"[{host}]" if len(address) == 4 else host  # an IPv6 socket's address
        self.url = f"{scheme}://{shown}:{port}"
        if not is_loopback(self.host):
            print(
                f"warning: listening on {self.host}, reachable from other machines", file=sys.stderr
            )
        return self.url

    async def stop(self) -> None:
        await self.runner.cleanup()
