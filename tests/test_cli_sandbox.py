"""`replayproxy sandbox` from the outside: URL first, real API, clean stop, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

ROOT = Path(__file__).parent.parent


def test_sandbox_command_serves_and_stops_cleanly() -> None:
    env = {
        **os.environ,
        "CAMBER_API_KEY": "sk_test_cli",
        "CAMBER_WEBHOOK_SECRET": "whs_cli",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "sandbox", "--listen", "127.0.0.1:0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("sandbox listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1].strip()
        assert requests.get(f"{url}/v1/jobs").status_code == 401
        job = requests.post(
            f"{url}/v1/jobs",
            headers={"Authorization": "Bearer sk_test_cli"},
            json={"command": "run x", "engine_type": "MPI", "node_size": "XSMALL"},
        )
        assert job.status_code == 201 and isinstance(job.json()["job_id"], int)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "sk_test_cli" not in out + err and "whs_cli" not in out + err


def test_sandbox_without_its_secrets_names_the_variable() -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("CAMBER_API_KEY", "CAMBER_WEBHOOK_SECRET")
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "sandbox", "--listen", "127.0.0.1:0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    assert "CAMBER_API_KEY" in proc.stderr and "Traceback" not in proc.stderr
