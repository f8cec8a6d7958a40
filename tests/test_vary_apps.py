"""`vary` proven on real apps: the example FastAPI app (and two copies of it, each with a classic
bug planted by a small textual patch) and the sample app, run as real processes against real
webhooks. The right variant finds each bug; the others pass; the unbugged app passes them all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "camber_app"
SECRET = "vary-apps-local-secret"

#: Marking an event as seen before processing it: a failed attempt's retry is then dropped as a
#: duplicate. Planted by seeing the event right after the duplicate check.
SEEN_FIRST = (
    '        job = store.by_camber_id.get(event.get("job_id"))\n',
    '        store.seen_events.add(event_id)  # planted: seen before it is processed\n'
    '        job = store.by_camber_id.get(event.get("job_id"))\n',
)
#: A handler that 404s when the webhook beats the job row (the submit's answer).
NOT_FOUND_EARLY = (
    '        if job is None:  # it beat the submit\'s answer: kept, applied when the answer comes\n'
    '            store.early[event.get("job_id")] = event\n',
    '        if job is None:  # planted: unknown yet, so 404 and hope for a retry\n'
    '            return JSONResponse({"error": "unknown job"}, status_code=404)\n',
)


def app_copy(tmp_path: Path, patch: tuple[str, str] | None) -> Path:
    folder = tmp_path / "camber_app"
    folder.mkdir()
    for name in ("main.py", "camber.py", "e2e.py"):
        shutil.copy(EXAMPLE / name, folder / name)
    shutil.copytree(EXAMPLE / "cassettes", folder / "cassettes")
    if patch is not None:
        main = folder / "main.py"
        text = main.read_text()
        assert text.count(patch[0]) == 1, "the example app changed: update the planted bug"
        main.write_text(text.replace(patch[0], patch[1]))
    return folder


def vary(folder: Path, only: str, *command: str) -> dict:
    exe = shutil.which("replayproxy")
    cmd = [exe] if exe else [sys.executable, "-m", "cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CAMBER_"))}
    env["WEBHOOK_SECRET"] = SECRET
    proc = subprocess.run(
        [*cmd, "vary", "cassettes/camber_jobs.yaml", "--only", only, "-j", "4", "--json",
         "--timeout", "60", "--", *command],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr
    matrix = json.loads(proc.stdout)
    assert matrix["exit_status"] == proc.returncode
    return {v["variant"]: v for v in matrix["variants"]}


E2E = (sys.executable, "e2e.py", "--wait", "3")
PROBES = "webhook-1-early,interaction-3-reset"  # each finds one bug; each passes the other


def failing(rows: dict) -> list[str]:
    return [name for name, row in rows.items() if not row["passed"]]


@pytest.mark.parametrize(
    "patch, finder",
    [(NOT_FOUND_EARLY, "webhook-1-early"), (SEEN_FIRST, "interaction-3-reset")],
    ids=["404-when-the-webhook-beats-the-job-row", "seen-before-processed"],
)
def test_vary_finds_the_planted_bug_with_the_right_variant(
    tmp_path: Path, patch: tuple[str, str], finder: str
) -> None:
    rows = vary(app_copy(tmp_path, patch), PROBES, *E2E)
    assert list(rows) == ["recorded", "webhook-1-early", "interaction-3-reset"]
    assert failing(rows) == [finder], {n: r["output_tail"] for n, r in rows.items()}
    assert "e2e: FAILED: timed out" in rows[finder]["output_tail"]


def test_the_unbugged_example_app_passes_the_expected_variants_and_the_probes(
    tmp_path: Path,
) -> None:
    only = (PROBES + ",webhook-1-duplicate,webhook-2-sender-retry,webhooks-reordered,"
            "interaction-1-503-once")
    rows = vary(app_copy(tmp_path, None), only, *E2E)
    assert len(rows) == 7
    assert failing(rows) == [], {n: r["output_tail"] for n, r in rows.items() if not r["passed"]}
    assert all(row["expect"] == "survive" for name, row in rows.items()
               if name not in ("webhook-1-early", "interaction-3-reset"))


def test_the_sample_app_survives_the_expected_variants_of_its_three_jobs(tmp_path: Path) -> None:
    """The committed three-job cassette was recorded from the sample app (tests/camber_session)."""
    shutil.copytree(ROOT / "cassettes", tmp_path / "cassettes")
    (tmp_path / "cassettes" / "camber_jobs.yaml").symlink_to("camber-jobs.yaml")
    only = "webhook-3-early,webhook-2-sender-retry,interaction-34-503-once"
    rows = vary(tmp_path, only, sys.executable, "-m", "replayproxy.demo.sample_app", "--wait", "5")
    assert failing(rows) == [], {n: r["output_tail"] for n, r in rows.items() if not r["passed"]}
