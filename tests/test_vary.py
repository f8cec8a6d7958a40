"""`replayproxy vary` and `run --variant` from the outside: real processes, the sample app as the
command, the committed three-job cassette, JSON and JUnit read back with real parsers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASSETTE = str(ROOT / "cassettes" / "camber-jobs.yaml")
SAMPLE = [sys.executable, "-m", "replayproxy.demo.sample_app", "--wait", "2"]
SECRET = "vary-test-local-secret"


def replayproxy(*args: str, cwd: Path, timeout: float = 120,
                secret: str | None = SECRET) -> subprocess.CompletedProcess:
    exe = shutil.which("replayproxy")
    cmd = [exe] if exe else [sys.executable, "-m", "cli"]
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_SECRET"}
    if secret is not None:
        env["WEBHOOK_SECRET"] = secret
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_matrix_json_junit_and_expectations(tmp_path: Path) -> None:
    junit = tmp_path / "vary.xml"
    only = "webhook-1-duplicate,interaction-4-503-once,webhook-1-lost"
    proc = replayproxy("vary", CASSETTE, "--only", only, "-j", "2", "--json", "--junit",
                       str(junit), "--html", str(tmp_path / "html"), "--", *SAMPLE, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    matrix = json.loads(proc.stdout)
    rows = {v["variant"]: v for v in matrix["variants"]}
    assert list(rows) == ["recorded", "webhook-1-lost", "webhook-1-duplicate",
                          "interaction-4-503-once"]
    for name in ("recorded", "webhook-1-duplicate", "interaction-4-503-once"):
        assert rows[name]["passed"] and rows[name]["expect"] == "survive", rows[name]
    lost = rows["webhook-1-lost"]
    assert lost["exit_status"] == 1 and lost["expect"] == "may-fail" and not lost["broken"]
    assert "a.pdf: completed events=[] output=4096 WRONG" in lost["output_tail"]  # no webhook
    dup = rows["webhook-1-duplicate"]["report"]["webhooks"]["deliveries"]
    assert [d["copy"] for d in dup if d["webhook"] == 1] == [1, 2]
    assert matrix["broken"] == [] and matrix["exit_status"] == 0

    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "4" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == set(rows)
    failure = cases["webhook-1-lost"].find("failure")
    assert failure is not None and "may fail" in failure.get("message")
    assert "events=[]" in failure.text
    assert all(cases[n].find("failure") is None for n in rows if n != "webhook-1-lost")

    # the HTML: an index linking one timeline page (inspect --html, with that run's report) each
    index = (tmp_path / "html" / "index.html").read_text()
    for name in rows:
        assert f"href='{name}.html'" in index
        page = (tmp_path / "html" / f"{name}.html").read_text()
        assert f"replayproxy vary: {name}" in page
    dup_page = (tmp_path / "html" / "webhook-1-duplicate.html").read_text()
    assert '"copy": 2' in dup_page or '"copy":2' in dup_page


def test_a_broken_expectation_exits_1_and_the_matrix_says_which(tmp_path: Path) -> None:
    (tmp_path / "replayproxy.yaml").write_text(
        "vary:\n  expect:\n    survive: ['*']\n    may_fail: []\n"
    )
    proc = replayproxy("vary", CASSETTE, "--only", "webhook-3-lost", "--", *SAMPLE,
                       cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["variant", "what"]
    assert any(line.startswith("recorded ") and line.endswith("pass") for line in lines)
    assert any(line.startswith("webhook-3-lost ") and "FAIL (must survive)" in line
               for line in lines)
    assert "expected to survive, but failed: webhook-3-lost" in proc.stdout


def test_run_variant_reproduces_one_cell_and_names_unknown_ones(tmp_path: Path) -> None:
    proc = replayproxy("run", CASSETTE, "--variant", "webhook-1-lost", "--", *SAMPLE,
                       cwd=tmp_path)
    assert proc.returncode == 1 and "events=[] output=4096 WRONG" in proc.stdout, proc.stderr
    proc = replayproxy("run", CASSETTE, "--variant", "webhook-9-lost", "--", "true",
                       cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "no variant 'webhook-9-lost'" in line and "webhook-1-lost" in line
    proc = replayproxy("vary", CASSETTE, "--only", "interaction-99-*", "--", "true",
                       cwd=tmp_path)
    assert proc.returncode == 2 and "matches no variant" in proc.stderr
    proc = replayproxy("vary", CASSETTE, "--", "no-such-command-here", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "replayproxy: command not found: no-such-command-here"
    proc = replayproxy("vary", CASSETTE, "--", "true", cwd=tmp_path, secret=None)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "WEBHOOK_SECRET" in proc.stderr  # said once, before any variant runs


RENDEZVOUS = textwrap.dedent(
    """
    import os, pathlib, sys, time
    here = pathlib.Path(sys.argv[1])
    (here / os.environ["REPLAYPROXY_VARIANT"]).write_text(os.environ["REPLAYPROXY_URL"])
    deadline = time.monotonic() + 20
    while len(list(here.iterdir())) < int(sys.argv[2]):  # every run waits for the others
        if time.monotonic() > deadline:
            sys.exit("the runs did not overlap")
        time.sleep(0.02)
    """
)


def test_jobs_run_at_once_each_against_its_own_proxy(tmp_path: Path) -> None:
    meeting = tmp_path / "meet"
    meeting.mkdir()
    script = tmp_path / "meet.py"
    script.write_text(RENDEZVOUS)
    proc = replayproxy("vary", CASSETTE, "--only", "webhook-1-*", "-j", "7", "--json", "--",
                       sys.executable, str(script), str(meeting), "7", cwd=tmp_path)
    matrix = json.loads(proc.stdout)
    assert [v["exit_status"] for v in matrix["variants"]] == [0] * 7, proc.stdout
    urls = {p.name: p.read_text() for p in meeting.iterdir()}
    assert set(urls) == {v["variant"] for v in matrix["variants"]}
    assert len(set(urls.values())) == 7  # seven proxies, seven ports
    # nothing called the proxies: every webhook stays never due, which the matrix reports
    # (reported, not a divergence: its cause never happened)
    assert not any(v["diverged"] for v in matrix["variants"])
    never_due = {v["variant"]: v["report"]["webhooks"]["never_due"] for v in matrix["variants"]}
    assert never_due == {name: [1, 2, 3] for name in urls}
