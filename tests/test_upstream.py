"""The recorder's upstream client (replayproxy.upstream.Upstream) against real local servers.

Raw `asyncio.start_server` servers where the test needs the exact bytes on the wire (framing,
broken answers, closes at chosen moments), aiohttp where a well-behaved server is enough. All on
127.0.0.1 with ephemeral ports; nothing mocked.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import run, serving

from replayproxy.ca import CertificateAuthority
from replayproxy.upstream import Answer, TooLarge, Upstream, UpstreamError, split_base

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
BOUND = 2.0  # seconds: an upper bound on waits for events that should come at once


def client(timeout: float = 5.0, limit: int = 1 << 20, **kw: Any) -> Upstream:
    return Upstream(ssl_context=None, timeout=timeout, limit=limit, **kw)


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head + Content-Length body) as raw bytes; None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    return head + (await reader.readexactly(int(length[1])) if length else b"")


Handler = Callable[["Raw", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Raw:
    """A raw TCP server: `handle` runs once per accepted connection; requests it reads via
    `self.read(reader)` land in `received`. Counts connections; stops them all on exit."""

    def __init__(self, handle: Handler, ssl_context: ssl.SSLContext | None = None):
        self.handle = handle
        self.ssl = ssl_context
        self.accepted = 0
        self.received: list[bytes] = []
        self.eof = asyncio.Event()  # a client closed a connection (the server read EOF)
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Raw:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0, ssl=self.ssl)
        port = self.server.sockets[0].getsockname()[1]
        self.base = f"{'https' if self.ssl else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.wait_for(self.server.wait_closed(), BOUND)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.accepted += 1
        self.writers.append(writer)
        try:
            await self.handle(self, reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def read(self, reader: asyncio.StreamReader) -> bytes | None:
        request = await read_request(reader)
        if request is None:
            self.eof.set()
        else:
            self.received.append(request)
        return request


def answering(*answers: bytes) -> Handler:
    """The server's n-th request, on whichever connection, gets the n-th answer (the last one
    repeats); a connection ends when the client closes it."""

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        while await server.read(reader) is not None:
            writer.write(answers[min(len(server.received), len(answers)) - 1])
            await writer.drain()

    return handle


def closed_port() -> int:
    """A port that was just bound and closed: nothing listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def fails(coro: Awaitable[Answer], kind: type[Exception] = UpstreamError) -> str:
    with pytest.raises(kind) as info:
        await coro
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# requests and answers


def test_get_sends_host_and_headers_in_order_and_reads_the_whole_answer() -> None:
    """The head is exactly what the recorder asked for; repeated answer headers stay separate."""
    answer = (b"HTTP/1.1 201 Made Here\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\n"
              b"X-Odd:  padded \r\nSet-Cookie: b=2\r\n\r\nhello")

    async def go() -> None:
        async with Raw(answering(answer)) as server:
            up = client()
            try:
                got = await up.request("GET", server.base, "/v1/jobs?x=1&y=%20",
                                       [("X-B", "2"), ("X-A", "1"), ("x-a", "3")], b"")
            finally:
                await up.close()
            host = server.base.removeprefix("http://")
            assert server.received == [
                f"GET /v1/jobs?x=1&y=%20 HTTP/1.1\r\nHost: {host}\r\n"
                "X-B: 2\r\nX-A: 1\r\nx-a: 3\r\n\r\n".encode()
            ]  # no Content-Length for an empty GET
            assert (got.status, got.reason, got.body) == (201, "Made Here", b"hello")
            assert got.headers.getall("set-cookie") == ["a=1", "b=2"]
            assert got.headers["X-Odd"] == "padded"
            assert list(got.headers.items()) == [  # in the order sent
                ("Content-Length", "5"), ("Set-Cookie", "a=1"), ("X-Odd", "padded"),
                ("Set-Cookie", "b=2")]

    run(go())


def test_post_announces_its_body_length_and_an_empty_post_announces_zero() -> None:
    """Content-Length comes from the bytes sent; an empty POST still says 0 (RFC 9110 8.6)."""

    async def go() -> None:
        async with Raw(answering(OK)) as server:
            up = client()
            try:
                for body in ('{"a": "é"}'.encode(), b""):
                    got = await up.request("POST", server.base, "/p",
                                           [("Content-Type", "application/json")], body)
                    assert (got.status, got.body) == (200, b"ok")
            finally:
                await up.close()
            host = server.base.removeprefix("http://")
            assert server.received == [
                f"POST /p HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body
                for body in ('{"a": "é"}'.encode(), b"")
            ]

    run(go())


def test_a_large_body_arrives_whole() -> None:
    """Bodies past 64 KiB go in a second write; the server still reads all of them, in order."""
    body = bytes(range(256)) * 1024

    async def go() -> None:
        async with Raw(answering(OK)) as server:
            up = client()
            try:
                assert (await up.request("PUT", server.base, "/big", [], body)).body == b"ok"
            finally:
                await up.close()
            assert server.received[0].endswith(b"\r\n\r\n" + body)
            assert f"Content-Length: {len(body)}\r\n".encode() in server.received[0]

    run(go())


# ---------------------------------------------------------------------------------------------
# framing


def test_chunked_answer_is_dechunked_and_its_connection_reused() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")

    async def go() -> None:
        async with Raw(answering(chunked, OK)) as server:
            up = client()
            try:
                assert (await up.request("GET", server.base, "/a", [], b"")).body == b"hello world"
                assert (await up.request("GET", server.base, "/b", [], b"")).body == b"ok"
            finally:
                await up.close()
            assert server.accepted == 1

    run(go())


def test_an_answer_without_length_ends_with_the_connection() -> None:
    """No Content-Length, no chunking: the body is everything until the server closes."""

    async def until_close(server: Raw, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        await server.read(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall ")
        await writer.drain()
        await asyncio.sleep(0.02)  # a second packet: the end is the close, not the first read
        writer.write(b"of it")

    async def go() -> None:
        async with Raw(until_close) as server:
            up = client()
            try:
                for _ in range(2):
                    assert (await up.request("GET", server.base, "/", [], b"")).body == b"all of it"
            finally:
                await up.close()
            assert server.accepted == 2  # a closed connection is not reused

    run(go())


def test_204_and_304_have_no_body_even_with_a_content_length() -> None:
    """A 304 may carry the representation's Content-Length; no body follows it. If the client
    waited for those bytes, the next answer on the connection would be eaten as the body."""

    async def go() -> None:
        async with Raw(answering(b"HTTP/1.1 204 No Content\r\n\r\n",
                                 b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                                 OK)) as server:
            up = client()
            try:
                got = [await up.request("GET", server.base, "/", [], b"") for _ in range(3)]
            finally:
                await up.close()
            assert [(a.status, a.body) for a in got] == [(204, b""), (304, b""), (200, b"ok")]
            assert got[1].headers["Content-Length"] == "10"
            assert server.accepted == 1

    run(go())


def test_head_has_a_length_but_no_body_and_the_connection_serves_the_next_get() -> None:
    async def go() -> None:
        async with Raw(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")) as server:
            up = client(timeout=1.0)
            try:
                head = await up.request("HEAD", server.base, "/", [], b"")
                get = await up.request("GET", server.base, "/", [], b"")
            finally:
                await up.close()
            assert (head.status, head.headers["Content-Length"], head.body) == (200, "5", b"")
            assert (get.status, get.body) == (200, b"hello")
            assert server.accepted == 1
            assert [r.split(b" ")[0] for r in server.received] == [b"HEAD", b"GET"]

    run(go())


def test_head_answered_with_connection_close_is_not_reused() -> None:
    """Connection: close on a HEAD answer means the next request needs a new connection; a POST
    sent on the dying one would fail (it may not be retried)."""

    async def head_then_close(server: Raw, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        request = await server.read(reader)
        if request is not None and request.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        else:
            writer.write(OK)
        await writer.drain()

    async def go() -> None:
        async with Raw(head_then_close) as server:
            up = client()
            try:
                assert (await up.request("HEAD", server.base, "/", [], b"")).status == 200
                assert (await up.request("POST", server.base, "/", [], b"x")).body == b"ok"
            finally:
                await up.close()
            assert server.accepted == 2

    run(go())


def test_interim_1xx_answers_are_skipped() -> None:
    """100 Continue and 103 Early Hints come before the real answer; their headers are not its."""

    async def interim(server: Raw, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while await server.read(reader) is not None:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                         b"HTTP/1.1 202 Accepted\r\nContent-Length: 4\r\nX-Real: 1\r\n\r\ndone")
            await writer.drain()

    async def go() -> None:
        async with Raw(interim) as server:
            up = client()
            try:
                for _ in range(2):
                    got = await up.request("POST", server.base, "/", [], b"body")
                    assert (got.status, got.reason, got.body) == (202, "Accepted", b"done")
                    assert list(got.headers.items()) == [("Content-Length", "4"), ("X-Real", "1")]
            finally:
                await up.close()
            assert server.accepted == 1

    run(go())


# ---------------------------------------------------------------------------------------------
# keep-alive


def peers_app(peers: list[Any], concurrent: int = 0) -> web.Application:
    """Notes each request's client address (one per connection); with `concurrent`, holds the
    first that many requests until all of them have arrived."""
    arrived = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        if len(peers) == concurrent:
            arrived.set()
        if len(peers) <= concurrent:
            await asyncio.wait_for(arrived.wait(), BOUND)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handle)
    return app


def test_sequential_requests_share_one_connection() -> None:
    async def go() -> None:
        peers: list[Any] = []
        async with serving(peers_app(peers)) as base:
            up = client()
            try:
                for _ in range(5):
                    assert (await up.request("GET", base, "/", [], b"")).body == b"ok"
            finally:
                await up.close()
        assert len(peers) == 5 and len(set(peers)) == 1

    run(go())


def test_concurrent_requests_open_several_connections_then_reuse_them() -> None:
    async def go() -> None:
        peers: list[Any] = []
        async with serving(peers_app(peers, concurrent=3)) as base:
            up = client()
            try:
                answers = await asyncio.gather(
                    *(up.request("GET", base, "/", [], b"") for _ in range(3)))
                assert [a.body for a in answers] == [b"ok"] * 3
                for _ in range(3):  # later ones take the idle connections, open none
                    await up.request("GET", base, "/", [], b"")
            finally:
                await up.close()
        assert len(set(peers[:3])) == 3
        assert set(peers[3:]) <= set(peers[:3])

    run(go())


def test_connection_close_answers_are_not_reused() -> None:
    """The client honours the header itself: this server would keep the connection open (and
    answer again on it), yet each request must go on a new connection."""

    async def go() -> None:
        closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        async with Raw(answering(closing)) as server:
            up = client()
            try:
                for method in ("GET", "POST", "GET"):
                    assert (await up.request(method, server.base, "/", [], b"")).body == b"ok"
            finally:
                await up.close()
            assert server.accepted == 3

    run(go())


def first_answer_then(drop_second: bool) -> Handler:
    """Answers the first request on each connection (keep-alive, no `Connection: close`).
    Then either reads the second request and closes without answering (`drop_second`: the
    connection died while the request was on its way), or closes at once, while idle."""

    async def handle(server: Raw, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        if await server.read(reader) is None:
            return
        writer.write(OK)
        await writer.drain()
        if drop_second:
            await server.read(reader)

    return handle


def test_a_kept_alive_connection_dying_before_answering_a_get_is_retried_once() -> None:
    async def go() -> None:
        async with Raw(first_answer_then(drop_second=True)) as server:
            up = client()
            try:
                assert (await up.request("GET", server.base, "/1", [], b"")).body == b"ok"
                assert (await up.request("GET", server.base, "/2", [], b"")).body == b"ok"
            finally:
                await up.close()
            assert [r.split(b"\r\n")[0] for r in server.received] == [
                b"GET /1 HTTP/1.1", b"GET /2 HTTP/1.1", b"GET /2 HTTP/1.1"]
            assert server.accepted == 2

    run(go())


def test_a_kept_alive_connection_dying_before_answering_a_post_is_not_retried() -> None:
    """The server may have acted on the POST; sending it again could do it twice."""

    async def go() -> None:
        async with Raw(first_answer_then(drop_second=True)) as server:
            up = client()
            try:
                await up.request("GET", server.base, "/1", [], b"")
                why = await fails(up.request("POST", server.base, "/2", [], b"once"))
            finally:
                await up.close()
            assert "the upstream closed the connection before answering" in why
            assert [r.split(b"\r\n")[0] for r in server.received] == [
                b"GET /1 HTTP/1.1", b"POST /2 HTTP/1.1"]
            assert server.accepted == 1

    run(go())


def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    """Once the close has arrived, the connection leaves the pool: even a POST goes through."""

    async def go() -> None:
        async with Raw(first_answer_then(drop_second=False)) as server:
            up = client()
            try:
                for method in ("GET", "POST", "GET"):
                    assert (await up.request(method, server.base, "/", [], b"")).body == b"ok"
                    await asyncio.sleep(0.05)  # the server's FIN reaches the client
            finally:
                await up.close()
            assert server.accepted == 3
            assert len(server.received) == 3  # nothing was sent twice

    run(go())


def test_a_fresh_connection_closed_without_answer_is_not_retried() -> None:
    """Only a reused connection may be stale; a new one closing at once is the upstream's answer."""

    async def hang_up(server: Raw, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await server.read(reader)

    async def go() -> None:
        async with Raw(hang_up) as server:
            up = client()
            try:
                why = await fails(up.request("GET", server.base, "/", [], b""))
            finally:
                await up.close()
            assert "closed the connection before answering" in why
            assert server.accepted == 1

    run(go())


# ---------------------------------------------------------------------------------------------
# errors


def test_connection_refused() -> None:
    async def go() -> None:
        up = client()
        try:
            why = await fails(up.request("GET", f"http://127.0.0.1:{closed_port()}", "/", [], b""))
        finally:
            await up.close()
        assert "connection refused or unreachable" in why

    run(go())


def test_answer_larger_than_the_limit_by_content_length() -> None:
    """Refused from the header alone (the body never comes here: waiting for it would time
    out); an answer of exactly the limit is fine."""

    async def go() -> None:
        async with Raw(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"y" * 100)
                       ) as server:
            up = client(timeout=1.0, limit=100)
            try:
                await fails(up.request("GET", server.base, "/", [], b""), TooLarge)
                assert (await up.request("GET", server.base, "/", [], b"")).body == b"y" * 100
            finally:
                await up.close()

    run(go())


def test_answer_larger_than_the_limit_chunked() -> None:
    """No length announced: counted as the chunks come; the connection is then dropped."""
    chunk = b"32\r\n" + b"z" * 50 + b"\r\n"

    async def go() -> None:
        async with Raw(answering(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n",
            OK,
        )) as server:
            up = client(limit=100)
            try:
                await fails(up.request("GET", server.base, "/", [], b""), TooLarge)
                assert (await up.request("GET", server.base, "/", [], b"")).status == 200
            finally:
                await up.close()
            assert server.accepted == 2  # the oversized answer's connection was not reused

    run(go())


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
], ids=["content-length", "chunked"])
def test_connection_closed_mid_body(answer: bytes) -> None:
    async def half(server: Raw, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        await server.read(reader)
        writer.write(answer)
        await writer.drain()

    async def go() -> None:
        async with Raw(half) as server:
            up = client()
            try:
                why = await fails(up.request("GET", server.base, "/", [], b""))
            finally:
                await up.close()
            assert "mid-body" in why

    run(go())


def test_an_upstream_that_never_answers_times_out() -> None:
    async def silent(server: Raw, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        await server.read(reader)
        await server.read(reader)  # until the client gives up and closes

    async def go() -> None:
        async with Raw(silent) as server:
            up = client(timeout=0.3)
            started = time.monotonic()
            try:
                why = await fails(asyncio.wait_for(
                    up.request("GET", server.base, "/", [], b""), 5))  # not an UpstreamError
                took = time.monotonic() - started
                await asyncio.wait_for(server.eof.wait(), BOUND)  # the connection was closed
            finally:
                await up.close()
            assert "timed out after 0.3s" in why
            assert took < 5

    run(go())


def test_malformed_answer_is_not_valid_http() -> None:
    async def go() -> None:
        async with Raw(answering(b"HTTP/1.1 abc\r\n\r\n")) as server:
            up = client()
            try:
                why = await fails(up.request("GET", server.base, "/", [], b""))
            finally:
                await up.close()
            assert "not valid HTTP" in why

    run(go())


@pytest.mark.parametrize("headers,target", [
    ([("X-Evil", "a\r\nX-Injected: 1")], "/"),
    ([("X-Evil", "a\nX-Injected: 1")], "/"),
    ([], "/ HTTP/1.1\r\nX-Injected: 1\r\nX:"),
], ids=["crlf-in-value", "lf-in-value", "crlf-in-target"])
def test_a_line_break_in_the_head_is_refused_before_sending(
    headers: list[tuple[str, str]], target: str
) -> None:
    async def go() -> None:
        async with Raw(answering(OK)) as server:
            up = client()
            try:
                why = await fails(up.request("GET", server.base, target, headers, b""))
                assert (await up.request("GET", server.base, "/fine", [], b"")).body == b"ok"
            finally:
                await up.close()
            assert "line break" in why
            assert server.received == [  # only the good request reached the server
                f"GET /fine HTTP/1.1\r\nHost: {server.base[7:]}\r\n\r\n".encode()]

    run(go())


# ---------------------------------------------------------------------------------------------
# closing and TLS


def test_close_closes_idle_connections() -> None:
    async def go() -> None:
        async with Raw(answering(OK)) as server:
            up = client()
            await up.request("GET", server.base, "/", [], b"")
            assert not server.eof.is_set()  # kept alive
            await up.close()
            await asyncio.wait_for(server.eof.wait(), BOUND)

    run(go())


def test_https_get_trusting_a_local_ca(tmp_path: Path) -> None:
    ca, _ = CertificateAuthority.load_or_create(tmp_path / "ca")
    trusting = ssl.create_default_context(cafile=str(ca.cert_path))

    async def go() -> None:
        async with Raw(answering(OK), ssl_context=ca.server_context("127.0.0.1")) as server:
            up = Upstream(ssl_context=trusting, timeout=5.0, limit=1 << 20)
            untrusting = Upstream(ssl_context=ssl.create_default_context(), timeout=5.0,
                                  limit=1 << 20)
            try:
                for _ in range(2):
                    assert (await up.request("GET", server.base, "/s", [], b"")).body == b"ok"
                why = await fails(untrusting.request("GET", server.base, "/s", [], b""))
            finally:
                await up.close()
                await untrusting.close()
            assert server.accepted == 1  # one connection kept alive for both GETs
            assert "TLS with 127.0.0.1" in why
            assert len(server.received) == 2

    run(go())


def test_credentials_in_the_upstream_url_never_reach_the_host_header() -> None:
    """`http://user:pw@host` names the host; the Host header carries no userinfo."""
    assert split_base("http://user:pw@127.0.0.1:8080")[0].authority == "127.0.0.1:8080"
    assert split_base("https://[::1]:8443")[0].authority == "[::1]:8443"
    assert split_base("https://camber.example")[0].port == 443


def test_connection_tokens_and_content_codings_are_collected_for_the_proxy() -> None:
    """What the recorder strips (names Connection lists) and decodes (every coding, in order)
    comes with the answer, so it needs no header lookup of its own."""
    answer = (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nContent-Encoding: gzip\r\n"
              b"X-Hop: 1\r\ncontent-encoding: br\r\nContent-Length: 2\r\n\r\nok")

    async def go() -> None:
        async with Raw(answering(answer)) as server:
            up = client()
            try:
                got = await up.request("GET", server.base, "/", [], b"")
            finally:
                await up.close()
            assert got.connection == ["keep-alive, X-Hop"]
            assert got.content_encoding == "gzip, br"
            assert got.headers.getall("Content-Encoding") == ["gzip", "br"]

    run(go())


def test_an_upstream_base_path_prefixes_every_target() -> None:
    """`--upstream https://host/api`: the app's `/v1/jobs` goes out as `/api/v1/jobs`."""

    async def go() -> None:
        async with Raw(answering(b"HTTP/1.1 204 No Content\r\n\r\n")) as server:
            up = client()
            try:
                await up.request("GET", f"{server.base}/api/", "/v1/jobs?x=1", [], b"")
                await up.request("GET", server.base, "/v1/jobs", [], b"")
            finally:
                await up.close()
            lines = [r.split(b"\r\n", 1)[0] for r in server.received]
            assert lines == [b"GET /api/v1/jobs?x=1 HTTP/1.1", b"GET /v1/jobs HTTP/1.1"]
            assert server.accepted == 1  # one origin, one kept-alive connection

    run(go())


def test_chunked_trailers_are_not_headers() -> None:
    """Trailer fields after the last chunk are dropped, as aiohttp's client dropped them."""
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
              b"2\r\nok\r\n0\r\nX-Checksum: abc\r\nSet-Cookie: t=1\r\n\r\n")

    async def go() -> None:
        async with Raw(answering(answer)) as server:
            up = client()
            try:
                got = await up.request("GET", server.base, "/", [], b"")
            finally:
                await up.close()
            assert got.body == b"ok"
            assert [k for k, _ in got.pairs] == ["Transfer-Encoding", "Trailer"]

    run(go())


def test_a_second_answer_to_one_request_changes_nothing_and_ends_the_connection() -> None:
    """An upstream that answers twice: the first answer stays as it was, the connection goes."""
    twice = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
             b"HTTP/1.1 200 OK\r\nX-Injected: yes\r\nContent-Length: 0\r\n\r\n")

    async def go() -> None:
        async with Raw(answering(twice)) as server:
            up = client()
            try:
                first = await up.request("GET", server.base, "/1", [], b"")
                second = await up.request("GET", server.base, "/2", [], b"")
            finally:
                await up.close()
            assert first.pairs == [("Content-Length", "2")] and first.body == b"ok"
            assert second.body == b"ok"  # a fresh connection's first answer
            assert server.accepted == 2

    run(go())


def test_one_deadline_covers_a_retry() -> None:
    """A GET whose kept-alive connection died is retried once, on the same deadline: a retry
    that never answers fails at the timeout, not at twice the timeout."""

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        if server.accepted == 1:  # answer the first request, then drop the second unanswered
            await server.read(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await server.read(reader)
            await asyncio.sleep(0.8)  # the first attempt uses most of the time, then dies
            return
        await server.read(reader)  # the retry's connection: never answered
        await asyncio.sleep(BOUND)

    async def go() -> float:
        async with Raw(handle) as server:
            up = client(timeout=1.0)
            try:
                await up.request("GET", server.base, "/1", [], b"")
                took = time.monotonic()
                why = await fails(asyncio.wait_for(up.request("GET", server.base, "/2", [], b""),
                                                   2 * BOUND))
                took = time.monotonic() - took
            finally:
                await up.close()
            assert "timed out after 1s" in why
            assert server.accepted == 2
            return took

    assert run(go()) < 1.5  # one 1 s deadline (plus a sweep), not 0.8 s + 1 s


def test_close_fails_exchanges_in_flight_and_pools_nothing_after() -> None:
    """Stopping while an exchange waits: it fails at once, and its connection is not kept."""

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await server.read(reader)
        await asyncio.sleep(BOUND)  # never answers

    async def go() -> None:
        async with Raw(handle) as server:
            up = client(timeout=30)
            pending = asyncio.ensure_future(up.request("GET", server.base, "/", [], b""))
            while not server.received:
                await asyncio.sleep(0.01)
            await up.close()
            why = await fails(asyncio.wait_for(pending, BOUND))
            assert "stopping" in why
            assert not up.idle and not up.inflight
            assert "stopping" in await fails(up.request("GET", server.base, "/", [], b""))

    run(go())
