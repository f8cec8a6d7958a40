"""Forward-proxy mode: the app sets HTTPS_PROXY/HTTP_PROXY instead of pointing its base URL here.

One listener sniffs the first request head of every connection:

- `CONNECT host:port` to an intercepted host: answer `200 Connection Established`, terminate TLS
  with a leaf for `host` signed by the local CA, and hand the decrypted connection to the same
  handler reverse mode serves (the recorder's or the replayer's `handle`), with
  `https://host:port` as that connection's upstream. A tunnel whose first byte does not open a
  TLS handshake carries plain HTTP (undici's ProxyAgent tunnels http:// URLs too):
  `http://host:port` is its upstream.
- `CONNECT` to any other host (outside `--hosts`): tunnelled untouched (a raw byte pipe) while
  recording; refused with 403 while replaying, so nothing leaves the machine.
- Anything else (plain HTTP proxy requests in absolute form, and origin-form requests such as
  webhooks arriving at the proxy itself): handed to the handler as it is; `_dispatch` tells it
  each request's upstream by setting `server.UPSTREAM_KEY` on the request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from yarl import URL

from .errors import ReplayProxyError
from .headers import answer_headers, request_headers
from .ingress import is_ingress, read_request
from .server import (
    DEFAULT_HEAD_TIMEOUT,
    DEFAULT_MAX_HEADER_SIZE,
    UPSTREAM_KEY,
    Handler,
    HandlerRunner,
    Verbatim,
    cannot_listen,
    check_listen,
    is_loopback,
    origin_form,
)
from .tls import system_roots_pem, upstream_context
from .upstream import Upstream, UpstreamError

if TYPE_CHECKING:
    from .ca import CertificateAuthority

log = logging.getLogger("replayproxy")

MAX_HEAD = 64 * 1024  # a CONNECT or request head larger than this is refused
HANDSHAKE_TIMEOUT = 30.0
HEAD_TIMEOUT = DEFAULT_HEAD_TIMEOUT  # no complete first head by then: closed
CONNECT_TIMEOUT = 30.0


def normalise_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host[:-1] if host.endswith(".") else host


def parse_hosts(hosts: str | Iterable[str] | None) -> frozenset[str] | None:
    """`--hosts a,b` -> {'a', 'b'}; None (or empty) intercepts every host."""
    if hosts is None:
        return None
    items = hosts.split(",") if isinstance(hosts, str) else list(hosts)
    names = frozenset(normalise_host(h) for h in items if h and h.strip())
    return names or None


def split_authority(target: str) -> tuple[str, int]:
    """'host:443' / '[::1]:443' -> (host, port); ValueError when it is not host:port."""
    if target.startswith("["):
        host, sep, rest = target[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(target)
        port = rest[1:]
    else:
        host, sep, port = target.rpartition(":")
        if not sep:
            raise ValueError(target)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(target)
    return normalise_host(host), int(port)


def origin(scheme: str, host: str, port: int) -> str:
    """'https://host' (default port left out), 'https://host:8443', 'https://[::1]:8443'."""
    try:
        shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        shown = host
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{shown}" if port == default else f"{scheme}://{shown}:{port}"


def _plain(status: int, reason: str, message: str) -> bytes:
    body = message.encode("utf-8") + b"\n"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class ForwardServer:
    """Serve `handler` as a forward proxy on host:port; `url` is known once started.

    `recording` decides what happens to hosts outside `hosts`: tunnelled (True) or refused.
    `has_upstream` says whether origin-form requests (not to the webhook ingress) have somewhere
    to go (recording with --upstream too); a replayer answers them from the cassette anyway.
    """

    def __init__(
        self,
        handler: Handler,
        ca: CertificateAuthority,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        hosts: str | Iterable[str] | None = None,
        recording: bool = False,
        has_upstream: bool = True,
        upstream_ssl: ssl.SSLContext | None = None,
        allow_remote: bool = False,
        timeout: float = 30.0,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        client_max_size: int = 1024**2,
    ):
        check_listen(host, allow_remote)
        self.handler = handler
        self.ca = ca
        self.host = host
        self.port = port
        self.hosts = parse_hosts(hosts)
        self.recording = recording
        self.has_upstream = has_upstream
        self.upstream_ssl = upstream_ssl
        self.timeout = timeout
        self.url = ""
        self.refused: list[str] = []  # CONNECT targets refused while replaying
        self.tunnelled: list[str] = []  # CONNECT targets piped untouched while recording
        self.runner = HandlerRunner(self._dispatch, max_header_size, client_max_size)
        self._server: asyncio.AbstractServer | None = None
        self._origins: dict[asyncio.BaseTransport, str] = {}
        self._open: set[asyncio.Transport] = set()  # sniffing or piping: ours to close
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: Upstream | None = None  # plain HTTP to hosts outside --hosts

    def intercepts(self, host: str) -> bool:
        """Every host without --hosts; else a named host, or a subdomain of a `*.name` entry."""
        if self.hosts is None:
            return True
        name = normalise_host(host)
        return name in self.hosts or any(
            h.startswith("*.") and name.endswith(h[1:]) for h in self.hosts
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        await self.runner.setup()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Front(self), self.host, self.port, reuse_address=True
            )
        except OSError as exc:
            await self.runner.cleanup()
            raise cannot_listen(self.host, self.port, exc) from None
        sock = self._server.sockets[0]
        host, port = sock.getsockname()[:2]
        self.port = port
        self.url = origin("http", host, port) if port != 80 else f"http://{host}:80"
        if not is_loopback(self.host):
            log.warning("warning: listening on %s, reachable from other machines", self.host)
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in list(self._open):
            transport.abort()
        self._open.clear()
        await self.runner.cleanup()  # closes the decrypted and plain HTTP connections
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _protocol(self) -> Any:
        """A fresh aiohttp connection handler, for a connection handed over once started."""
        server = self.runner.server
        assert server is not None, "start() sets the runner up"
        return server()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the first request head of a connection ----------------------------------------------

    def _connect(self, transport: asyncio.Transport, target: str, rest: bytes) -> None:
        try:
            host, port = split_authority(target)
        except ValueError:
            transport.write(_plain(400, "Bad Request", f"CONNECT needs host:port, got {target!r}"))
            transport.close()
            return
        if not self.intercepts(host):
            if not self.recording:
                self.refused.append(f"{host}:{port}")
                log.warning(
                    "replayproxy: refused CONNECT %s:%s while replaying (not in --hosts); "
                    "nothing leaves this machine",
                    host,
                    port,
                )
                transport.write(
                    _plain(
                        403,
                        "Forbidden",
                        f"replayproxy is replaying: CONNECT {host}:{port} is refused because "
                        f"{host} is not an intercepted host (--hosts); nothing leaves this machine",
                    )
                )
                transport.close()
                return
            self._spawn(self._tunnel(transport, host, port, rest))
            return
        if rest:  # a client that starts TLS before our 200: not something clients do
            transport.write(_plain(400, "Bad Request", "data sent before 200 to CONNECT"))
            transport.close()
            return
        self._spawn(self._intercept(transport, host, port))

    async def _intercept(self, transport: asyncio.Transport, host: str, port: int) -> None:
        try:
            context = self.ca.server_context(host)
        except ReplayProxyError as exc:
            transport.write(_plain(400, "Bad Request", str(exc)))
            transport.close()
            return
        self._open.add(transport)
        transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        attach = _Attach()
        loop = asyncio.get_running_loop()
        first = await _first_byte(transport)
        if not first:
            transport.abort()
            self._open.discard(transport)
            return
        if first != TLS_HANDSHAKE:
            self._open.discard(transport)
            self._origins[transport] = origin("http", host, port)
            transport.set_protocol(attach)
            forget = lambda: self._origins.pop(transport, None)  # noqa: E731
            attach.attach(self._protocol(), transport, forget)
            transport.resume_reading()
            return
        try:
            tls = await loop.start_tls(
                transport,
                attach,
                context,
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.warning(
                "replayproxy: TLS handshake for %s:%s failed (%s); does the client trust the "
                "local CA %s?",
                host,
                port,
                exc,
                self.ca.cert_path,
            )
            transport.abort()
            self._open.discard(transport)
            return
        self._open.discard(transport)
        if tls is None:  # pragma: no cover - the connection went away during the handshake
            transport.abort()
            return
        self._origins[tls] = origin("https", host, port)
        attach.attach(self._protocol(), tls, lambda: self._origins.pop(tls, None))

    async def _tunnel(self, client: asyncio.Transport, host: str, port: int, rest: bytes) -> None:
        loop = asyncio.get_running_loop()
        self._open.add(client)
        pair = _Pair(self)
        try:
            upstream, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Pipe(pair, 1), host, port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            self._open.discard(client)
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            client.write(_plain(502, "Bad Gateway", f"cannot reach {host}:{port}: {reason}"))
            client.close()
            return
        self.tunnelled.append(f"{host}:{port}")
        log.info("replayproxy: tunnelling CONNECT %s:%s untouched (not in --hosts)", host, port)
        client.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        pipe = _Pipe(pair, 0)
        client.set_protocol(pipe)
        pipe.connection_made(client)
        if rest:
            upstream.write(rest)
        client.resume_reading()

    # -- every HTTP request on a handed-over connection --------------------------------------

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        upstream = self._origins.get(transport) if transport is not None else None
        raw = request.raw_path
        if upstream is None and raw.lower().startswith(("http://", "https://")):
            url = URL(raw)
            host = normalise_host(url.host or "")
            port = url.port or (443 if url.scheme == "https" else 80)
            if not (port == self.port and (is_loopback(host) or host == self.host)):
                upstream = origin(url.scheme, host, port)
                if not self.intercepts(host):
                    return await self._not_intercepted(request, upstream, host)
        if upstream is not None:
            request[UPSTREAM_KEY] = upstream
        elif self.recording and not self.has_upstream and not is_ingress(request.rel_url.path):
            return web.json_response(
                {
                    "error": "this is a forward proxy: send requests through it as a proxy "
                    "(HTTPS_PROXY / HTTP_PROXY), or start it with --upstream URL for "
                    "requests sent to it directly",
                    "request": f"{request.method} {request.rel_url}",
                },
                status=400,
            )
        return await self.handler(request)

    async def _not_intercepted(
        self, request: web.BaseRequest, upstream: str, host: str
    ) -> web.StreamResponse:
        """A plain HTTP request for a host outside --hosts: passed on unrecorded, or refused."""
        if not self.recording:
            self.refused.append(upstream)
            return web.json_response(
                {
                    "error": f"replayproxy is replaying: {host} is not an intercepted host "
                    "(--hosts); nothing leaves this machine",
                    "request": f"{request.method} {upstream}{request.rel_url}",
                },
                status=403,
            )
        if self._client is None:
            self._client = Upstream(  # unrecorded, so no size limit, as before
                ssl_context=self.upstream_ssl or upstream_context(),
                timeout=self.timeout,
                limit=sys.maxsize,
            )
        body = await read_request(request, "request body", self.runner.client_max_size)
        if isinstance(body, web.Response):
            return body
        headers = request_headers(request.headers)
        try:
            answer = await self._client.request(
                request.method, upstream, origin_form(request.raw_path), headers, body
            )
        except UpstreamError as exc:
            return web.json_response(
                {"error": f"{upstream} failed: {exc}", "upstream": upstream}, status=502
            )
        return Verbatim(
            status=answer.status,
            reason=answer.reason,
            body=answer.body,
            headers=answer_headers(answer.pairs, answer.connection, request.method == "HEAD"),
        )


#: The first byte of a TLS record carrying a handshake (a ClientHello opens every TLS session).
TLS_HANDSHAKE = b"\x16"


async def _first_byte(transport: asyncio.Transport) -> bytes:
    """The tunnel's first byte, left unread (b"" when the client closes or is silent): peeked
    through a duplicate of the socket, since the transport must hand TLS every byte."""
    sock = transport.get_extra_info("socket")
    if sock is None:  # pragma: no cover - every transport here sits on a socket
        return TLS_HANDSHAKE
    peek = socket.socket(fileno=os.dup(sock.fileno()))
    peek.setblocking(False)
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(peek.fileno(), readable)
    try:
        await asyncio.wait_for(ready, HANDSHAKE_TIMEOUT)
        return peek.recv(1, socket.MSG_PEEK)
    except (TimeoutError, OSError):
        return b""
    finally:
        loop.remove_reader(peek.fileno())
        peek.close()


class _Front(asyncio.Protocol):
    """Reads a connection's first request head, then hands the connection on."""

    def __init__(self, owner: ForwardServer):
        self.owner = owner
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owner._open.add(self.transport)
        self.timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_plain(408, "Request Timeout", "no request head in time"))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                transport.write(_plain(431, "Request Header Fields Too Large", "head too large"))
                transport.close()
            return
        self.timer.cancel()
        self.owner._open.discard(transport)
        head, rest = bytes(self.buffer[:end]), bytes(self.buffer[end + 4 :])
        data, self.buffer = bytes(self.buffer), bytearray()
        words = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(words) == 3 and words[0].upper() == "CONNECT":
            transport.pause_reading()
            self.owner._connect(transport, words[1], rest)
            return
        handler = self.owner._protocol()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        if self.transport is not None:
            self.owner._open.discard(self.transport)


class _Attach(asyncio.Protocol):
    """The decrypted side of an intercepted CONNECT: holds early bytes until aiohttp's handler
    is attached, then passes everything on (and forgets the connection's upstream when done)."""

    def __init__(self) -> None:
        self.handler: Any = None
        self.early = bytearray()
        self.eof = False
        self.lost: tuple[Exception | None] | None = None
        self.on_lost: Any = None

    def attach(self, handler: Any, transport: asyncio.BaseTransport, on_lost: Any) -> None:
        self.handler, self.on_lost = handler, on_lost
        handler.connection_made(transport)
        if self.early:
            handler.data_received(bytes(self.early))
            self.early.clear()
        if self.eof:
            handler.eof_received()
        if self.lost is not None:
            self.connection_lost(self.lost[0])

    def data_received(self, data: bytes) -> None:
        if self.handler is None:
            self.early += data
        else:
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self.handler is None:
            self.eof = True
            return True
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handler is None:
            self.lost = (exc,)
            return
        if self.on_lost is not None:
            self.on_lost()
        self.handler.connection_lost(exc)


class _Pair:
    """Both ends of a raw tunnel."""

    def __init__(self, owner: ForwardServer):
        self.owner = owner
        self.ends: list[asyncio.Transport | None] = [None, None]
        self.early: list[bytearray] = [bytearray(), bytearray()]  # for an end not yet there
        self.eofs = 0

    def close(self) -> None:
        for end in self.ends:
            if end is not None:
                end.close()
                self.owner._open.discard(end)


class _Pipe(asyncio.Protocol):
    """One end of a raw tunnel: bytes in here go out the other end, with back-pressure."""

    def __init__(self, pair: _Pair, side: int):
        self.pair = pair
        self.side = side

    @property
    def peer(self) -> asyncio.Transport | None:
        return self.pair.ends[1 - self.side]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        end = cast(asyncio.Transport, transport)
        self.pair.ends[self.side] = end
        self.pair.owner._open.add(end)
        early = self.pair.early[self.side]
        if early:  # the other end spoke first (a server greeting) before this end existed
            end.write(bytes(early))
            early.clear()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.write(data)
        else:
            self.pair.early[1 - self.side] += data

    def eof_received(self) -> bool:
        self.pair.eofs += 1
        peer = self.peer
        if self.pair.eofs >= 2 or peer is None or not peer.can_write_eof():
            self.pair.close()
            return False
        peer.write_eof()
        return True

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.close()


def trust_bundle(ca: CertificateAuthority) -> Path:
    """`bundle.pem` in the CA folder: the local CA followed by the system's roots.

    SSL_CERT_FILE replaces a client's trust store; pointing it at this bundle rather than at the
    CA alone keeps tunnelled hosts (outside --hosts) verifiable by the command.
    """
    path = ca.directory / "bundle.pem"
    data = ca.cert_path.read_bytes().rstrip(b"\n") + b"\n" + system_roots_pem()
    if not path.exists() or path.read_bytes() != data:
        fd, tmp = tempfile.mkstemp(dir=ca.directory, prefix=".bundle.", suffix=".tmp")
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path


def proxy_env(url: str, ca: CertificateAuthority) -> dict[str, str]:
    """What `run --forward` exports: the proxy for both schemes and the CA for the usual clients."""
    env = {name: url for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}
    env.update(trust_env(ca))
    return env


def trust_env(ca: CertificateAuthority) -> dict[str, str]:
    """The CA variables: the OpenSSL-style ones get CA + system roots, Node gets the CA."""
    bundle = str(trust_bundle(ca))
    env = {name: bundle for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env["NODE_EXTRA_CA_CERTS"] = str(ca.cert_path)  # Node adds it to its own roots
    return env
