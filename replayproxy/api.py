"""The Python API: `async with ReplayProxy(cassette) as proxy:` and its synchronous twin.

The CLI and the pytest plugin use this; it owns nothing but wiring: build the mode's handler,
bind the server, and on exit drain webhooks, stop, and write the report.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from .cassette import load
from .config import Config, parse_listen
from .replayer import Replayer, ReplayOptions
from .report import Report
from .server import Server


class ReplayProxy:
    """A running replay of `cassette`; `url` once entered, `report` once exited."""

    def __init__(
        self,
        cassette: str | Path,
        *,
        config: Config | None = None,
        listen: str = "127.0.0.1:0",
        options: ReplayOptions | None = None,
        report_path: str | Path | None = None,
        allow_remote: bool = False,
    ):
        self.path = Path(cassette)
        self.config = config or Config()
        self.listen = listen
        self.options = options or ReplayOptions()
        self.report_path = report_path
        self.allow_remote = allow_remote
        self.url = ""
        self.report = Report()
        self._replayer: Replayer | None = None
        self._server: Server | None = None

    async def start(self) -> str:
        self._replayer = Replayer(load(self.path), self.config, self.options)
        self.report = self._replayer.report
        host, port = parse_listen(self.listen)
        self._server = Server(self._replayer.app(), host, port, allow_remote=self.allow_remote)
        self.url = await self._server.start()
        return self.url

    async def stop(self) -> Report:
        if self._server is not None:
            await self._server.stop()
            self._server = None
        if self._replayer is not None:
            self.report = await self._replayer.close()
            self._replayer = None
            if self.report_path:
                self.report.write(self.report_path)
        return self.report

    async def __aenter__(self) -> ReplayProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


class SyncReplayProxy:
    """`with SyncReplayProxy(cassette) as proxy:` runs the proxy on a background thread's loop."""

    def __init__(self, cassette: str | Path, **kwargs: Any):
        self.proxy = ReplayProxy(cassette, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def report(self) -> Report:
        return self.proxy.report

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> SyncReplayProxy:
        self._thread.start()
        try:
            self._call(self.proxy.start())
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._call(self.proxy.stop())
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
