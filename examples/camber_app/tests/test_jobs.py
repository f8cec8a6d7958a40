"""The app end to end against a recorded Camber session: real HTTP client, real webhook route.

`cassettes/camber_jobs.yaml` was recorded by `test_jobs_complete_and_fail` itself (see the
README); the other tests replay the same session with replayproxy's handler tests switched on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

import e2e
import httpx
import pytest
from e2e import statuses, submit_all, wait_until

from replayproxy.replayer import ReplayOptions

CASSETTE = "../cassettes/camber_jobs.yaml"


@pytest.mark.replayproxy(CASSETTE, vary=["webhook-2-early", "interaction-3-reset"])
def test_jobs_complete_and_fail(app_server) -> None:
    """Also under two of Camber's bad days (`replayproxy vary` lists them all): the failed
    job's webhook arriving before its submit's answer, and the output download's connection
    reset once (the route answers 502, Camber retries)."""
    with httpx.Client(base_url=app_server.url) as client:
        e2e.check(client)
    assert app_server.store.webhooks_rejected == 0


@pytest.mark.replay_only
@pytest.mark.replayproxy(CASSETTE, options=ReplayOptions(bad_signature=True))
def test_webhooks_signed_with_a_wrong_key_are_rejected(app_server) -> None:
    """replayproxy signs with a wrong key: the app answers 401 (the plugin fails the test if it
    accepts one) and the jobs stay pending until polling Camber settles them."""
    with httpx.Client(base_url=app_server.url) as client:
        ids = submit_all(client)
        wait_until(lambda: app_server.store.webhooks_rejected == 2, 10, "the 401s")
        assert statuses(client, ids) == ["pending", "pending"]
        polled = [client.get(f"/jobs/{i}", params={"refresh": "true"}).json() for i in ids]
    assert [job["status"] for job in polled] == ["completed", "failed"]


@pytest.mark.replay_only
@pytest.mark.replayproxy(CASSETTE, options=ReplayOptions(duplicate_webhooks=3))
def test_replayed_events_are_processed_once(app_server) -> None:
    with httpx.Client(base_url=app_server.url) as client:
        ids = submit_all(client)
        wait_until(lambda: app_server.store.webhooks_duplicate == 4, 10, "the copies")
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
    assert resp.status_code == 200  # a good signature, no job 1 yet: kept for its submit
    assert app_server.store.early == {1: json.loads(body)}
    assert app_server.store.webhooks_rejected == 3
