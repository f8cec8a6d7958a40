"""Faults while recording and replaying: what breaks is reported, nothing finished is lost.

Already covered elsewhere (not repeated here):
- upstream refuses, resets, drops mid-body, or is slow past the timeout, one proxy each:
  test_record.py::test_upstream_failures_are_502_naming_the_upstream_and_not_recorded
- replay: the app's webhook endpoint down then up, 500 then 200, giving up:
  test_webhook_replay.py::test_receiver_down_then_up,
  ::test_500_then_200_each_attempt_freshly_signed, ::test_gives_up_after_the_configured_attempts
- kill -9 with nothing in flight, then recovery naming the count:
  test_record.py::test_kill_9_then_recovery_then_sigterm_saves
- bad cassettes named by file, line and field:
  test_cassette.py::test_bad_cassettes_name_file_line_and_field
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import job_cassette, run, serving

from replayproxy import cassette as cassette_module
from replayproxy import journal as journal_module
from replayproxy.api import ReplayProxy
from replayproxy.cassette import load, save
from replayproxy.config import Config, SignatureConfig, WebhooksConfig
from replayproxy.demo import sandbox
from replayproxy.errors import CassetteError, ConfigError, ReplayProxyError
from replayproxy.journal import journal_path, read
from replayproxy.signing import verify

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk_test_faults_key_5b1e77"
UPSTREAM_SECRET = "camber_faults_upstream_2a9f"
LOCAL_SECRET = "local_faults_secret_c40d"


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMBER_API_KEY", API_KEY)
    monkeypatch.setenv("CAMBER_WEBHOOK_SECRET", UPSTREAM_SECRET)
    monkeypatch.setenv("WEBHOOK_SECRET", LOCAL_SECRET)


def payload_upstream(hits: list[str]) -> web.Application:
    """Answers carry the path and a 1 KiB pad; /drop dies mid-body, /slow answers too late."""

    async def any_path(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        if request.path == "/drop":
            resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b"the first half of the answer ")
            request.transport.close()  # type: ignore[union-attr]  # mid-body, no last chunk
            return resp
        if request.path == "/slow":
            await asyncio.sleep(1.0)
        return web.json_response({"path": request.path, "pad": "p" * 1024})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)
    return app


# ---------------------------------------------------------------------------------------------
# upstream faults in the middle of a session


def test_a_session_survives_upstream_faults_and_records_only_whole_exchanges(
    tmp_path: Path,
) -> None:
    path = tmp_path / "faults.yaml"
    hits: list[str] = []

    async def session() -> list[int]:
        statuses = []
        async with serving(payload_upstream(hits)) as up, aiohttp.ClientSession() as s:
            config = Config(upstream_timeout=0.3)
            async with ReplayProxy(path, mode="all", upstream=up, config=config) as proxy:
                for p in ("/a", "/drop", "/slow", "/b", "/drop", "/c"):
                    async with s.get(proxy.url + p) as r:
                        statuses.append(r.status)
                        if r.status == 502:
                            body = await r.json()
                            assert up in body["error"] and "not recorded" in body["error"]
        return statuses

    assert run(session()) == [200, 502, 502, 200, 502, 200]
    items = load(path).interactions
    assert [i.request.uri.rsplit("/", 1)[1] for i in items] == ["a", "b", "c"]
    for item in items:
        assert json.loads(item.response.body)["pad"] == "p" * 1024  # whole answers only


# ---------------------------------------------------------------------------------------------
# recording: the app's webhook endpoint down then back, 500 then 200 (the sender retries)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("fault", ["down-then-up", "500-then-200"])
def test_recording_the_apps_webhook_endpoint_failing_then_recovering(
    tmp_path: Path, fault: str
) -> None:
    path = tmp_path / "hooks.yaml"
    port = _free_port()
    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        verify(body, request.headers, [LOCAL_SECRET], SignatureConfig())  # re-signed for the app
        received.append(body)
        if fault == "500-then-200" and len(received) == 1:
            return web.json_response({"error": "try again"}, status=500)
        return web.json_response({"ok": True})

    async def session() -> list[Any]:
        upstream = sandbox.create_app(api_key=API_KEY, webhook_secret=UPSTREAM_SECRET,
                                      step_seconds=0.01, webhook_attempts=6, webhook_backoff=0.1)
        state = upstream[sandbox.SANDBOX_STATE]
        app = web.Application()
        app.router.add_post("/hooks", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            async with serving(upstream) as camber, \
                    ReplayProxy(path, mode="all", upstream=camber) as proxy, \
                    aiohttp.ClientSession() as s:
                if fault == "500-then-200":
                    await web.TCPSite(runner, "127.0.0.1", port).start()
                job = {"command": "python run.py", "engine_type": "MPI", "node_size": "MICRO",
                       "callback_url": f"http://127.0.0.1:{port}/hooks"}
                async with s.post(f"{proxy.url}/v1/jobs", json=job,
                                  headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                    assert r.status == 201
                deadline = time.monotonic() + 5
                while not state.deliveries:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                if fault == "down-then-up":  # the app comes back after the first failure
                    await web.TCPSite(runner, "127.0.0.1", port).start()
                while not any(d.ok for d in state.deliveries):
                    assert time.monotonic() < deadline, state.deliveries
                    await asyncio.sleep(0.01)
                return list(state.deliveries)
        finally:
            await runner.cleanup()

    deliveries = run(session())
    first = deliveries[0]
    assert first.status == (502 if fault == "down-then-up" else 500)  # the sender saw the fault
    assert deliveries[-1].status == 200 and len({d.event_id for d in deliveries}) == 1
    assert len(received) == (1 if fault == "down-then-up" else 2)  # nothing lost, retried
    assert len(set(received)) == 1
    hooks = load(path).webhooks
    assert len(hooks) == 1 and hooks[0].body == received[0]  # recorded once, byte-exact
    assert hooks[0].target == f"http://127.0.0.1:{port}/hooks"


def test_a_malformed_secret_stops_recording_at_start_not_at_the_first_webhook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "whsec_not*base64!")
    config = Config(webhooks=WebhooksConfig(signature=SignatureConfig(scheme="standard-webhooks")))
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET: standard-webhooks secret"):
        run(ReplayProxy(tmp_path / "x.yaml", mode="all", upstream="http://127.0.0.1:9",
                        config=config).start())
    assert not journal_path(tmp_path / "x.yaml").exists()


# ---------------------------------------------------------------------------------------------
# kill -9 with exchanges in flight


def test_kill_9_mid_session_recovers_every_exchange_the_app_was_answered(tmp_path: Path) -> None:
    path = tmp_path / "crash.yaml"
    hits: list[str] = []

    async def session() -> tuple[set[str], str]:
        async with serving(payload_upstream(hits)) as up, aiohttp.ClientSession() as s:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "cli.py"), "record", str(path), "--upstream", up,
                "--listen", "127.0.0.1:0", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
            )
            answered: set[str] = set()
            try:
                line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()  # type: ignore
                url = line.split(" on ", 1)[1].split()[0]

                async def one(n: int) -> None:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with s.get(f"{url}/item/{n}") as r:
                            await r.read()
                            if r.status == 200:
                                answered.add(f"/item/{n}")

                tasks = [asyncio.ensure_future(one(n)) for n in range(300)]
                while len(answered) < 60:  # kill it while the rest are in flight
                    await asyncio.sleep(0.002)
                proc.send_signal(signal.SIGKILL)
                await asyncio.gather(*tasks)
            finally:
                if proc.returncode is None:
                    proc.kill()
                await proc.communicate()
            assert not path.exists() and journal_path(path).exists()
            # the next start recovers, and says how many
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "cli.py"), "record", str(path), "--upstream", up,
                "--listen", "127.0.0.1:0", "--mode", "new_episodes",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=dict(os.environ),
            )
            try:
                await asyncio.wait_for(proc.stdout.readline(), 15)  # type: ignore[union-attr]
            finally:
                proc.send_signal(signal.SIGTERM)
                _, err = await proc.communicate()
            return answered, err.decode()

    answered, err = run(session())
    found = re.search(r"recovered (\d+) exchanges and 0 webhooks", err)
    assert found, err
    items = load(path).interactions
    paths = [i.request.uri.split("/", 3)[3] for i in items]
    assert int(found.group(1)) == len(items) >= len(answered)
    assert answered <= {"/" + p for p in paths}  # every answered exchange is in the cassette
    assert len(paths) == len(set(paths))  # each exactly once
    for item in items:  # and whole
        assert json.loads(item.response.body)["pad"] == "p" * 1024
    assert not journal_path(path).exists()


# ---------------------------------------------------------------------------------------------
# the cassette folder: disk full, read-only


class _FakeOs:
    """`os` for one module, with chosen calls failing: simulates a full or read-only disk
    where a real small tmpfs cannot be mounted (not root)."""

    def __init__(self, failing: dict[str, int]):
        self.failing = failing
        self.on = False

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in self.failing:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.on:
                code = self.failing[name]
                raise OSError(code, os.strerror(code))
            return real(*args, **kwargs)

        return call


class Disk:
    """A folder that can be filled up: a real 512 KiB tmpfs when mounting works, else fake."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch):
        self.path = path
        self.real = False
        path.mkdir()
        if os.geteuid() == 0 and not os.environ.get("REPLAYPROXY_TEST_FAKE_DISK"):
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(path)],
                                  capture_output=True)
            self.real = done.returncode == 0
        if not self.real:
            self.fakes = [_FakeOs({"write": errno.ENOSPC}), _FakeOs({"fsync": errno.ENOSPC})]
            monkeypatch.setattr(journal_module, "os", self.fakes[0])
            monkeypatch.setattr(cassette_module, "os", self.fakes[1])

    def fill(self) -> None:
        if not self.real:
            for fake in self.fakes:
                fake.on = True
            return
        fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for size in (65536, 4096, 1):  # to the last byte
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * size)
        finally:
            os.close(fd)

    def free(self) -> None:
        if not self.real:
            for fake in self.fakes:
                fake.on = False
            return
        (self.path / "filler").unlink(missing_ok=True)

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    d = Disk(tmp_path / "disk", monkeypatch)
    try:
        yield d
    finally:
        d.close()


def test_disk_full_mid_session_keeps_serving_and_keeps_the_previous_cassette(
    disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    path = disk.path / "jobs.yaml"
    save(job_cassette(), path)
    previous = path.read_bytes()
    hits: list[str] = []
    caplog.set_level(logging.WARNING, logger="replayproxy")

    async def session() -> list[int]:
        statuses = []
        async with serving(payload_upstream(hits)) as up, aiohttp.ClientSession() as s:
            proxy = ReplayProxy(path, mode="all", upstream=up)
            await proxy.start()
            try:
                for n in range(3):
                    async with s.get(f"{proxy.url}/before/{n}") as r:
                        statuses.append(r.status)
                disk.fill()
                for n in range(3):
                    async with s.get(f"{proxy.url}/after/{n}") as r:
                        statuses.append(r.status)  # the proxy keeps serving
                        assert (await r.json())["path"] == f"/after/{n}"
            finally:
                with pytest.raises(CassetteError) as caught:
                    await proxy.stop()
            message = str(caught.value)
            assert "cannot save the cassette: No space left on device" in message
            assert "the previous file is unchanged" in message
            counts = re.search(r"keeps (\d+) of this .*\((\d+) could not be", message)
            assert counts, message
            return statuses, int(counts.group(1)), int(counts.group(2))

    statuses, kept, lost = run(session())
    assert statuses == [200] * 6
    # a real disk may still take a line or two into the journal's last block
    assert kept >= 3 and lost >= 1 and kept + lost == 6
    logged = [m for m in caplog.messages if "cannot write the journal" in m]
    assert len(logged) == lost and "No space left on device" in logged[0]
    assert path.read_bytes() == previous  # intact
    assert sorted(p.name for p in disk.path.iterdir() if not p.name.startswith("filler")) == [
        "jobs.yaml", "jobs.yaml.journal"]  # no half-written temp file
    assert len(read(journal_path(path)).interactions) == kept  # no torn line either
    disk.free()
    recovered = journal_module.recover(path, Config())  # the next start
    assert recovered is not None and recovered.interactions == kept
    # a re-record that did not end cleanly: recovered beside the cassette, which is unchanged
    assert recovered.beside and recovered.into == disk.path / "jobs.recovered.yaml"
    assert path.read_bytes() == previous
    expected = [f"before/{n}" for n in range(3)] + [f"after/{n}" for n in range(3)]
    partial = load(recovered.into).interactions
    assert [i.request.uri.split("/", 3)[3] for i in partial] == expected[:kept]


def test_disk_full_only_at_the_end_loses_nothing(disk: Disk) -> None:
    path = disk.path / "end.yaml"

    async def session() -> None:
        async with serving(payload_upstream([])) as up, aiohttp.ClientSession() as s:
            proxy = ReplayProxy(path, mode="all", upstream=up)
            await proxy.start()
            for n in range(4):
                async with s.get(f"{proxy.url}/x/{n}") as r:
                    assert r.status == 200
            disk.fill()
            with pytest.raises(CassetteError, match="keeps 4 of this session's items"):
                await proxy.stop()

    run(session())
    assert not path.exists()
    disk.free()
    assert journal_module.recover(path, Config()).interactions == 4  # type: ignore[union-attr]
    assert len(load(path).interactions) == 4


def test_a_read_only_cassette_folder_is_a_clear_error_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "x.yaml"
    save(job_cassette(), path)
    before = path.read_bytes()
    mounted = False
    if os.geteuid() == 0 and not os.environ.get("REPLAYPROXY_TEST_FAKE_DISK"):
        mounted = subprocess.run(["mount", "-o", "bind,ro", str(folder), str(folder)],
                                 capture_output=True).returncode == 0
    if not mounted:
        fake = _FakeOs({"open": errno.EROFS})
        fake.on = True
        monkeypatch.setattr(journal_module, "os", fake)
    try:
        proxy = ReplayProxy(path, mode="all", upstream="http://127.0.0.1:9")
        with pytest.raises(ReplayProxyError) as caught:
            run(proxy.start())
        assert "cannot write the recording journal: Read-only file system" in str(caught.value)
        assert str(journal_path(path)) in str(caught.value)
        assert path.read_bytes() == before
        # replaying from a read-only folder is fine
        async def replay() -> int:
            async with ReplayProxy(path) as p, aiohttp.ClientSession() as s:
                async with s.get(f"{p.url}/v1/jobs/6238") as r:
                    return r.status

        assert run(replay()) == 200
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)


# ---------------------------------------------------------------------------------------------
# corrupt files


@pytest.mark.parametrize("command", ["replay", "record"])
def test_a_corrupt_cassette_is_one_line_and_left_as_it_was(tmp_path: Path, command: str) -> None:
    path = tmp_path / "bad.yaml"
    good = cassette_module.dumps(job_cassette())
    path.write_text(good[: len(good) // 2] + "\n  - [unclosed: {\n")  # a torn, damaged file
    before = path.read_bytes()
    args = [sys.executable, str(ROOT / "cli.py"), command, str(path), "--listen", "127.0.0.1:0"]
    if command == "record":
        args += ["--mode", "new_episodes", "--upstream", "http://127.0.0.1:9"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"replayproxy: {path}:"), done.stderr
    assert "Traceback" not in done.stderr
    assert path.read_bytes() == before
    assert not journal_path(path).exists()


def test_a_journal_damaged_in_the_middle_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "j.yaml"
    jpath = journal_path(path)
    session = journal_module.Session(meta={"upstream": "http://x"})
    journal = journal_module.Journal(jpath, session)
    for item in job_cassette().interactions[:3]:
        journal.interaction(item)
    journal.close()
    lines = jpath.read_bytes().split(b"\n")
    lines[2] = lines[2][:40]  # damaged, and not the last line
    jpath.write_bytes(b"\n".join(lines))
    with pytest.raises(CassetteError, match=rf"{jpath.name}:3: damaged journal line"):
        journal_module.recover(path, Config())
    assert jpath.exists() and not path.exists()  # nothing thrown away
