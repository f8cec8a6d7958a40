"""Exposure: who can reach the proxy, and where secrets could leak.

Every command that listens refuses a non-loopback address unless --allow-remote is given, and
warns when it is. A record session and a replay of it, with the three secrets in the environment
and -v logging, leave none of them in argv, the logs, the report or the cassette.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from camber_session import run_app
from helpers import job_cassette, run, serving

from replayproxy.api import ReplayProxy
from replayproxy.cassette import save
from replayproxy.demo import sandbox
from replayproxy.errors import ReplayProxyError
from replayproxy.server import Server

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, str(ROOT / "cli.py")]
API_KEY = "sk_live_exposure_3b9f0c1d7e"
UPSTREAM_SECRET = "camber_exposure_upstream_8e2a"
LOCAL_SECRET = "local_exposure_secret_51f7"
SECRETS = (API_KEY, UPSTREAM_SECRET, LOCAL_SECRET)
UNROUTABLE = "192.0.2.1"  # TEST-NET-1: not loopback, and never bound here


def env() -> dict[str, str]:
    return {**os.environ, "CAMBER_API_KEY": API_KEY, "CAMBER_WEBHOOK_SECRET": UPSTREAM_SECRET,
            "WEBHOOK_SECRET": LOCAL_SECRET}


# ---------------------------------------------------------------------------------------------
# --allow-remote, on every command that listens


def _commands(cassette: Path) -> dict[str, list[str]]:
    cassette.parent.mkdir(parents=True, exist_ok=True)
    return {
        "replay": ["replay", str(cassette)],
        "replay --forward": ["replay", str(cassette), "--forward", "--ca-dir",
                             str(cassette.parent.parent / "ca")],
        "record": ["record", str(cassette.parent / "new.yaml"), "--upstream",
                   "http://127.0.0.1:9"],
        "run": ["run", str(cassette)],
        "sandbox": ["sandbox"],
    }


@pytest.mark.parametrize("command", ["replay", "replay --forward", "record", "run", "sandbox"])
def test_every_listening_command_needs_allow_remote_off_loopback(
    tmp_path: Path, command: str
) -> None:
    cassette = tmp_path / "cassettes" / "jobs.yaml"
    args = _commands(cassette)[command]
    save(job_cassette(), cassette)
    tail = ["--", sys.executable, "-c", "pass"] if command == "run" else []
    for host in ("0.0.0.0", "::"):
        listen = f"[{host}]:0" if ":" in host else f"{host}:0"
        done = subprocess.run([*CLI, *args, "--listen", listen, *tail], capture_output=True,
                              text=True, timeout=30, env=env())
        assert done.returncode == 2, (command, host, done.stderr)
        assert f"refusing to listen on {host}" in done.stderr and "--allow-remote" in done.stderr
        assert "Traceback" not in done.stderr
    # with the flag the address is allowed: here it cannot be bound, which shows the gate passed
    done = subprocess.run([*CLI, *args, "--listen", f"{UNROUTABLE}:0", "--allow-remote", *tail],
                          capture_output=True, text=True, timeout=30, env=env())
    assert "refusing" not in done.stderr and done.returncode != 0, done.stderr
    assert UNROUTABLE in done.stderr


def test_an_allowed_remote_listener_prints_a_warning(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiohttp import web

    monkeypatch.setenv("WEBHOOK_SECRET", LOCAL_SECRET)

    async def once() -> str:
        server = Server(web.Application(), "0.0.0.0", 0, allow_remote=True)
        url = await server.start()
        await server.stop()  # up for a moment, nothing served
        return url

    assert run(once()).startswith("http://0.0.0.0:")
    assert "warning: listening on 0.0.0.0, reachable from other machines" in capsys.readouterr().err
    with pytest.raises(ReplayProxyError, match="--allow-remote"):
        Server(web.Application(), "10.1.2.3", 0)
    with pytest.raises(ReplayProxyError, match="--allow-remote"):
        run(ReplayProxy(ROOT / "cassettes" / "camber-jobs.yaml", listen="0.0.0.0:0").start())


# ---------------------------------------------------------------------------------------------
# secrets: argv, logs, reports, cassettes


async def _start(*args: str) -> tuple[asyncio.subprocess.Process, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "-v", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env(),
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()  # type: ignore
    except BaseException:
        proc.kill()
        await proc.communicate()
        raise
    argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode() if Path("/proc").exists() else ""
    return proc, line.split(" on ", 1)[1].split()[0], argv + line


async def _stop(proc: asyncio.subprocess.Process) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode() + err.decode()


async def _probes(url: str) -> None:
    """Requests that put the secrets where a careless proxy would echo them: the query, headers,
    a JSON body; an oversized header; a forged webhook. Their answers are not the point."""
    async with aiohttp.ClientSession() as s:
        for secret in SECRETS:
            async with s.post(f"{url}/v1/jobs/0/cancel?api_key={secret}&token={secret}",
                              json={"token": secret, "password": secret},
                              headers={"Authorization": f"Bearer {secret}",
                                       "X-Custom": secret}) as r:
                await r.read()
            async with s.get(f"{url}/v1/nothing?key={secret}",
                             headers={"X-Big": secret + "x" * 70_000}) as r:
                await r.read()
            async with s.post(f"{url}/__replayproxy/webhooks/1?secret={secret}", data=b"{}",
                              headers={"X-Signature": f"sha256={secret}"}) as r:
                await r.read()


def test_no_secret_in_argv_logs_report_or_cassette(tmp_path: Path) -> None:
    cassette = tmp_path / "jobs.yaml"
    report = tmp_path / "report.json"
    seen: list[str] = []  # argv and everything the processes printed

    async def session() -> None:
        upstream = sandbox.create_app(api_key=API_KEY, webhook_secret=UPSTREAM_SECRET,
                                      step_seconds=0.01)
        async with serving(upstream) as camber:
            proc, url, argv = await _start("record", str(cassette), "--upstream", camber,
                                           "--listen", "127.0.0.1:0")
            seen.append(argv)
            try:
                outcome = await run_app(url, API_KEY, LOCAL_SECRET, ("a.pdf", "fail.pdf"))
                assert outcome["rejected_webhooks"] == 0
                await _probes(url)
            finally:
                seen.append(await _stop(proc))
        proc, url, argv = await _start("replay", str(cassette), "--listen", "127.0.0.1:0",
                                       "--report", str(report))
        seen.append(argv)
        try:
            outcome = await run_app(url, "offline", LOCAL_SECRET, ("a.pdf", "fail.pdf"))
            assert outcome["rejected_webhooks"] == 0
            await _probes(url)
        finally:
            seen.append(await _stop(proc))

    run(session())
    text = "\n".join(seen)
    assert "replayproxy: no recorded interaction matches" in text  # the logs were captured
    assert "refused" in text
    files = {"cassette": cassette.read_text(), "report": report.read_text()}
    assert json.loads(files["report"])["requests"]["unmatched"]  # the probes are in the report
    leaks = [
        f"{where}: {line.strip()[:300]}"
        for where, content in {"argv and logs": text, **files}.items()
        for line in content.splitlines()
        if any(secret in line for secret in SECRETS)
    ]
    assert not leaks, "\n".join(leaks)
