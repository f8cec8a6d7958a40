"""Record a real session of the sample app against the sandbox through `replayproxy record`, and
replay it: the flow behind cassettes/camber-jobs.yaml and the end-to-end recording tests.

Three jobs (one fails), each with a fresh UUID and the app's callback URL, polled to the end, the
completed jobs' binary output downloaded, and one signed webhook per job. Regenerate the sample:

    python tests/camber_session.py cassettes/camber-jobs.yaml
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from helpers import serving  # noqa: E402

from replayproxy.api import ReplayProxy  # noqa: E402
from replayproxy.config import Config  # noqa: E402
from replayproxy.demo import sample_app, sandbox  # noqa: E402

FILES = ("a.pdf", "b.pdf", "fail.pdf")

#: The environment a recording reads its secrets from (values are the caller's).
API_KEY_ENV = "CAMBER_API_KEY"
UPSTREAM_SECRET_ENV = "CAMBER_WEBHOOK_SECRET"
LOCAL_SECRET_ENV = "WEBHOOK_SECRET"


async def run_app(camber_url: str, api_key: str, secret: str, files: tuple[str, ...] = FILES,
                  poll_interval: float = 0.02) -> dict[str, Any]:
    """The sample app against `camber_url`: submit every file at once, wait until all are done."""
    app = sample_app.create_app(
        camber_url=camber_url, api_key=api_key, webhook_secret=secret, poll_interval=poll_interval
    )
    async with serving(app) as url, aiohttp.ClientSession() as http:
        app[sample_app.STATE].self_url = url
        answers = await asyncio.gather(
            *(http.post(f"{url}/jobs", json={"filename": f, "portal_schema_name": "invoice"})
              for f in files)
        )
        for answer in answers:
            answer.release()
        await sample_app.wait_done(app, timeout=10)
        result = sample_app.outcome(app)
        result["rejected_webhooks"] = app[sample_app.STATE].rejected_webhooks
        return result


async def record(cassette: str | Path, *, config: Config | None = None, step: float = 0.02,
                 mode: str = "all", files: tuple[str, ...] = FILES,
                 poll_interval: float = 0.02) -> tuple[dict[str, Any], ReplayProxy, Any]:
    """Record the three-job session into `cassette`; the secrets come from the environment."""
    api_key = os.environ[API_KEY_ENV]
    state = None
    upstream = sandbox.create_app(
        api_key=api_key, webhook_secret=os.environ[UPSTREAM_SECRET_ENV], step_seconds=step
    )
    async with serving(upstream) as camber:
        state = upstream[sandbox.SANDBOX_STATE]
        async with ReplayProxy(cassette, mode=mode, upstream=camber, config=config) as proxy:
            outcome = await run_app(proxy.url, api_key, os.environ[LOCAL_SECRET_ENV], files,
                                    poll_interval)
    return outcome, proxy, state


async def replay(cassette: str | Path, *, config: Config | None = None,
                 files: tuple[str, ...] = FILES) -> tuple[dict[str, Any], ReplayProxy]:
    """Run the app against the cassette alone (no sandbox), with the current WEBHOOK_SECRET."""
    async with ReplayProxy(cassette, config=config) as proxy:
        outcome = await run_app(proxy.url, "not-needed-offline", os.environ[LOCAL_SECRET_ENV],
                                files)
    return outcome, proxy


def main(path: str) -> None:  # pragma: no cover - regenerates the committed sample
    os.environ.setdefault(API_KEY_ENV, "sk_sandbox_demo_4f1c9e27b8")
    os.environ.setdefault(UPSTREAM_SECRET_ENV, "camber_staging_secret_81d2a7")
    os.environ.setdefault(LOCAL_SECRET_ENV, "local_app_secret_5e93b0")
    if Path(path).exists():
        Path(path).unlink()
    outcome, _, _ = asyncio.run(record(path, step=0.05))
    print({k: v["status"] for k, v in outcome.items() if isinstance(v, dict)})
    print(f"recorded {path}")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1] if len(sys.argv) > 1 else "cassettes/camber-jobs.yaml")
