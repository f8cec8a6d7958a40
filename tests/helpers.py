"""Shared test helpers: real aiohttp servers on 127.0.0.1 (ephemeral ports), cassettes in code."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from replayproxy.cassette import Cassette, Interaction, Request, Response, Webhook


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def raw_get(url: str, path: str, accept: str | None) -> tuple[dict[str, str], bytes]:
    """GET through http.client, which decodes nothing: the headers and bytes on the wire."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers={"Accept-Encoding": accept} if accept else {})
        r = conn.getresponse()
        return {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1:0 and yield its base URL; always cleaned up."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def exchange(method: str, uri: str, status: int = 200, body: Any = None,
             request_body: Any = None, headers: list[tuple[str, str]] | None = None,
             at: float | None = None) -> Interaction:
    def encode(value: Any) -> bytes:
        if value is None:
            return b""
        if isinstance(value, bytes):
            return value
        return json.dumps(value).encode()

    req_headers = [("Content-Type", "application/json")] if request_body is not None else []
    res_headers = headers if headers is not None else [("Content-Type", "application/json")]
    return Interaction(
        Request(method, f"https://camber.example{uri}", req_headers, encode(request_body)),
        Response(status, "OK", res_headers, encode(body)),
        at=at,
    )


def webhook(body: Any, cause: int | None, after: int | None = None, target: str | None = None,
            event_id: str | None = None, delay: float = 0.0) -> Webhook:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Webhook(body=raw, headers=[("Content-Type", "application/json")], path="/webhooks",
                   target=target, cause=cause, after=after, event_id=event_id, delay=delay)


def job_cassette() -> Cassette:
    """Submit, three polls, a webhook after the second poll; and a listing."""
    return Cassette(
        interactions=[
            exchange("POST", "/v1/jobs", 201, {"job_id": 6238, "status": "PENDING"},
                     {"command": "python run.py invoice.pdf", "engine_type": "MPI"}),
            exchange("GET", "/v1/jobs/6238", 200, {"job_id": 6238, "status": "RUNNING"}),
            exchange("GET", "/v1/jobs/6238", 200, {"job_id": 6238, "status": "RUNNING"}),
            exchange("GET", "/v1/jobs/6238", 200, {"job_id": 6238, "status": "COMPLETED"}),
            exchange("GET", "/v1/jobs?status=COMPLETED&page=1", 200, {"jobs": [6238]}),
        ],
        webhooks=[webhook({"type": "job.completed", "job_id": 6238}, cause=1, after=3,
                          event_id="evt_1")],
    )


Handler = Callable[[web.Request], Any]
