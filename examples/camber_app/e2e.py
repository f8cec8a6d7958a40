"""The end-to-end scenario: two jobs submitted, settled by their webhooks, polling agrees.

`check()` is what `tests/test_jobs.py` asserts. Run as a command it serves the app with uvicorn on
a free port against `$REPLAYPROXY_URL` as its Camber, for `replayproxy run` and `replayproxy vary`
(from this folder, with WEBHOOK_SECRET set):

    replayproxy vary cassettes/camber_jobs.yaml -- python e2e.py

Exit 0 when the scenario holds, 1 with what did not.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

SPECS = [
    {"portal_schema_name": "invoice", "filename": "test.pdf"},
    {"portal_schema_name": "invoice", "filename": "fail.pdf"},  # the sandbox fails "fail" jobs
]
OUTPUT = "jobs/{id}/outputs/result.bin"


def submit_all(client: httpx.Client) -> list[str]:
    ids = []
    for spec in SPECS:
        resp = client.post("/jobs", json=spec)
        assert resp.status_code == 201, f"POST /jobs answered {resp.status_code}: {resp.text}"
        job = resp.json()
        assert job["camber_job_id"] is not None, job  # its webhook may have settled it already
        ids.append(job["id"])
    return ids


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.02)


def statuses(client: httpx.Client, ids: list[str]) -> list[str]:
    return [client.get(f"/jobs/{job_id}").json()["status"] for job_id in ids]


def check(client: httpx.Client, wait: float = 30.0) -> None:
    """Both jobs settled by their webhooks within `wait` seconds, with the right results."""
    ids = submit_all(client)
    wait_until(lambda: "pending" not in statuses(client, ids), wait, "the webhooks")
    done, failed = (client.get(f"/jobs/{job_id}").json() for job_id in ids)
    assert done["status"] == "completed" and done["camber_status"] == "COMPLETED", done
    output = OUTPUT.format(id=done["camber_job_id"])
    assert done["result"]["outputs"] == [output], done
    assert done["result"]["files"][output]["size"] == 4096, done
    assert failed["status"] == "failed" and failed["camber_status"] == "FAILED", failed
    assert failed["error"] == "command exited with status 1", failed
    # Polling Camber afterwards agrees with what the webhooks said.
    polled = [client.get(f"/jobs/{i}", params={"refresh": "true"}).json() for i in ids]
    assert [(job["status"], job["camber_status"]) for job in polled] == [
        ("completed", "COMPLETED"),
        ("failed", "FAILED"),
    ], polled


@contextmanager
def serving(camber_url: str) -> Iterator[Any]:
    """The app under uvicorn on 127.0.0.1 (a free port), on a thread; yields (url, app)."""
    import uvicorn

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from main import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    os.environ.update(CAMBER_API_URL=camber_url, PUBLIC_URL=url, EXECUTION_BACKEND="camber")
    os.environ.setdefault("CAMBER_API_KEY", "offline-not-a-key")
    app = create_app()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield url, app
    finally:
        time.sleep(0.2)  # as a test's teardown would: what is in flight lands
        server.should_exit = True
        thread.join(10)
        sock.close()


def main() -> int:
    wait = float(sys.argv[sys.argv.index("--wait") + 1]) if "--wait" in sys.argv else 5.0
    os.environ.setdefault("CAMBER_TIMEOUT", "3")  # seconds: a held answer fails fast
    with serving(os.environ["REPLAYPROXY_URL"]) as (url, app):
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                check(client, wait)
        except AssertionError as exc:
            print(f"e2e: FAILED: {exc}")
            return 1
        rejected = app.state.store.webhooks_rejected
    print(f"e2e: ok (webhooks rejected: {rejected})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
