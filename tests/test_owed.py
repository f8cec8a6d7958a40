"""Ctrl-C waits for what is owed, and wrong secrets are loud while recording: real processes.

`replayproxy record` (a subprocess) in front of `replayproxy sandbox` (another), the app's
webhook route a real HTTP server that verifies signatures; SIGINT sent for real.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from proc import API_KEY, Receiver, Serving, cli, env, sandbox

from replayproxy.cassette import load

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def fast() -> Iterator[str]:
    with sandbox("0.4") as up:  # a job's webhook comes about 2 s after its submit
        yield up.url


@pytest.fixture(scope="module")
def slow() -> Iterator[str]:
    with sandbox("3") as up:  # ... about 15 s after: never within these tests
        yield up.url


def submit(url: str, callback: str, n: int = 3) -> list[int]:
    ids = []
    for k in range(n):
        job = {"command": f"python job{k}.py", "engine_type": "MPI", "node_size": "MICRO",
               "callback_url": callback}
        r = requests.post(f"{url}/v1/jobs", json=job, headers=AUTH, timeout=10)
        assert r.status_code == 201, r.text
        ids.append(r.json()["job_id"])
    return ids


def record(path: Path, upstream: str, *extra: str, **environ: str | None) -> Serving:
    return Serving("record", str(path), "--upstream", upstream, "--listen", "127.0.0.1:0",
                   *extra, environ=env(**environ))


def test_ctrl_c_waits_for_the_owed_webhooks_and_refuses_new_requests(
    tmp_path: Path, fast: str
) -> None:
    path = tmp_path / "jobs.yaml"
    with Receiver() as app, record(path, fast) as rec:
        ids = submit(rec.url, app.url)
        rec.send(signal.SIGINT)  # at once: the three webhooks are on their way
        line = rec.wait_for("stopping: waiting up to 30s")
        assert ("for 3 webhook(s) still owed (interaction 1 POST /v1/jobs, interaction 2 POST "
                "/v1/jobs, interaction 3 POST /v1/jobs); new requests get 503") in line
        late = requests.get(f"{rec.url}/v1/jobs", headers=AUTH, timeout=10)
        assert late.status_code == 503 and "stopping" in late.json()["error"]
        assert rec.stop(signal.SIGCONT) == 0, rec.err  # (no signal: it ends by itself)
    assert sorted(h["job_id"] for h in app.received) == sorted(ids)
    cassette = load(path)
    assert len(cassette.webhooks) == 3 and len(cassette.interactions) == 3
    assert "webhooks_missing" not in cassette.meta
    assert "never came" not in rec.err
    assert "recorded 3 exchanges and 3 webhooks" in rec.err
    assert cli("check", str(path)).returncode == 0


def test_a_second_ctrl_c_stops_at_once_and_the_cassette_says_what_never_came(
    tmp_path: Path, slow: str
) -> None:
    path = tmp_path / "jobs.yaml"
    with Receiver() as app, record(path, slow) as rec:
        submit(rec.url, app.url)
        rec.send(signal.SIGINT)
        rec.wait_for("stopping: waiting up to 30s for 3 webhook(s)")
        started = time.monotonic()
        assert rec.stop(signal.SIGINT) == 0, rec.err
        assert time.monotonic() - started < 10  # not the 30 s, nor the 15 s to the webhooks
    assert ("replayproxy: 3 webhook(s) never came before the recording stopped: interaction 1 "
            "POST /v1/jobs, interaction 2 POST /v1/jobs, interaction 3 POST /v1/jobs; the "
            "cassette notes them (`check` flags it)") in rec.err
    assert load(path).meta["webhooks_missing"] == [1, 2, 3]
    done = cli("check", str(path))
    assert done.returncode == 1
    flagged = [line for line in done.stdout.splitlines() if "replayproxy.webhooks_missing" in line]
    assert [line.split(": ")[1] for line in flagged] == [
        "interaction 1", "interaction 2", "interaction 3"]


def test_the_drain_timeout_bounds_the_wait(tmp_path: Path, slow: str) -> None:
    path = tmp_path / "jobs.yaml"
    with Receiver() as app, record(path, slow, "--drain-timeout", "0.5") as rec:
        submit(rec.url, app.url, 1)
        rec.send(signal.SIGTERM)
        assert rec.stop(signal.SIGCONT) == 0
    assert "waiting up to 0.5s for 1 webhook(s)" in rec.err
    assert "1 webhook(s) never came before the recording stopped: interaction 1" in rec.err
    assert load(path).meta["webhooks_missing"] == [1]


def test_an_app_with_the_wrong_secret_is_reported_at_once_and_in_the_summary(
    tmp_path: Path, fast: str
) -> None:
    path = tmp_path / "jobs.yaml"
    with Receiver(secret="not_the_local_secret_x") as app, record(path, fast) as rec:
        submit(rec.url, app.url, 2)
        line = rec.wait_for("the app refused")  # while recording, not at replay time
        assert line.startswith("replayproxy: the app refused 1 webhook(s) signed with "
                               "$WEBHOOK_SECRET (scheme hmac-sha256): 401 Unauthorized")
        assert "bad signature" in line and f"(at {app.url})" in line
        rec.wait_for("the app refused 2 webhook(s)")
        assert rec.stop(signal.SIGINT) == 0
    assert app.refused and not app.received
    summary = [line for line in rec.err.splitlines() if line.startswith("replayproxy: the app")]
    assert summary[-1].startswith("replayproxy: the app refused 2 webhook(s) signed with "
                                  "$WEBHOOK_SECRET (scheme hmac-sha256): 401 Unauthorized")
    assert summary[-1].endswith("is the app's webhook secret the one in WEBHOOK_SECRET?")


def test_a_missing_local_secret_is_an_error_at_the_first_webhook(
    tmp_path: Path, fast: str
) -> None:
    path = tmp_path / "jobs.yaml"
    with Receiver() as app, record(path, fast, WEBHOOK_SECRET=None) as rec:
        submit(rec.url, app.url, 1)
        line = rec.wait_for("a webhook came for")
        assert "WEBHOOK_SECRET (webhooks.local_secret_env) is not set" in line
        assert rec.stop(signal.SIGINT) == 0
    assert rec.err.count("a webhook came for") == 1  # once, not per retry
    assert "1 webhook(s) came but WEBHOOK_SECRET (webhooks.local_secret_env) is not set: none " \
           "reached the app" in rec.err
    assert not app.received
