"""The client matrix: real clients record through the proxy and replay, and see the same thing.

curl, requests, httpx, aiohttp, urllib3, Node's fetch, undici, axios and Go's net/http run the
same cases against a local upstream (Python's http.server, so every byte of its answers is
written here by hand): JSON, 201, gzip, a chunked stream, 1 MiB of binary, 204, an ETag then
304, redirects followed and not, HEAD, a 5 MiB upload with `Expect: 100-continue`, multipart,
repeated and unicode query keys, an answer with an empty reason phrase and no Content-Type,
Date or Server, and Set-Cookie. Each client reports what it saw (status, reason, the headers it
exposes, a hash of the body bytes, its cookie jar); the replay must match the recording, but
for the framing headers docs/matching.md lists and the cookie values redaction replaces. In reverse
mode the recording must also match what the client sees talking to the upstream directly.

One proxy per (mode, phase) and one process per client keep the matrix to a few seconds of CPU.
Node's packages come from tests/clients/package-lock.json (`npm ci`, run here when missing); the
Go client is built into tests/clients/.build (git-ignored), once.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from clients import python_clients as py

from replayproxy.api import SyncReplayProxy
from replayproxy.ca import CertificateAuthority

CLIENTS_DIR = Path(__file__).resolve().parent / "clients"
BUILD = CLIENTS_DIR / ".build"
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy",
              "ALL_PROXY", "all_proxy")

CASES = py.CASES
#: Framing headers (docs/matching.md, "What clients get in replay"): they describe one hop,
#: so the proxy writes its own.
FRAMING = frozenset({"transfer-encoding", "connection", "keep-alive"})
MARKER = "<redacted>"
DATE = "Tue, 01 Dec 2026 10:00:00 GMT"  # fixed, so a direct run and a recording compare
JSON_BODY = json.dumps({"items": [1, 2, 3], "text": "héllo"}).encode()
BINARY = hashlib.shake_256(b"replayproxy").digest(1024 * 1024)
GZIP_TEXT = json.dumps([{"n": n, "word": "compressible"} for n in range(200)]).encode()


# -- the upstream -------------------------------------------------------------------------------

class Upstream(BaseHTTPRequestHandler):
    """Every answer written out by hand: names, order, reason phrases, framing."""

    protocol_version = "HTTP/1.1"  # keep-alive, chunked, and 100 Continue for Expect

    def version_string(self) -> str:
        return "upstream-test/1.0"

    def log_message(self, *args: Any) -> None:
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        return DATE

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            return out
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status: int, reason: str | None, headers: list[tuple[str, str]],
               body: bytes = b"", length: bool = True) -> None:
        self.send_response(status, reason)  # adds Server and Date, as servers do
        for name, value in headers:
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def route(self) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        name = parts.path.split("/", 2)[-1]
        method = self.command
        data = self.body()
        if name == "json" and method in ("GET", "HEAD"):
            self.answer(200, "Here You Go", [("Content-Type", "application/json"),
                                             ("X-Trace", "t-1"), ("Cache-Control", "no-store")],
                        JSON_BODY)
        elif name == "landing":
            self.answer(200, None, [("Content-Type", "text/plain; charset=utf-8")], b"landed\n")
        elif name == "items" and method == "POST":
            echo = json.dumps({"created": json.loads(data), "id": 7}).encode()
            self.answer(201, "Created", [("Location", f"{parts.path}/7"),
                                         ("Content-Type", "application/json")], echo)
        elif name == "items/7" and method == "DELETE":
            self.answer(204, "No Content", [("X-Deleted", "7")], length=False)
        elif name == "gzip":
            accepted = "gzip" in self.headers.get("Accept-Encoding", "")
            coded = gzip.compress(GZIP_TEXT, mtime=0) if accepted else GZIP_TEXT
            headers = [("Content-Type", "application/json"), ("Vary", "Accept-Encoding")]
            self.answer(200, None, headers + ([("Content-Encoding", "gzip")] if accepted
                                              else []), coded)
        elif name == "stream":
            self.answer(200, None, [("Content-Type", "text/plain"),
                                    ("Transfer-Encoding", "chunked")], length=False)
            for n in range(5):
                chunk = f"event {n}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif name == "binary":
            self.answer(200, None, [("Content-Type", "application/octet-stream")], BINARY)
        elif name == "etag":
            if self.headers.get("If-None-Match") == '"v1"':
                self.answer(304, "Not Modified", [("ETag", '"v1"')], length=False)
            else:
                self.answer(200, None, [("ETag", '"v1"'), ("Content-Type", "text/plain")],
                            b"version one\n")
        elif name == "redirect":
            self.answer(302, "Found", [("Location", parts.path.rsplit("/", 1)[0] + "/landing")])
        elif name == "upload":
            summary = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                       "expect": self.headers.get("Expect")}
            self.answer(200, None, [("Content-Type", "application/json")],
                        json.dumps(summary).encode())
        elif name == "multipart":
            message = BytesParser(policy=HTTP).parsebytes(
                f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + data
            )
            got = {
                part.get_param("name", header="content-disposition"): [
                    part.get_filename(), len(part.get_payload(decode=True)),
                    part.get_content_type(),
                ]
                for part in message.iter_parts()
            }
            self.answer(200, None, [("Content-Type", "application/json")],
                        json.dumps(got, sort_keys=True).encode())
        elif name == "query":
            seen = {"raw": parts.query, "pairs": parse_qsl(parts.query)}
            self.answer(200, None, [("Content-Type", "application/json")],
                        json.dumps(seen, ensure_ascii=False).encode())
        elif name == "bare":  # empty reason; no Content-Type, Date or Server
            self.send_response_only(200, "")
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"plain\n")
        elif name == "cookie":
            self.answer(200, None, [("Set-Cookie", "session=abc123; Path=/; HttpOnly"),
                                    ("Set-Cookie", "theme=dark; Path=/"),
                                    ("Content-Type", "application/json")], b'{"ok": true}')
        else:
            self.answer(404, None, [("Content-Type", "text/plain")], b"no such case\n")

    do_GET = do_POST = do_DELETE = do_HEAD = route


class UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True
    hits = 0

    def __init__(self, context: ssl.SSLContext | None = None):
        super().__init__(("127.0.0.1", 0), Upstream)
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.context is not None:  # the handshake on the connection's own thread
            request = self.context.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)


@contextmanager
def upstream(context: ssl.SSLContext | None = None) -> Iterator[UpstreamServer]:
    server = UpstreamServer(context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# -- the clients outside Python -----------------------------------------------------------------

def curl_client(cfg: dict[str, Any]) -> dict[str, Any]:
    base = cfg["base"] + cfg["prefix"]
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jar = work / "jar.txt"
        upload = work / "upload.bin"
        upload.write_bytes(py.upload_body())
        plans: dict[str, list[str]] = {
            "json": ["-H", "Accept: application/json", base + "/json"],
            "post_201": ["-H", "Content-Type: application/json", "--data-binary",
                         '{"name": "widget", "qty": 3}', base + "/items"],
            "gzip": ["--compressed", base + "/gzip"],
            "stream": [base + "/stream"],
            "binary": [base + "/binary"],
            "no_content": ["-X", "DELETE", base + "/items/7"],
            "etag": [base + "/etag"],
            "not_modified": ["-H", 'If-None-Match: "v1"', base + "/etag"],
            "redirect_followed": ["-L", base + "/redirect"],
            "redirect_not_followed": [base + "/redirect?n=2"],
            "head": ["-I", base + "/json"],
            # curl itself sends Expect: 100-continue for a body this large
            "upload": ["-H", "Content-Type: text/csv", "--data-binary",
                       f"@{upload}", base + "/upload"],
            "multipart": ["-F", f"title={py.TITLE}", "-F",
                          f"doc=@{_notes(work)};filename=notes.txt;type=text/plain",
                          base + "/multipart"],
            "query": [base + "/query" + py.QUERY],
            "bare": [base + "/bare"],
            "set_cookie": ["-c", str(jar), base + "/cookie"],
        }
        for name in CASES:
            head, body = work / "head", work / "body"
            args = ["curl", "-sS", "--max-time", "30", "-D", str(head), "-o", str(body),
                    "-w", "%{url_effective}"]
            if cfg.get("proxy"):
                args += ["--proxy", cfg["proxy"]]
            if cfg.get("ca"):
                args += ["--cacert", cfg["ca"]]
            done = subprocess.run([*args, *plans[name]], capture_output=True, env=env,
                                  timeout=60)
            assert done.returncode == 0, f"curl {name}: {done.stderr.decode()}"
            # -D holds every answer's head (100 Continue, redirects): the last one is the answer
            block = head.read_bytes().decode("latin-1").rstrip("\r\n").split("\r\n\r\n")[-1]
            status_line, *lines = block.split("\r\n")
            _, code, *reason = status_line.split(" ", 2)
            headers = [tuple(line.split(":", 1)) for line in lines]
            names = None
            if name == "set_cookie":
                names = [line.split("\t")[5] for line in jar.read_text().splitlines()
                         if line.strip() and (not line.startswith("#")
                                              or line.startswith("#HttpOnly_"))]
            out[name] = py.view(int(code), reason[0] if reason else "",
                                [(k, v.strip()) for k, v in headers],
                                body.read_bytes() if body.exists() else b"",
                                path=py._path(done.stdout.decode()), jar=names)
            body.unlink(missing_ok=True)
    return out


def _notes(work: Path) -> Path:
    path = work / "notes.txt"
    path.write_bytes(py.NOTES)
    return path


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder at a time across xdist workers."""
    BUILD.mkdir(exist_ok=True)
    with open(BUILD / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def node_ready() -> str | None:
    """None when Node's clients can run, else why not."""
    if not shutil.which("node") or not shutil.which("npm"):
        return "node/npm not on PATH (.ci/run installs nodejs and npm from Debian)"
    with _locked("npm"):
        if not (CLIENTS_DIR / "node_modules" / "undici").is_dir():
            done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENTS_DIR,
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                return f"npm ci in tests/clients failed: {done.stderr.strip()[-300:]}"
    return None


def go_binary() -> Path | str:
    """The built Go client, or why there is none."""
    if not shutil.which("go"):
        return "go not on PATH (.ci/run installs golang-go from Debian)"
    binary = BUILD / "goclient"
    source = CLIENTS_DIR / "go" / "main.go"
    with _locked("go"):
        if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
            env = {**os.environ, "GOCACHE": str(BUILD / "gocache"), "GOFLAGS": "-mod=mod",
                   "GOPATH": str(BUILD / "gopath"), "GOTOOLCHAIN": "local"}
            done = subprocess.run(["go", "build", "-o", str(binary), "."],
                                  cwd=CLIENTS_DIR / "go", env=env, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"go build: {done.stderr}"
    return binary


#: Runs some clients against one base URL: {client: {case: view}}.
Runner = Callable[[dict[str, Any]], dict[str, Any]]


def single(name: str, run: Callable[[dict[str, Any]], dict[str, Any]]) -> Runner:
    return lambda cfg: {name: run(dict(cfg, prefix=f"/{name}"))}


def program(args: list[str], env_extra: dict[str, str]) -> Callable[[dict[str, Any]], Any]:
    def run(cfg: dict[str, Any]) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
        env.update(env_extra)
        done = subprocess.run([*args, json.dumps(cfg)], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, f"{args}: {done.stderr[-2000:]}"
        return json.loads(done.stdout)

    return run


def clients(ca: CertificateAuthority | None) -> tuple[list[Runner], list[str]]:
    """Runners for every client that can run here (Node's three share one process), and a
    reason for each one that cannot."""
    found = [single(name, run) for name, run in py.CLIENTS.items()]
    missing = []
    if shutil.which("curl"):
        found.append(single("curl", curl_client))
    else:
        missing.append("curl: not on PATH (.ci/run installs it from Debian)")
    why = node_ready()
    if why is None:
        extra = {"NODE_EXTRA_CA_CERTS": str(ca.cert_path)} if ca else {}
        found.append(program(["node", str(CLIENTS_DIR / "node_clients.mjs")], extra))
    else:
        missing.append(f"fetch, undici, axios: {why}")
    binary = go_binary()
    if isinstance(binary, Path):
        found.append(single("go", program([str(binary)], {})))
    else:
        missing.append(f"go: {binary}")
    return found, missing


# -- comparing ----------------------------------------------------------------------------------

def comparable(case: str, seen: dict[str, Any]) -> dict[str, Any]:
    """A view less its framing headers (and the Content-Length of a body the proxy codes
    anew: its compressed bytes are its own)."""
    out = dict(seen)
    out["headers"] = sorted([k, v] for k, v in seen["headers"] if k not in FRAMING
                            and not (case == "gzip" and k == "content-length"))
    return out


def expected_replay(case: str, seen: dict[str, Any]) -> dict[str, Any]:
    """What the client must see in replay, given what it saw while recording: the same, with
    the cookie values redaction replaces."""
    out = comparable(case, seen)
    if case == "set_cookie":
        out["headers"] = sorted(
            [k, v.replace("=abc123", "=" + MARKER).replace("=dark", "=" + MARKER)]
            if k == "set-cookie" else [k, v] for k, v in out["headers"]
        )
    return out


def unframed(case: str, seen: dict[str, Any]) -> dict[str, Any]:
    """The same, and no Content-Length for the stream (chunked upstream, counted by us)."""
    out = comparable(case, seen)
    if case == "stream":
        out["headers"] = [h for h in out["headers"] if h[0] != "content-length"]
    return out


View = Callable[[str, dict[str, Any]], dict[str, Any]]


def differences(first: dict[str, Any], second: dict[str, Any], expect: View,
                compare: View = comparable) -> list[str]:
    notes = []
    for client, cases in first.items():
        for case in CASES:
            want = expect(case, cases[case])
            got = compare(case, second[client][case])
            for key in sorted(set(want) | set(got)):
                if want.get(key) != got.get(key):
                    notes.append(f"{client} {case} {key}: {want.get(key)!r} -> {got.get(key)!r}")
    return notes


def run_all(runners: list[Runner], cfg: dict[str, Any]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for run in runners:
        seen.update(run(cfg))
    return seen


# -- the matrix ---------------------------------------------------------------------------------

@pytest.fixture
def ca_pair(tmp_path: Path) -> tuple[CertificateAuthority, CertificateAuthority]:
    local = CertificateAuthority.load_or_create(tmp_path / "local-ca")[0]
    upstream_ca = CertificateAuthority.load_or_create(tmp_path / "upstream-ca")[0]
    return local, upstream_ca


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def check_recording(recorded: dict[str, Any]) -> None:
    """What the upstream sent reaches each client while recording (where it exposes it)."""
    for client, seen in recorded.items():
        where = f"{client} while recording"
        assert seen["json"]["status"] == 200 and seen["post_201"]["status"] == 201, where
        if seen["json"]["reason"] is not None:
            assert seen["json"]["reason"] == "Here You Go", where
            assert seen["bare"]["reason"] == "", where
        bare = {k for k, _ in seen["bare"]["headers"]}
        assert not bare & {"content-type", "date", "server"}, (where, seen["bare"]["headers"])
        head = dict(seen["head"]["headers"])
        assert head.get("content-length") == str(len(JSON_BODY)), (where, head)
        assert seen["binary"]["body_sha256"] == hashlib.sha256(BINARY).hexdigest(), where
        assert seen["gzip"]["body_sha256"] == hashlib.sha256(GZIP_TEXT).hexdigest(), where
        # undici (Node's fetch too) refuses an Expect header; every other client sends it
        expect = None if client in ("fetch", "undici") else "100-continue"
        assert json.loads(seen["upload"]["text"]) == {
            "size": py.UPLOAD_SIZE, "sha256": hashlib.sha256(py.upload_body()).hexdigest(),
            "expect": expect,
        }, where
        assert seen["stream"]["text"] == "".join(f"event {n}\n" for n in range(5)), where
        assert seen["redirect_followed"]["text"] == "landed\n", where
        assert seen["redirect_not_followed"]["status"] == 302, where
        assert (seen["no_content"]["status"], seen["not_modified"]["status"]) == (204, 304)
        assert json.loads(seen["multipart"]["text"]) == {
            "doc": ["notes.txt", len(py.NOTES), "text/plain"], "title": [None, 8, "text/plain"],
        }, where
        assert json.loads(seen["query"]["text"])["pairs"] == [
            ["tag", "a"], ["tag", "b"], ["über", "✓"], ["鍵", "2"]], where
        cookies = [v for k, v in seen["set_cookie"]["headers"] if k == "set-cookie"]
        assert any("session=abc123; Path=/; HttpOnly" in v for v in cookies), (where, cookies)
        if "jar" in seen["set_cookie"]:
            assert seen["set_cookie"]["jar"] == ["session", "theme"], where


@pytest.mark.parametrize("mode", ["reverse", "forward", "connect"])
def test_clients_see_in_replay_what_they_saw_recording(
    mode: str, tmp_path: Path, ca_pair: tuple[CertificateAuthority, CertificateAuthority]
) -> None:
    local, upstream_ca = ca_pair
    (tmp_path / "cassettes").mkdir()
    cassette = tmp_path / "cassettes" / f"{mode}.yaml"
    found, missing = clients(local if mode == "connect" else None)
    context = upstream_ca.server_context("localhost") if mode == "connect" else None
    with upstream(context) as server:
        port = server.server_address[1]
        direct = None
        if mode == "reverse":  # the oracle for recording: no proxy at all
            direct = run_all(found, {"base": f"http://127.0.0.1:{port}"})
        record: dict[str, Any] = {"mode": "all"}
        if mode == "reverse":
            record["upstream"] = f"http://127.0.0.1:{port}"
        else:
            record.update(forward=True, ca_dir=local.directory)
        if mode == "connect":
            record["upstream_ca"] = str(upstream_ca.cert_path)
        target = f"https://localhost:{port}" if mode == "connect" else f"http://127.0.0.1:{port}"
        ca = str(local.cert_path) if mode == "connect" else None
        with SyncReplayProxy(cassette, **record) as proxy:
            cfg = ({"base": proxy.url} if mode == "reverse"
                   else {"base": target, "proxy": proxy.url, "ca": ca})
            recorded = run_all(found, cfg)
        hits = server.hits
        replay: dict[str, Any] = {} if mode == "reverse" else {"forward": True,
                                                               "ca_dir": local.directory}
        with SyncReplayProxy(cassette, **replay) as proxy:
            cfg = ({"base": proxy.url} if mode == "reverse"
                   else {"base": target, "proxy": proxy.url, "ca": ca})
            replayed = run_all(found, cfg)
        assert server.hits == hits, "the replay reached the upstream"
    assert not proxy.report.unmatched, [m.request for m in proxy.report.unmatched]
    check_recording(recorded)
    if direct is not None:
        # recording passes the upstream's answer on: only the framing may differ (a chunked
        # answer arrives with a Content-Length: the proxy holds the whole body)
        notes = differences(direct, recorded, unframed, unframed)
        assert not notes, "recording differs from talking to the upstream:\n" + "\n".join(notes)
    notes = differences(recorded, replayed, expected_replay)
    assert not notes, "replay differs from the recording:\n" + "\n".join(notes)
    if missing:
        why = "clients that could not run here: " + "; ".join(missing)
        if os.environ.get("CI"):  # .ci/run installs every toolchain: a missing one is a defect
            pytest.fail(why)
        pytest.skip(why)


def test_the_upstream_answers_as_written() -> None:
    """The matrix's upstream itself, read raw: what every case's oracle rests on."""
    with upstream() as server:
        with socket.create_connection(server.server_address, timeout=5) as sock:
            stream = sock.makefile("rb")
            sock.sendall(b"GET /x/bare HTTP/1.1\r\nHost: h\r\n\r\n")
            bare = b"HTTP/1.1 200 \r\nContent-Length: 6\r\n\r\nplain\n"
            assert stream.read(len(bare)) == bare
            sock.sendall(b"HEAD /x/json HTTP/1.1\r\nHost: h\r\n\r\n")
            head = b"".join(iter(stream.readline, b"\r\n")) + b"\r\n"
            assert head.startswith(b"HTTP/1.1 200 Here You Go\r\n"), head
            assert f"Content-Length: {len(JSON_BODY)}\r\n".encode() in head
            assert head.endswith(b"\r\n\r\n")
