"""The recorder's client to the upstream: keep-alive HTTP/1.1 on asyncio, parsed by httptools.

Record mode forwards one request and needs the whole answer back as bytes: no redirects, no
cookies, no decompression, no tracing. aiohttp's ClientSession does all of those per request and
cost about 70 us of CPU per exchange, the largest share of record mode's; this client sends the
request head in one write and lets llhttp (httptools, as uvicorn uses) parse the answer.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from .cassette import one_line

#: RFC 9110 9.2.2: requests a client may send again when a kept-alive connection dies under them.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: Methods whose empty body is still announced with Content-Length: 0.
WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


SWITCHED = (
    "the upstream answered 101 Switching Protocols (an upgrade, e.g. to WebSocket): only HTTP "
    "exchanges are proxied and recorded"
)


class UpstreamError(Exception):
    """The exchange failed; the message says how, in words for the app's 502."""


class TooLarge(UpstreamError):
    """The answer is larger than the limit."""


class _Stale(UpstreamError):
    """A kept-alive connection closed before any byte of the answer."""


@dataclass(slots=True)
class Answer:
    status: int
    reason: str
    pairs: list[tuple[str, str]]  # the headers in order, as plain strings
    body: bytes
    # what a proxy needs without building a multidict: the names Connection lists, and the
    # codings the body is in ("gzip, br"), comma-joined across repeated headers
    connection: list[str]
    content_encoding: str | None

    @property
    def headers(self) -> CIMultiDict[str]:
        return CIMultiDict(self.pairs)


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int
    authority: str  # the Host header


@lru_cache(maxsize=256)
def split_base(url: str) -> tuple[Origin, str]:
    """The origin, and the base path every request target goes under ("" or "/api")."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError(f"not an http(s) origin: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    where = Origin(parts.scheme, parts.hostname, port, parts.netloc.rpartition("@")[2])
    return where, parts.path.rstrip("/")


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; one exchange at a time."""

    # the exchange's answer so far, set anew by _reset() as each request starts
    reason: str
    header_list: list[tuple[str, str]]
    connection: list[str]
    content_encoding: str | None
    chunks: list[bytes]
    size: int
    headers_done: bool
    framed: bool

    def __init__(self, limit: int):
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future[Answer] | None = None
        self.deadline = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection's
        # kept: each get_running_loop() costs a getpid() system call (CPython checks for forks)
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self._close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError(SWITCHED))  # what follows is not HTTP: never read
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the upstream's answer is not valid HTTP/1.1 ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.headers_done and not self.framed:
            self._finish(keep=False)  # an answer delimited by the end of the connection
        elif not self.received:
            waiter.set_exception(_Stale("the upstream closed the connection before answering"))
        else:
            why = f": {exc}" if exc else ""
            waiter.set_exception(UpstreamError(f"the connection was reset mid-body{why}"))

    # httptools callbacks

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")

    def on_message_begin(self) -> None:
        if self.waiter is not None and self.waiter.done():
            self._close()  # a second answer to one request: the connection cannot be trusted

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a chunked answer's trailer fields: dropped, as aiohttp's client did
        key = name.decode("utf-8", "surrogateescape")
        # llhttp drops the OWS before a value but keeps the OWS after it (RFC 9112 5.1)
        text = value.decode("utf-8", "surrogateescape").strip(" \t")
        lower = key.lower()
        if lower == "content-length":
            self.framed = True
            if value.isdigit() and int(value) > self.limit:
                self._fail(TooLarge("the answer is larger than max_body_size"))
        elif lower == "transfer-encoding":
            self.framed = True
        elif lower == "connection":
            self.connection.append(text)
        elif lower == "content-encoding":
            known = self.content_encoding
            self.content_encoding = f"{known}, {text}" if known else text
        self.header_list.append((key, text))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        status = self.parser.get_status_code()
        if status == 101:
            self._fail(UpstreamError(SWITCHED))
            return
        if status in (204, 304) or self.head:
            self.framed = True
            if self.head and status >= 200:
                # no body follows; the next exchange gets a new parser
                self._finish(keep=self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.limit:
            self._fail(TooLarge("the answer is larger than max_body_size"))
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        if self.parser.get_status_code() < 200:  # 100 Continue & co.: the answer follows
            self._reset()
            return
        self._finish(keep=self.parser.should_keep_alive())

    # the exchange

    def _reset(self) -> None:
        self.reason = ""
        self.header_list = []
        self.connection = []
        self.content_encoding = None
        self.chunks = []
        self.size = 0
        self.headers_done = False
        self.framed = False

    def start(self, head: bytes, body: bytes, is_head: bool) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._reset()
        self.received = False
        self.keep = False
        self.head = is_head
        self.parser = httptools.HttpResponseParser(self)
        self.waiter = self.loop.create_future()
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        return self.waiter

    def _finish(self, keep: bool) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if not one_line(self.reason):  # httptools lets it through; no cassette could hold it
            self._fail(UpstreamError(
                "the upstream's answer is not valid HTTP/1.1 (a control character in its reason "
                f"phrase: {self.reason[:40]!r})"))
            return
        self.keep = keep and not self.closed
        answer = Answer(
            self.parser.get_status_code(),
            self.reason,
            self.header_list,
            b"".join(self.chunks),
            self.connection,
            self.content_encoding,
        )
        self._reset()  # whatever the parser still sees cannot reach the answer handed out
        waiter.set_result(answer)

    def _fail(self, exc: UpstreamError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self._close()

    def _close(self) -> None:
        self.keep = False
        if self.transport is not None:
            self.transport.close()


class Upstream:
    """Kept-alive connections per origin; `request()` is one whole exchange."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None, timeout: float, limit: int,
                 max_idle: int = 64):
        self.ssl = ssl_context
        self.timeout = timeout
        self.limit = limit
        self.max_idle = max_idle  # kept-alive connections per origin
        self.idle: dict[Origin, list[_Connection]] = {}
        # One timer for all exchanges in flight rather than one per exchange (asyncio.timeout
        # costs a few us each): a sweep every tenth of the timeout fails the overdue ones.
        self.inflight: set[_Connection] = set()
        self.sweep_every = min(1.0, max(0.01, timeout / 10))
        self.sweeper: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the one it runs on, once known
        self.closed = False

    async def request(
        self, method: str, base: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> Answer:
        """Send `method target` to `base` (an origin, perhaps with a base path that `target`
        goes under); the answer, or UpstreamError."""
        where, prefix = split_base(base)
        lines = [f"{method} {prefix}{target} HTTP/1.1\r\nHost: {where.authority}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        if body or method in WITH_BODY:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        head = "".join(lines)
        if not head.count("\r") == head.count("\n") == len(lines) + 1:
            raise UpstreamError("a header carries a line break; not sent")
        raw = head.encode("utf-8", "surrogateescape")
        if self.closed:
            raise UpstreamError("the proxy is stopping")
        if self.loop is None:
            self.loop = asyncio.get_running_loop()  # once: each call costs a getpid()
        deadline = self.loop.time() + self.timeout  # one for connecting, sending and a retry
        try:
            return await self._exchange(where, raw, body, method, deadline, reuse=True)
        except _Stale:
            if method not in IDEMPOTENT:
                raise
            return await self._exchange(where, raw, body, method, deadline, reuse=False)

    async def _exchange(
        self, where: Origin, head: bytes, body: bytes, method: str, deadline: float, reuse: bool
    ) -> Answer:
        conn = self._idle(where) if reuse else None
        fresh = conn is None
        if conn is None:
            conn = await self._connect(where, deadline)
        conn.deadline = deadline
        self.inflight.add(conn)
        if self.sweeper is None:
            self._sweep()
        try:
            answer = await conn.start(head, body, method == "HEAD")
        except _Stale:
            conn._close()
            if fresh:  # a new connection closed at once: that is the upstream's answer
                raise UpstreamError("the upstream closed the connection before answering") from None
            raise
        except BaseException:
            conn._close()  # timed out, cancelled or failed: its state is unknown
            raise
        finally:
            self.inflight.discard(conn)
        if conn.keep and not self.closed:
            pool = self.idle.setdefault(where, [])
            if len(pool) < self.max_idle:
                pool.append(conn)
            else:
                conn._close()
        else:
            conn._close()
        return answer

    def _idle(self, where: Origin) -> _Connection | None:
        pool = self.idle.get(where)
        while pool:
            conn = pool.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _sweep(self) -> None:
        assert self.loop is not None  # set by request(), the only way in
        now = self.loop.time()
        for conn in [c for c in self.inflight if c.deadline <= now]:
            conn._fail(UpstreamError(f"timed out after {self.timeout:g}s"))
        self.sweeper = None
        if self.inflight:
            self.sweeper = self.loop.call_later(self.sweep_every, self._sweep)

    async def _connect(self, where: Origin, deadline: float) -> _Connection:
        assert self.loop is not None
        loop = self.loop
        tls = self.ssl if where.scheme == "https" else None
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.limit), where.host, where.port,
                    ssl=tls, server_hostname=where.host if tls else None,
                )
        except TimeoutError:
            raise UpstreamError(f"timed out after {self.timeout:g}s connecting") from None
        except ssl.SSLError as exc:
            raise UpstreamError(f"TLS with {where.host}:{where.port} failed ({exc})") from None
        except OSError as exc:
            raise UpstreamError(
                f"connection refused or unreachable ({exc.strerror or exc})"
            ) from None
        return conn

    async def close(self) -> None:
        """Close every connection; exchanges still in flight fail (none do once the server
        that uses this client has drained)."""
        self.closed = True
        for conn in list(self.inflight):
            conn._fail(UpstreamError("the proxy is stopping"))
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for pool in self.idle.values():
            for conn in pool:
                conn._close()
        self.idle.clear()
