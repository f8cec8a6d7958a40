"""The whole story in one run: record three Camber jobs through the proxy, replay them offline.

Used by `replayproxy demo` and by the end-to-end test of dynamic values: the replay runs a fresh
app (new UUIDs, another port, another webhook secret, jobs submitted in reverse order) against
the cassette alone, with the sandbox stopped, and must end in the same states as the recording.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..api import ReplayProxy
from ..config import Config
from ..replayer import ReplayOptions
from ..report import Report
from ..server import Server
from . import sample_app, sandbox

FILES = ("invoice-march.pdf", "invoice-april.pdf", "fail-corrupt.pdf")
Say = Callable[[str], None]


@dataclass
class DemoResult:
    cassette: Path
    recorded: dict[str, Any]
    replayed: dict[str, Any]
    report: Report

    @property
    def same(self) -> bool:
        return _comparable(self.recorded) == _comparable(self.replayed)


def _comparable(outcome: dict[str, Any]) -> dict[str, Any]:
    keep = ("status", "camber_status", "output_sha256", "output_size", "events", "error")
    return {name: {k: job[k] for k in keep} for name, job in outcome.items()}


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Secrets reach replayproxy only through the environment, as in real use."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def _serve(app: web.Application) -> Server:
    server = Server(app, "127.0.0.1", 0)
    await server.start()
    return server


async def run_jobs(camber_url: str, webhook_secret: str, api_key: str, files: tuple[str, ...],
                   say: Say) -> dict[str, Any]:
    """Run the sample app against `camber_url`, submit `files` concurrently, wait until done."""
    app = sample_app.create_app(camber_url=camber_url, api_key=api_key,
                                webhook_secret=webhook_secret)
    server = await _serve(app)
    app[sample_app.STATE].self_url = server.url
    try:
        async with aiohttp.ClientSession() as client:
            async def submit(name: str) -> None:
                spec = {"portal_schema_name": "invoice", "filename": name}
                async with client.post(f"{server.url}/jobs", json=spec) as resp:
                    job = await resp.json()
                say(f"  submitted {name:<20} camber job {job.get('camber_job_id')}")

            await asyncio.gather(*(submit(name) for name in files))
            await sample_app.wait_done(app)
        outcome = sample_app.outcome(app)
        for name in files:
            job = outcome[name]
            say(f"  {name:<20} -> {job['status']:<9} webhook {','.join(job['events'])}"
                + (f", output {job['output_size']} B" if job["output_size"] else ""))
        return outcome
    finally:
        await server.stop()


async def record_and_replay(workdir: Path, say: Say = lambda line: None,
                            step_seconds: float = 0.05,
                            options: ReplayOptions | None = None) -> DemoResult:
    cassette = workdir / "camber-demo.yaml"
    api_key = "sk_demo_" + secrets.token_hex(12)
    upstream_secret = "camber_" + secrets.token_hex(16)
    config = Config()

    say("1. recording: sandbox Camber <- replayproxy record <- sample app")
    upstream = await _serve(sandbox.create_app(api_key=api_key, webhook_secret=upstream_secret,
                                               step_seconds=step_seconds))
    try:
        record_secret = "local_" + secrets.token_hex(16)
        with _environment(CAMBER_WEBHOOK_SECRET=upstream_secret, WEBHOOK_SECRET=record_secret,
                          CAMBER_API_KEY=api_key):
            async with ReplayProxy(cassette, mode="all", upstream=upstream.url,
                                   config=config) as proxy:
                recorded = await run_jobs(proxy.url, record_secret, api_key, FILES, say)
    finally:
        await upstream.stop()
    say(f"   cassette written: {cassette}")

    say("2. replaying offline (sandbox stopped): new app, new UUIDs, new port, new secret,")
    say("   jobs submitted in reverse order")
    replay_secret = "local_" + secrets.token_hex(16)
    with _environment(WEBHOOK_SECRET=replay_secret):
        async with ReplayProxy(cassette, config=config, options=options) as proxy:
            replayed = await run_jobs(proxy.url, replay_secret, "sk_not_needed_offline",
                                      tuple(reversed(FILES)), say)
    return DemoResult(cassette, recorded, replayed, proxy.report)
