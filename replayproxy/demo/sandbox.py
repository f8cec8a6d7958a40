"""A local, Camber-like upstream, so the demo, the docs and the tests need no cloud account.

Camber's REST paths and webhook format are not public: the routes here are ours, shaped after what
is known (integer job ids, the status ladder, engine types, node sizes, outputs under
`jobs/<job_id>/outputs`). Jobs climb one status every `step_seconds`; a final status sends a
webhook signed with `signing.sign` in any scheme replayproxy knows (the one the config's
`webhooks.upstream_signature` names, by default `webhooks.signature`), with the secrets in the
variables `webhooks.upstream_secret_env` lists, retried on failure with the same event id.
The contract is docs/sandbox.md.

    GET  /healthz                              no auth; for scripts waiting for the port
    POST /v1/jobs                              submit -> 201 job
    GET  /v1/jobs[?status=S]                   {"jobs": [...]}
    GET  /v1/jobs/{job_id}                     the job, current status
    POST /v1/jobs/{job_id}/cancel              -> CANCELLED (409 once final)
    GET  /v1/jobs/{job_id}/outputs/result.bin  binary output once COMPLETED (409 before)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from .. import eventloop
from ..config import Config, SignatureConfig, env_names, env_secrets, parse_listen
from ..errors import ConfigError, ReplayProxyError
from ..server import Server, check_listen
from ..signing import sign

ENGINE_TYPES = ("MPI", "MESA", "ATHENA", "GROMACS", "LAMMPS", "OPENFOAM")
NODE_SIZES = ("XMICRO", "MICRO", "XSMALL", "SMALL", "MEDIUM", "LARGE")
LADDER = ("PENDING", "PROVISIONING", "INITIALIZING", "RUNNING")
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
STATUSES = LADDER + FINAL
FIRST_JOB_ID = 6230
OUTPUT_NAME = "result.bin"
DEFAULT_SIGNATURE = SignatureConfig()
_FAIL_WORD = re.compile(r"\bfail\b", re.IGNORECASE)


@dataclass
class Job:
    job_id: int
    command: str
    engine_type: str
    node_size: str
    tags: list[str]
    with_gpu: bool
    callback_url: str | None
    created_at: str
    status: str = "PENDING"
    error: str | None = None
    history: list[str] = field(default_factory=lambda: ["PENDING"])
    timer: asyncio.Task[None] | None = field(default=None, repr=False, compare=False)

    @property
    def outputs(self) -> list[str]:
        if self.status != "COMPLETED":
            return []
        return [f"jobs/{self.job_id}/outputs/{OUTPUT_NAME}"]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "job_id": self.job_id,
            "status": self.status,
            "command": self.command,
            "engine_type": self.engine_type,
            "node_size": self.node_size,
            "tags": self.tags,
            "with_gpu": self.with_gpu,
            "callback_url": self.callback_url,
            "created_at": self.created_at,
            "output_dir": f"jobs/{self.job_id}/outputs",
            "outputs": self.outputs,
        }
        if self.error is not None:
            data["error"] = self.error
        return data


@dataclass
class Delivery:
    """One webhook POST attempt: `status` when the receiver answered, else `error`."""

    event_id: str
    url: str
    attempt: int
    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class SandboxState:
    """Everything the sandbox knows; tests read `jobs` and `deliveries`."""

    api_key: str = field(repr=False)
    webhook_secrets: tuple[str, ...] = field(repr=False)  # current first (key rotation)
    signature: SignatureConfig
    step_seconds: float
    webhook_url: str | None
    webhook_attempts: int
    webhook_backoff: float
    jobs: dict[int, Job] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    next_job_id: int = FIRST_JOB_ID
    tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    session: aiohttp.ClientSession | None = field(default=None, repr=False)
    closing: bool = False


SANDBOX_STATE: web.AppKey[SandboxState] = web.AppKey("sandbox_state", SandboxState)


def create_app(
    *,
    api_key: str,
    webhook_secret: str | Sequence[str],
    signature: SignatureConfig = DEFAULT_SIGNATURE,
    step_seconds: float = 0.05,
    webhook_url: str | None = None,
    webhook_attempts: int = 4,
    webhook_backoff: float = 0.05,
) -> web.Application:
    """The sandbox as an aiohttp app; background tasks end with the app's cleanup.

    `webhook_secret`: one secret, or several (rotation: each webhook carries a signature per
    secret where the scheme has room for more than one, else the first one's), used as given.
    """
    if not api_key:
        raise ConfigError("sandbox: the API key is empty")
    secrets_ = (webhook_secret,) if isinstance(webhook_secret, str) else tuple(webhook_secret)
    if not secrets_ or not all(secrets_):
        raise ConfigError("sandbox: the webhook secret is empty")
    # Fail at start-up, not at the first webhook, when the signature settings are unusable.
    sign(b"{}", secrets_, signature, timestamp=int(time.time()), webhook_id="evt_check")
    app = web.Application(middlewares=[_json_errors])
    app[SANDBOX_STATE] = SandboxState(
        api_key=api_key,
        webhook_secrets=secrets_,
        signature=signature,
        step_seconds=step_seconds,
        webhook_url=webhook_url,
        webhook_attempts=max(1, webhook_attempts),
        webhook_backoff=webhook_backoff,
    )
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_get("/healthz", _health)
    app.router.add_post("/v1/jobs", _submit)
    app.router.add_get("/v1/jobs", _list)
    app.router.add_get("/v1/jobs/{job_id}", _get)
    app.router.add_post("/v1/jobs/{job_id}/cancel", _cancel)
    app.router.add_get("/v1/jobs/{job_id}/outputs/{name}", _output)
    return app


async def serve(
    host: str = "127.0.0.1",
    port: int = 8090,
    *,
    allow_remote: bool = False,
    **create_app_kwargs: Any,
) -> None:
    """Run the sandbox until cancelled; the first stdout line is its URL (with the real port)."""
    server = Server(create_app(**create_app_kwargs), host, port, allow_remote=allow_remote)
    url = await server.start()
    try:
        print(f"sandbox listening on {url}", flush=True)
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(
    listen: str = "127.0.0.1:8090",
    *,
    allow_remote: bool = False,
    config: Config | None = None,
    scheme: str | None = None,
    **create_app_kwargs: Any,
) -> None:
    """CLI entry: the API key from CAMBER_API_KEY; the webhook scheme and secrets as the config
    says the upstream signs (`webhooks.upstream_signature`, `webhooks.upstream_secret_env`),
    `scheme` overriding the scheme's name; SIGINT/SIGTERM stop it."""
    host, port = parse_listen(listen)
    check_listen(host, allow_remote)
    hooks = (config or Config()).webhooks
    signature = hooks.upstream_scheme
    if scheme:
        signature = dataclasses.replace(signature, scheme=scheme)
    create_app_kwargs["api_key"] = _require_env("CAMBER_API_KEY")
    secrets_ = env_secrets(hooks.upstream_secret_env)
    if not secrets_:
        raise ConfigError(
            f"the sandbox needs the environment variable {env_names(hooks.upstream_secret_env)} "
            "(webhooks.upstream_secret_env: the secret it signs webhooks with); it is not set"
        )
    create_app_kwargs["webhook_secret"] = secrets_
    create_app_kwargs["signature"] = signature
    create_app_kwargs["allow_remote"] = allow_remote
    eventloop.run(_serve_until_signal(host, port, create_app_kwargs))


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"the sandbox needs the environment variable {name}; it is not set")
    return value


async def _serve_until_signal(host: str, port: int, kwargs: dict[str, Any]) -> None:
    task = asyncio.ensure_future(serve(host, port, **kwargs))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- lifecycle and background tasks -------------------------------------------------------


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[SANDBOX_STATE]
    state.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    yield
    state.closing = True
    while state.tasks:
        pending = list(state.tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        state.tasks.difference_update(pending)
    await state.session.close()


def _spawn(
    state: SandboxState, func: Callable[..., Awaitable[None]], *args: Any
) -> asyncio.Task[None] | None:
    """Start a tracked task, so cleanup can cancel and await it; none once closing."""
    if state.closing:
        return None
    task = asyncio.ensure_future(func(*args))
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)
    return task


async def _advance(state: SandboxState, job: Job) -> None:
    for status in LADDER[1:]:
        await asyncio.sleep(state.step_seconds)
        _set_status(job, status)
    await asyncio.sleep(state.step_seconds)
    if _FAIL_WORD.search(job.command):
        job.error = "command exited with status 1"
        _finish(state, job, "FAILED")
    else:
        _finish(state, job, "COMPLETED")


def _set_status(job: Job, status: str) -> None:
    job.status = status
    job.history.append(status)


def _finish(state: SandboxState, job: Job, status: str) -> None:
    _set_status(job, status)
    url = job.callback_url or state.webhook_url
    if url is None:
        return
    event = {
        "event_id": f"evt_{secrets.token_hex(12)}",
        "type": f"job.{status.lower()}",
        "job_id": job.job_id,
        "status": status,
        "outputs": job.outputs,
    }
    if job.error is not None:
        event["error"] = job.error
    event["created_at"] = _now_iso()
    body = json.dumps(event, separators=(",", ":")).encode()
    _spawn(state, _deliver, state, url, event["event_id"], body)


async def _deliver(state: SandboxState, url: str, event_id: str, body: bytes) -> None:
    """POST the event until a 2xx; each attempt is re-signed now but keeps body and event id."""
    assert state.session is not None
    for attempt in range(1, state.webhook_attempts + 1):
        headers = {"Content-Type": "application/json"}
        headers.update(
            sign(
                body,
                state.webhook_secrets,
                state.signature,
                timestamp=int(time.time()),
                webhook_id=event_id,
            )
        )
        try:
            async with state.session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                delivery = Delivery(event_id, url, attempt, resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            delivery = Delivery(event_id, url, attempt, None, f"{type(exc).__name__}: {exc}")
        state.deliveries.append(delivery)
        if delivery.ok:
            return
        if attempt < state.webhook_attempts:
            await asyncio.sleep(state.webhook_backoff * 2 ** (attempt - 1))


# --- HTTP handlers -------------------------------------------------------------------------


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Check the API key on /v1, and answer every error in JSON, as an API client expects."""
    if request.path.startswith("/v1/") and not _authorized(request):
        return _error(401, "unauthorized", "send the API key: Authorization: Bearer <key>")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)


def _authorized(request: web.Request) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    key = token.strip() if scheme.lower() == "bearer" else ""
    key = key or request.headers.get("X-Api-Key", "")
    expected = request.app[SANDBOX_STATE].api_key
    return hmac.compare_digest(key.encode(), expected.encode())


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


def _invalid(name: str, message: str) -> web.Response:
    return _error(422, "validation_error", f"{name}: {message}", field=name)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _submit(request: web.Request) -> web.Response:
    state = request.app[SANDBOX_STATE]
    try:
        spec = await request.json()
    except ValueError:
        return _error(400, "bad_request", "the body must be JSON")
    if not isinstance(spec, dict):
        return _error(400, "bad_request", "the body must be a JSON object")
    command = spec.get("command")
    if not isinstance(command, str) or not command.strip():
        return _invalid("command", "required, a non-empty string")
    if spec.get("engine_type") not in ENGINE_TYPES:
        return _invalid("engine_type", f"must be one of {', '.join(ENGINE_TYPES)}")
    if spec.get("node_size") not in NODE_SIZES:
        return _invalid("node_size", f"must be one of {', '.join(NODE_SIZES)}")
    tags = spec.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return _invalid("tags", "must be a list of strings")
    with_gpu = spec.get("with_gpu", False)
    if not isinstance(with_gpu, bool):
        return _invalid("with_gpu", "must be true or false")
    callback_url = spec.get("callback_url")
    if callback_url is not None and not (
        isinstance(callback_url, str) and callback_url.startswith(("http://", "https://"))
    ):
        return _invalid("callback_url", "must be an http(s) URL")
    job = Job(
        job_id=state.next_job_id,
        command=command,
        engine_type=spec["engine_type"],
        node_size=spec["node_size"],
        tags=list(tags),
        with_gpu=with_gpu,
        callback_url=callback_url,
        created_at=_now_iso(),
    )
    state.next_job_id += 1
    state.jobs[job.job_id] = job
    job.timer = _spawn(state, _advance, state, job)
    return web.json_response(job.to_json(), status=201)


async def _list(request: web.Request) -> web.Response:
    jobs: Iterable[Job] = request.app[SANDBOX_STATE].jobs.values()
    wanted = request.query.get("status")
    if wanted is not None:
        if wanted not in STATUSES:
            return _invalid("status", f"must be one of {', '.join(STATUSES)}")
        jobs = [job for job in jobs if job.status == wanted]
    return web.json_response({"jobs": [job.to_json() for job in jobs]})


def _find(request: web.Request) -> Job | None:
    job_id = request.match_info["job_id"]
    return request.app[SANDBOX_STATE].jobs.get(int(job_id)) if job_id.isdigit() else None


def _no_job(request: web.Request) -> web.Response:
    return _error(404, "not_found", f"no job {request.match_info['job_id']}")


async def _get(request: web.Request) -> web.Response:
    job = _find(request)
    return _no_job(request) if job is None else web.json_response(job.to_json())


async def _cancel(request: web.Request) -> web.Response:
    job = _find(request)
    if job is None:
        return _no_job(request)
    if job.status in FINAL:
        return _error(409, "conflict", f"job {job.job_id} is already {job.status}")
    if job.timer is not None:
        job.timer.cancel()
    _finish(request.app[SANDBOX_STATE], job, "CANCELLED")
    return web.json_response(job.to_json())


async def _output(request: web.Request) -> web.Response:
    job = _find(request)
    name = request.match_info["name"]
    if job is None:
        return _no_job(request)
    if name != OUTPUT_NAME:
        return _error(404, "not_found", f"job {job.job_id} has no output {name}")
    if job.status != "COMPLETED":
        return _error(409, "conflict", f"job {job.job_id} is {job.status}; no outputs yet")
    return web.Response(body=output_bytes(job.command), content_type="application/octet-stream")


def output_bytes(command: str) -> bytes:
    """4 KiB derived from the job's command, as a deterministic job's output is from its input:
    the same work gives the same bytes whatever id the job got; 0xFF first, never valid UTF-8."""
    blocks = (hashlib.sha256(f"{command}:{i}".encode()).digest() for i in range(128))
    return b"\xff\xfe" + b"".join(blocks)[2:]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


if __name__ == "__main__":
    try:
        main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8090")
    except ReplayProxyError as exc:
        sys.exit(f"error: {exc}")
