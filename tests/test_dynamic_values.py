"""Values that change from run to run, end to end: a real Camber client records three
concurrent jobs (one failing) against the sandbox through the proxy; a replay with new UUIDs,
the reverse submission order, another callback port and another local secret ends with the app
in the same states."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import run

from replayproxy.cassette import load
from replayproxy.demo.roundtrip import FILES, record_and_replay


def test_recorded_conversation_binds_to_a_live_one(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run(record_and_replay(tmp_path, say=lines.append, step_seconds=0.02))

    states = {name: job["status"] for name, job in result.replayed.items()}
    assert states == {
        "invoice-march.pdf": "completed",
        "invoice-april.pdf": "completed",
        "fail-corrupt.pdf": "failed",
    }
    assert result.same, (result.recorded, result.replayed)
    # the live conversation really was another one: new app UUIDs, another callback port
    assert {j["camber_job_id"] for j in result.replayed.values()} == {
        j["camber_job_id"] for j in result.recorded.values()
    }
    report = result.report
    assert not report.unmatched and report.served > 0
    summary = report.webhooks_summary()
    assert summary["delivered"] == 3 and summary["failed"] == 0

    cassette = load(result.cassette)
    shapes = sorted(v.shape for v in cassette.variables)
    assert shapes == ["url", "uuid", "uuid", "uuid"]
    text = result.cassette.read_text()
    assert "sk_demo_" not in text and "camber_" not in text.replace("camber_job_id", "")
    # each webhook knows the submit that caused it
    causes = {h.cause for h in cassette.webhooks}
    submits = {n for n, i in enumerate(cassette.interactions, 1) if i.request.method == "POST"}
    assert causes == submits
    assert any("reverse order" in line for line in lines)


def test_demo_command_runs_the_whole_story(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--keep", str(keep)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "offline, the app ended in the same states as the recorded session" in proc.stdout
    assert (keep / "camber-demo.yaml").exists()
    assert len(load(keep / "camber-demo.yaml").webhooks) == len(FILES)


def test_fast_forward_ends_poll_loops_on_their_first_request(tmp_path: Path) -> None:
    from replayproxy.replayer import ReplayOptions

    result = run(
        record_and_replay(tmp_path, step_seconds=0.02, options=ReplayOptions(fast_forward=True))
    )
    assert result.same, (result.recorded, result.replayed)
    polls = [
        i
        for i in load(result.cassette).interactions
        if i.request.method == "GET" and "/outputs/" not in i.request.uri
    ]
    assert len(polls) > len(FILES)  # the recording polled several times per job
    assert result.report.served < len(load(result.cassette).interactions)
    assert result.report.webhooks_summary()["delivered"] == 3
