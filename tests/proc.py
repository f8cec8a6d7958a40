"""Real `replayproxy` processes for tests: started with the worktree's code, always stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from replayproxy.config import SignatureConfig
from replayproxy.signing import SignatureError, verify

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk_test_proc_key_7c1d93a0"
UPSTREAM_SECRET = "camber_proc_upstream_51fe"
LOCAL_SECRET = "local_proc_secret_e2b7"


#: Runs a script (argv[2:]) and writes its own peak resident size to argv[1] as it exits:
#: the child's own high-water mark (VmHWM), where rusage would also count the pytest worker
#: it was forked from (hundreds of MiB late in a run).
PEAK_THEN_RUN = """
import atexit, runpy, sys
out = sys.argv[1]
def peak():
    with open("/proc/self/status") as status, open(out, "w") as f:
        f.write(next(line for line in status if line.startswith("VmHWM")))
atexit.register(peak)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


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
        self.lines: list[str] = []  # stderr so far, read by a thread as it comes
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if " on http" not in line and "listening on http" not in line:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"did not start: {line!r} {self.err}")
        self.url = line.split(" on ", 1)[1].split()[0]

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.lines.append(line)

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 20) -> str:
        """The first stderr line containing `text`, waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} on stderr: {self.err}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.send(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()  # type: ignore[union-attr]
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


class Receiver:
    """The app's webhook route: verifies each webhook with `secret` (hmac-sha256, as the
    recorder signs by default) and answers 200, or 401 when the signature is wrong."""

    def __init__(self, secret: str = LOCAL_SECRET):
        received = self.received = []
        refused = self.refused = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    verify(body, dict(self.headers), [secret], SignatureConfig())
                except SignatureError as exc:
                    refused.append(body)
                    self._answer(401, {"error": f"bad signature: {exc}"})
                    return
                received.append(json.loads(body))
                self._answer(200, {"ok": True})

            def _answer(self, status: int, data: dict) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
