"""The execution backend: a thin async client for Camber's job API, and the factory that picks it.

Nothing here knows about replayproxy. In production `CAMBER_API_URL` is Camber; in the tests it is
the URL of a replayproxy serving a recorded session, and this client cannot tell the difference.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Protocol

import httpx


class CamberError(Exception):
    """Camber could not be reached, or answered with an error."""


class ExecutionBackend(Protocol):
    async def submit_job(self, job_id: str, payload: dict[str, Any]) -> dict[str, Any]: ...

    async def get_job_status(self, camber_job_id: int) -> dict[str, Any]: ...

    async def download(self, output: str) -> bytes: ...

    async def aclose(self) -> None: ...


class CamberService:
    """Submits document jobs to Camber, polls them and downloads their outputs; Camber calls
    `callback_url` when a job is done. A 429 or 5xx answer is retried twice (after its
    Retry-After when given); a connection error or a timeout is not (a submit may have
    reached Camber), it raises CamberError."""

    ATTEMPTS = 3

    def __init__(self, base_url: str, api_key: str, callback_url: str, timeout: float = 30.0):
        self.callback_url = callback_url
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    async def submit_job(self, job_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Submit our job `job_id` (a UUID) with its spec; Camber's job (integer `job_id`)."""
        body = {
            "command": f"process {payload['portal_schema_name']} {payload['filename']}",
            "engine_type": "MPI",
            "node_size": "XSMALL",
            "tags": [job_id],
            "callback_url": self.callback_url,
        }
        return await self._call("POST", "/v1/jobs", json=body)

    async def get_job_status(self, camber_job_id: int) -> dict[str, Any]:
        return await self._call("GET", f"/v1/jobs/{camber_job_id}")

    async def download(self, output: str) -> bytes:
        """An output file, by the path Camber lists it under (`jobs/<id>/outputs/<name>`)."""
        return (await self._request("GET", f"/v1/{output.lstrip('/')}")).content

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return (await self._request(method, path, **kwargs)).json()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.ATTEMPTS):
            try:
                resp = await self.client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise CamberError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            transient = resp.status_code == 429 or resp.status_code >= 500
            if not transient or attempt + 1 == self.ATTEMPTS:
                break
            await asyncio.sleep(min(_seconds(resp.headers.get("Retry-After")) or 0.1, 5.0))
        if resp.is_error:
            raise CamberError(f"{method} {path} answered {resp.status_code}: {resp.text[:200]}")
        return resp

    async def aclose(self) -> None:
        await self.client.aclose()


def get_execution_backend(public_url: str) -> ExecutionBackend:
    """The backend `EXECUTION_BACKEND` names (`camber`, the default), configured from the env."""
    name = os.environ.get("EXECUTION_BACKEND", "camber")
    if name != "camber":
        raise RuntimeError(f"EXECUTION_BACKEND={name!r}: unknown backend (known: camber)")
    return CamberService(
        base_url=_require("CAMBER_API_URL"),
        api_key=_require("CAMBER_API_KEY"),
        callback_url=f"{public_url.rstrip('/')}/webhooks/camber",
        timeout=float(os.environ.get("CAMBER_TIMEOUT", "30")),
    )


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _require(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"the environment variable {name} is not set")
    return value
