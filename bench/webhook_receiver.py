"""The webhook receiver of the delivery benchmark: verifies every signature, counts, times.

`python bench/webhook_receiver.py --listen 127.0.0.1:0` with WEBHOOK_SECRET in the environment.
Its first stdout line names the URL. Every POST other than /__bench/* is a webhook: its body is
read and checked with `replayproxy.signing.verify` (the default scheme, as replayproxy signs
with); 200 when it verifies, 401 when not. `GET /__bench/stats` answers the counts and the
CLOCK_MONOTONIC times (time.monotonic(), comparable across processes on Linux) of the first and
last verified webhook; `POST /__bench/reset` clears them. Like the other servers, it runs until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from aiohttp import web
from serving import serve_until_signalled

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replayproxy.config import SignatureConfig  # noqa: E402
from replayproxy.signing import SignatureError, verify  # noqa: E402


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ok = 0
        self.bad = 0
        self.duplicates = 0
        self.events: set[str] = set()
        self.first: float | None = None
        self.last: float | None = None
        self.errors: list[str] = []


async def serve(host: str, port: int, secret: str) -> None:
    stats = Stats()
    signature = SignatureConfig()
    secrets = [secret]

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(body, request.headers, secrets, signature)
        except SignatureError as exc:
            stats.bad += 1
            if len(stats.errors) < 5:
                stats.errors.append(str(exc))
            return web.Response(status=401, text=str(exc))
        event = json.loads(body).get("event_id")
        if event in stats.events:
            stats.duplicates += 1
        else:
            stats.events.add(event)
        stats.ok += 1
        now = time.monotonic()
        if stats.first is None:
            stats.first = now
        stats.last = now
        return web.Response(text="ok")

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response({"ok": stats.ok, "bad": stats.bad, "unique": len(stats.events),
                                  "duplicates": stats.duplicates, "first": stats.first,
                                  "last": stats.last, "errors": stats.errors})

    async def reset(request: web.Request) -> web.Response:
        stats.reset()
        return web.json_response({"reset": True})

    app = web.Application()
    app.router.add_get("/__bench/stats", get_stats)
    app.router.add_post("/__bench/reset", reset)
    app.router.add_get("/__bench/ready", get_stats)
    app.router.add_post("/{tail:.*}", hook)
    await serve_until_signalled(app, host, port, "webhook receiver")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET")
    if not secret:
        sys.exit("webhook_receiver: WEBHOOK_SECRET is not set")
    host, _, port = args.listen.rpartition(":")
    asyncio.run(serve(host, int(port), secret))


if __name__ == "__main__":
    main()
