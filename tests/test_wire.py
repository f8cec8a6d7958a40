"""What goes on the wire in replay, read as raw bytes: the recorded status line and headers and
nothing else but framing; several hosts on one path; a CONNECT tunnel that carries plain HTTP.
(tests/test_clients.py runs real clients over all of this; these pin the bytes themselves.)"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from cli import main
from replayproxy.api import ReplayProxy, SyncReplayProxy
from replayproxy.ca import CertificateAuthority
from replayproxy.cassette import Cassette, Interaction, Request, Response, load, save

HOST_A, HOST_B = "https://api.a.example", "https://files.b.example"


def raw_exchange(url: str, data: bytes, tunnel: str | None = None,
                 ca: CertificateAuthority | None = None) -> bytes:
    """Send `data` to the proxy at `url` (through a CONNECT to `tunnel` first; over TLS
    trusting `ca` for an https:// url) and read until it closes (Connection: close)."""
    host, port = url.split("://")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        sock = raw
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca.cert_path))
            sock = context.wrap_socket(raw, server_hostname=host)
        if tunnel:
            sock.sendall(f"CONNECT {tunnel} HTTP/1.1\r\nHost: {tunnel}\r\n\r\n".encode())
            assert sock.recv(4096) == b"HTTP/1.1 200 Connection Established\r\n\r\n"
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def head_of(answer: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    return head[0].encode("latin-1"), [tuple(h.split(": ", 1)) for h in head[1:]]  # type: ignore


@pytest.mark.parametrize("tls", [False, True], ids=["reverse", "reverse-tls"])
def test_replay_sends_the_recorded_status_line_and_headers_only(tmp_path: Path,
                                                                tls: bool) -> None:
    """An empty reason stays empty, a custom one stays; no Content-Type, Date or Server is
    added; a HEAD answer keeps its Content-Length (of the body it does not send)."""
    path = tmp_path / "cassettes" / "wire.yaml"
    path.parent.mkdir()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")[0] if tls else None
    save(Cassette(interactions=[
        Interaction(Request("GET", "https://camber.example/bare"),
                    Response(200, "", [("Content-Length", "6")], b"plain\n")),
        Interaction(Request("HEAD", "https://camber.example/file"),
                    Response(200, "Totally Fine", [("Content-Type", "application/pdf"),
                                                   ("Content-Length", "123456"),
                                                   ("ETag", '"v9"')])),
        Interaction(Request("GET", "https://camber.example/gone"),
                    Response(410, "Long Gone", [("X-Why", "moved")], b"")),
    ]), path)
    close = b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    tls_options: dict[str, Any] = {"tls": True, "ca_dir": ca.directory} if ca else {}
    with SyncReplayProxy(path, **tls_options) as proxy:
        bare = raw_exchange(proxy.url, b"GET /bare" + close, ca=ca)
        head = raw_exchange(proxy.url, b"HEAD /file" + close, ca=ca)
        gone = raw_exchange(proxy.url, b"GET /gone" + close, ca=ca)
    status, headers = head_of(bare)
    assert status == b"HTTP/1.1 200 "
    assert sorted(headers) == [("Connection", "close"), ("Content-Length", "6")]
    assert bare.endswith(b"\r\n\r\nplain\n")
    status, headers = head_of(head)
    assert status == b"HTTP/1.1 200 Totally Fine"
    assert sorted(headers) == [("Connection", "close"), ("Content-Length", "123456"),
                               ("Content-Type", "application/pdf"), ("ETag", '"v9"')]
    assert head.endswith(b"\r\n\r\n")  # and no body
    status, headers = head_of(gone)
    assert status == b"HTTP/1.1 410 Long Gone"
    assert sorted(headers) == [("Connection", "close"), ("Content-Length", "0"), ("X-Why", "moved")]


def two_hosts(path: Path) -> None:
    """What a vcrpy cassette that followed a redirect to another domain looks like."""
    save(Cassette(interactions=[
        Interaction(Request("GET", f"{HOST_A}/v1/report"),
                    Response(200, "OK", [("Content-Type", "text/plain")], b"from a\n")),
        Interaction(Request("GET", f"{HOST_B}/v1/report"),
                    Response(200, "OK", [("Content-Type", "text/plain")], b"from b\n")),
    ]), path)


def test_several_hosts_on_one_path_forward_matches_the_host(tmp_path: Path) -> None:
    path = tmp_path / "cassettes" / "hosts.yaml"
    path.parent.mkdir()
    two_hosts(path)
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")[0]
    with SyncReplayProxy(path, forward=True, ca_dir=ca.directory) as proxy:
        with requests.Session() as s:
            s.trust_env = False
            s.proxies = {"https": proxy.url, "http": proxy.url}
            s.verify = str(ca.cert_path)
            # asked in the other order than recorded: each host gets its own answer
            assert s.get(f"{HOST_B}/v1/report", timeout=10).text == "from b\n"
            assert s.get(f"{HOST_A}/v1/report", timeout=10).text == "from a\n"
            # plain HTTP forward names the host too; a host not in the cassette at all is
            # matched as before, in recorded order (a cassette replays against any host)
            assert s.get("https://elsewhere.example/v1/report", timeout=10).status_code == 200
    assert not proxy.report.unmatched
    with SyncReplayProxy(path) as proxy:  # reverse mode: no host, the recorded order decides
        first = requests.get(f"{proxy.url}/v1/report", timeout=10)
        second = requests.get(f"{proxy.url}/v1/report", timeout=10)
    assert (first.text, second.text) == ("from a\n", "from b\n")


def test_plain_http_forward_matches_the_host_and_a_miss_says_so(tmp_path: Path) -> None:
    path = tmp_path / "cassettes" / "hosts.yaml"
    path.parent.mkdir()
    save(Cassette(interactions=[
        Interaction(Request("POST", f"{HOST_A}/v1/jobs"), Response(201, "Created", [], b"a")),
        Interaction(Request("POST", "http://files.b.example/v1/jobs"),
                    Response(201, "Created", [], b"b")),
        Interaction(Request("GET", f"{HOST_A}/v1/only-a"), Response(200, "OK", [], b"a")),
    ]), path)
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")[0]
    with SyncReplayProxy(path, forward=True, ca_dir=ca.directory) as proxy:
        proxies = {"http": proxy.url, "https": proxy.url}
        plain = requests.post("http://files.b.example/v1/jobs", proxies=proxies, timeout=10)
        assert plain.text == "b"
        again = requests.post("http://files.b.example/v1/jobs", proxies=proxies, timeout=10)
        assert again.text == "b"  # the last fitting answer plays again, never host a's
        tls = requests.post(f"{HOST_A}/v1/jobs", proxies=proxies, verify=str(ca.cert_path),
                            timeout=10)
        assert tls.text == "a"
        # host b asks for what only host a answered: a miss, and the near miss names the host
        miss = requests.get("http://files.b.example/v1/only-a", proxies=proxies, timeout=10)
        assert miss.status_code == 502
        differences = miss.json()["near_misses"][0]["differences"]
        assert differences == ["host: http://files.b.example:80 vs https://api.a.example:443"]


def test_inspect_says_the_cassette_has_several_hosts(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    two_hosts(path)
    out = CliRunner().invoke(main, ["inspect", str(path)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[1].split() == ["#", "method", "path", "host", "status", "body", "time"]
    assert lines[2].split()[:5] == ["1", "GET", "/v1/report", "https://api.a.example:443", "200"]
    assert any(line.startswith("several hosts (2): https://api.a.example:443, "
                               "https://files.b.example:443.") for line in lines), out.output
    one = tmp_path / "one.yaml"
    save(load(path).__class__(interactions=load(path).interactions[:1]), one)
    single = CliRunner().invoke(main, ["inspect", str(one)])
    assert "host" not in single.output.splitlines()[1] and "several hosts" not in single.output


@contextmanager
def proxy_on(loop: asyncio.AbstractEventLoop, cassette: Path, **kwargs: Any) -> Iterator[str]:
    """A ReplayProxy on `loop` (asyncio's or uvloop's), run by a thread."""
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxy = ReplayProxy(cassette, **kwargs)
    try:
        yield asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(30)
    finally:
        asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def loops() -> list[Any]:
    found = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on Windows
        return found
    return [*found, pytest.param(uvloop.new_event_loop, id="uvloop")]


@pytest.mark.parametrize("new_loop", loops())
def test_a_connect_tunnel_may_carry_plain_http(tmp_path: Path, new_loop: Any) -> None:
    """undici's ProxyAgent tunnels http:// URLs with CONNECT and then speaks plain HTTP: the
    proxy sees no TLS handshake and serves the tunnel as http://host:port."""
    path = tmp_path / "cassettes" / "plain.yaml"
    path.parent.mkdir()
    save(Cassette(interactions=[
        Interaction(Request("GET", "http://127.0.0.1:8080/v1/ping"),
                    Response(200, "OK", [("Content-Type", "text/plain")], b"pong\n")),
        Interaction(Request("GET", "https://127.0.0.1:8080/v1/ping"),
                    Response(200, "OK", [("Content-Type", "text/plain")], b"secure pong\n")),
    ]), path)
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")[0]
    with proxy_on(new_loop(), path, forward=True, ca_dir=ca.directory) as url:
        answer = raw_exchange(url, b"GET /v1/ping HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                              b"Connection: close\r\n\r\n", tunnel="127.0.0.1:8080")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b"\r\n\r\npong\n")  # the http:// answer, not the https:// one
        # ... and TLS through the same kind of tunnel still works
        secure = requests.get("https://127.0.0.1:8080/v1/ping", proxies={"https": url},
                              verify=str(ca.cert_path), timeout=10)
        assert secure.text == "secure pong\n"
        # a tunnel closed before its first byte is simply closed
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"CONNECT 127.0.0.1:8080 HTTP/1.1\r\n\r\n")
            assert sock.recv(4096) == b"HTTP/1.1 200 Connection Established\r\n\r\n"
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(4096) == b""


def test_a_host_outside_hosts_gets_its_answer_as_sent_while_recording(tmp_path: Path) -> None:
    """Plain HTTP to a host outside --hosts is passed on unrecorded, as the upstream sent it:
    the reason phrase, a HEAD answer's Content-Length, no header added."""
    answers = {
        b"HEAD": b"HTTP/1.1 200 \r\nContent-Length: 4096\r\nX-Kind: report\r\n\r\n",
        b"GET": b"HTTP/1.1 299 Odd But Fine\r\nContent-Length: 3\r\n\r\nodd",
    }

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            method = line.split(b" ", 1)[0]
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            writer.write(answers[method])
            await writer.drain()
        writer.close()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        asyncio.start_server(serve, "127.0.0.1", 0), loop).result(10)
    port = server.sockets[0].getsockname()[1]
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")[0]
    path = tmp_path / "cassettes" / "t.yaml"
    path.parent.mkdir()
    try:
        with SyncReplayProxy(path, mode="all", forward=True, hosts="camber.example",
                             ca_dir=ca.directory) as proxy:
            target = f"http://127.0.0.1:{port}/report"
            head = raw_exchange(proxy.url, f"HEAD {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                "Connection: close\r\n\r\n".encode())
            get = raw_exchange(proxy.url, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               "Connection: close\r\n\r\n".encode())
    finally:
        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    status, headers = head_of(head)
    assert status == b"HTTP/1.1 200 "
    assert sorted(headers) == [("Connection", "close"), ("Content-Length", "4096"),
                               ("X-Kind", "report")]
    status, headers = head_of(get)
    assert status == b"HTTP/1.1 299 Odd But Fine"
    assert sorted(headers) == [("Connection", "close"), ("Content-Length", "3")]
    assert get.endswith(b"\r\n\r\nodd") and not path.exists()  # nothing recorded


def test_a_vcrpy_cassette_that_followed_a_redirect_to_another_host(tmp_path: Path) -> None:
    """vcrpy itself records requests following a redirect from one host to the same path on
    another: forward mode answers each host with its own recording, whatever the order."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import vcr

    class Hop(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body, where = b"from b\n", self.server.redirect  # type: ignore[attr-defined]
            self.send_response(302 if where else 200)
            if where:
                self.send_header("Location", where)
                body = b""
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Hop) for _ in range(2)]
    first, second = servers
    second.redirect = None  # type: ignore[attr-defined]
    b_url = f"http://localhost:{second.server_address[1]}/v1/report"
    first.redirect = b_url  # type: ignore[attr-defined]
    a_url = f"http://127.0.0.1:{first.server_address[1]}/v1/report"
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    path = tmp_path / "cassettes" / "redirect.yaml"
    path.parent.mkdir()
    try:
        with vcr.use_cassette(str(path), record_mode="all"):
            followed = requests.get(a_url, timeout=10)
        assert followed.text == "from b\n" and followed.history[0].status_code == 302
    finally:
        for server, thread in zip(servers, threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join(10)
    uris = [i.request.uri for i in load(path).interactions]
    assert [u.split("/v1/")[1] for u in uris] == ["report", "report"] and uris[0] != uris[1]
    assert "several hosts (2)" in CliRunner().invoke(main, ["inspect", str(path)]).output
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")[0]
    with SyncReplayProxy(path, forward=True, ca_dir=ca.directory) as proxy:  # offline now
        proxies = {"http": proxy.url}
        direct_b = requests.get(b_url, proxies=proxies, timeout=10)  # host b first
        a = requests.get(a_url, proxies=proxies, allow_redirects=False, timeout=10)
    assert (direct_b.status_code, direct_b.text) == (200, "from b\n")
    assert (a.status_code, a.headers["Location"]) == (302, b_url)
    assert not proxy.report.unmatched and not proxy.report.unused
