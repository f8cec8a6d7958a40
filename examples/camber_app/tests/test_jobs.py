"""The app end to end against a recorded Camber session: real HTTP client, real webhook route.

`cassettes/camber_jobs.yaml` was recorded by `test_jobs_complete_and_fail` itself (see the
README); the other tests replay the same session with replayproxy's handler tests switched on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

import httpx
import pytest

from replayproxy.replayer import ReplayOptions

CASSETTE = "../cassettes/camber_jobs.yaml"
SPECS = [
    {"portal_schema_name": "invoice", "filename": "test.pdf"},
    {"portal_schema_name": "invoice", "filename": "fail.pdf"},  # the sandbox fails "fail" jobs
]


def submit_all(client: httpx.Client) -> list[str]:
    ids = []
    for spec in SPECS:
        resp = client.post("/jobs", json=spec)
        assert resp.status_code == 201, resp.text
        job = resp.json()
        assert job["status"] == "pending" and job["camber_job_id"] is not None
        ids.append(job["id"])
    return ids


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def statuses(client: httpx.Client, ids: list[str]) -> list[str]:
    return [client.get(f"/jobs/{job_id}").json()["status"] for job_id in ids]


@pytest.mark.replayproxy(CASSETTE)
def test_jobs_complete_and_fail(app_server) -> None:
    with httpx.Client(base_url=app_server.url) as client:
        ids = submit_all(client)
        wait_until(lambda: "pending" not in statuses(client, ids))
        done, failed = (client.get(f"/jobs/{job_id}").json() for job_id in ids)
        assert done["status"] == "completed" and done["camber_status"] == "COMPLETED"
        assert done["result"]["outputs"] == [f"jobs/{done['camber_job_id']}/outputs/result.bin"]
        assert failed["status"] == "failed" and failed["camber_status"] == "FAILED"
        assert failed["error"] == "command exited with status 1"
        # Polling Camber afterwards agrees with what the webhooks said.
        polled = [client.get(f"/jobs/{i}", params={"refresh": "true"}).json() for i in ids]
        assert [(job["status"], job["camber_status"]) for job in polled] == [
            ("completed", "COMPLETED"),
            ("failed", "FAILED"),
        ]
    assert app_server.store.webhooks_rejected == 0


@pytest.mark.replay_only
@pytest.mark.replayproxy(CASSETTE, options=ReplayOptions(bad_signature=True))
def test_webhooks_signed_with_a_wrong_key_are_rejected(app_server) -> None:
    """replayproxy signs with a wrong key: the app answers 401 (the plugin fails the test if it
    accepts one) and the jobs stay pending until polling Camber settles them."""
    with httpx.Client(base_url=app_server.url) as client:
        ids = submit_all(client)
        wait_until(lambda: app_server.store.webhooks_rejected == 2, timeout=10)
        assert statuses(client, ids) == ["pending", "pending"]
        polled = [client.get(f"/jobs/{i}", params={"refresh": "true"}).json() for i in ids]
    assert [job["status"] for job in polled] == ["completed", "failed"]


@pytest.mark.replay_only
@pytest.mark.replayproxy(CASSETTE, options=ReplayOptions(duplicate_webhooks=3))
def test_replayed_events_are_processed_once(app_server) -> None:
    with httpx.Client(base_url=app_server.url) as client:
        ids = submit_all(client)
        wait_until(lambda: app_server.store.webhooks_duplicate == 4, timeout=10)
        assert statuses(client, ids) == ["completed", "failed"]
    assert len(app_server.store.seen_events) == 2


def test_the_webhook_route_checks_the_signature(app_server) -> None:
    """Without replayproxy: what the route does with unsigned, forged and well-signed bodies."""
    body = json.dumps({"event_id": "evt_1", "job_id": 1, "status": "COMPLETED"}).encode()
    secret = os.environ["WEBHOOK_SECRET"].encode()  # set by conftest.py
    good = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    forged = "sha256=" + hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
    url = f"{app_server.url}/webhooks/camber"
    headers = {"Content-Type": "application/json"}
    assert httpx.post(url, content=body, headers=headers).status_code == 401
    resp = httpx.post(url, content=body, headers={**headers, "X-Signature": forged})
    assert resp.status_code == 401
    tampered = body.replace(b"COMPLETED", b"FAILED")
    resp = httpx.post(url, content=tampered, headers={**headers, "X-Signature": good})
    assert resp.status_code == 401
    resp = httpx.post(url, content=body, headers={**headers, "X-Signature": good})
    assert resp.status_code == 404  # a good signature, but no job 1
    assert app_server.store.webhooks_rejected == 3
