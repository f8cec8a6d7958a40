"""The sample Camber client against the sandbox directly: the baseline the replay must reproduce."""

from __future__ import annotations

import asyncio

import aiohttp
from helpers import run, serving

from replayproxy.demo import sample_app, sandbox

FILES = ["a.pdf", "b.pdf", "fail.pdf"]


def test_three_jobs_against_the_sandbox() -> None:
    async def scenario() -> dict:
        upstream = sandbox.create_app(
            api_key="key-1", webhook_secret="upstream-secret", step_seconds=0.02
        )
        async with serving(upstream) as camber:
            app = sample_app.create_app(
                camber_url=camber, api_key="key-1", webhook_secret="upstream-secret"
            )
            async with serving(app) as url, aiohttp.ClientSession() as s:
                app[sample_app.STATE].self_url = url
                await asyncio.gather(
                    *(
                        s.post(f"{url}/jobs", json={"filename": f, "portal_schema_name": "invoice"})
                        for f in FILES
                    )
                )
                await sample_app.wait_done(app)
                return sample_app.outcome(app)

    result = run(scenario())
    assert {f: r["status"] for f, r in result.items()} == {
        "a.pdf": "completed",
        "b.pdf": "completed",
        "fail.pdf": "failed",
    }
    assert result["a.pdf"]["output_size"] == 4096
    assert result["a.pdf"]["events"] == ["job.completed"]
    assert result["fail.pdf"]["events"] == ["job.failed"]
