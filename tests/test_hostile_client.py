"""A hostile client (raw sockets, as an attacker through a tunnel would send): request targets a
reverse proxy must not proxy, targets that must go upstream byte for byte, and connections that
hold file descriptors open without sending anything.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers import run

from replayproxy.api import ReplayProxy
from replayproxy.cassette import load
from replayproxy.journal import journal_path


@pytest.fixture(autouse=True)
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "replayproxy-hostile-client")


class RawUpstream:
    """An upstream that keeps every request line exactly as the bytes arrived."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.lines.append(head.split(b"\r\n", 1)[0])
                body = b'{"ok": true}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def raw(url: str, data: bytes) -> bytes:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


REFUSED = [
    (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
    (b"CONNECT /v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET http://other.example/v1/jobs HTTP/1.1\r\nHost: other.example\r\n\r\n", 400),
    (b"GET https://10.0.0.1:8443/v1/jobs HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n", 400),
]
#: (what the app sends, what the upstream must get after the base path /api)
VERBATIM = [
    (b"//v1/jobs", b"/api//v1/jobs"),
    (b"/v1/jobs?q=a+b%2Bc%7e&x=%41&y=%2f", b"/api/v1/jobs?q=a+b%2Bc%7e&x=%41&y=%2f"),
    (b"/v1/files/a%2Fb/%7E%20x", b"/api/v1/files/a%2Fb/%7E%20x"),
    (b"/v1/search?q=caf%C3%A9&q=%E2%82%AC&empty=&flag",
     b"/api/v1/search?q=caf%C3%A9&q=%E2%82%AC&empty=&flag"),
]


def test_reverse_mode_refuses_non_origin_targets_and_records_nothing(tmp_path: Path) -> None:
    upstream = RawUpstream()
    path = tmp_path / "refused.yaml"

    async def main() -> list[int]:
        async with upstream as base:
            async with ReplayProxy(path, mode="all", upstream=base + "/api") as proxy:
                return [status_of(await raw(proxy.url, data)) for data, _ in REFUSED]

    assert run(main()) == [status for _, status in REFUSED]
    assert upstream.lines == []
    assert not path.exists() and not journal_path(path).exists()


def test_replay_refuses_them_too(tmp_path: Path) -> None:
    upstream = RawUpstream()
    path = tmp_path / "one.yaml"

    async def main() -> list[int]:
        async with upstream as base:
            async with ReplayProxy(path, mode="all", upstream=base) as proxy:
                assert status_of(await raw(proxy.url, b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n"
                                           b"Connection: close\r\n\r\n")) == 200
        async with ReplayProxy(path) as proxy:
            return [status_of(await raw(proxy.url, data)) for data, _ in REFUSED]

    assert run(main()) == [status for _, status in REFUSED]


def test_the_target_goes_upstream_byte_for_byte_and_replays_the_same(tmp_path: Path) -> None:
    upstream = RawUpstream()
    path = tmp_path / "verbatim.yaml"

    def request(target: bytes) -> bytes:
        return b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    async def main() -> tuple[int, int, int]:
        async with upstream as base:
            async with ReplayProxy(path, mode="all", upstream=base + "/api") as proxy:
                for sent, _ in VERBATIM:
                    assert status_of(await raw(proxy.url, request(sent))) == 200
                # absolute-form naming the proxy itself (loopback) is reduced to its path
                host = proxy.url.split("//")[1].encode()
                answer = await raw(proxy.url, request(b"http://" + host + b"/v1/jobs?x=%41"))
                assert status_of(answer) == 200
            recorded = len(upstream.lines)
            # new_episodes: the same targets are answered from the cassette, not upstream
            async with ReplayProxy(path, mode="new_episodes", upstream=base + "/api") as proxy:
                for sent, _ in VERBATIM:
                    assert status_of(await raw(proxy.url, request(sent))) == 200
            again = len(upstream.lines) - recorded
        async with ReplayProxy(path) as proxy:
            for sent, _ in VERBATIM:
                assert status_of(await raw(proxy.url, request(sent))) == 200, sent
        return recorded, again, proxy.report.served

    recorded, again, served = run(main())
    expected = [b"GET " + want + b" HTTP/1.1" for _, want in VERBATIM]
    assert upstream.lines[: len(VERBATIM)] == expected
    assert upstream.lines[len(VERBATIM)] == b"GET /api/v1/jobs?x=%41 HTTP/1.1"
    assert (recorded, again, served) == (len(VERBATIM) + 1, 0, len(VERBATIM))
    uris = [i.request.uri for i in load(path).interactions]
    assert uris[0].endswith("/api//v1/jobs") and "q=a+b%2Bc%7e" in uris[1]


@pytest.mark.parametrize("target", [b"//v1/jobs", b"///v1//jobs/"])
def test_double_slash_paths_are_never_taken_for_a_host(tmp_path: Path, target: bytes) -> None:
    """urlsplit('//v1/jobs') reads 'v1' as a host: the matcher must not."""
    from replayproxy.cassette import Request
    from replayproxy.matching import describe, split_target

    path, query = split_target(target.decode() + "?a=1")
    assert (path, query) == (target.decode(), "a=1")
    assert describe(Request("GET", target.decode())) == f"GET {target.decode()}"


# ---------------------------------------------------------------------------------------------
# a crafted config (auto-loaded from ./replayproxy.yaml): its regexes cannot stall the proxy

EVIL = r"^/v1/(\w+\s?)*$"  # Python's re: exponential on 'aaaa...!'


def test_a_catastrophic_path_regex_cannot_stall_the_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import job_cassette

    from replayproxy.cassette import save
    from replayproxy.config import load_config

    (tmp_path / "replayproxy.yaml").write_text(f"variables:\n  path_regex: ['{EVIL}']\n")
    monkeypatch.chdir(tmp_path)
    config = load_config()  # the auto-loaded one
    path = tmp_path / "jobs.yaml"
    save(job_cassette(), path)
    crafted = b"/v1/" + b"a" * 28 + b"!"  # 33 bytes: Python's re would take hours

    async def main() -> list[int]:
        async with ReplayProxy(path, config=config) as proxy:
            statuses = []
            for target in (crafted, b"/v1/jobs/6238"):
                answer = await raw(proxy.url, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
                                   b"Connection: close\r\n\r\n")  # raw() gives up after 5 s
                statuses.append(status_of(answer))
            return statuses

    assert run(main()) == [502, 200]  # a miss, at once; then the app's own request


def test_a_path_regex_re2_cannot_run_is_a_one_line_config_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    from replayproxy.config import load_config
    from replayproxy.errors import ConfigError

    config = tmp_path / "replayproxy.yaml"
    for pattern in (r"(a)\1", r"(?<=/v1/)\w+", "(unclosed"):
        config.write_text(f"variables:\n  path_regex: ['/ok/(x)', '{pattern}']\n")
        with pytest.raises(ConfigError) as caught:
            load_config(config)
        message = str(caught.value)
        assert message.startswith(f"{config}: 'variables.path_regex[1]': "), message
        assert "RE2" in message and "\n" not in message
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "cli.py"), "replay", str(tmp_path / "x.yaml"), "--config",
         str(config)], capture_output=True, text=True, timeout=30,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()  # nothing from RE2's own logging
    assert line.startswith(f"replayproxy: {config}: 'variables.path_regex[1]': "), line


# ---------------------------------------------------------------------------------------------
# connections: slow heads and idle sockets are closed; holding many cannot lock the app out


def test_slow_heads_and_idle_connections_are_closed(tmp_path: Path) -> None:
    from helpers import job_cassette

    from replayproxy.cassette import save
    from replayproxy.config import Config

    path = tmp_path / "jobs.yaml"
    save(job_cassette(), path)
    config = Config(head_timeout=0.3, idle_timeout=0.6)

    async def closed(reader: asyncio.StreamReader) -> bytes:
        data = b""
        while chunk := await asyncio.wait_for(reader.read(4096), 10):  # EOF, or a hang fails
            data += chunk
        return data

    async def main() -> None:
        async with ReplayProxy(path, config=config) as proxy:
            host, port = proxy.url.rsplit("/", 1)[-1].rsplit(":", 1)
            # silent from the start, a head that never ends, and one trickled byte by byte
            silent = await asyncio.open_connection(host, int(port))
            partial = await asyncio.open_connection(host, int(port))
            partial[1].write(b"GET /v1/jobs/6238 HTTP/1.1\r\nHost: x\r\n")
            trickle = await asyncio.open_connection(host, int(port))
            head = b"GET /v1/jobs/6238 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
            for byte in head:
                if trickle[0].at_eof() or trickle[1].is_closing():
                    break
                trickle[1].write(bytes([byte]))
                await asyncio.sleep(0.02)  # 40 ms a byte keeps it busy past the head timeout
            for reader, _ in (silent, partial, trickle):
                assert await closed(reader) == b""
            # a whole request is answered, then the idle kept-alive connection is closed
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /v1/jobs/6238 HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await closed(reader)
            assert answer.startswith(b"HTTP/1.1 200 ") and b'"RUNNING"' in answer
            for _, w in (silent, partial, trickle):
                w.close()
            writer.close()

    run(main())


def test_the_app_is_served_while_2000_idle_and_200_slow_head_connections_are_open(
    tmp_path: Path
) -> None:
    """The proxy in its own process under a 1024-file limit, as on many machines."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    from helpers import exchange

    from replayproxy.cassette import Cassette, save

    root = Path(__file__).resolve().parent.parent
    path = tmp_path / "polls.yaml"
    save(Cassette(interactions=[exchange("GET", "/v1/jobs/6238", 200, {"n": n})
                                for n in range(20)]), path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 and hard >= 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))  # for our own 2,200 sockets

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    proxy = subprocess.Popen(
        [sys.executable, str(root / "cli.py"), "replay", str(path), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proxy.stdout is not None
        first = proxy.stdout.readline()
        url = first.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:"), first
        host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)

        async def hold(n: int, head: bytes) -> list[asyncio.StreamWriter]:
            writers = []
            for start in range(0, n, 100):  # in batches: the listen backlog is finite
                pairs = await asyncio.gather(*(
                    asyncio.open_connection(host, int(port)) for _ in range(min(100, n - start))
                ))
                for _, writer in pairs:
                    if head:
                        writer.write(head)
                    writers.append(writer)
            return writers

        async def main() -> list[int]:
            held = await hold(2000, b"")
            held += await hold(200, b"GET /v1/jobs/6238 HTTP/1.1\r\nHost: x\r\nX-Slow: a")
            statuses = []
            for _ in range(20):  # the app: a fresh connection each time
                answer = await raw(url, b"GET /v1/jobs/6238 HTTP/1.1\r\nHost: x\r\n"
                                   b"Connection: close\r\n\r\n")
                statuses.append(status_of(answer))
            for writer in held:
                writer.close()
            return statuses

        assert run(main()) == [200] * 20
    finally:
        proxy.send_signal(signal.SIGINT)
        _, err = proxy.communicate(timeout=30)
    assert "more than max_connections (768)" in err, err[-2000:]
    assert "out of system resource" not in err and "Too many open files" not in err, err[-2000:]
    assert "served 20" in err
