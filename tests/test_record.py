"""Recording over real sockets: the sandbox, odd upstreams, webhooks, secrets, modes, crashes.

Every server a test starts it stops; every subprocess it starts it ends.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import socket
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import brotli
import pytest
import requests
import vcr
from aiohttp import web
from camber_session import record, replay
from helpers import run, serving

from replayproxy.api import ReplayProxy
from replayproxy.cassette import load
from replayproxy.config import Config, RedactConfig, WebhooksConfig
from replayproxy.errors import CassetteError, ConfigError
from replayproxy.journal import journal_path
from replayproxy.signing import sign

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk_test_api_key_7f3a91"
UPSTREAM_SECRET = "camber_upstream_secret_44c1"
LOCAL_SECRET = "local_app_secret_9d02e8"
PASSWORD = "hunter2-body-field-pw"
JSON_DOC = {"job_id": 6230, "status": "COMPLETED", "text": "caf\u00e9 " * 50}
BINARY = bytes(range(256)) * 16


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMBER_API_KEY", API_KEY)
    monkeypatch.setenv("CAMBER_WEBHOOK_SECRET", UPSTREAM_SECRET)
    monkeypatch.setenv("WEBHOOK_SECRET", LOCAL_SECRET)


def assert_no_secrets(path: Path, *extra: str) -> None:
    text = path.read_text()
    for secret in (API_KEY, UPSTREAM_SECRET, LOCAL_SECRET, *extra):
        assert secret not in text, f"{secret} leaked into {path.name}"


# ---------------------------------------------------------------------------------------------
# the sandbox, end to end


def test_record_the_sandbox_session_then_replay_it(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    recorded, proxy, sandbox_state = run(record(path))
    statuses = {f: recorded[f]["status"] for f in ("a.pdf", "b.pdf", "fail.pdf")}
    assert statuses == {"a.pdf": "completed", "b.pdf": "completed", "fail.pdf": "failed"}
    assert recorded["rejected_webhooks"] == 0  # re-signed with the app's secret, accepted
    # Camber was told to call the proxy, not the app
    assert all("/__replayproxy/webhooks/1" in d.url for d in sandbox_state.deliveries)
    assert not journal_path(path).exists()

    cassette = load(path)
    assert_no_secrets(path)
    submits = [i for i in cassette.interactions if i.request.method == "POST"]
    assert len(submits) == 3
    assert all(b"/webhooks/camber" in i.request.body for i in submits)  # the app's original
    assert all(b"__replayproxy" not in i.request.body for i in submits)
    assert cassette.meta["upstream"].startswith("http://127.0.0.1:")
    assert cassette.meta["signature_scheme"] == "hmac-sha256"
    assert cassette.meta["variables_detected"] is True
    assert {v.shape for v in cassette.variables} == {"uuid", "url"}
    assert len(cassette.webhooks) == 3
    for hook in cassette.webhooks:
        body = json.loads(hook.body)
        cause = cassette.interactions[hook.cause - 1]
        assert cause.request.method == "POST"
        assert json.loads(cause.response.body)["job_id"] == body["job_id"]
        after = cassette.interactions[hook.after - 1]
        assert str(body["job_id"]) in after.request.uri
        assert hook.target.endswith("/webhooks/camber")
        assert not any(k.lower() == "x-signature" for k, _ in hook.headers)
        assert hook.event_id == body["event_id"]
    download = [i for i in cassette.interactions if i.request.uri.endswith("result.bin")]
    assert len(download) == 2 and download[0].response.body[:2] == b"\xff\xfe"

    replayed, replay_proxy = run(replay(path, files=("fail.pdf", "b.pdf", "a.pdf")))
    strip = {"camber_job_id"}  # jobs are submitted in another order: ids follow the cassette
    assert {f: {k: v for k, v in replayed[f].items() if k not in strip} for f in statuses} == {
        f: {k: v for k, v in recorded[f].items() if k not in strip} for f in statuses
    }
    assert not replay_proxy.report.unmatched
    assert replay_proxy.report.webhooks_summary()["delivered"] == 3


# ---------------------------------------------------------------------------------------------
# odd upstreams


def odd_upstream(hits: list[str]) -> web.Application:
    raw = json.dumps(JSON_DOC).encode()

    async def encoded(request: web.Request) -> web.Response:
        hits.append(request.path)
        coding = request.match_info["coding"]
        body = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[coding](raw)
        return web.Response(body=body, headers={"Content-Encoding": coding,
                                                "Content-Type": "application/json"})

    async def binary(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=BINARY, content_type="application/octet-stream")

    async def chunked(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for n in range(5):
            await resp.write(f"chunk {n}\n".encode())
            await asyncio.sleep(0.005)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        hits.append(request.path)
        await asyncio.sleep(0.6)
        return web.Response(text="too late")

    async def echo(request: web.Request) -> web.Response:
        hits.append(request.path)
        body = await request.read()
        return web.json_response({
            "got": body.decode("utf-8", "replace"),
            "content_type": request.headers.get("Content-Type", ""),
            "auth": request.headers.get("Authorization", ""),
        }, status=int(request.query.get("status", "200")))

    app = web.Application()
    app.router.add_get("/enc/{coding}", encoded)
    app.router.add_get("/binary", binary)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/slow", slow)
    app.router.add_post("/echo", echo)
    return app


def test_odd_upstreams_are_recorded_and_replayed_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "odd.yaml"
    config = Config(upstream_timeout=0.5, redact=RedactConfig(body_fields=("password",)))
    hits: list[str] = []

    async def session() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with serving(odd_upstream(hits)) as up:
            async with ReplayProxy(path, mode="all", upstream=up, config=config) as proxy, \
                    aiohttp.ClientSession(auto_decompress=False) as s:
                for coding in ("gzip", "deflate", "br"):
                    async with s.get(f"{proxy.url}/enc/{coding}",
                                     headers={"Accept-Encoding": coding}) as r:
                        raw = await r.read()
                        assert r.headers["Content-Encoding"] == coding  # the app gets it as sent
                        assert raw != json.dumps(JSON_DOC).encode()
                async with s.get(f"{proxy.url}/binary") as r:
                    assert await r.read() == BINARY
                async with s.get(f"{proxy.url}/chunked") as r:
                    seen["chunked"] = await r.read()
                form = aiohttp.FormData()
                form.add_field("file", b"\x00\x01pdf", filename="a.pdf",
                               content_type="application/pdf")
                form.add_field("name", "invoice")
                async with s.post(f"{proxy.url}/echo", data=form,
                                  headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                    assert r.status == 200
                async with s.post(f"{proxy.url}/echo?status=503",
                                  json={"password": PASSWORD, "n": 1}) as r:
                    assert r.status == 503  # upstream errors are answers: recorded
        return seen

    seen = run(session())
    assert seen["chunked"] == b"".join(f"chunk {n}\n".encode() for n in range(5))
    cassette = load(path)
    assert_no_secrets(path, PASSWORD)
    by_path = {i.request.uri.split("/", 3)[3]: i for i in cassette.interactions}
    for coding in ("gzip", "deflate", "br"):
        item = by_path[f"enc/{coding}"]
        assert json.loads(item.response.body) == JSON_DOC  # stored readable
        assert item.meta["content_encoding"] == coding
        headers = {k.lower(): v for k, v in item.response.headers}
        assert "content-encoding" not in headers
        assert headers["content-length"] == str(len(item.response.body))
    assert by_path["binary"].response.body == BINARY
    assert not any(k.lower() == "transfer-encoding" for k, _ in by_path["chunked"].response.headers)
    assert "!!binary" in path.read_text()

    async def again() -> None:
        async with ReplayProxy(path, config=config) as proxy, aiohttp.ClientSession() as s:
            for coding in ("gzip", "deflate", "br"):
                async with s.get(f"{proxy.url}/enc/{coding}") as r:
                    assert json.loads(await r.read()) == JSON_DOC
            async with s.get(f"{proxy.url}/binary") as r:
                assert await r.read() == BINARY
            async with s.get(f"{proxy.url}/chunked") as r:
                assert await r.read() == seen["chunked"]
            form = aiohttp.FormData()  # another random boundary: still the same request
            form.add_field("file", b"\x00\x01pdf", filename="a.pdf", content_type="application/pdf")
            form.add_field("name", "invoice")
            async with s.post(f"{proxy.url}/echo", data=form) as r:
                assert r.status == 200
            async with s.post(f"{proxy.url}/echo?status=503",
                              json={"password": "<redacted>", "n": 1}) as r:
                assert r.status == 503
        assert not proxy.report.unmatched

    run(again())


def test_vcrpy_serves_a_recorded_gzip_answer(tmp_path: Path) -> None:
    path = tmp_path / "gz.yaml"

    async def session() -> str:
        async with serving(odd_upstream([])) as up:
            async with ReplayProxy(path, mode="all", upstream=up) as proxy, \
                    aiohttp.ClientSession() as s:
                async with s.get(f"{proxy.url}/enc/gzip") as r:
                    assert json.loads(await r.read()) == JSON_DOC
        return up

    up = run(session())
    with vcr.use_cassette(str(path), record_mode="none"):
        answer = requests.get(f"{up}/enc/gzip")
    assert answer.status_code == 200 and answer.json() == JSON_DOC


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_upstream_failures_are_502_naming_the_upstream_and_not_recorded(tmp_path: Path) -> None:
    path = tmp_path / "fail.yaml"

    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readuntil(b"\r\n\r\n")
        if b"/drop" in line:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            await writer.drain()
        writer.close()  # /reset: no answer at all

    async def session() -> list[dict[str, Any]]:
        out = []
        server = await asyncio.start_server(rude, "127.0.0.1", 0)
        rude_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with serving(odd_upstream([])) as up, aiohttp.ClientSession() as s:
                for upstream, target in ((f"http://127.0.0.1:{_free_port()}", "/x"),
                                         (up, "/slow"), (rude_url, "/drop"), (rude_url, "/reset")):
                    config = Config(upstream_timeout=0.3)
                    async with ReplayProxy(path, mode="all", upstream=upstream,
                                           config=config) as proxy:
                        async with s.get(proxy.url + target) as r:
                            assert r.status == 502
                            out.append(await r.json())
        finally:
            server.close()
            await server.wait_closed()
        return out

    answers = run(session())
    causes = [a["cause"] for a in answers]
    assert "refused" in causes[0]
    assert "timed out after 0.3s" in causes[1]
    assert "reset mid-body" in causes[2] or "closed" in causes[2]
    assert "closed the connection" in causes[3]
    assert all(a["upstream"] in a["error"] and "not recorded" in a["error"] for a in answers)
    assert not path.exists()  # nothing was recorded
    assert not journal_path(path).exists()


def test_request_past_the_size_limit_is_413(tmp_path: Path) -> None:
    async def session() -> None:
        async with serving(odd_upstream([])) as up:
            config = Config(max_body_size=1024)
            async with ReplayProxy(tmp_path / "big.yaml", mode="all", upstream=up,
                                   config=config) as proxy, aiohttp.ClientSession() as s:
                async with s.post(f"{proxy.url}/echo", data=b"x" * 4096) as r:
                    assert r.status == 413
                    assert "max_body_size (1024 bytes)" in (await r.json())["error"]

    run(session())


# ---------------------------------------------------------------------------------------------
# webhooks


def _signed(body: bytes, secret: str) -> dict[str, str]:
    from replayproxy.config import SignatureConfig

    return {"Content-Type": "application/json",
            **sign(body, [secret], SignatureConfig(), timestamp=int(time.time()))}


def test_webhooks_verified_recorded_forwarded_and_forgeries_refused(tmp_path: Path) -> None:
    path = tmp_path / "hooks.yaml"
    received: list[tuple[bytes, dict[str, str]]] = []

    async def app_hook(request: web.Request) -> web.Response:
        body = await request.read()
        from replayproxy.config import SignatureConfig
        from replayproxy.signing import verify

        verify(body, request.headers, [LOCAL_SECRET], SignatureConfig())
        received.append((body, dict(request.headers)))
        return web.json_response({"thanks": len(received)}, status=202)

    async def job(request: web.Request) -> web.Response:
        return web.json_response({"job_id": 6230, "status": "PENDING"}, status=201)

    async def session() -> list[int]:
        app = web.Application()
        app.router.add_post("/webhooks/camber", app_hook)
        upstream = web.Application()
        upstream.router.add_post("/v1/jobs", job)
        statuses = []
        async with serving(app) as app_url, serving(upstream) as up:
            config = Config(webhooks=WebhooksConfig(forward_to=f"{app_url}/webhooks/camber"))
            async with ReplayProxy(path, mode="all", upstream=up, config=config) as proxy, \
                    aiohttp.ClientSession() as s:
                async with s.post(f"{proxy.url}/v1/jobs", json={"command": "x"}) as r:
                    assert r.status == 201
                ingress = f"{proxy.url}/__replayproxy/webhooks"
                good = b'{"event_id":"evt_1","type":"job.completed","job_id":6230}'
                forged = b'{"event_id":"evt_2","type":"job.completed","job_id":6230,"forged":1}'
                for body, headers in (
                    (forged, {"Content-Type": "application/json"}),  # unsigned
                    (forged, _signed(forged, "not-the-upstream-secret")),  # wrong secret
                    (good, {**_signed(good, UPSTREAM_SECRET), "X-Signature": "sha256=00"}),
                    (good, _signed(good, UPSTREAM_SECRET)),
                    (good, _signed(good, UPSTREAM_SECRET)),  # the sender retries: recorded once
                ):
                    async with s.post(ingress, data=body, headers=headers) as r:
                        statuses.append(r.status)
                        if r.status == 202:
                            assert await r.json() == {"thanks": len(received)}
                async with s.post(f"{ingress}/7", data=good,
                                  headers=_signed(good, UPSTREAM_SECRET)) as r:
                    statuses.append(r.status)  # no callback URL number 7 was ever seen
        return statuses

    statuses = run(session())
    assert statuses == [401, 401, 401, 202, 202, 404]
    assert len(received) == 2 and all(b"forged" not in body for body, _ in received)
    cassette = load(path)
    assert len(cassette.webhooks) == 1
    hook = cassette.webhooks[0]
    assert hook.body == b'{"event_id":"evt_1","type":"job.completed","job_id":6230}'
    assert hook.event_id == "evt_1" and hook.cause == 1 and hook.after == 1
    assert hook.path == "/__replayproxy/webhooks" and hook.target.endswith("/webhooks/camber")
    assert "forged" not in path.read_text()
    assert_no_secrets(path)


# ---------------------------------------------------------------------------------------------
# modes


def counting_upstream(hits: list[str]) -> web.Application:
    async def any_path(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"path": request.path, "n": len(hits) + 100})

    app = web.Application()
    app.router.add_get("/{tail:.*}", any_path)
    return app


def test_modes_once_new_episodes_all_none(tmp_path: Path) -> None:
    path = tmp_path / "modes.yaml"
    hits: list[str] = []

    async def get(mode: str, up: str, *paths: str) -> list[int]:
        async with ReplayProxy(path, mode=mode, upstream=up) as proxy, \
                aiohttp.ClientSession() as s:
            out = []
            for p in paths:
                async with s.get(proxy.url + p) as r:
                    out.append(r.status)
            return out

    def uris() -> list[str]:
        return [i.request.uri.rsplit("/", 1)[1] for i in load(path).interactions]

    async def session() -> None:
        async with serving(counting_upstream(hits)) as up:
            assert await get("once", up, "/a") == [200]  # no cassette: records
            assert hits == ["/a"] and uris() == ["a"]
            assert await get("once", up, "/a", "/b") == [200, 502]  # replays, refuses the rest
            assert hits == ["/a"]
            assert await get("new_episodes", up, "/a", "/b") == [200, 200]
            assert hits == ["/a", "/b"] and uris() == ["a", "b"]
            assert await get("all", up, "/c") == [200]
            assert hits == ["/a", "/b", "/c"] and uris() == ["c"]
            assert await get("none", up, "/c", "/a") == [200, 502]
            assert hits == ["/a", "/b", "/c"]

    run(session())
    with pytest.raises(CassetteError):
        run(_enter(ReplayProxy(tmp_path / "missing.yaml", mode="none")))


async def _enter(proxy: ReplayProxy) -> None:
    async with proxy:
        pass


# ---------------------------------------------------------------------------------------------
# the CLI: kill -9, recovery, SIGTERM


async def _start_cli(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "cli.py"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)  # type: ignore[union-attr]
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    text = line.decode()
    assert " on http://" in text, text
    return proc, text.split(" on ", 1)[1].split()[0]


def test_kill_9_then_recovery_then_sigterm_saves(tmp_path: Path) -> None:
    path = tmp_path / "crash.yaml"
    hits: list[str] = []

    async def session() -> tuple[str, int]:
        async with serving(counting_upstream(hits)) as up, aiohttp.ClientSession() as s:
            proc, url = await _start_cli("record", str(path), "--upstream", up,
                                         "--listen", "127.0.0.1:0")
            try:
                for p in ("/a", "/b", "/c"):
                    async with s.get(url + p) as r:
                        assert r.status == 200
            finally:
                proc.kill()  # SIGKILL: no chance to save
                await proc.communicate()
            assert not path.exists() and journal_path(path).exists()

            proc, url = await _start_cli("record", str(path), "--upstream", up,
                                         "--listen", "127.0.0.1:0", "--mode", "new_episodes")
            try:
                async with s.get(url + "/b") as r:  # recovered, so replayed
                    assert (await r.json())["path"] == "/b"
                async with s.get(url + "/d") as r:  # new: recorded
                    assert r.status == 200
            finally:
                proc.send_signal(signal.SIGTERM)
                _, err = await proc.communicate()
            return err.decode(), proc.returncode

    err, code = run(session())
    assert code == 0, err
    assert "recovered 3 exchanges and 0 webhooks" in err
    assert hits == ["/a", "/b", "/c", "/d"]
    assert [i.request.uri.rsplit("/", 1)[1] for i in load(path).interactions] == [
        "a", "b", "c", "d"]
    assert not journal_path(path).exists()


def test_the_committed_sample_cassette_replays() -> None:
    path = ROOT / "cassettes" / "camber-jobs.yaml"
    outcome, proxy = run(replay(path, files=("b.pdf", "fail.pdf", "a.pdf")))
    assert {f: outcome[f]["status"] for f in ("a.pdf", "b.pdf", "fail.pdf")} == {
        "a.pdf": "completed", "b.pdf": "completed", "fail.pdf": "failed"}
    assert outcome["a.pdf"]["output_size"] == 4096 and outcome["rejected_webhooks"] == 0
    assert not proxy.report.unmatched


async def _serve_tls(app: web.Application, context: Any) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    return runner, f"https://127.0.0.1:{runner.addresses[0][1]}"


def test_https_upstream_is_verified_and_upstream_ca_trusts_a_private_one(tmp_path: Path) -> None:
    from replayproxy.ca import CertificateAuthority

    ca, _ = CertificateAuthority.load_or_create(tmp_path / "ca")
    path = tmp_path / "tls.yaml"

    async def session() -> tuple[dict[str, Any], int]:
        runner, up = await _serve_tls(counting_upstream([]), ca.server_context("127.0.0.1"))
        try:
            async with aiohttp.ClientSession() as s:
                async with ReplayProxy(path, mode="all", upstream=up) as proxy:
                    async with s.get(f"{proxy.url}/x") as r:  # not trusted by default
                        refused = await r.json()
                async with ReplayProxy(path, mode="all", upstream=up,
                                       upstream_ca=str(ca.cert_path)) as proxy:
                    async with s.get(f"{proxy.url}/x") as r:
                        return refused, r.status
        finally:
            await runner.cleanup()

    refused, status = run(session())
    assert "certificate" in refused["cause"].lower() and refused["upstream"].startswith("https:")
    assert status == 200
    assert load(path).interactions[0].request.uri.startswith("https://127.0.0.1:")


def test_callback_urls_are_rewritten_upstream_only_under_the_public_url(tmp_path: Path) -> None:
    path = tmp_path / "cb.yaml"
    received: list[dict[str, Any]] = []

    async def submit(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"job_id": 6230}, status=201)

    async def session() -> None:
        upstream = web.Application()
        upstream.router.add_post("/v1/jobs", submit)
        config = Config(webhooks=WebhooksConfig(callback_fields=("callback_url", "notify.url")))
        async with serving(upstream) as up, aiohttp.ClientSession() as s:
            async with ReplayProxy(path, mode="all", upstream=up, config=config,
                                   public_url="https://tunnel.example/") as proxy:
                for body in (
                    {"callback_url": "http://app.local/hooks?job=1", "notify": {"url": "x"}},
                    {"callback_url": "http://app.local/hooks?job=2",
                     "notify": {"url": "http://app.local/hooks?job=1"}},
                ):
                    async with s.post(f"{proxy.url}/v1/jobs", json=body) as r:
                        assert r.status == 201

    run(session())
    ingress = "https://tunnel.example/__replayproxy/webhooks"
    assert received == [
        {"callback_url": f"{ingress}/1", "notify": {"url": "x"}},
        {"callback_url": f"{ingress}/2", "notify": {"url": f"{ingress}/1"}},
    ]
    bodies = [json.loads(i.request.body) for i in load(path).interactions]
    assert bodies[0]["callback_url"] == "http://app.local/hooks?job=1"
    assert bodies[1]["notify"]["url"] == "http://app.local/hooks?job=1"


def test_a_body_nested_past_the_recursion_limit_is_forwarded_as_sent(tmp_path: Path) -> None:
    """Callback rewriting reads the app's body as JSON; one too deep to parse is simply not
    JSON: forwarded byte for byte and recorded, never a 500 from the proxy."""
    path = tmp_path / "deep.yaml"
    nested = b"[" * 100_000 + b"]" * 100_000
    deep = b'{"callback_url": "http://app.local/hooks", "x": ' + nested + b"}"
    received: list[bytes] = []

    async def submit(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response({"job_id": 6231}, status=201)

    async def session() -> int:
        upstream = web.Application(client_max_size=1 << 20)
        upstream.router.add_post("/v1/jobs", submit)
        config = Config(webhooks=WebhooksConfig(callback_fields=("callback_url",)))
        async with serving(upstream) as up, aiohttp.ClientSession() as s:
            async with ReplayProxy(path, mode="all", upstream=up, config=config) as proxy:
                async with s.post(f"{proxy.url}/v1/jobs", data=deep,
                                  headers={"Content-Type": "application/json"}) as r:
                    return r.status

    assert run(session()) == 201
    assert received == [deep]
    assert load(path).interactions[0].request.body == deep


def test_concurrent_exchanges_are_recorded_whole(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"

    async def session() -> None:
        async with serving(odd_upstream([])) as up, aiohttp.ClientSession() as s:
            async with ReplayProxy(path, mode="all", upstream=up) as proxy:
                async def one(n: int) -> None:
                    async with s.post(f"{proxy.url}/echo", json={"n": n, "pad": "x" * n * 50}) as r:
                        assert json.loads((await r.json())["got"])["n"] == n

                await asyncio.gather(*(one(n) for n in range(40)))

    run(session())
    items = load(path).interactions
    assert len(items) == 40
    for item in items:
        assert json.loads(item.request.body) == json.loads(json.loads(item.response.body)["got"])
    assert sorted(json.loads(i.request.body)["n"] for i in items) == list(range(40))


def test_an_upstream_with_a_base_path_gets_it_on_every_request(tmp_path: Path) -> None:
    """`--upstream http://host/api`: the app asks for /v1/jobs, the upstream sees /api/v1/jobs,
    and the cassette records the full URL; replaying it answers the app's own paths."""
    path = tmp_path / "based.yaml"
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.json_response({"path": request.path_qs})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)

    async def session() -> list[Any]:
        async with serving(app) as up, aiohttp.ClientSession() as s:
            async with ReplayProxy(path, mode="all", upstream=f"{up}/api") as proxy:
                async with s.get(f"{proxy.url}/v1/jobs/7?full=1") as r:
                    recorded = await r.json()
            async with ReplayProxy(path) as proxy:
                async with s.get(f"{proxy.url}/v1/jobs/7?full=1") as r:
                    return [recorded, r.status, await r.json(), up]

    recorded, status, replayed, up = run(session())
    assert seen == ["/api/v1/jobs/7?full=1"]
    assert recorded == replayed == {"path": "/api/v1/jobs/7?full=1"} and status == 200
    assert load(path).interactions[0].request.uri == f"{up}/api/v1/jobs/7?full=1"


def test_an_upstream_url_with_credentials_is_refused_without_echoing_them(
    tmp_path: Path,
) -> None:
    """user:password@ in --upstream would reach argv, logs and the cassette: refused at start."""
    with pytest.raises(ConfigError) as caught:
        run(ReplayProxy(tmp_path / "x.yaml", mode="all",
                        upstream="http://alice:s3cret@127.0.0.1:9").start())
    assert "carries credentials" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert not (tmp_path / "x.yaml").exists() and not (tmp_path / "x.yaml.journal").exists()


def test_header_bytes_that_are_not_utf8_are_kept_as_latin1_and_the_session_is_saved(
    tmp_path: Path,
) -> None:
    """A Latin-1 filename in the upstream's Content-Disposition and a Latin-1 request header:
    stored (and answered) as text read as Latin-1, and the cassette is written at stop."""
    path = tmp_path / "latin.yaml"
    seen: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                     b'Content-Disposition: attachment; filename="r\xe9sum\xe9.pdf"\r\n\r\nok')
        await writer.drain()
        writer.close()

    async def raw_get(url: str) -> bytes:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /files/1 HTTP/1.1\r\nHost: x\r\nX-Name: Jos\xe9\r\n"
                     b"Connection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        return answer

    async def session() -> tuple[bytes, bytes]:
        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        up = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with ReplayProxy(path, mode="all", upstream=up) as proxy:
                recorded = await raw_get(proxy.url)
        finally:
            server.close()
            await server.wait_closed()
        async with ReplayProxy(path) as proxy:
            replayed = await raw_get(proxy.url)
        return recorded, replayed

    recorded, replayed = run(session())
    assert b"X-Name: Jos\xe9\r\n" in seen[0]  # the upstream got the app's bytes unchanged
    item = load(path).interactions[0]
    assert ("X-Name", "José") in item.request.headers
    assert ('Content-Disposition', 'attachment; filename="résumé.pdf"') in item.response.headers
    for answer in (recorded, replayed):
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
        assert 'filename="résumé.pdf"'.encode() in answer


def test_a_journal_removed_while_recording_is_a_clear_error_at_stop(tmp_path: Path) -> None:
    """The journal is the recording: if something deletes it mid-session, stop says what was
    lost in one line (no traceback) and leaves the previous cassette alone."""
    path = tmp_path / "gone.yaml"

    async def session() -> tuple[str, int]:
        async with serving(counting_upstream([])) as up, aiohttp.ClientSession() as s:
            proc, url = await _start_cli("record", str(path), "--upstream", up,
                                         "--listen", "127.0.0.1:0")
            try:
                for p in ("/a", "/b"):
                    async with s.get(url + p) as r:
                        assert r.status == 200
                journal_path(path).unlink()
            finally:
                proc.send_signal(signal.SIGTERM)
                _, err = await proc.communicate()
            return err.decode(), proc.returncode

    err, code = run(session())
    assert code != 0 and "Traceback" not in err, err
    assert "cannot read the recording journal back" in err and "2 of this session's" in err
    assert not path.exists()


def test_a_reason_phrase_with_a_control_character_is_a_502_not_an_unloadable_cassette(
    tmp_path: Path,
) -> None:
    """httptools passes a vertical tab in the status line; aiohttp would refuse to send it on
    and the loader to read it back. The answer is the upstream's failure, never recorded."""
    path = tmp_path / "vt.yaml"

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        reason = b"O\x0bK" if head.startswith(b"GET /bad") else b"OK"
        writer.write(b"HTTP/1.1 200 " + reason + b"\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def session() -> list[int]:
        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        statuses = []
        try:
            async with ReplayProxy(path, mode="all", upstream=f"http://127.0.0.1:{port}") as proxy:
                async with aiohttp.ClientSession() as s:
                    for target in ("/bad", "/good"):
                        async with s.get(proxy.url + target) as r:
                            statuses.append(r.status)
                            await r.read()
        finally:
            server.close()
            await server.wait_closed()
        return statuses

    assert run(session()) == [502, 200]
    assert [i.request.uri.rsplit("/", 1)[1] for i in load(path).interactions] == ["good"]
