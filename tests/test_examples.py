"""The example app's own test suite (examples/camber_app/tests) passes, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Plugins the example's tests do not need: each costs start-up time.
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark")


def test_camber_app_example_passes() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # No secrets of the outer environment: the example sets its own local webhook secret.
    for name in ("WEBHOOK_SECRET", "CAMBER_API_KEY", "CAMBER_API_URL", "CAMBER_WEBHOOK_SECRET"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "examples/camber_app/tests", "-q", *QUIET],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 passed" in proc.stdout, proc.stdout  # one test also under two variants
