"""Bounded resources while recording: compression bombs, upgrades, clients that hang up."""

from __future__ import annotations

import asyncio
import logging
import resource
import zlib
from pathlib import Path

import aiohttp
import brotli
import pytest
from aiohttp import web
from helpers import job_cassette, run, serving

from replayproxy.api import ReplayProxy
from replayproxy.cassette import load, save
from replayproxy.config import Config

MIB = 1 << 20


def _bomb(coding: str, size: int) -> bytes:
    zero = b"\0" * MIB
    if coding == "br":
        c = brotli.Compressor(quality=5)
        return b"".join(c.process(zero) for _ in range(size // MIB)) + c.finish()
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    return b"".join(z.compress(zero) for _ in range(size // MIB)) + z.flush()


def bomb_upstream() -> web.Application:
    bombs = {"br": _bomb("br", 160 * MIB), "gzip": _bomb("gzip", 8 * MIB)}
    small = brotli.compress(b'{"fine": true}')

    async def answer(request: web.Request) -> web.Response:
        coding = request.match_info["coding"]
        body = small if request.query.get("small") else bombs[coding]
        return web.Response(body=body, headers={"Content-Encoding": coding,
                                                "Content-Type": "application/json"})

    app = web.Application()
    app.router.add_get("/{coding}", answer)
    return app


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def test_a_compression_bomb_is_502_naming_the_limit_in_bounded_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bomb.yaml"
    config = Config(max_body_size=MIB)
    caplog.set_level(logging.WARNING, logger="replayproxy")

    async def session() -> tuple[list[tuple[int, dict]], int]:
        out = []
        async with serving(bomb_upstream()) as up, aiohttp.ClientSession(
            auto_decompress=False
        ) as s:
            before = _peak()
            async with ReplayProxy(path, mode="all", upstream=up, config=config) as proxy:
                for target in ("/br", "/gzip", "/br?small=1"):
                    async with s.get(proxy.url + target) as r:
                        out.append((r.status, await r.json(content_type=None)
                                    if r.status == 502 else {}))
            return out, _peak() - before

    (br, gz, fine), grown = run(session())
    for (status, body), coding in ((br, "br"), (gz, "gzip")):
        assert status == 502
        assert body["error"] == (f"the upstream's answer to GET /{coding} decodes ({coding}) to "
                                 f"more than max_body_size ({MIB} bytes); not recorded")
    assert fine[0] == 200
    assert grown < 48 * MIB, f"peak memory grew by {grown / MIB:.0f} MiB"  # the bomb: 160 MiB
    items = load(path).interactions
    assert [i.request.uri.rsplit("/", 1)[1] for i in items] == ["br?small=1"]  # bombs: not
    assert items[0].response.body == b'{"fine": true}'
    assert sum("max_body_size" in m for m in caplog.messages) == 2


def test_an_upstream_upgrade_is_refused_with_502_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ws.yaml"
    caplog.set_level(logging.DEBUG)

    async def session() -> tuple[int, str, int]:
        async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n\r\n\x81\x05hello")
            await writer.drain()
            await reader.read()  # until the proxy hangs up
            writer.close()

        server = await asyncio.start_server(upgrade, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with ReplayProxy(path, mode="all", upstream=f"http://127.0.0.1:{port}") as p, \
                    aiohttp.ClientSession() as s:
                async with s.get(p.url + "/socket", headers={"Upgrade": "websocket",
                                                             "Connection": "Upgrade"}) as r:
                    return r.status, (await r.json())["error"], len(server.sockets)
        finally:
            server.close()
            await server.wait_closed()

    status, error, _ = run(session())
    assert status == 502 and "101 Switching Protocols" in error and "not recorded" in error
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING
             and "101" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert not path.exists()


def test_a_client_hanging_up_mid_body_ends_that_exchange_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "hangup.yaml"
    hits: list[str] = []
    caplog.set_level(logging.DEBUG)

    async def upstream(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream)

    async def session() -> int:
        async with serving(app) as up, ReplayProxy(path, mode="all", upstream=up) as proxy:
            port = int(proxy.url.rsplit(":", 1)[1])
            for target in ("/v1/jobs", "/__replayproxy/webhooks/1"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                             "application/json\r\nContent-Length: 1000\r\n\r\n{\"half".encode())
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.close()  # mid-body
                await reader.read()
            await asyncio.sleep(0.2)
            async with aiohttp.ClientSession() as s, s.get(proxy.url + "/after") as r:
                return r.status  # the proxy goes on

    assert run(session()) == 200
    assert hits == ["/after"]  # nothing half-sent upstream
    said = [r.getMessage() for r in caplog.records if "hung up" in r.getMessage()]
    assert said == [
        "replayproxy: POST /v1/jobs: the client hung up after 6 of 1000 bytes of the body "
        "(Connection lost); not forwarded, not recorded",
        "replayproxy: POST /__replayproxy/webhooks/1: the client hung up after 6 of 1000 bytes "
        "of the body (Connection lost); not forwarded, not recorded",
    ]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert [i.request.uri.rsplit("/", 1)[1] for i in load(path).interactions] == ["after"]


def test_replay_too_ends_a_half_sent_request_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.yaml"
    save(job_cassette(), path)
    monkeypatch.setenv("WEBHOOK_SECRET", "local_bounds_secret_01")
    caplog.set_level(logging.DEBUG)

    async def session() -> int:
        async with ReplayProxy(path) as proxy:
            port = int(proxy.url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"co")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.close()
            await reader.read()
            await asyncio.sleep(0.2)
            async with aiohttp.ClientSession() as s, s.get(proxy.url + "/v1/jobs/6238") as r:
                return r.status

    assert run(session()) == 200
    said = [r.getMessage() for r in caplog.records if "hung up" in r.getMessage()]
    assert said == ["replayproxy: POST /v1/jobs: the client hung up after 4 of 500 bytes of the "
                    "body (Connection lost); not forwarded, not recorded"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 131072, 200001])
def test_bounded_decoding_gives_what_the_libraries_give_up_to_the_limit(size: int) -> None:
    """Around the 64 KiB decoding step: the same bytes as gzip/zlib/brotli's own decompress,
    TooLarge one byte past the limit, undecodable (stored as is) when truncated."""
    import gzip
    import random

    from replayproxy.coding import TooLarge, decode_body

    rng = random.Random(size)
    raw = rng.randbytes(size // 2) + b"a" * (size - size // 2)
    raw_deflate = zlib.compressobj(wbits=-15)
    encoded = {
        "gzip": gzip.compress(raw) + gzip.compress(b"!"),  # two members, as servers may send
        "deflate": zlib.compress(raw),
        "br": brotli.compress(raw),
        "gzip, br": brotli.compress(gzip.compress(raw)),
    }
    expected = {"gzip": gzip.decompress(encoded["gzip"]), "deflate": zlib.decompress(
        encoded["deflate"]), "br": brotli.decompress(encoded["br"]), "gzip, br": raw}
    raw_body = raw_deflate.compress(raw) + raw_deflate.flush()
    assert decode_body(raw_body, "deflate", MIB) == (zlib.decompress(raw_body, -15), "deflate")
    for coding, body in encoded.items():
        want = expected[coding]
        assert decode_body(body, coding, MIB) == (want, coding)
        # partial: the first `limit` bytes instead of TooLarge; in a chain a later stage reads
        # the cut-off output of the one before, so a prefix, maybe shorter
        cut, removed = decode_body(body, coding, size // 2, partial=True)
        assert removed == coding and want.startswith(cut) and len(cut) <= size // 2
        if "," in coding:
            continue  # a chain: every stage is bounded, the middle one may be the larger
        assert cut == want[:size // 2]
        assert decode_body(body, coding, len(want)) == (want, coding)
        if want:
            with pytest.raises(TooLarge):
                decode_body(body, coding, len(want) - 1)
        if size > 16:
            assert decode_body(body[:-6], coding, MIB) == (body[:-6], None)
            cut, removed = decode_body(body[:-6], coding, MIB, partial=True)
            assert removed == coding and want.startswith(cut), coding
