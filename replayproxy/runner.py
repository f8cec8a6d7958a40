"""Run a command against a proxy: the wiring behind `replayproxy run` and the pytest plugin.

`open_proxy` builds a ReplayProxy (or its thread twin) in a named mode; `run_command` starts it,
runs the command with the proxy's URL in its environment, waits for it, stops the proxy (which
drains due webhooks and writes the report) and returns the command's status with the report.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .api import ReplayProxy, SyncReplayProxy
from .config import RecordMode, record_mode
from .errors import ReplayProxyError
from .report import Report

if TYPE_CHECKING:
    from .recorder import Recorder

#: The variable every command run under the proxy finds its URL in.
URL_ENV = "REPLAYPROXY_URL"
#: Set (to the cassette's path) for a command run under `replayproxy run`: the pytest plugin
#: then starts no proxy of its own, and the outer one does the checking.
RUN_ENV = "REPLAYPROXY_RUN"

def open_proxy(
    cassette: str | Path,
    *,
    mode: str = "replay",
    upstream: str | None = None,
    sync: bool = False,
    **kwargs: Any,
) -> Any:
    """A ReplayProxy (SyncReplayProxy when `sync`) for `cassette` in `mode` (a RecordMode or an
    alias: `replay`, `record`); `upstream` is used only by the modes that record."""
    target = record_mode(mode)
    cls = SyncReplayProxy if sync else ReplayProxy
    records = target is not RecordMode.NONE
    return cls(cassette, mode=target, upstream=upstream if records else None, **kwargs)


def exit_status(returncode: int, diverged: bool, divergence_exit_code: int = 1) -> int:
    """The command's status; when it passed but the replay diverged, `divergence_exit_code`."""
    if returncode < 0:  # killed by a signal: the shell's convention
        return 128 - returncode
    if returncode != 0:
        return returncode
    return divergence_exit_code if diverged else 0


def command_env(
    url: str,
    export: Sequence[str] = (),
    extra: dict[str, str] | None = None,
    cassette: str | Path = "",
) -> dict[str, str]:
    env = dict(os.environ)
    env[URL_ENV] = url
    env[RUN_ENV] = str(cassette) or "1"
    for name in export:
        if name:
            env[name] = url
    env.update(extra or {})
    return env


def tls_env(proxy: Any) -> dict[str, str]:
    """--forward: HTTPS_PROXY/HTTP_PROXY and the CA variables; --tls: the CA variables."""
    ca = getattr(proxy, "ca", None)
    if ca is None:
        return {}
    from .forward import proxy_env, trust_env

    return proxy_env(proxy.url, ca) if getattr(proxy, "forward", False) else trust_env(ca)


async def run_command(
    proxy: ReplayProxy,
    command: Sequence[str],
    export: Sequence[str] = (),
    on_start: Any = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[int, Report]:
    """Start `proxy`, run `command` (inheriting stdio) with its URL exported, stop, report."""
    if not command:
        raise ReplayProxyError("no command to run: put it after `--`")
    async with proxy:
        if on_start is not None:
            on_start(proxy.url)
        extra = {**tls_env(proxy), **(extra_env or {})}
        env = command_env(proxy.url, export, extra, proxy.path)
        proc = await spawn(command, env=env)
        loop = asyncio.get_running_loop()
        # Ctrl-C reaches the command from the terminal; the proxy waits for it to finish.
        # SIGTERM is passed on, so a CI runner's cancel stops both.
        handled = []
        for sig, action in (
            (signal.SIGINT, lambda: None),
            (signal.SIGTERM, lambda: _forward(proc, signal.SIGTERM)),
        ):
            try:
                loop.add_signal_handler(sig, action)
                handled.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not main thread
                pass
        try:
            returncode = await proc.wait()
            recorder = getattr(proxy, "recorder", None)
            if recorder is not None and recorder.owed:  # webhooks still on their way: wait
                await drain_owed(recorder, proxy.options.drain_timeout, _say, handled)
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
    return returncode, proxy.report


async def spawn(command: Sequence[str], **kwargs: Any) -> asyncio.subprocess.Process:
    """The user's command started, or one line saying why it could not be."""
    try:
        return await asyncio.create_subprocess_exec(*command, **kwargs)
    except FileNotFoundError:
        raise ReplayProxyError(f"command not found: {command[0]}") from None
    except PermissionError:
        raise ReplayProxyError(f"command not executable: {command[0]}") from None


async def drain_owed(
    recorder: Recorder,
    timeout: float,
    say: Callable[[str], None],
    signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
) -> None:
    """Wait (bounded) for webhooks the session is owed; a second signal stops the wait at once."""
    loop = asyncio.get_running_loop()
    now = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, now.set)
    await recorder.drain(timeout, now, say)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _forward(proc: asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is None:
        proc.send_signal(sig)
