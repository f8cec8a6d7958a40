"""Real `replayproxy` processes for tests: started with the worktree's code, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk_test_proc_key_7c1d93a0"
UPSTREAM_SECRET = "camber_proc_upstream_51fe"
LOCAL_SECRET = "local_proc_secret_e2b7"


def env(**extra: str | None) -> dict[str, str]:
    out = {
        **os.environ,
        "CAMBER_API_KEY": API_KEY,
        "CAMBER_WEBHOOK_SECRET": UPSTREAM_SECRET,
        "WEBHOOK_SECRET": LOCAL_SECRET,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
    }
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def cli(*args: str, environ: dict[str, str] | None = None, timeout: float = 30) -> Any:
    """Run one replayproxy command to its end."""
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=environ or env(), cwd=ROOT,
    )


class Serving:
    """`replayproxy ARGS` running; `url` from its first stdout line. A context manager that
    stops it (SIGTERM, then SIGKILL) and keeps its stderr in `err`."""

    def __init__(self, *args: str, environ: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=environ or env(), cwd=ROOT, start_new_session=True,
        )
        self.err = ""
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if " on http" not in line and "listening on http" not in line:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"did not start: {line!r} {self.err}")
        self.url = line.split(" on ", 1)[1].split()[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.send(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.err += err or ""
        return self.proc.returncode

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.stop(signal.SIGKILL)
        else:
            self.stop()


def sandbox(step: str = "0.05") -> Serving:
    return Serving("sandbox", "--listen", "127.0.0.1:0", "--step-seconds", step)
