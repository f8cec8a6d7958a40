"""The replay server end to end: a real aiohttp client against replayproxy on an ephemeral port."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from click.testing import CliRunner
from helpers import job_cassette, run, serving

from cli import main
from replayproxy.api import ReplayProxy, SyncReplayProxy
from replayproxy.cassette import save

SUBMIT = {"command": "python run.py invoice.pdf", "engine_type": "MPI"}


def cassette_file(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.yaml"
    cassette = job_cassette()
    cassette.webhooks = []  # webhooks are covered by their own tests
    save(cassette, path)
    return path


def test_concurrent_polls_each_get_one_answer_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ReplayProxy(cassette_file(tmp_path)) as proxy, aiohttp.ClientSession() as s:

            async def poll() -> str:
                async with s.get(f"{proxy.url}/v1/jobs/6238") as resp:
                    assert resp.status == 200
                    return (await resp.json())["status"]

            statuses = await asyncio.gather(*(poll() for _ in range(12)))
        # three one-shot answers, each given once, then the final state repeats
        assert sorted(statuses).count("RUNNING") == 2
        assert statuses.count("COMPLETED") == 10
        assert proxy.report.served == 12

    run(scenario())


def test_unmatched_request_gets_502_with_near_misses_and_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"

    async def scenario() -> None:
        async with ReplayProxy(cassette_file(tmp_path), report_path=report) as proxy:
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{proxy.url}/v1/jobs", json=SUBMIT) as resp:
                    assert resp.status == 201
                    assert await resp.json() == {"job_id": 6238, "status": "PENDING"}
                async with s.get(f"{proxy.url}/v1/jobs?status=CANCELLED&page=1") as resp:
                    assert resp.status == 502
                    body = await resp.json()
        assert body["request"] == "GET /v1/jobs?status=CANCELLED&page=1"
        assert body["near_misses"][0]["interaction"] == 5
        assert body["near_misses"][0]["differences"] == [
            "query: status=CANCELLED vs status=COMPLETED"
        ]

    run(scenario())
    data = json.loads(report.read_text())
    assert data["requests"]["served"] == 1
    assert data["requests"]["unmatched"][0]["request"] == "GET /v1/jobs?status=CANCELLED&page=1"
    assert data["interactions"] == {"total": 5, "unused": [2, 3, 4, 5]}
    assert data["diverged"] is True


def test_sync_twin_serves_plain_clients(tmp_path: Path) -> None:
    import requests

    with SyncReplayProxy(cassette_file(tmp_path)) as proxy:
        assert requests.post(f"{proxy.url}/v1/jobs", json=SUBMIT).status_code == 201
    assert proxy.report.served == 1


def start_cli(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline()
    assert line.startswith("replayproxy replaying"), line + proc.stderr.read()
    return proc, line.rsplit(" ", 1)[1].strip()


def test_cli_replay_strict_exit_and_report(tmp_path: Path) -> None:
    import requests

    path, report = cassette_file(tmp_path), tmp_path / "r.json"
    proc, url = start_cli(
        "replay", str(path), "--listen", "127.0.0.1:0", "--strict", "--report", str(report)
    )
    try:
        assert requests.post(f"{url}/v1/jobs", json=SUBMIT).status_code == 201
        assert requests.get(f"{url}/v1/nothing").status_code == 502
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "no recorded interaction matches GET /v1/nothing" in err
    assert "Traceback" not in err
    assert json.loads(report.read_text())["requests"]["served"] == 1


def test_cli_replay_exits_zero_without_strict_and_strict_names_the_unused(
    tmp_path: Path,
) -> None:
    proc, url = start_cli("replay", str(cassette_file(tmp_path)), "--listen", "127.0.0.1:0")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "not counted (strict mode would fail on these)" in err
    proc, url = start_cli(
        "replay", str(cassette_file(tmp_path)), "--listen", "127.0.0.1:0", "--strict"
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "5 of 5 interaction(s) never used (strict): #1 POST /v1/jobs, #2 GET" in err


def test_inspect_shows_tables(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    save(job_cassette(), path)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "interactions (5)"
    assert lines[1].split() == ["#", "method", "path", "status", "body", "time"]
    assert lines[2].split()[:4] == ["1", "POST", "/v1/jobs", "201"]
    assert any(line.split()[:3] == ["1", "1", "3"] and "job.completed" in line for line in lines)


def test_user_mistakes_get_one_line_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ninteractions:\n- request: {uri: /x}\n  response: {}\n")
    result = CliRunner().invoke(main, ["inspect", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:3: interactions[0].request: missing field 'method'" in result.output
    conf = tmp_path / "replayproxy.yaml"
    conf.write_text("match:\n  headerz: [x]\n")
    result = CliRunner().invoke(main, ["replay", str(bad), "--config", str(conf)])
    assert result.exit_code == 2
    assert f"{conf}: unknown key 'match.headerz'" in result.output
    assert "Traceback" not in result.output


def test_shift_time_moves_recorded_times_to_now(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from helpers import exchange

    from replayproxy.cassette import Cassette
    from replayproxy.replayer import ReplayOptions

    recorded = datetime.now(UTC) - timedelta(days=30)
    stamp = recorded.strftime("%Y-%m-%dT%H:%M:%SZ")
    cassette = Cassette(
        [exchange("GET", "/v1/jobs/1", body={"created_at": stamp})],
        meta={"recorded_at": recorded.isoformat()},
    )
    path = tmp_path / "old.yaml"
    save(cassette, path)

    async def fetch(shift: bool) -> str:
        options = ReplayOptions(shift_time=shift)
        async with ReplayProxy(path, options=options) as proxy, aiohttp.ClientSession() as s:
            async with s.get(f"{proxy.url}/v1/jobs/1") as resp:
                return (await resp.json())["created_at"]

    assert run(fetch(False)) == stamp
    shifted = datetime.strptime(run(fetch(True)), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((shifted - datetime.now(UTC)).total_seconds()) < 600  # moved by 30 days, format kept


def test_live_values_flow_into_location_headers_and_json(tmp_path: Path) -> None:
    import uuid
    from urllib.parse import quote

    from helpers import exchange

    from replayproxy.cassette import Cassette

    rec_id, rec_cb = str(uuid.uuid4()), "http://127.0.0.1:5001/hooks/camber?x=1"
    item = exchange(
        "POST",
        "/v1/things",
        201,
        {"id": rec_id, "echo": rec_cb, "note": f"made {rec_id}"},
        {"id": rec_id, "callback_url": rec_cb},
    )
    item.response.headers.append(("Location", f"/v1/things/{rec_id}?cb={quote(rec_cb, safe='')}"))
    path = tmp_path / "things.yaml"
    save(Cassette([item]), path)
    live_id, live_cb = str(uuid.uuid4()), "http://127.0.0.1:6002/hooks/camber?x=1"

    async def scenario() -> tuple[str, dict]:
        async with ReplayProxy(path) as proxy, aiohttp.ClientSession() as s:
            async with s.post(
                f"{proxy.url}/v1/things", json={"callback_url": live_cb, "id": live_id}
            ) as resp:
                assert resp.status == 201
                return resp.headers["Location"], json.loads(await resp.read())

    location, body = run(scenario())
    assert location == f"/v1/things/{live_id}?cb={quote(live_cb, safe='')}"
    assert body == {"id": live_id, "echo": live_cb, "note": f"made {live_id}"}


def test_cli_prints_one_line_per_finished_job_when_not_on_a_tty(tmp_path: Path) -> None:
    import threading

    import requests
    from aiohttp import web

    received: list[bytes] = []
    ready = threading.Event()
    state: dict = {}

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="ok")

    def serve_receiver() -> None:
        async def main() -> None:
            app = web.Application()
            app.router.add_post("/hook", hook)
            async with serving(app) as url:
                state["url"] = url
                ready.set()
                while not state.get("stop"):
                    await asyncio.sleep(0.02)

        run(main())

    thread = threading.Thread(target=serve_receiver)
    thread.start()
    ready.wait(10)
    path = tmp_path / "jobs.yaml"
    save(job_cassette(), path)
    os.environ["WEBHOOK_SECRET"] = "whs_live_lines"
    try:
        proc, url = start_cli(
            "replay",
            str(path),
            "--listen",
            "127.0.0.1:0",
            "--timing",
            "immediate",
            "--webhook-url",
            f"{state['url']}/hook",
        )
        try:
            assert requests.post(f"{url}/v1/jobs", json=SUBMIT).status_code == 201
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
    finally:
        os.environ.pop("WEBHOOK_SECRET", None)
        state["stop"] = True
        thread.join(10)
    assert len(received) == 1
    lines = [line for line in err.splitlines() if line.startswith("job 6238")]
    assert len(lines) == 1 and "1/5" in lines[0] and "job.completed delivered" in lines[0]
    assert "\x1b" not in err


def test_expect_100_continue_is_answered_before_the_body(tmp_path: Path) -> None:
    """A client that sends `Expect: 100-continue` waits for `100 Continue` before its body
    (curl does, for a second, on large POSTs); an unknown expectation is ignored."""
    path = cassette_file(tmp_path)

    async def exchange(url: str, expect: str) -> tuple[bytes, bytes]:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                         f"Expect: {expect}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            interim = b""
            if expect == "100-continue":  # nothing more is sent until the proxy says go on
                interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            writer.write(b"{}")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            final = head + await asyncio.wait_for(reader.readexactly(length), 5)
        finally:
            writer.close()
        return interim, final

    async def main_() -> None:
        async with ReplayProxy(path) as proxy:
            interim, final = await exchange(proxy.url, "100-continue")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            assert final.startswith(b"HTTP/1.1 ")  # the answer proper follows
            _, ignored = await exchange(proxy.url, "something-else")
            assert ignored.startswith(b"HTTP/1.1 502 ")  # answered as without it (a miss)

    run(main_())


def test_an_address_in_use_is_one_line_in_replay_and_forward_mode() -> None:
    """Both listeners (the replay server and the forward proxy) say the same one line."""
    import socket

    from proc import cli

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        for extra in ([], ["--forward"]):
            run = cli("replay", "cassettes/camber-jobs.yaml", "--listen", f"127.0.0.1:{port}",
                      *extra)
            assert run.returncode == 2, (extra, run.stderr)
            lines = run.stderr.strip().splitlines()
            assert len(lines) == 1, (extra, run.stderr)
            assert lines[0].startswith(f"replayproxy: cannot listen on 127.0.0.1:{port}: ")
            assert "in use" in lines[0], lines[0]
    finally:
        taken.close()


def test_a_path_that_cannot_be_written_and_odd_seconds_are_one_line(tmp_path: Path) -> None:
    """The operating system's refusal (a folder that is a file) and seconds that are no finite
    number (nan, inf, negative) each get one line, never a traceback."""
    from proc import cli

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    run = cli("inspect", "cassettes/camber-jobs.yaml", "--html", str(a_file / "page.html"))
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert line == f"replayproxy: [Errno 17] File exists: '{a_file}'", line
    for args in (["vary", "cassettes/camber-jobs.yaml", "--timeout", "nan", "--", "true"],
                 ["replay", "cassettes/camber-jobs.yaml", "--drain-timeout", "-1"],
                 ["record", str(tmp_path / "r.yaml"), "--upstream", "http://127.0.0.1:9",
                  "--drain-timeout", "inf"]):
        run = cli(*args)
        assert run.returncode == 2, args
        assert "Traceback" not in run.stderr, run.stderr
        assert "is not a finite number of seconds, 0 or more" in run.stderr.splitlines()[-1]
