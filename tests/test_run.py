"""`replayproxy run` from the outside: a real subprocess, a real command, a real git bisect."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import exchange, job_cassette, webhook

from replayproxy.cassette import Cassette, load, save
from replayproxy.runner import exit_status

CLIENT = textwrap.dedent(
    """
    import json, os, sys, urllib.error, urllib.request

    base = os.environ["REPLAYPROXY_URL"]
    engine = {engine!r}
    body = json.dumps({{"command": "python run.py invoice.pdf", "engine_type": engine}}).encode()
    req = urllib.request.Request(base + "/v1/jobs", data=body, method="POST",
                                 headers={{"Content-Type": "application/json"}})
    try:
        print(urllib.request.urlopen(req).read().decode())
    except urllib.error.HTTPError as exc:
        print("proxy said", exc.code)  # the client shrugs: the replay's divergence catches it
    """
)


def replayproxy(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    exe = shutil.which("replayproxy")
    cmd = [exe] if exe else [sys.executable, "-m", "cli"]
    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )


def submit_cassette() -> Cassette:
    cassette = job_cassette()
    cassette.webhooks = []
    return cassette


@pytest.fixture
def project(tmp_path: Path) -> Path:
    save(submit_cassette(), tmp_path / "cassettes" / "x.yaml")
    (tmp_path / "client.py").write_text(CLIENT.format(engine="MPI"))
    return tmp_path


def test_run_exports_the_url_and_exits_with_the_commands_status(project: Path) -> None:
    script = (
        "import os, sys, urllib.request\n"
        "url = os.environ['REPLAYPROXY_URL']\n"
        "assert os.environ['CAMBER_API_URL'] == url\n"
        "print(urllib.request.urlopen(url + '/v1/jobs/6238').read().decode())\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    (project / "probe.py").write_text(script)
    ok = replayproxy("run", "cassettes/x.yaml", "--env", "CAMBER_API_URL", "--report", "r.json",
                     "--", sys.executable, "probe.py", "0", cwd=project)
    assert ok.returncode == 0, ok.stderr
    assert '"status": "RUNNING"' in ok.stdout  # the command's stdout is inherited
    assert "replayproxy replaying cassettes/x.yaml on http://127.0.0.1:" in ok.stderr
    report = json.loads((project / "r.json").read_text())
    assert report["requests"]["served"] == 1 and report["diverged"] is False

    failed = replayproxy("run", "cassettes/x.yaml", "--env", "CAMBER_API_URL",
                         "--", sys.executable, "probe.py", "3", cwd=project)
    assert failed.returncode == 3


def test_config_export_env_names_the_variable(project: Path) -> None:
    (project / "replayproxy.yaml").write_text("export_env: MY_API\n")
    script = "import os, sys; sys.exit(0 if os.environ['MY_API'].startswith('http') else 9)"
    done = replayproxy("run", "cassettes/x.yaml", "--", sys.executable, "-c", script, cwd=project)
    assert done.returncode == 0, done.stderr


def test_divergence_exits_1_or_the_chosen_code_with_the_near_miss(project: Path) -> None:
    (project / "client.py").write_text(CLIENT.format(engine="GPU"))
    done = replayproxy("run", "cassettes/x.yaml", "--", sys.executable, "client.py", cwd=project)
    assert done.returncode == 1
    assert "proxy said 502" in done.stdout
    assert "body.engine_type: GPU vs MPI" in done.stderr
    assert "replay diverged" in done.stderr
    skip = replayproxy("run", "cassettes/x.yaml", "--divergence-exit-code", "125",
                       "--", sys.executable, "client.py", cwd=project)
    assert skip.returncode == 125


def test_run_waits_for_due_webhooks_before_stopping(tmp_path: Path) -> None:
    """The app's own receiver gets the re-signed webhook while the command runs."""
    recorded_callback = "http://127.0.0.1:5001/hooks/camber"
    cassette = Cassette(
        interactions=[
            exchange("POST", "/v1/jobs", 201, {"job_id": 6238, "status": "PENDING"},
                     {"command": "go", "callback_url": recorded_callback}),
            exchange("GET", "/v1/jobs/6238", 200, {"job_id": 6238, "status": "COMPLETED"}),
        ],
        webhooks=[webhook({"type": "job.completed", "job_id": 6238}, cause=1, after=2,
                          target=recorded_callback, event_id="evt_1")],
    )
    save(cassette, tmp_path / "hooks.yaml")
    app = textwrap.dedent(
        """
        import hashlib, hmac, http.server, json, os, sys, threading, urllib.request

        got = threading.Event()

        class Hook(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                want = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(self.headers.get("X-Signature", ""), want)
                self.send_response(200 if ok else 401)
                self.end_headers()
                if ok:
                    got.set()

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        callback = f"http://127.0.0.1:{server.server_address[1]}/hooks/camber"
        base = os.environ["REPLAYPROXY_URL"]
        data = json.dumps({"command": "go", "callback_url": callback}).encode()
        req = urllib.request.Request(base + "/v1/jobs", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req).read()
        urllib.request.urlopen(base + "/v1/jobs/6238").read()
        sys.exit(0 if got.wait(10) else 4)
        """
    )
    (tmp_path / "app.py").write_text(app)
    done = replayproxy("run", "hooks.yaml", "--report", "r.json", "--", sys.executable, "app.py",
                       cwd=tmp_path, env={"WEBHOOK_SECRET": "s3cret"})
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["webhooks"]["delivered"] == 1 and not report["diverged"]


def test_usage_errors_exit_2_with_one_line(project: Path) -> None:
    missing = replayproxy("run", "cassettes/x.yaml", "--", "no-such-command-xyz", cwd=project)
    assert missing.returncode == 2
    assert "command not found: no-such-command-xyz" in missing.stderr
    no_cassette = replayproxy("run", "nope.yaml", "--", "true", cwd=project)
    assert no_cassette.returncode == 2 and "no such cassette" in no_cassette.stderr
    no_upstream = replayproxy("run", "cassettes/x.yaml", "--record", "--", "true", cwd=project)
    assert no_upstream.returncode == 2 and "--record needs --upstream" in no_upstream.stderr


def test_record_then_replay_offline(tmp_path: Path) -> None:
    """--record --upstream writes the cassette; the same command then replays with no upstream."""
    (tmp_path / "site" / "v1").mkdir(parents=True)
    (tmp_path / "site" / "v1" / "status.json").write_text('{"ok": true}')
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    upstream = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(tmp_path / "site")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    probe = (
        "import os, sys, urllib.request\n"
        "body = urllib.request.urlopen(os.environ['REPLAYPROXY_URL'] + '/v1/status.json').read()\n"
        "sys.exit(0 if body == b'{\"ok\": true}' else 5)\n"
    )
    (tmp_path / "probe.py").write_text(probe)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        recorded = replayproxy("run", "new.yaml", "--record", "--upstream",
                               f"http://127.0.0.1:{port}", "--", sys.executable, "probe.py",
                               cwd=tmp_path)
        assert recorded.returncode == 0, recorded.stderr
        assert "recording new.yaml" in recorded.stderr
    finally:
        upstream.terminate()
        upstream.wait(10)
    assert len(load(tmp_path / "new.yaml").interactions) == 1
    replayed = replayproxy("run", "new.yaml", "--", sys.executable, "probe.py", cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr


def test_exit_status_rules() -> None:
    assert exit_status(0, False) == 0
    assert exit_status(0, True) == 1
    assert exit_status(0, True, 125) == 125
    assert exit_status(3, True, 125) == 3  # the command's own failure wins
    assert exit_status(-15, False) == 143


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_git_bisect_run_names_the_commit_that_changed_the_request(tmp_path: Path) -> None:
    repo = tmp_path / "app"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Bisect Test")
    git(repo, "config", "user.email", "bisect@example.invalid")
    git(repo, "config", "commit.gpgsign", "false")
    save(submit_cassette(), repo / "cassettes" / "x.yaml")
    history = [
        ("client: submit the invoice job", "MPI", None),
        ("docs: readme", "MPI", ("README.md", "# app\n")),
        ("add a helper module", "MPI", ("util.py", "X = 1\n")),
        ("switch engine to GPU (the regression)", "GPU", None),
        ("tweak helper", "GPU", ("util.py", "X = 2\n")),
        ("more docs", "GPU", ("README.md", "# app\n\nmore\n")),
        ("add changelog", "GPU", ("CHANGELOG", "0.1\n")),
    ]
    shas = []
    for message, engine, extra in history:
        (repo / "client.py").write_text(CLIENT.format(engine=engine))
        if extra:
            (repo / extra[0]).write_text(extra[1])
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", message)
        shas.append(git(repo, "rev-parse", "HEAD"))
    exe = shutil.which("replayproxy")
    runner = [exe] if exe else [sys.executable, "-m", "cli"]
    git(repo, "bisect", "start", shas[-1], shas[0])
    done = subprocess.run(
        ["git", "bisect", "run", *runner, "run", "cassettes/x.yaml", "--",
         sys.executable, "client.py"],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{shas[3]} is the first bad commit" in done.stdout
    git(repo, "bisect", "reset")
