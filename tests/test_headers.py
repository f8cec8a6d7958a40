"""Hop-by-hop headers never cross the proxy, read as raw bytes on both sides: a request going
upstream, the upstream's answer going back to the app, a webhook recorded and forwarded, and a
recorded answer replayed (which drops only the framing, as the cassette was stripped already)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web
from helpers import run, serving

from replayproxy.api import ReplayProxy
from replayproxy.cassette import Cassette, Interaction, Request, Response, load, save
from replayproxy.config import Config, WebhooksConfig
from replayproxy.signing import sign

UPSTREAM_SECRET = "upstream secret, exactly as set"
LOCAL_SECRET = "the app's own secret"

#: The upstream's answer: hop-by-hop headers of every kind, one of them named by Connection.
ANSWER = (
    b"HTTP/1.1 200 Fine\r\n"
    b"Connection: keep-alive, X-Hop-Answer\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"X-Hop-Answer: only for this hop\r\n"
    b"Proxy-Authenticate: Basic realm=upstream\r\n"
    b"Upgrade: h2c\r\n"
    b"Trailer: X-Checksum\r\n"
    b"X-Kept: yes\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 5\r\n\r\n"
    b"hello"
)

#: The app's request: the same, on the way in.
REQUEST = (
    b"POST /v1/things HTTP/1.1\r\n"
    b"Host: proxy.example\r\n"
    b"Connection: close, X-Hop-Request\r\n"
    b"Keep-Alive: 300\r\n"
    b"X-Hop-Request: only for this hop\r\n"
    b"TE: trailers\r\n"
    b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
    b"X-Keep: please\r\n"
    b"Content-Length: 2\r\n\r\n"
    b"{}"
)

REQUEST_HOP = {"connection", "keep-alive", "x-hop-request", "te", "proxy-authorization"}
ANSWER_HOP = {"connection", "keep-alive", "x-hop-answer", "proxy-authenticate", "upgrade",
              "trailer"}


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMBER_WEBHOOK_SECRET", UPSTREAM_SECRET)
    monkeypatch.setenv("WEBHOOK_SECRET", LOCAL_SECRET)


def _head(raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    first, *lines = head.decode("latin-1").split("\r\n")
    return first, [tuple(line.split(": ", 1)) for line in lines], body  # type: ignore[misc]


def _names(headers: list[tuple[str, str]]) -> set[str]:
    return {k.lower() for k, _ in headers}


async def _raw(url: str, data: bytes) -> bytes:
    host, port = url.split("//")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)  # Connection: close: until EOF
    finally:
        writer.close()
        await writer.wait_closed()


def test_hop_headers_stay_on_their_hop_while_recording_and_replaying(tmp_path: Path) -> None:
    path = tmp_path / "hops.yaml"
    seen: list[bytes] = []
    webhooks: list[list[tuple[str, str]]] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(v) for k, v in _head(head)[1] if k.lower() == "content-length")
        seen.append(head + await reader.readexactly(length))
        writer.write(ANSWER)
        await writer.drain()
        writer.close()

    async def app_hook(request: web.Request) -> web.Response:
        webhooks.append(list(request.headers.items()))
        return web.Response(status=204)

    async def session() -> tuple[bytes, bytes]:
        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        app = web.Application()
        app.router.add_post("/hooks", app_hook)
        try:
            async with serving(app) as app_url:
                config = Config(webhooks=WebhooksConfig(forward_to=f"{app_url}/hooks"))
                async with ReplayProxy(path, mode="all", upstream=f"http://127.0.0.1:{port}",
                                       config=config) as proxy:
                    answer = await _raw(proxy.url, REQUEST)
                    body = b'{"event_id": "evt_1", "status": "done"}'
                    now = int(time.time())
                    signed = "".join(f"{k}: {v}\r\n" for k, v in sign(
                        body, [UPSTREAM_SECRET], config.webhooks.signature, timestamp=now
                    ).items())
                    hook = await _raw(proxy.url, (
                        "POST /__replayproxy/webhooks HTTP/1.1\r\nHost: proxy.example\r\n"
                        "Connection: close, X-Hop-Hook\r\nX-Hop-Hook: only for this hop\r\n"
                        "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
                        "Content-Type: application/json\r\nX-Sender: camber\r\n"
                        f"{signed}Content-Length: {len(body)}\r\n\r\n"
                    ).encode() + body)
        finally:
            server.close()
            await server.wait_closed()
        return answer, hook

    answer, hook = run(session())

    # upstream: the app's headers but its hop's; Host and Content-Length written anew
    (sent,) = seen
    line, headers, body = _head(sent)
    assert line == "POST /v1/things HTTP/1.1" and body == b"{}"
    assert not _names(headers) & REQUEST_HOP
    assert ("X-Keep", "please") in headers
    assert dict((k.lower(), v) for k, v in headers)["host"] != "proxy.example"

    # the app: the upstream's answer but its hop's; the proxy frames it for its own hop
    line, headers, body = _head(answer)
    assert line == "HTTP/1.1 200 Fine" and body == b"hello"
    assert not _names(headers) & (ANSWER_HOP - {"connection"})
    assert ("X-Kept", "yes") in headers and ("Content-Length", "5") in headers

    # the webhook: recorded and forwarded without its hop's headers or the upstream signature
    assert _head(hook)[0] == "HTTP/1.1 204 No Content"
    (forwarded,) = webhooks
    assert not _names(forwarded) & {"x-hop-hook", "proxy-authorization"}
    assert ("X-Sender", "camber") in forwarded

    cassette = load(path)
    (item,) = cassette.interactions
    assert not _names(item.request.headers) & (REQUEST_HOP | {"host", "content-length"})
    assert ("X-Keep", "please") in item.request.headers
    assert not _names(item.response.headers) & ANSWER_HOP
    assert ("X-Kept", "yes") in item.response.headers
    (recorded,) = cassette.webhooks
    assert not _names(recorded.headers) & {"connection", "x-hop-hook", "proxy-authorization",
                                           "host", "content-length", "x-signature"}
    assert ("X-Sender", "camber") in recorded.headers


def test_replay_drops_only_the_framing_a_cassette_names(tmp_path: Path) -> None:
    """A hand-written or imported cassette's answer keeps every header but the framing ones,
    which aiohttp writes for the hop it serves: an Upgrade or Trailer header is served as
    written (the recorder strips them before they reach a cassette)."""
    path = tmp_path / "framing.yaml"
    recorded = [
        ("Transfer-Encoding", "chunked"), ("Connection", "keep-alive"), ("Keep-Alive", "5"),
        ("Content-Length", "999"), ("Upgrade", "h2c"), ("Trailer", "X-Checksum"),
        ("Content-Type", "text/plain"),
    ]
    save(Cassette(interactions=[
        Interaction(Request("GET", "https://camber.example/v1/a", [], b""),
                    Response(200, "OK", recorded, b"hello")),
        Interaction(Request("HEAD", "https://camber.example/v1/a", [], b""),
                    Response(200, "OK", recorded, b"")),
    ]), path)

    async def session() -> tuple[bytes, bytes]:
        async with ReplayProxy(path) as proxy:
            close = b" /v1/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            get = await _raw(proxy.url, b"GET" + close)
            head = await _raw(proxy.url, b"HEAD" + close)
        assert not proxy.report.unmatched
        return get, head

    get, head = run(session())
    _, headers, body = _head(get)
    assert body == b"hello"
    assert sorted(headers) == [("Connection", "close"), ("Content-Length", "5"),
                               ("Content-Type", "text/plain"), ("Trailer", "X-Checksum"),
                               ("Upgrade", "h2c")]
    _, headers, body = _head(head)  # a HEAD answer's Content-Length counts the unsent body
    assert body == b"" and ("Content-Length", "999") in headers
    assert not _names(headers) & {"transfer-encoding", "keep-alive"}
