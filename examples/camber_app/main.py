"""A document-processing service whose heavy work runs as Camber jobs (FastAPI).

    POST /jobs              {"portal_schema_name": "invoice", "filename": "test.pdf"} -> 201 job
    GET  /jobs/{id}         the job's status and result (?refresh=true also asks Camber)
    POST /webhooks/camber   Camber's callback, HMAC-SHA256 signed with WEBHOOK_SECRET

A completed job's outputs are downloaded from Camber before the job counts as completed (by the
webhook route, or by a poll). A webhook that fails to download answers 502 and is not marked
seen, so Camber's retry gets another go; a webhook that beats the submit's answer is kept and
applied when that answer arrives.

Run it with `uvicorn main:create_app --factory` and the environment: CAMBER_API_URL,
CAMBER_API_KEY, WEBHOOK_SECRET, PUBLIC_URL (where Camber reaches this app), EXECUTION_BACKEND.
The job table is a dict here; a real service keeps it in its database.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from camber import CamberError, get_execution_backend
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

FINAL = {"COMPLETED": "completed", "FAILED": "failed", "CANCELLED": "failed"}


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    portal_schema_name: str
    filename: str


class Job(BaseModel):
    id: str
    spec: JobSpec
    status: Literal["pending", "completed", "failed"] = "pending"
    camber_job_id: int | None = None
    camber_status: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


class Store:
    """The job rows, and what the webhook route has seen."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.by_camber_id: dict[int, Job] = {}
        self.seen_events: set[str] = set()  # events processed (or kept for later)
        self.early: dict[int, dict[str, Any]] = {}  # events for jobs whose submit is in flight
        self.tasks: set[asyncio.Task[None]] = set()
        self.webhooks_rejected = 0  # bad or missing signature
        self.webhooks_duplicate = 0  # an event id seen before


def signature_ok(body: bytes, header: str | None, secret: str) -> bool:
    """`X-Signature: sha256=<hex>`, the HMAC-SHA256 of the raw body; compared in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header.removeprefix("sha256=").encode(), expected.encode())


async def settle(backend: Any, job: Job, camber_job: dict[str, Any]) -> None:
    """Move a pending job to completed (outputs downloaded) or failed when Camber says it is
    final. A failed download raises CamberError and leaves the job pending."""
    job.camber_status = camber_job.get("status", job.camber_status)
    if job.status != "pending" or job.camber_status not in FINAL:
        return
    if FINAL[job.camber_status] == "completed":
        files = {}
        for output in camber_job.get("outputs", []):
            data = await backend.download(output)
            files[output] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if job.status != "pending":  # settled meanwhile (a poll, a retry)
            return
        job.result = {"camber_job_id": job.camber_job_id, "outputs": list(files), "files": files}
        job.status = "completed"
    else:
        job.status = "failed"
        job.error = camber_job.get("error") or f"Camber job {job.camber_status}"


async def settle_soon(backend: Any, job: Job, event: dict[str, Any], attempts: int = 5) -> None:
    """Settle an event the app acknowledged before it knew the job: nobody will send it again,
    so a failed download is retried here (0.1 s, doubled each time)."""
    for attempt in range(attempts):
        try:
            await settle(backend, job, event)
            return
        except CamberError:
            await asyncio.sleep(0.1 * 2**attempt)


def create_app() -> FastAPI:
    webhook_secret = os.environ.get("WEBHOOK_SECRET", "")
    public_url = os.environ.get("PUBLIC_URL", "http://127.0.0.1:8000")
    if not webhook_secret:
        raise RuntimeError("the environment variable WEBHOOK_SECRET is not set")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.backend = get_execution_backend(public_url)
        try:
            yield
        finally:
            for task in list(store.tasks):
                task.cancel()
            await asyncio.gather(*store.tasks, return_exceptions=True)
            await app.state.backend.aclose()

    app = FastAPI(title="document jobs", lifespan=lifespan)
    app.state.store = store = Store()

    @app.post("/jobs", status_code=201)
    async def create_job(spec: JobSpec, request: Request) -> Job:
        job = Job(id=str(uuid.uuid4()), spec=spec)
        store.jobs[job.id] = job
        try:
            camber_job = await request.app.state.backend.submit_job(job.id, spec.model_dump())
        except CamberError as exc:
            job.status, job.error = "failed", f"submit: {exc}"
            raise HTTPException(502, detail=job.model_dump()) from exc
        job.camber_job_id = int(camber_job["job_id"])
        job.camber_status = camber_job.get("status")
        store.by_camber_id[job.camber_job_id] = job
        early = store.early.pop(job.camber_job_id, None)
        if early is not None:  # its webhook came before this answer, and was acknowledged
            task = asyncio.get_running_loop().create_task(
                settle_soon(request.app.state.backend, job, early)
            )
            store.tasks.add(task)
            task.add_done_callback(store.tasks.discard)
        return job

    @app.get("/jobs/{job_id}")
    async def get_job(job_id: str, request: Request, refresh: bool = False) -> Job:
        job = store.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, detail="no such job")
        if refresh and job.camber_job_id is not None:  # poll: the fallback when no webhook came
            try:
                camber_job = await request.app.state.backend.get_job_status(job.camber_job_id)
                await settle(request.app.state.backend, job, camber_job)
            except CamberError as exc:
                raise HTTPException(502, detail=str(exc)) from exc
        return job

    @app.post("/webhooks/camber")
    async def camber_webhook(request: Request) -> JSONResponse:
        body = await request.body()  # the raw bytes: they are what was signed
        if not signature_ok(body, request.headers.get("X-Signature"), webhook_secret):
            store.webhooks_rejected += 1
            return JSONResponse({"error": "bad signature"}, status_code=401)
        event = json.loads(body)
        event_id = event.get("event_id")
        if event_id is not None and event_id in store.seen_events:
            store.webhooks_duplicate += 1
            return JSONResponse({"ok": True, "duplicate": True})
        job = store.by_camber_id.get(event.get("job_id"))
        if job is None:  # it beat the submit's answer: kept, applied when the answer comes
            store.early[event.get("job_id")] = event
        else:
            try:
                await settle(request.app.state.backend, job, event)
            except CamberError as exc:  # not marked seen: Camber's retry gets another go
                return JSONResponse({"error": str(exc)}, status_code=502)
        if event_id is not None:
            store.seen_events.add(event_id)
        return JSONResponse({"ok": True})

    return app
