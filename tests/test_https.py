"""HTTPS everywhere: forward-proxy mode (CONNECT, local CA), TLS on the listener, `ca` command.

Real TLS on loopback only: the upstream's certificate comes from a second CA the test makes, so
the proxy trusts it only through `upstream_ca`; clients trust only the local CA.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web

from replayproxy.api import SyncReplayProxy
from replayproxy.ca import CertificateAuthority
from replayproxy.cassette import load
from replayproxy.config import Config
from replayproxy.errors import ReplayProxyError

ROOT = Path(__file__).resolve().parent.parent
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy",
              "ALL_PROXY", "all_proxy")


class LoopThread:
    """An event loop on a background thread, for servers that sync clients talk to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class TLSServer:
    """An aiohttp app over TLS on 127.0.0.1 (port 0), run on a LoopThread."""

    def __init__(self, loops: LoopThread, app: web.Application, context: ssl.SSLContext):
        self.loops = loops
        self.runner = web.AppRunner(app, access_log=None)
        self.context = context
        self.port = 0

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.context)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def start(self) -> TLSServer:
        self.loops.call(self._start())
        return self

    def stop(self) -> None:
        self.loops.call(self.runner.cleanup())


def upstream_app(hits: list[str]) -> web.Application:
    """A little Camber: answers carry a counter, so a replay can only match by serving the file."""

    async def submit(request: web.Request) -> web.Response:
        hits.append(f"POST {request.path_qs}")
        body = await request.json()
        return web.json_response(
            {"job_id": 6238, "status": "PENDING", "n": len(hits), "client": body.get("client")},
            status=201,
        )

    async def job(request: web.Request) -> web.Response:
        hits.append(f"GET {request.path_qs}")
        return web.json_response(
            {"job_id": int(request.match_info["id"]), "status": "COMPLETED", "n": len(hits),
             "host": request.host, "scheme": request.scheme},
            headers={"X-Upstream": "camber"},
        )

    async def big(request: web.Request) -> web.Response:
        hits.append(f"GET {request.path_qs}")
        return web.Response(body=b"x" * int(request.match_info["n"]))

    app = web.Application()
    app.router.add_post("/v1/jobs", submit)
    app.router.add_get("/v1/jobs/{id}", job)
    app.router.add_get("/big/{n}", big)
    return app


async def plain_upstream(hits: list[str]) -> tuple[web.AppRunner, int]:
    """upstream_app over plain HTTP on 127.0.0.1: its runner (to clean up) and port."""
    runner = web.AppRunner(upstream_app(hits), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def loops() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def local_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "local-ca")[0]


@pytest.fixture
def upstream_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "upstream-ca")[0]


@pytest.fixture
def cassettes(tmp_path: Path) -> Path:
    folder = tmp_path / "cassettes"
    folder.mkdir()
    return folder


def trusting(ca: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert_path))


# -- clients: each returns [(status, body)] for the same conversation ---------------------------

def conversation(name: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [("POST", "/v1/jobs", {"client": name}), ("GET", f"/v1/jobs/{len(name)}238", None)]


def with_requests(base: str, proxy: str | None, verify: Any) -> list[tuple[int, Any]]:
    out = []
    with requests.Session() as s:
        s.trust_env = False
        proxies = {"https": proxy, "http": proxy} if proxy else None
        for method, path, body in conversation("requests"):
            r = s.request(method, base + path, json=body, proxies=proxies, verify=verify,
                          timeout=10)
            out.append((r.status_code, r.json()))
    return out


async def _with_aiohttp(base: str, proxy: str | None, context: ssl.SSLContext) -> list[Any]:
    out = []
    async with aiohttp.ClientSession() as s:
        for method, path, body in conversation("aiohttp"):
            async with s.request(method, base + path, json=body, proxy=proxy, ssl=context) as r:
                out.append((r.status, await r.json()))
    return out


def with_aiohttp(base: str, proxy: str | None, context: ssl.SSLContext) -> list[Any]:
    return asyncio.run(_with_aiohttp(base, proxy, context))


def with_httpx(base: str, proxy: str | None, context: ssl.SSLContext) -> list[Any]:
    httpx = pytest.importorskip("httpx")
    out = []
    with httpx.Client(proxy=proxy, verify=context, trust_env=False, timeout=10) as c:
        for method, path, body in conversation("httpx"):
            r = c.request(method, base + path, json=body)
            out.append((r.status_code, r.json()))
    return out


def with_curl(base: str, proxy: str | None, cafile: Path) -> list[Any]:
    out = []
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    for method, path, body in conversation("curl"):
        args = ["curl", "-sS", "--max-time", "10", "-X", method,
                "--cacert", str(cafile), "-w", "\n%{http_code}"]
        if proxy:
            args += ["--proxy", proxy]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        done = subprocess.run([*args, base + path], capture_output=True, text=True, env=env,
                              timeout=30)
        assert done.returncode == 0, done.stderr + done.stdout
        text, _, code = done.stdout.rpartition("\n")
        out.append((int(code), json.loads(text)))
    return out


CURL = shutil.which("curl")


def all_clients(base: str, proxy: str | None, ca: CertificateAuthority) -> dict[str, Any]:
    answers = {
        "requests": with_requests(base, proxy, str(ca.cert_path)),
        "aiohttp": with_aiohttp(base, proxy, trusting(ca)),
        "httpx": with_httpx(base, proxy, trusting(ca)),
    }
    if CURL:
        answers["curl"] = with_curl(base, proxy, ca.cert_path)
    return answers


# -- tests --------------------------------------------------------------------------------------

def test_record_through_connect_then_replay_forward_and_reverse(
    clean_env: None, loops: LoopThread, local_ca: CertificateAuthority,
    upstream_ca: CertificateAuthority, cassettes: Path,
) -> None:
    hits: list[str] = []
    upstream = TLSServer(loops, upstream_app(hits), upstream_ca.server_context("localhost"))
    upstream.start()
    base = f"https://localhost:{upstream.port}"
    path = cassettes / "forward.yaml"
    try:
        with SyncReplayProxy(path, mode="all", forward=True, ca_dir=local_ca.directory,
                             upstream_ca=str(upstream_ca.cert_path)) as proxy:
            assert proxy.url.startswith("http://127.0.0.1:")
            recorded = all_clients(base, proxy.url, local_ca)
    finally:
        upstream.stop()
    calls = len(hits)
    assert calls == 2 * len(recorded)
    for answers in recorded.values():
        assert [status for status, _ in answers] == [201, 200]
        assert answers[1][1]["scheme"] == "https"
    tape = load(path)
    assert len(tape.interactions) == calls
    for item in tape.interactions:  # the real upstream URI, not the proxy's
        assert item.request.uri.startswith(f"{base}/v1/jobs"), item.request.uri

    # offline (the upstream is stopped): forward mode, the same clients, the same answers
    with SyncReplayProxy(path, forward=True, ca_dir=local_ca.directory) as proxy:
        assert all_clients(base, proxy.url, local_ca) == recorded
    assert not proxy.report.unmatched and not proxy.report.unused
    # ... and reverse mode from the same cassette: base URL pointed at the proxy
    with SyncReplayProxy(path) as proxy:
        assert with_requests(proxy.url, None, True) == recorded["requests"]
        assert with_aiohttp(proxy.url, None, trusting(local_ca)) == recorded["aiohttp"]
    # ... and reverse mode over TLS (--tls): a client that trusts only the local CA
    with SyncReplayProxy(path, tls=True, ca_dir=local_ca.directory) as proxy:
        assert proxy.url.startswith("https://127.0.0.1:")
        assert all_clients(proxy.url, None, local_ca) == recorded
        tls_url = proxy.url.replace("127.0.0.1", "localhost")
        assert with_requests(tls_url, None, str(local_ca.cert_path)) == recorded["requests"]
    assert len(hits) == calls  # nothing reached the upstream while replaying


def test_a_client_that_does_not_trust_the_local_ca_fails_loudly(
    clean_env: None, local_ca: CertificateAuthority, cassettes: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from helpers import job_cassette

    from replayproxy.cassette import save

    path = cassettes / "jobs.yaml"
    save(job_cassette(), path)
    monkeypatch.setenv("WEBHOOK_SECRET", "whsec_test")
    with SyncReplayProxy(path, forward=True, ca_dir=local_ca.directory) as proxy:
        proxies = {"https": proxy.url}
        with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            requests.get("https://camber.example/v1/jobs/6238", proxies=proxies,
                         verify=certifi_bundle(), timeout=10)
        ok = requests.get("https://camber.example/v1/jobs/6238", proxies=proxies,
                          verify=str(local_ca.cert_path), timeout=10)
        assert ok.json() == {"job_id": 6238, "status": "RUNNING"}
    with SyncReplayProxy(path, tls=True, ca_dir=local_ca.directory) as proxy:
        with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            requests.get(f"{proxy.url}/v1/jobs/6238", verify=certifi_bundle(), timeout=10)
        httpx = pytest.importorskip("httpx")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{proxy.url}/v1/jobs/6238", verify=ssl.create_default_context(),
                      trust_env=False)


def certifi_bundle() -> str:
    import certifi

    return certifi.where()


def test_hosts_limits_interception_tunnel_while_recording_refuse_while_replaying(
    clean_env: None, loops: LoopThread, local_ca: CertificateAuthority,
    upstream_ca: CertificateAuthority, cassettes: Path,
) -> None:
    hits: list[str] = []
    other_hits: list[str] = []
    upstream = TLSServer(loops, upstream_app(hits), upstream_ca.server_context("localhost"))
    other = TLSServer(loops, upstream_app(other_hits), upstream_ca.server_context("127.0.0.1"))
    upstream.start()
    other.start()
    base, other_base = f"https://localhost:{upstream.port}", f"https://127.0.0.1:{other.port}"
    path = cassettes / "hosts.yaml"
    try:
        with SyncReplayProxy(path, mode="all", forward=True, hosts="localhost",
                             ca_dir=local_ca.directory,
                             upstream_ca=str(upstream_ca.cert_path)) as proxy:
            intercepted = with_requests(base, proxy.url, str(local_ca.cert_path))
            # not intercepted: the client sees the real server's certificate (trusting only
            # the upstream's CA works, trusting only the local CA fails)
            tunnelled = with_requests(other_base, proxy.url, str(upstream_ca.cert_path))
            with pytest.raises(requests.exceptions.SSLError):
                with_requests(other_base, proxy.url, str(local_ca.cert_path))
            assert with_curl(other_base, proxy.url, upstream_ca.cert_path)[0][0] == 201
        assert [s for s, _ in intercepted] == [201, 200]
        assert [s for s, _ in tunnelled] == [201, 200] and len(other_hits) == 4
        uris = [i.request.uri for i in load(path).interactions]
        assert uris and all(u.startswith(f"{base}/") for u in uris), uris  # tunnel: unrecorded

        with SyncReplayProxy(path, forward=True, hosts="localhost",
                             ca_dir=local_ca.directory) as proxy:
            assert with_requests(base, proxy.url, str(local_ca.cert_path)) == intercepted
            with pytest.raises(requests.exceptions.ProxyError, match="403"):
                with_requests(other_base, proxy.url, str(upstream_ca.cert_path))
            host, port = proxy.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(f"CONNECT 127.0.0.1:{other.port} HTTP/1.1\r\n"
                             f"Host: 127.0.0.1:{other.port}\r\n\r\n".encode())
                answer = sock.makefile("rb").read()
            assert answer.startswith(b"HTTP/1.1 403 ") and b"nothing leaves" in answer
            # plain HTTP to a host outside --hosts is refused the same way
            refused = requests.get(f"http://127.0.0.1:{other.port}/v1/jobs/1",
                                   proxies={"http": proxy.url}, timeout=10)
            assert refused.status_code == 403 and "not an intercepted host" in refused.text
        assert len(other_hits) == 4 and len(hits) == 2  # nothing left during the replay
    finally:
        upstream.stop()
        other.stop()


def test_the_proxy_upstream_client_ignores_ssl_cert_file(
    clean_env: None, loops: LoopThread, local_ca: CertificateAuthority,
    upstream_ca: CertificateAuthority, cassettes: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shell with the CA exports still records: SSL_CERT_FILE never reaches the upstream side."""
    upstream = TLSServer(loops, upstream_app([]), upstream_ca.server_context("localhost"))
    upstream.start()
    base = f"https://localhost:{upstream.port}/v1/jobs/1"
    monkeypatch.setenv("SSL_CERT_FILE", str(upstream_ca.cert_path))
    monkeypatch.setenv("SSL_CERT_DIR", str(upstream_ca.directory))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(upstream_ca.cert_path))
    try:
        with SyncReplayProxy(cassettes / "a.yaml", mode="all", forward=True,
                             ca_dir=local_ca.directory) as proxy:
            r = requests.get(base, proxies={"https": proxy.url}, verify=str(local_ca.cert_path),
                             timeout=10)
            assert r.status_code == 502 and "certificate" in r.json()["cause"].lower()
        monkeypatch.setenv("SSL_CERT_FILE", str(local_ca.cert_path))
        with SyncReplayProxy(cassettes / "b.yaml", mode="all", forward=True,
                             ca_dir=local_ca.directory,
                             upstream_ca=str(upstream_ca.cert_path)) as proxy:
            r = requests.get(base, proxies={"https": proxy.url}, verify=str(local_ca.cert_path),
                             timeout=10)
            assert r.status_code == 200
    finally:
        upstream.stop()


def test_plain_http_proxy_requests_record_and_replay(
    clean_env: None, loops: LoopThread, local_ca: CertificateAuthority, cassettes: Path,
) -> None:
    hits: list[str] = []

    runner, port = loops.call(plain_upstream(hits))
    base = f"http://localhost:{port}"
    path = cassettes / "plain.yaml"
    try:
        with SyncReplayProxy(path, mode="all", forward=True, ca_dir=local_ca.directory) as proxy:
            recorded = with_requests(base, proxy.url, True)
            # a request sent to the proxy itself (not as a proxy) has nowhere to go
            direct = requests.get(f"{proxy.url}/v1/jobs/1", timeout=10)
            assert direct.status_code == 400 and "forward proxy" in direct.json()["error"]
            # a path that only starts like the webhook ingress is not it
            near = requests.post(f"{proxy.url}/__replayproxy/webhooksX", data=b"{}", timeout=10)
            assert near.status_code == 400 and "forward proxy" in near.json()["error"]
            # the same through the proxy (HTTP_PROXY without NO_PROXY): no loop to itself
            looped = requests.get(f"{proxy.url}/v1/jobs/1", proxies={"http": proxy.url},
                                  timeout=10)
            assert looped.status_code == 400 and "forward proxy" in looped.json()["error"]
    finally:
        loops.call(runner.cleanup())
    assert [i.request.uri for i in load(path).interactions] == [
        f"{base}/v1/jobs", f"{base}/v1/jobs/8238"]
    with SyncReplayProxy(path, forward=True, ca_dir=local_ca.directory) as proxy:
        assert with_requests(base, proxy.url, True) == recorded
        unknown = with_aiohttp(base, proxy.url, trusting(local_ca))  # not recorded: a miss
        assert unknown[0][0] == 502 and unknown[0][1]["request"] == "POST /v1/jobs"
    with SyncReplayProxy(path) as proxy:
        assert with_requests(proxy.url, None, True) == recorded


def test_plain_http_to_a_host_outside_hosts_passes_unrecorded_while_recording(
    clean_env: None, loops: LoopThread, local_ca: CertificateAuthority, cassettes: Path,
) -> None:
    """Recording with --hosts: plain HTTP for another host goes through the proxy's upstream
    client untouched (status, headers, body) and stays out of the cassette."""
    hits: list[str] = []

    runner, port = loops.call(plain_upstream(hits))
    other = f"http://127.0.0.1:{port}"
    path = cassettes / "outside.yaml"
    try:
        with SyncReplayProxy(path, mode="all", forward=True, hosts="camber.example",
                             ca_dir=local_ca.directory, config=Config(max_body_size=4096)) as proxy:
            passed = with_requests(other, proxy.url, True)
            # max_body_size bounds what is recorded; this is not recorded, so it passes whole
            large = requests.get(f"{other}/big/20000", proxies={"http": proxy.url}, timeout=10)
            assert large.status_code == 200 and large.content == b"x" * 20000
            got = requests.get(f"{other}/v1/jobs/7", proxies={"http": proxy.url}, timeout=10)
            assert got.headers["X-Upstream"] == "camber"
            assert got.json()["job_id"] == 7
            missing = requests.get(f"{other}/nowhere", proxies={"http": proxy.url}, timeout=10)
            assert missing.status_code == 404  # the upstream's own answer, passed on
    finally:
        loops.call(runner.cleanup())
    assert [s for s, _ in passed] == [201, 200]
    assert hits == ["POST /v1/jobs", "GET /v1/jobs/8238", "GET /big/20000", "GET /v1/jobs/7"]
    assert not path.exists()  # nothing was recorded, so no cassette


def test_a_reverse_mode_cassette_replays_in_forward_mode(
    clean_env: None, loops: LoopThread, local_ca: CertificateAuthority,
    upstream_ca: CertificateAuthority, cassettes: Path,
) -> None:
    upstream = TLSServer(loops, upstream_app([]), upstream_ca.server_context("localhost"))
    upstream.start()
    path = cassettes / "reverse.yaml"
    try:
        with SyncReplayProxy(path, mode="all", upstream=f"https://localhost:{upstream.port}",
                             upstream_ca=str(upstream_ca.cert_path)) as proxy:
            recorded = with_requests(proxy.url, None, True)
    finally:
        upstream.stop()
    with SyncReplayProxy(path, forward=True, ca_dir=local_ca.directory) as proxy:
        # any host name: matching ignores host and port
        assert with_requests("https://camber.example", proxy.url,
                             str(local_ca.cert_path)) == recorded


def test_the_ca_folder_may_not_be_inside_the_cassette_folder(
    clean_env: None, cassettes: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from helpers import job_cassette

    from replayproxy.cassette import save

    save(job_cassette(), cassettes / "jobs.yaml")
    monkeypatch.setenv("WEBHOOK_SECRET", "whsec_test")
    with pytest.raises(ReplayProxyError, match="inside the cassette folder"):
        with SyncReplayProxy(cassettes / "jobs.yaml", tls=True, ca_dir=cassettes / "ca"):
            pass
    assert not (cassettes / "ca").exists()  # refused before anything was created


# -- the command line ---------------------------------------------------------------------------

def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def test_ca_command_creates_once_and_prints_trust_instructions(tmp_path: Path) -> None:
    folder = tmp_path / "myca"
    first = cli("ca", "--dir", str(folder))
    assert first.returncode == 0, first.stderr
    assert "created" in first.stderr
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE"):
        assert f"export {name}={folder / 'ca.pem'}" in first.stdout
    assert stat.S_IMODE((folder / "ca-key.pem").stat().st_mode) == 0o600
    cert = (folder / "ca.pem").read_bytes()
    again = cli("ca", "--dir", str(folder))
    assert again.returncode == 0 and "existing" in again.stderr
    assert (folder / "ca.pem").read_bytes() == cert  # never overwritten: clients trust it
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    default = cli("ca", env=env)
    assert default.returncode == 0 and (tmp_path / "xdg" / "replayproxy" / "ca" / "ca.pem").exists()
    helped = cli("record", "--help")
    for option in ("--forward", "--hosts", "--ca-dir", "--tls"):
        assert option in helped.stdout


PROBE = textwrap.dedent(
    """
    import json, os, sys, requests
    # trust_env: HTTPS_PROXY and REQUESTS_CA_BUNDLE come from `replayproxy run --forward`
    base = sys.argv[1]
    out = [requests.post(base + "/v1/jobs", json={"client": "probe"}, timeout=10).json(),
           requests.get(base + "/v1/jobs/77", timeout=10).json()]
    print(json.dumps(out))
    """
)


def test_run_forward_records_then_replays_with_only_the_environment(
    clean_env: None, loops: LoopThread, tmp_path: Path, upstream_ca: CertificateAuthority,
    cassettes: Path,
) -> None:
    hits: list[str] = []
    upstream = TLSServer(loops, upstream_app(hits), upstream_ca.server_context("localhost"))
    upstream.start()
    (tmp_path / "probe.py").write_text(PROBE)
    ca_dir = tmp_path / "cli-ca"
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env.pop("REQUESTS_CA_BUNDLE", None)
    base = f"https://localhost:{upstream.port}"
    out = tmp_path / "out.json"
    probe = [sys.executable, "-c",
             f"import runpy,sys; sys.stdout=open({str(out)!r},'w'); "
             f"sys.argv=['probe', {base!r}]; runpy.run_path({str(tmp_path / 'probe.py')!r})"]
    try:
        recorded = cli("run", "cassettes/env.yaml", "--record", "--forward", "--hosts",
                       "localhost", "--ca-dir", str(ca_dir), "--upstream-ca",
                       str(upstream_ca.cert_path), "--", *probe, env=env, cwd=tmp_path)
        assert recorded.returncode == 0, recorded.stderr
        assert "recording cassettes/env.yaml" in recorded.stderr
    finally:
        upstream.stop()
    first = json.loads(out.read_text())
    assert len(hits) == 2 and first[0]["client"] == "probe"
    uris = [i.request.uri for i in load(cassettes / "env.yaml").interactions]
    assert uris == [f"{base}/v1/jobs", f"{base}/v1/jobs/77"]
    replayed = cli("run", "cassettes/env.yaml", "--forward", "--ca-dir", str(ca_dir),
                   "--strict", "--", *probe, env=env, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(out.read_text()) == first and len(hits) == 2
    # --tls: REPLAYPROXY_URL is https and the CA variables let the command trust it
    tls_probe = [sys.executable, "-c",
                 f"import os,runpy,sys; sys.stdout=open({str(out)!r},'w'); "
                 f"sys.argv=['probe', os.environ['REPLAYPROXY_URL']]; "
                 f"runpy.run_path({str(tmp_path / 'probe.py')!r})"]
    over_tls = cli("run", "cassettes/env.yaml", "--tls", "--ca-dir", str(ca_dir), "--strict",
                   "--", *tls_probe, env=env, cwd=tmp_path)
    assert over_tls.returncode == 0, over_tls.stderr
    assert json.loads(out.read_text()) == first


def test_hosts_entries_name_hosts_or_wildcard_subdomains() -> None:
    from replayproxy.ca import CertificateAuthority as CA
    from replayproxy.forward import ForwardServer, split_authority

    server = ForwardServer(web.Application(), CA(Path("/nonexistent"), Path("a"), Path("b")),
                           hosts="api.camber.example, *.Files.Example.")
    assert server.intercepts("API.camber.example") and server.intercepts("eu.files.example")
    assert not server.intercepts("camber.example") and not server.intercepts("files.example")
    assert not server.intercepts("evil-api.camber.example")
    assert split_authority("[::1]:8443") == ("::1", 8443)
    assert split_authority("Host.Example:443") == ("host.example", 443)
    for bad in ("host", "host:", "host:0", "host:99999", "[::1]8443", ":443"):
        with pytest.raises(ValueError):
            split_authority(bad)


def test_webhooks_record_and_replay_in_forward_mode(
    clean_env: None, loops: LoopThread, local_ca: CertificateAuthority,
    upstream_ca: CertificateAuthority, cassettes: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app's callback URL is swapped for the proxy's ingress; Camber's signed webhook comes
    back there, is recorded, re-signed and forwarded; a forward replay delivers it again."""
    from replayproxy.config import Config
    from replayproxy.signing import sign, verify

    monkeypatch.setenv("CAMBER_WEBHOOK_SECRET", "upstream-secret")
    monkeypatch.setenv("WEBHOOK_SECRET", "local-secret")
    signature = Config().webhooks.signature
    received: list[tuple[bytes, dict[str, str]]] = []

    async def submit(request: web.Request) -> web.Response:
        body = await request.json()
        hook = json.dumps({"type": "job.completed", "job_id": 6238, "event_id": "evt_1"}).encode()

        async def later() -> None:
            await asyncio.sleep(0.05)
            headers = sign(hook, ["upstream-secret"], signature, timestamp=int(time.time()))
            async with aiohttp.ClientSession() as s:  # to the proxy's ingress, directly
                await s.post(body["callback_url"], data=hook,
                             headers={**headers, "Content-Type": "application/json"})

        request.app[tasks_key].append(asyncio.ensure_future(later()))
        return web.json_response({"job_id": 6238, "status": "PENDING"}, status=201)

    async def hooks(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.json_response({"ok": True})

    app = web.Application()
    tasks_key = web.AppKey("tasks", list)
    app[tasks_key] = []
    app.router.add_post("/v1/jobs", submit)
    upstream = TLSServer(loops, app, upstream_ca.server_context("localhost")).start()
    receiver = web.Application()
    receiver.router.add_post("/hooks", hooks)

    async def start_receiver() -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(receiver, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"

    runner, callback = loops.call(start_receiver())
    base = f"https://localhost:{upstream.port}"
    path = cassettes / "hooks.yaml"
    try:
        with SyncReplayProxy(path, mode="all", forward=True, ca_dir=local_ca.directory,
                             upstream_ca=str(upstream_ca.cert_path)) as proxy:
            r = requests.post(f"{base}/v1/jobs", json={"callback_url": callback},
                              proxies={"https": proxy.url}, verify=str(local_ca.cert_path),
                              timeout=10)
            assert r.status_code == 201
            for _ in range(100):
                if received:
                    break
                time.sleep(0.05)
        upstream.stop()
        assert len(received) == 1
        tape = load(path)
        assert tape.interactions[0].request.uri == f"{base}/v1/jobs"
        assert len(tape.webhooks) == 1 and tape.webhooks[0].target == callback
        with SyncReplayProxy(path, forward=True, ca_dir=local_ca.directory) as proxy:
            r = requests.post(f"{base}/v1/jobs", json={"callback_url": callback},
                              proxies={"https": proxy.url}, verify=str(local_ca.cert_path),
                              timeout=10)
            assert r.json() == {"job_id": 6238, "status": "PENDING"}
        assert proxy.report.webhooks_summary()["delivered"] == 1
        assert len(received) == 2 and received[1][0] == received[0][0]
        for body, headers in received:  # signed with the app's local secret each time
            verify(body, headers, ["local-secret"], signature)
    finally:
        loops.call(runner.cleanup())
        for task in app[tasks_key]:
            loops.loop.call_soon_threadsafe(task.cancel)


def test_record_and_replay_commands_in_forward_mode(
    clean_env: None, loops: LoopThread, tmp_path: Path, local_ca: CertificateAuthority,
    upstream_ca: CertificateAuthority, cassettes: Path,
) -> None:
    import re
    import signal

    upstream = TLSServer(loops, upstream_app([]), upstream_ca.server_context("localhost")).start()
    base = f"https://localhost:{upstream.port}"
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}

    def serve(*args: str) -> tuple[subprocess.Popen[str], str, str]:
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd=tmp_path)
        banner = proc.stdout.readline() if proc.stdout else ""
        found = re.search(r" on (http://127\.0\.0\.1:\d+)", banner)
        assert found, banner + (proc.stderr.read() if proc.stderr else "")
        return proc, found.group(1), banner

    def finish(proc: subprocess.Popen[str]) -> str:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        return err

    try:
        proc, url, banner = serve("record", "cassettes/cli.yaml", "--forward", "--hosts",
                                  "localhost", "--ca-dir", str(local_ca.directory),
                                  "--upstream-ca", str(upstream_ca.cert_path), "--listen",
                                  "127.0.0.1:0")
        try:
            assert "forward proxy for localhost" in banner
            recorded = with_requests(base, url, str(local_ca.cert_path))
        finally:
            err = finish(proc)
        assert "recorded 2 exchanges" in err
    finally:
        upstream.stop()
    proc, url, banner = serve("replay", "cassettes/cli.yaml", "--forward", "--ca-dir",
                              str(local_ca.directory), "--listen", "127.0.0.1:0")
    try:
        assert "(forward proxy)" in banner
        assert with_requests(base, url, str(local_ca.cert_path)) == recorded
        if CURL:
            assert with_curl(base, url, local_ca.cert_path)[0][0] == 502  # not recorded: a miss
    finally:
        assert "served 2" in finish(proc)
    bad = cli("replay", "cassettes/cli.yaml", "--hosts", "localhost", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "--hosts needs --forward" in bad.stderr
    both = cli("replay", "cassettes/cli.yaml", "--tls", "--forward", "--ca-dir",
               str(local_ca.directory), cwd=tmp_path, env=env)
    assert both.returncode == 2 and "--tls" in both.stderr


def test_malformed_connects_get_an_answer_not_a_hang(
    clean_env: None, local_ca: CertificateAuthority, cassettes: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from helpers import job_cassette

    from replayproxy.cassette import save

    save(job_cassette(), cassettes / "jobs.yaml")
    monkeypatch.setenv("WEBHOOK_SECRET", "whsec_test")

    def raw(url: str, data: bytes) -> bytes:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(data)
            return sock.makefile("rb").read()

    with SyncReplayProxy(cassettes / "jobs.yaml", forward=True,
                         ca_dir=local_ca.directory) as proxy:
        assert raw(proxy.url, b"CONNECT camber.example HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 400 ")
        assert raw(proxy.url, b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 400 ")
        assert raw(proxy.url, b"GET /" + b"x" * 70000).startswith(b"HTTP/1.1 431 ")
        # the proxy still works afterwards, plain HTTP proxy requests included
        ok = requests.get("http://camber.example/v1/jobs/6238", proxies={"http": proxy.url},
                          timeout=10)
        assert ok.json() == {"job_id": 6238, "status": "RUNNING"}
        # a request for the proxy's own URL sent through it (HTTP_PROXY set, no NO_PROXY)
        # is served as a direct one, never forwarded to itself
        own = requests.get(f"{proxy.url}/v1/jobs/6238", proxies={"http": proxy.url}, timeout=10)
        assert own.json() == {"job_id": 6238, "status": "RUNNING"}


def test_a_tunnel_is_a_raw_byte_pipe_both_ways(
    clean_env: None, loops: LoopThread, local_ca: CertificateAuthority, cassettes: Path,
) -> None:
    """A server that speaks first (a greeting) and an echo: bytes pass untouched, unrecorded."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hello\r\n")
        await writer.drain()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def start() -> asyncio.AbstractServer:
        return await asyncio.start_server(greet, "127.0.0.1", 0)

    server = loops.call(start())
    port = server.sockets[0].getsockname()[1]
    try:
        with SyncReplayProxy(cassettes / "t.yaml", mode="all", forward=True, hosts="localhost",
                             upstream="http://127.0.0.1:9", ca_dir=local_ca.directory) as proxy:
            host, proxy_port = proxy.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(proxy_port)), timeout=5) as sock:
                sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
                stream = sock.makefile("rb")
                assert stream.readline() == b"HTTP/1.1 200 Connection Established\r\n"
                assert stream.readline() == b"\r\n"
                assert stream.readline() == b"220 hello\r\n"
                payload = bytes(range(256)) * 400
                sock.sendall(payload)
                assert stream.read(len(payload)) == payload
                sock.shutdown(socket.SHUT_WR)
                assert stream.read() == b""  # the server's close comes through
    finally:
        async def close() -> None:
            server.close()
            await server.wait_closed()

        loops.call(close())
    assert not (cassettes / "t.yaml").exists()  # nothing recorded


def test_a_client_hanging_up_mid_body_for_a_host_outside_hosts_is_one_log_line(
    clean_env: None, local_ca: CertificateAuthority, cassettes: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Plain HTTP for a host outside --hosts reads its body as the recorder does: a hang-up
    mid-body is one warning line (no traceback), a body past max_body_size the proxy's 413."""
    import logging

    caplog.set_level(logging.DEBUG)
    with SyncReplayProxy(cassettes / "o.yaml", mode="all", forward=True, hosts="only.example",
                         ca_dir=local_ca.directory, config=Config(max_body_size=64)) as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST http://other.example/v1/jobs HTTP/1.1\r\nHost: other.example\r\n"
                         b"Content-Length: 100\r\n\r\nabc")
            time.sleep(0.2)  # the proxy is waiting for the rest; hang up mid-body
        time.sleep(0.3)
        big = requests.post("http://other.example/v1/jobs", data=b"x" * 65,
                            proxies={"http": proxy.url}, timeout=10)
    said = [r.getMessage() for r in caplog.records if "hung up" in r.getMessage()]
    assert said == ["replayproxy: POST /v1/jobs: the client hung up after 3 "
                    "of 100 bytes of the body (Connection lost); not forwarded, not recorded"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert big.status_code == 413
    assert big.json()["error"] == ("request body is larger than max_body_size (64 bytes); "
                                   "raise it in the config")
    assert not (cassettes / "o.yaml").exists()
