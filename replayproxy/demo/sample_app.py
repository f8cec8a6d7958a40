"""A small app shaped like a real Camber client, for the demo and the end-to-end tests.

It does what the users' FastAPI service does: `POST /jobs` mints a UUID, submits the job to Camber
with its callback URL, and polls; `POST /webhooks/camber` verifies the HMAC signature with the
app's own secret and ignores events it has seen; a completed job's binary output is downloaded.
Nothing in it knows about replayproxy: it talks to whatever Camber URL it is given.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from ..config import SignatureConfig
from ..signing import SignatureError, verify

FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


@dataclass
class Job:
    id: str
    filename: str
    status: str = "pending"
    camber_job_id: int | None = None
    camber_status: str | None = None
    error: str | None = None
    output_sha256: str | None = None
    output_size: int | None = None
    events: list[str] = field(default_factory=list)


@dataclass
class AppState:
    camber_url: str
    api_key: str
    webhook_secret: str
    signature: SignatureConfig
    poll_interval: float
    self_url: str = ""
    jobs: dict[str, Job] = field(default_factory=dict)
    by_camber_id: dict[int, Job] = field(default_factory=dict)
    seen_events: set[str] = field(default_factory=set)
    early: dict[int, dict[str, Any]] = field(default_factory=dict)  # events for unknown jobs
    rejected_webhooks: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    session: aiohttp.ClientSession | None = None
    done: dict[str, asyncio.Event] = field(default_factory=dict)


STATE: web.AppKey[AppState] = web.AppKey("sample_app_state", AppState)


def create_app(
    *,
    camber_url: str,
    api_key: str,
    webhook_secret: str,
    signature: SignatureConfig | None = None,
    poll_interval: float = 0.05,
) -> web.Application:
    app = web.Application()
    app[STATE] = AppState(
        camber_url.rstrip("/"),
        api_key,
        webhook_secret,
        signature or SignatureConfig(),
        poll_interval,
    )
    app.router.add_post("/jobs", create_job)
    app.router.add_get("/jobs/{id}", get_job)
    app.router.add_post("/webhooks/camber", camber_webhook)
    app.on_cleanup.append(_cleanup)
    return app


async def _cleanup(app: web.Application) -> None:
    state = app[STATE]
    for task in list(state.tasks):
        task.cancel()
    await asyncio.gather(*state.tasks, return_exceptions=True)
    if state.session is not None:
        await state.session.close()


def _session(state: AppState) -> aiohttp.ClientSession:
    if state.session is None:
        state.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {state.api_key}"})
    return state.session


async def create_job(request: web.Request) -> web.Response:
    state = request.app[STATE]
    spec = await request.json()
    job = Job(id=str(uuid.uuid4()), filename=str(spec.get("filename", "")))
    state.jobs[job.id] = job
    state.done[job.id] = asyncio.Event()
    payload = {
        "command": f"process {spec.get('portal_schema_name', 'document')} {job.filename}",
        "engine_type": "MPI",
        "node_size": "XSMALL",
        "tags": [job.id],
        "callback_url": f"{state.self_url}/webhooks/camber",
    }
    status, raw = await _call(state, "POST", f"{state.camber_url}/v1/jobs", json=payload)
    if status != 201:
        job.status, job.error = "failed", f"submit answered {status}: {raw[:200]!r}"
        state.done[job.id].set()
        return web.json_response(asdict(job), status=502)
    answer = json.loads(raw)
    job.camber_job_id = int(answer["job_id"])
    job.camber_status = answer.get("status")
    state.by_camber_id[job.camber_job_id] = job
    early = state.early.pop(job.camber_job_id, None)
    if early is not None:  # its webhook came before this answer
        await _apply(state, job, early)
    task = asyncio.get_running_loop().create_task(_follow(state, job))
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)
    return web.json_response(asdict(job), status=201)


async def _follow(state: AppState, job: Job) -> None:
    """Poll Camber until the job is final (a webhook may get there first)."""
    url = f"{state.camber_url}/v1/jobs/{job.camber_job_id}"
    while job.camber_status not in FINAL:
        status, raw = await _call(state, "GET", url)
        if status != 200:
            job.status, job.error = "failed", f"poll answered {status}"
            break
        job.camber_status = json.loads(raw)["status"]
        if job.camber_status not in FINAL:
            await asyncio.sleep(state.poll_interval)
    await _finish(state, job)


async def _finish(state: AppState, job: Job) -> None:
    """Download a completed job's output once; the job is done when it also had its webhook."""
    if job.status == "pending" and job.camber_status == "COMPLETED":
        job.status = "downloading"
        url = f"{state.camber_url}/v1/jobs/{job.camber_job_id}/outputs/result.bin"
        status, body = await _call(state, "GET", url)
        if status == 200:
            job.output_sha256, job.output_size = hashlib.sha256(body).hexdigest(), len(body)
            job.status = "completed"
        else:
            job.status, job.error = "failed", f"output download answered {status}"
    elif job.status == "pending" and job.camber_status in FINAL:
        job.status = "failed"
    if job.status in ("completed", "failed") and job.events:
        state.done[job.id].set()


async def camber_webhook(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await request.read()
    try:
        verify(body, request.headers, [state.webhook_secret], state.signature)
    except SignatureError as exc:
        state.rejected_webhooks += 1
        return web.json_response({"error": str(exc)}, status=401)
    event = json.loads(body)
    event_id = str(event.get("event_id"))
    if event_id in state.seen_events:
        return web.json_response({"ok": True, "duplicate": True})
    camber_id = int(event.get("job_id", -1))
    job = state.by_camber_id.get(camber_id)
    if job is None:  # it beat the submit's answer: kept, applied when that answer comes
        state.early[camber_id] = event
        state.seen_events.add(event_id)
        return web.json_response({"ok": True, "queued": True}, status=202)
    await _apply(state, job, event)
    state.seen_events.add(event_id)  # seen once processed, so a retry after a failure counts
    return web.json_response({"ok": True})


async def _apply(state: AppState, job: Job, event: dict[str, Any]) -> None:
    job.events.append(str(event.get("type")))
    job.camber_status = event.get("status", job.camber_status)
    job.error = event.get("error") or job.error
    await _finish(state, job)


async def _call(state: AppState, method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
    """One Camber call; a 429 or 5xx is retried twice (after its Retry-After, when given)."""
    for attempt in range(3):
        async with _session(state).request(method, url, **kwargs) as resp:
            body = await resp.read()
            if (resp.status != 429 and resp.status < 500) or attempt == 2:
                return resp.status, body
            wait = _seconds(resp.headers.get("Retry-After")) or 0.05 * 2**attempt
        await asyncio.sleep(min(wait, 5.0))
    raise AssertionError("unreachable")


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


async def get_job(request: web.Request) -> web.Response:
    job = request.app[STATE].jobs.get(request.match_info["id"])
    if job is None:
        return web.json_response({"error": "no such job"}, status=404)
    return web.json_response(asdict(job))


async def wait_done(app: web.Application, timeout: float = 20.0) -> None:
    """Wait until every job is final, has its output and has had its webhook."""
    state = app[STATE]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in state.done.values())), timeout)


def outcome(app: web.Application) -> dict[str, Any]:
    """The app's end state by file name: what a replay must reproduce."""
    return {
        job.filename: {k: v for k, v in asdict(job).items() if k not in ("id",)}
        for job in app[STATE].jobs.values()
    }


async def drive(
    camber_url: str, webhook_secret: str, files: list[str], timeout: float = 10.0,
    linger: float = 0.3,
) -> dict[str, Any]:
    """Serve the app on a free port, submit `files` at once against `camber_url`, wait."""
    from ..server import Server

    app = create_app(
        camber_url=camber_url, api_key="sample-app", webhook_secret=webhook_secret,
        poll_interval=0.02,
    )
    server = Server(app, "127.0.0.1", 0)
    app[STATE].self_url = await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            for answer in await asyncio.gather(
                *(
                    http.post(
                        f"{app[STATE].self_url}/jobs",
                        json={"filename": f, "portal_schema_name": "invoice"},
                    )
                    for f in files
                )
            ):
                answer.release()
        try:
            await wait_done(app, timeout)
            await asyncio.sleep(linger)  # as a test's teardown would: what is in flight lands
        except TimeoutError:
            pass
        return outcome(app)
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m replayproxy.demo.sample_app [--wait SECONDS] FILE...`: the sample app's end-to-end
    check, against $REPLAYPROXY_URL (as under `replayproxy run` or `vary`) with
    $WEBHOOK_SECRET. Exit 0 when
    every job ended as its name says (`fail*` failed, the others completed with their output),
    each after its webhook, within --wait seconds (default 10)."""
    import os
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    wait = 10.0
    if args[:1] == ["--wait"] and len(args) > 1:
        wait, args = float(args[1]), args[2:]
    files = args or ["a.pdf", "b.pdf", "fail.pdf"]
    result = asyncio.run(
        drive(os.environ["REPLAYPROXY_URL"], os.environ.get("WEBHOOK_SECRET", ""), files, wait)
    )
    ok = True
    for name in files:
        job = result.get(name, {})
        want = "failed" if name.startswith("fail") else "completed"
        good = job.get("status") == want and bool(job.get("events"))
        if want == "completed":
            good = good and bool(job.get("output_size"))
        ok = ok and good
        print(f"{name}: {job.get('status')} events={job.get('events')} "
              f"output={job.get('output_size')} {'ok' if good else 'WRONG'}")
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover - run as a command
    raise SystemExit(main())
