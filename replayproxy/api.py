"""The Python API: `async with ReplayProxy(cassette) as proxy:` and its synchronous twin.

The CLI and the pytest plugin use this; it owns nothing but wiring: build the mode's handler,
bind the server, and on exit drain webhooks, stop, and write the report (or the cassette).

Modes (config.RecordMode): `replay` (the default, the same as `none`) serves the cassette; `once`,
`new_episodes`, `all` and `none` mean what they mean in vcrpy: `once` records when the cassette
does not exist and replays it when it does; `new_episodes` replays what matches and records what
does not; `all` re-records; `none` only replays. Record modes lock the cassette's journal for the
session (one recorder per cassette) and first recover a journal a killed session left
(`recovered`); `replay` and `none` refuse a cassette with a journal beside it
(journal.open_cassette).
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .addresses import origin
from .cassette import Cassette, load
from .config import Config, RecordMode, parse_listen, record_mode
from .errors import ConfigError, WebhookError
from .journal import Recovered, claim, open_cassette
from .recorder import Recorder
from .replayer import Replayer, ReplayOptions
from .report import Report
from .server import Bounds, Server

if TYPE_CHECKING:  # cryptography is loaded only by runs that terminate TLS
    from .ca import CertificateAuthority
    from .forward import ForwardServer

class ReplayProxy:
    """A running replay (or recording) of `cassette`; `url` once entered, `report` once exited."""

    def __init__(
        self,
        cassette: str | Path,
        *,
        config: Config | None = None,
        listen: str = "127.0.0.1:0",
        options: ReplayOptions | None = None,
        report_path: str | Path | None = None,
        allow_remote: bool = False,
        mode: str = "replay",  # a RecordMode or an alias (config.MODE_ALIASES)
        upstream: str | None = None,
        upstream_ca: str | None = None,
        public_url: str | None = None,
        forward: bool = False,
        hosts: str | Sequence[str] | None = None,
        tls: bool = False,
        ca_dir: str | Path | None = None,
        strict: bool = False,
    ):
        self.mode = record_mode(mode)
        if forward and tls:
            raise ConfigError("--tls serves the reverse proxy over HTTPS; it does not go with "
                              "--forward (clients reach a forward proxy over plain HTTP)")
        self.strict = strict  # also require every interaction used, every webhook delivered
        self.forward = forward  # HTTPS_PROXY mode (forward.py): CONNECT, local CA
        self.hosts = hosts
        self.tls = tls
        self.ca_dir = ca_dir
        self.ca: CertificateAuthority | None = None
        self.upstream = upstream
        self.upstream_ca = upstream_ca
        self.public_url = public_url
        self.recovered: Recovered | None = None
        self.recorder: Recorder | None = None
        self.path = Path(cassette)
        self.config = config or Config()
        self.listen = listen
        self.options = options or ReplayOptions()
        self.report_path = report_path
        self.allow_remote = allow_remote
        self.url = ""
        self.report = Report(strict=strict)
        self.replayer: Replayer | None = None
        self._server: Server | ForwardServer | None = None

    @property
    def recording(self) -> bool:
        """True when this run records (once without a cassette, new_episodes, all)."""
        return self.recorder is not None

    def _handler(self) -> Any:
        if self.mode is RecordMode.NONE:
            return self._replay(self._cassette())
        # one recorder per cassette: locked for the session; a dead session's journal is saved
        held = claim(self.path, self.config)
        self.recovered = held.recovered
        try:
            exists = self.path.exists()
            if self.mode is RecordMode.ONCE and exists:
                held.release()
                return self._replay(load(self.path))
            base = load(self.path) if self.mode is RecordMode.NEW_EPISODES and exists else None
            self.recorder = Recorder(
                self.path,
                self.config,
                upstream=self.upstream or self.config.upstream or "",
                base=base,
                upstream_ca=self.upstream_ca,
                public_url=self.public_url,
                options=self.options,
                forward=self.forward,
                claim=held,
            )
        except BaseException:
            held.release()
            raise
        if self.recorder.replayer is not None:
            self.report = self.recorder.replayer.report
        return self.recorder

    def _cassette(self) -> Cassette:
        """The cassette a replay answers from, read through the journal guard."""
        return open_cassette(self.path)

    def _replay(self, cassette: Cassette) -> Replayer:
        self.replayer = Replayer(cassette, self.config, self.options, forward=self.forward)
        self.report = self.replayer.report
        return self.replayer

    def _load_ca(self) -> CertificateAuthority | None:
        """The local CA when this run terminates TLS (--forward, --tls); never in a cassette dir."""
        if not (self.forward or self.tls):
            return None
        from .ca import DEFAULT_CA_DIR, CertificateAuthority, check_not_inside

        folder = Path(self.ca_dir).expanduser() if self.ca_dir is not None else DEFAULT_CA_DIR
        check_not_inside(folder, self.path.parent)  # before anything is created there
        return CertificateAuthority.load_or_create(folder)[0]

    def _forward_server(self, handler: Any, host: str, port: int) -> ForwardServer:
        from .forward import ForwardServer

        assert self.ca is not None
        return ForwardServer(
            handler.handle,
            self.ca,
            host,
            port,
            hosts=self.hosts,
            recording=self.recorder is not None,
            has_upstream=bool(self.recorder is not None and self.recorder.upstream),
            upstream_ssl=self.recorder.ssl if self.recorder is not None else None,
            allow_remote=self.allow_remote,
            max_header_size=self.config.max_header_size,
            client_max_size=self.config.max_body_size,
        )

    def _upstream_hosts(self) -> tuple[str, ...]:
        """The host an absolute-form target may name in reverse mode: the upstream's."""
        upstream = self.recorder.upstream if self.recorder is not None else None
        if upstream is None and self.replayer is not None:
            upstream = self.replayer.cassette.meta.get("upstream")
        found = origin(upstream) if isinstance(upstream, str) else None
        return (found[1],) if found else ()

    async def start(self) -> str:
        self.ca = self._load_ca()
        gc.disable()  # loading makes a great many objects and no garbage: skip the collector
        try:
            handler = self._handler()
        finally:
            gc.enable()
        self.report.strict = self.strict  # whichever report this run keeps
        host, port = parse_listen(self.listen)
        try:
            self._server = self._forward_server(handler, host, port) if self.forward else Server(
                handler.handle,
                host,
                port,
                ssl_context=self.ca.listener_context() if self.ca is not None else None,
                allow_remote=self.allow_remote,
                max_header_size=self.config.max_header_size,
                client_max_size=self.config.max_body_size,
                origin_hosts=self._upstream_hosts(),
                bounds=Bounds(
                    self.config.head_timeout,
                    self.config.idle_timeout,
                    self.config.max_connections,
                ),
            )
            self.url = await self._server.start()
        except BaseException:
            self._server = None
            if self.recorder is not None:
                await self.recorder.close()
                self.recorder = None
            raise
        if self.recorder is not None:
            self.recorder.url = self.url
        return self.url

    async def stop(self) -> Report:
        if self._server is not None:
            await self._server.stop()
            self._server = None
        if self.recorder is not None:
            await self.recorder.close()
            if self.recorder.replayer is not None:
                self.report = self.recorder.replayer.refresh()
            if self.report_path:
                self.report.write(self.report_path)
            return self.report
        if self.replayer is not None:
            self.report = await self.replayer.close()
            self.replayer = None
            if self.report_path:
                self.report.write(self.report_path)
        return self.report

    async def wait_for_webhooks(self, timeout: float = 10.0) -> Report:
        """Return once every webhook due so far is settled (delivered, or refused when it was
        meant to be); raise WebhookError with the report's sentences when one failed, was
        accepted though deliberately bad, or is still being retried after `timeout` seconds."""
        replayer = self.replayer or (self.recorder.replayer if self.recorder else None)
        if replayer is None:
            return self.report
        settled = await replayer.deliverer.drain(timeout)
        report = replayer.refresh()
        bad = [d.sentence(report.signed_with) for d in report.deliveries if not d.as_expected]
        if bad:
            head = "webhooks not delivered as expected" + (
                "" if settled else f" (still being delivered after {timeout:g}s)"
            )
            raise WebhookError("\n".join([head + ":", *bad]))
        return report

    async def __aenter__(self) -> ReplayProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


async def _refresh(replayer: Replayer) -> Report:
    return replayer.refresh()


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
        """The report so far while the proxy runs (final once exited)."""
        replayer = self.proxy.replayer
        if replayer is not None and self._loop.is_running():
            return self._call(_refresh(replayer))
        return self.proxy.report

    def wait_for_webhooks(self, timeout: float = 10.0) -> Report:
        """`ReplayProxy.wait_for_webhooks`, from synchronous code."""
        return self._call(self.proxy.wait_for_webhooks(timeout))

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
