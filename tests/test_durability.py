"""Nothing recorded is destroyed by a crash, a second recorder or a full disk: real processes.

Each test drives `replayproxy record` (a real subprocess) against `replayproxy sandbox` (another),
kills or crowds it, and looks at the files and at what the next command says.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from helpers import job_cassette
from proc import API_KEY, Serving, cli, sandbox

from cli import main
from replayproxy.api import SyncReplayProxy
from replayproxy.cassette import load, save
from replayproxy.errors import CassetteError
from replayproxy.journal import Journal, Session, fingerprint, journal_path

pytest_plugins = ["pytester"]

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def camber() -> Iterator[str]:
    with sandbox() as up:
        yield up.url


def jobs(url: str, n: int, tag: str) -> list[int]:
    ids = []
    for k in range(n):
        job = {"command": f"python {tag}{k}.py", "engine_type": "MPI", "node_size": "MICRO"}
        r = requests.post(f"{url}/v1/jobs", json=job, headers=AUTH, timeout=10)
        assert r.status_code == 201, r.text
        ids.append(r.json()["job_id"])
    return ids


def record(path: Path, upstream: str, *extra: str) -> Serving:
    return Serving("record", str(path), "--upstream", upstream, "--listen", "127.0.0.1:0", *extra)


def good_cassette(path: Path, camber: str) -> bytes:
    with record(path, camber) as rec:
        jobs(rec.url, 6, "good")
        assert rec.stop() == 0, rec.err
    assert len(load(path).interactions) == 6
    return path.read_bytes()


def test_kill_9_of_a_re_record_keeps_the_old_cassette_and_recovers_beside_it(
    tmp_path: Path, camber: str
) -> None:
    path = tmp_path / "jobs.yaml"
    good = good_cassette(path, camber)
    with record(path, camber, "--mode", "all") as rec:
        jobs(rec.url, 2, "partial")
        rec.stop(signal.SIGKILL)
    assert path.read_bytes() == good and journal_path(path).exists()

    # every command that opens it names the journal and the command that saves it (the first
    # two as processes, the others through click's runner: the same code, less start-up)
    for args in (["replay", str(path), "--listen", "127.0.0.1:0"], ["inspect", str(path)],
                 ["check", str(path)], ["diff", str(path), str(path)],
                 ["send-webhook", str(path), "--all", "--to", "http://127.0.0.1:9/x"]):
        if args[0] in ("replay", "inspect"):
            done = cli(*args)
            code, out = done.returncode, (done.stdout + done.stderr).strip()
        else:
            done = CliRunner().invoke(main, args)
            code, out = done.exit_code, done.output.strip()
        assert code in (1, 2), (args, out)
        assert f"{journal_path(path)} beside it holds a recording session that ended without " \
               "saving (2 exchanges, 0 webhooks)" in out, (args, out)
        assert f"replayproxy recover {path}" in out and "Traceback" not in out

    done = cli("recover", str(path))
    assert done.returncode == 0, done.stderr
    beside = tmp_path / "jobs.recovered.yaml"
    assert done.stderr.strip() == (
        f"replayproxy: recovered 2 exchanges and 0 webhooks from {journal_path(path)} (a session "
        f"that ended without saving) into {beside}, beside {path}, which is unchanged")
    assert path.read_bytes() == good and not journal_path(path).exists()
    partial = load(beside).interactions
    assert [b'partial' in i.request.body for i in partial] == [True, True]
    assert cli("inspect", str(path)).returncode == 0  # usable again
    assert cli("recover", str(path)).stderr.startswith("replayproxy: nothing to recover")
    # and a re-record that stops cleanly does replace it
    with record(path, camber, "--mode", "all") as rec:
        jobs(rec.url, 1, "fresh")
        assert rec.stop() == 0, rec.err
    assert [b"fresh" in i.request.body for i in load(path).interactions] == [True]


def test_kill_9_of_new_episodes_keeps_old_and_new_and_the_next_record_says_so(
    tmp_path: Path, camber: str
) -> None:
    path = tmp_path / "jobs.yaml"
    good_cassette(path, camber)
    with record(path, camber, "--mode", "new_episodes") as rec:
        jobs(rec.url, 2, "more")
        rec.stop(signal.SIGKILL)
    with record(path, camber, "--mode", "new_episodes") as rec:  # recovers before it records
        assert rec.stop() == 0
    assert (f"recovered 2 exchanges and 0 webhooks from {journal_path(path)} (a session that "
            f"ended without saving) into {path}") in rec.err
    bodies = [i.request.body for i in load(path).interactions]
    assert len(bodies) == 8 and all(b"good" in b for b in bodies[:6])
    assert all(b"more" in b for b in bodies[6:])
    assert not journal_path(path).exists()


def test_a_second_recorder_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(
    tmp_path: Path, camber: str
) -> None:
    path = tmp_path / "jobs.yaml"
    with record(path, camber) as first:
        jobs(first.url, 3, "first")
        second = cli("record", str(path), "--upstream", camber, "--listen", "127.0.0.1:0")
        assert second.returncode == 2
        assert second.stderr.strip() == (
            f"replayproxy: {path} is being recorded by another replayproxy (pid {first.pid}, "
            f"holding {journal_path(path)}); one recorder per cassette: stop that one or "
            "record into another file")
        # nor does a replay, a recover or a `run --record` touch the live journal
        assert f"being recorded right now by replayproxy pid {first.pid}" in cli(
            "inspect", str(path)).stderr
        assert "being recorded by another replayproxy" in cli("recover", str(path)).stderr
        jobs(first.url, 2, "first")  # the first one goes on, unharmed
        first.stop(signal.SIGKILL)
    assert len(open(journal_path(path), "rb").readlines()) == 1 + 5
    # the kernel dropped the dead one's lock: the next recorder takes over and recovers all 5
    with record(path, camber, "--mode", "new_episodes") as rec:
        jobs(rec.url, 1, "next")
        assert rec.stop() == 0, rec.err
    assert "recovered 5 exchanges and 0 webhooks" in rec.err
    assert len(load(path).interactions) == 6


# ---------------------------------------------------------------------------------------------
# recovery on a disk that cannot take the file


@contextlib.contextmanager
def mounted(folder: Path, options: str) -> Iterator[None]:
    folder.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the in-process fakes are in test_faults)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def test_recovery_on_a_full_then_read_only_disk_is_one_line_and_keeps_the_journal(
    tmp_path: Path, camber: str
) -> None:
    folder = tmp_path / "disk"
    with mounted(folder, "size=1m"):
        path = folder / "jobs.yaml"
        with record(path, camber) as rec:
            jobs(rec.url, 4, "kept")
            rec.stop(signal.SIGKILL)
        journal = journal_path(path).read_bytes()
        fill(folder)
        done = cli("recover", str(path))
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert done.stderr.startswith(f"replayproxy: {path}: cannot save the recovered session: "
                                      "No space left on device;")
        assert f"{journal_path(path)} is kept (4 items)" in done.stderr
        assert journal_path(path).read_bytes() == journal and not path.exists()
        assert sorted(p.name for p in folder.iterdir()) == ["filler", "jobs.yaml.journal"]
        (folder / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        done = cli("recover", str(path))
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "Read-only file system" in done.stderr and "Traceback" not in done.stderr
        assert journal_path(path).read_bytes() == journal
        subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
        done = cli("recover", str(path))
        assert done.returncode == 0, done.stderr
        assert len(load(path).interactions) == 4 and not journal_path(path).exists()


# ---------------------------------------------------------------------------------------------
# the Python API and the pytest plugin refuse it too


def _dead_session(path: Path) -> None:
    """What a killed re-record leaves: the cassette, and a journal nobody holds."""
    save(job_cassette(), path)
    journal = Journal(journal_path(path), Session(origin=fingerprint(path), replaces=True))
    journal.interaction(job_cassette().interactions[0])
    journal.close()


def test_the_python_api_refuses_a_cassette_with_a_journal_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    _dead_session(path)
    with pytest.raises(CassetteError, match=r"holds a recording session that ended without "
                       r"saving \(1 exchanges, 0 webhooks\); run `replayproxy recover "):
        with SyncReplayProxy(path):
            pass


def test_the_pytest_plugin_fails_the_test_naming_the_journal(pytester: pytest.Pytester) -> None:
    (pytester.path / "cassettes").mkdir()
    path = pytester.path / "cassettes" / "jobs.yaml"
    _dead_session(path)
    pytester.makepyfile(test_app="""
        import pytest

        @pytest.mark.replayproxy("cassettes/jobs.yaml")
        def test_poll(replayproxy):
            pass
        """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                                           "-p", "no:asyncio", "-p", "no:anyio")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*{journal_path(path).name} beside it holds a recording session "
                                 "that ended without saving*replayproxy recover*"])


def test_kill_9_of_run_record_keeps_the_old_cassette(tmp_path: Path, camber: str) -> None:
    path = tmp_path / "jobs.yaml"
    good = good_cassette(path, camber)
    script = ("import os, sys, time; print('command on', os.environ['REPLAYPROXY_URL'], "
              "flush=True); time.sleep(60)")
    with Serving("run", str(path), "--record", "--upstream", camber, "--",
                 sys.executable, "-c", script) as run:
        jobs(run.url, 3, "rerun")
        os.killpg(run.pid, signal.SIGKILL)  # the CI job is cancelled: proxy and command die
    assert path.read_bytes() == good
    done = cli("run", str(path), "--", sys.executable, "-c", "pass")
    assert done.returncode == 2 and "replayproxy recover" in done.stderr, done.stderr
    assert "into " in cli("recover", str(path)).stderr
    assert path.read_bytes() == good
    assert len(load(tmp_path / "jobs.recovered.yaml").interactions) == 3


def test_the_next_recorder_recovers_a_dead_re_record_beside_the_cassette(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "local_durability_secret")
    path = tmp_path / "jobs.yaml"
    _dead_session(path)
    before = path.read_bytes()
    proxy = SyncReplayProxy(path, mode="once", upstream="http://127.0.0.1:9")
    with proxy:  # `once` over an existing file: it replays, after saving the dead session
        assert requests.get(proxy.url + "/v1/jobs/6238", timeout=10).status_code == 200
    recovered = proxy.proxy.recovered
    assert recovered is not None and recovered.beside
    assert recovered.into == tmp_path / "jobs.recovered.yaml"
    assert path.read_bytes() == before and not journal_path(path).exists()
    assert len(load(recovered.into).interactions) == 1
