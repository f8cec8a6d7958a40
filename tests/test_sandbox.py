"""The sandbox over real sockets: a real aiohttp server, a real client, a real webhook receiver.

No pytest-asyncio: each test runs its coroutine with asyncio.run, and stops what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Coroutine
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from replayproxy import signing
from replayproxy.config import SignatureConfig
from replayproxy.demo import sandbox
from replayproxy.demo.sandbox import SANDBOX_STATE, SandboxState, create_app
from replayproxy.errors import ConfigError

# An unclosed session or transport surfaces as a warning; make it fail the test.
pytestmark = pytest.mark.filterwarnings("error")

API_KEY = "sandbox-test-key"
SECRET = "whsec_c2FuZGJveC10ZXN0LXNlY3JldA=="  # base64, so standard-webhooks accepts it too
STEP = 0.01
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SPEC = {"command": "python simulate.py", "engine_type": "MPI", "node_size": "SMALL"}
LADDER = ["PENDING", "PROVISIONING", "INITIALIZING", "RUNNING"]


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def sandbox_client(
    **kwargs: object,
) -> AsyncIterator[tuple[aiohttp.ClientSession, SandboxState]]:
    kwargs.setdefault("step_seconds", STEP)
    app = create_app(api_key=API_KEY, webhook_secret=SECRET, **kwargs)  # type: ignore[arg-type]
    async with serving(app) as base, aiohttp.ClientSession(base_url=base, headers=AUTH) as http:
        yield http, app[SANDBOX_STATE]


class Receiver:
    """A webhook endpoint that answers the given statuses in turn (then 200) and keeps each POST."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.received: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()
        self.app = web.Application()
        self.app.router.add_post("/hook", self._hook)

    async def _hook(self, request: web.Request) -> web.Response:
        await self.received.put((dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def next(self) -> tuple[dict[str, str], bytes]:
        return await asyncio.wait_for(self.received.get(), timeout=2)


async def submit(http: aiohttp.ClientSession, **fields: object) -> dict:
    async with http.post("/v1/jobs", json={**SPEC, **fields}) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def wait_final(http: aiohttp.ClientSession, job_id: int) -> dict:
    for _ in range(200):
        async with http.get(f"/v1/jobs/{job_id}") as resp:
            job = await resp.json()
        if job["status"] in sandbox.FINAL:
            return job
        await asyncio.sleep(STEP)
    raise AssertionError(f"job {job_id} never finished: {job}")


def test_requests_without_the_api_key_are_refused() -> None:
    async def go() -> None:
        app = create_app(api_key=API_KEY, webhook_secret=SECRET)
        async with serving(app) as base, aiohttp.ClientSession(base_url=base) as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": "wrong"}):
                async with http.get("/v1/jobs", headers=headers) as resp:
                    assert resp.status == 401
                    assert (await resp.json())["error"] == "unauthorized"
            for headers in (AUTH, {"X-Api-Key": API_KEY}):
                async with http.get("/v1/jobs", headers=headers) as resp:
                    assert resp.status == 200
            async with http.get("/healthz") as resp:
                assert resp.status == 200

    run(go())


def test_a_job_climbs_the_ladder_to_completed() -> None:
    async def go() -> None:
        async with sandbox_client() as (http, state):
            job = await submit(http, tags=["demo"], with_gpu=True)
            assert job["job_id"] == sandbox.FIRST_JOB_ID
            assert job["status"] == "PENDING"
            assert {k: job[k] for k in SPEC} == SPEC
            assert job["tags"] == ["demo"] and job["with_gpu"] is True
            assert datetime.fromisoformat(job["created_at"]).tzinfo is not None
            assert (await submit(http))["job_id"] == sandbox.FIRST_JOB_ID + 1

            done = await wait_final(http, job["job_id"])
            assert done["status"] == "COMPLETED"
            assert "error" not in done
            assert done["outputs"] == [f"jobs/{job['job_id']}/outputs/result.bin"]
            assert state.jobs[job["job_id"]].history == [*LADDER, "COMPLETED"]

            async with http.get("/v1/jobs/999999") as resp:
                assert resp.status == 404
                assert (await resp.json())["error"] == "not_found"

    run(go())


def test_a_command_with_the_word_fail_ends_failed() -> None:
    async def go() -> None:
        async with sandbox_client() as (http, state):
            job = await submit(http, command="python simulate.py --then fail")
            done = await wait_final(http, job["job_id"])
            assert done["status"] == "FAILED"
            assert done["error"]
            assert done["outputs"] == []
            assert state.jobs[job["job_id"]].history == [*LADDER, "FAILED"]

    run(go())


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"command": None}, "command"),
        ({"command": "  "}, "command"),
        ({"engine_type": "SPARK"}, "engine_type"),
        ({"engine_type": None}, "engine_type"),
        ({"node_size": "HUGE"}, "node_size"),
        ({"tags": "not-a-list"}, "tags"),
        ({"callback_url": "ftp://example.invalid/hook"}, "callback_url"),
    ],
)
def test_invalid_submissions_get_422_naming_the_field(change: dict, field: str) -> None:
    async def go() -> None:
        spec = {k: v for k, v in {**SPEC, **change}.items() if v is not None}
        async with sandbox_client() as (http, state):
            async with http.post("/v1/jobs", json=spec) as resp:
                assert resp.status == 422
                error = await resp.json()
            assert error["field"] == field and field in error["message"]
            assert state.jobs == {}

    run(go())


def test_a_body_that_is_not_json_gets_400() -> None:
    async def go() -> None:
        async with sandbox_client() as (http, _):
            async with http.post("/v1/jobs", data=b"{nope") as resp:
                assert resp.status == 400
                assert (await resp.json())["error"] == "bad_request"

    run(go())


def test_list_and_filter_by_status() -> None:
    async def go() -> None:
        async with sandbox_client(step_seconds=10) as (http, _):
            first, second = await submit(http), await submit(http)
            async with http.post(f"/v1/jobs/{second['job_id']}/cancel"):
                pass
            async with http.get("/v1/jobs") as resp:
                listed = await resp.json()
            assert [j["job_id"] for j in listed["jobs"]] == [first["job_id"], second["job_id"]]
            async with http.get("/v1/jobs", params={"status": "CANCELLED"}) as resp:
                cancelled = (await resp.json())["jobs"]
            assert [j["job_id"] for j in cancelled] == [second["job_id"]]
            async with http.get("/v1/jobs", params={"status": "BOGUS"}) as resp:
                assert resp.status == 422
                assert (await resp.json())["field"] == "status"

    run(go())


def test_binary_output_only_once_completed() -> None:
    async def go() -> None:
        async with sandbox_client() as (http, _):
            job = await submit(http)
            job_id = job["job_id"]
            url = f"/v1/jobs/{job_id}/outputs/result.bin"
            async with http.get(url) as resp:
                assert resp.status == 409
            await wait_final(http, job_id)
            async with http.get(url) as resp:
                assert resp.status == 200
                assert resp.content_type == "application/octet-stream"
                data = await resp.read()
            async with http.get(url) as resp:
                assert await resp.read() == data  # deterministic
            assert len(data) >= 2048 and data == sandbox.output_bytes(job["command"])
            assert data != sandbox.output_bytes(job["command"] + " again")
            with pytest.raises(UnicodeDecodeError):
                data.decode("utf-8")
            async with http.get(f"/v1/jobs/{job_id}/outputs/other.bin") as resp:
                assert resp.status == 404

    run(go())


@pytest.mark.parametrize("scheme", ["hmac-sha256", "stripe", "standard-webhooks"])
def test_final_status_sends_a_signed_webhook(scheme: str) -> None:
    config = SignatureConfig(scheme=scheme)

    async def go() -> None:
        receiver = Receiver()
        async with serving(receiver.app) as hook_base:
            async with sandbox_client(signature=config) as (http, state):
                job = await submit(http, callback_url=f"{hook_base}/hook")
                headers, body = await receiver.next()
        assert headers["Content-Type"] == "application/json"
        signing.verify(body, headers, [SECRET], config)  # the real check
        with pytest.raises(signing.SignatureError):
            signing.verify(body + b" ", headers, [SECRET], config)
        with pytest.raises(signing.SignatureError):
            signing.verify(body, headers, ["whsec_b3RoZXItc2VjcmV0"], config)
        event = json.loads(body)
        assert event["type"] == "job.completed" and event["status"] == "COMPLETED"
        assert event["job_id"] == job["job_id"]
        assert event["outputs"] == [f"jobs/{job['job_id']}/outputs/result.bin"]
        assert event["event_id"].startswith("evt_") and "error" not in event
        assert [(d.event_id, d.status) for d in state.deliveries] == [(event["event_id"], 200)]
        if scheme == "standard-webhooks":
            assert signing.webhook_id(headers, config) == event["event_id"]

    run(go())


def test_a_failed_delivery_is_retried_with_the_same_event() -> None:
    config = SignatureConfig(scheme="standard-webhooks")

    async def go() -> None:
        receiver = Receiver(500)
        async with serving(receiver.app) as hook_base:
            kwargs = {"webhook_url": f"{hook_base}/hook", "webhook_backoff": 0.01}
            async with sandbox_client(signature=config, **kwargs) as (http, state):
                job = await submit(http, command="echo fail")
                first, second = await receiver.next(), await receiver.next()
        assert first[1] == second[1]  # the same bytes, re-signed
        for headers, body in (first, second):
            signing.verify(body, headers, [SECRET], config)
        event = json.loads(second[1])
        assert event["type"] == "job.failed" and event["job_id"] == job["job_id"]
        assert event["error"]
        ids = {signing.webhook_id(h, config) for h, _ in (first, second)}
        assert ids == {event["event_id"]}
        attempts = [(d.event_id, d.attempt, d.status) for d in state.deliveries]
        assert attempts == [(event["event_id"], 1, 500), (event["event_id"], 2, 200)]

    run(go())


def test_an_unreachable_receiver_is_recorded_per_attempt() -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def go() -> None:
        url = f"http://127.0.0.1:{port}/hook"
        kwargs = {"webhook_url": url, "webhook_attempts": 2, "webhook_backoff": 0.01}
        async with sandbox_client(**kwargs) as (http, state):
            await wait_final(http, (await submit(http))["job_id"])
            for _ in range(200):
                if len(state.deliveries) == 2:
                    break
                await asyncio.sleep(STEP)
        assert [(d.attempt, d.status) for d in state.deliveries] == [(1, None), (2, None)]
        assert all(d.error and not d.ok for d in state.deliveries)
        assert len({d.event_id for d in state.deliveries}) == 1

    run(go())


def test_cancel() -> None:
    async def go() -> None:
        receiver = Receiver()
        async with serving(receiver.app) as hook_base:
            async with sandbox_client(step_seconds=10) as (http, state):
                job_id = (await submit(http, callback_url=f"{hook_base}/hook"))["job_id"]
                async with http.post(f"/v1/jobs/{job_id}/cancel") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["status"] == "CANCELLED"
                async with http.post(f"/v1/jobs/{job_id}/cancel") as resp:
                    assert resp.status == 409
                async with http.post("/v1/jobs/424242/cancel") as resp:
                    assert resp.status == 404
                async with http.get(f"/v1/jobs/{job_id}/outputs/result.bin") as resp:
                    assert resp.status == 409
                headers, body = await receiver.next()
        signing.verify(body, headers, [SECRET], SignatureConfig())
        event = json.loads(body)
        assert (event["type"], event["status"]) == ("job.cancelled", "CANCELLED")
        assert state.jobs[job_id].history == ["PENDING", "CANCELLED"]

    run(go())


def test_cleanup_cancels_timers_and_deliveries() -> None:
    async def go() -> None:
        receiver = Receiver(*[500] * 10)
        async with serving(receiver.app) as hook_base:
            kwargs = {"webhook_url": f"{hook_base}/hook", "webhook_backoff": 10}
            async with sandbox_client(**kwargs) as (http, state):
                await submit(http)
                await receiver.next()  # the first attempt is refused; the retry waits 10 s
                state.step_seconds = 10  # the next job will still be climbing at cleanup
                await submit(http)
                assert len(state.tasks) == 2
        assert state.tasks == set()
        assert state.session is not None and state.session.closed

    run(go())


def test_serve_prints_its_url_first(capsys: pytest.CaptureFixture[str]) -> None:
    async def go() -> None:
        task = asyncio.ensure_future(sandbox.serve(port=0, api_key=API_KEY, webhook_secret=SECRET))
        try:
            for _ in range(200):
                out = capsys.readouterr().out
                if out:
                    break
                await asyncio.sleep(STEP)
            first = out.splitlines()[0]
            assert first.startswith("sandbox listening on http://127.0.0.1:")
            assert API_KEY not in out and SECRET not in out
            async with aiohttp.ClientSession() as http:
                async with http.get(first.rsplit(" ", 1)[1] + "/healthz") as resp:
                    assert resp.status == 200
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(go())


def test_main_names_a_missing_variable_and_not_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CAMBER_API_KEY", raising=False)
    monkeypatch.delenv("CAMBER_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ConfigError, match="CAMBER_API_KEY"):
        sandbox.main("127.0.0.1:0")
    monkeypatch.setenv("CAMBER_API_KEY", API_KEY)
    with pytest.raises(ConfigError, match="CAMBER_WEBHOOK_SECRET") as caught:
        sandbox.main("127.0.0.1:0")
    assert API_KEY not in str(caught.value)
