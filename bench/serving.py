"""Run a plain aiohttp app on host:port until SIGINT/SIGTERM, printing its URL first.

Shared by the bench's own servers (the baseline and the webhook receiver), which stay plain
aiohttp on purpose: they are what replayproxy is measured against.
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web


async def serve_until_signalled(app: web.Application, host: str, port: int, name: str) -> None:
    """The first line on stdout is `NAME on URL`."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    sock_host, sock_port = runner.addresses[0][:2]
    print(f"{name} on http://{sock_host}:{sock_port}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()
