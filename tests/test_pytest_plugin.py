"""The pytest plugin, run for real with pytester: marker, fixture, paths, divergence, xdist."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import job_cassette

from replayproxy.cassette import save

pytest_plugins = ["pytester"]


#: Plugins the inner runs do not need: each costs start-up time in every subprocess.
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark",
         "-p", "no:asyncio", "-p", "no:anyio")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*QUIET, *args)


def write_cassette(pytester: pytest.Pytester, relative: str) -> None:
    cassette = job_cassette()
    cassette.webhooks = []  # nothing to sign: no secret needed
    save(cassette, pytester.path / relative)


def test_marker_and_fixture_serve_a_sync_test(pytester: pytest.Pytester) -> None:
    write_cassette(pytester, "cassettes/jobs.yaml")
    pytester.makepyfile(
        test_app="""
        import pytest, requests

        @pytest.mark.replayproxy("cassettes/jobs.yaml")
        def test_poll(replayproxy):
            assert replayproxy.url.startswith("http://127.0.0.1:")
            job = requests.get(replayproxy.url + "/v1/jobs/6238").json()
            assert job == {"job_id": 6238, "status": "RUNNING"}
            assert replayproxy.report.served == 1
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)


def test_cassette_defaults_to_cassettes_module_test(pytester: pytest.Pytester) -> None:
    write_cassette(pytester, "cassettes/test_default/test_listing.yaml")
    write_cassette(pytester, "cassettes/test_default/test_param_a.yaml")
    pytester.makepyfile(
        test_default="""
        import pytest, requests

        def test_listing(replayproxy):
            assert replayproxy.proxy.path.name == "test_listing.yaml"
            got = requests.get(replayproxy.url + "/v1/jobs?page=1&status=COMPLETED")
            assert got.json() == {"jobs": [6238]}

        @pytest.mark.parametrize("x", ["a"])
        def test_param(replayproxy, x):
            assert requests.get(replayproxy.url + "/v1/jobs/6238").status_code == 200
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)


def test_a_diverged_replay_fails_the_test_with_the_near_miss(pytester: pytest.Pytester) -> None:
    write_cassette(pytester, "cassettes/jobs.yaml")
    pytester.makepyfile(
        test_drift="""
        import pytest, requests

        @pytest.mark.replayproxy("cassettes/jobs.yaml")
        def test_wrong_engine(replayproxy):
            body = {"command": "python run.py invoice.pdf", "engine_type": "GPU"}
            requests.post(replayproxy.url + "/v1/jobs", json=body)  # 502, not checked

        @pytest.mark.replayproxy("cassettes/jobs.yaml")
        def test_assertion_and_drift(replayproxy):
            requests.get(replayproxy.url + "/v1/jobs?status=CANCELLED&page=1")
            assert False, "the app's own failure"
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "replay diverged" in out
    assert "body.engine_type: GPU vs MPI" in out
    assert "the app's own failure" in out
    assert "query: status=CANCELLED vs status=COMPLETED" in out  # the section, next to it


def test_each_xdist_worker_runs_its_own_proxy(pytester: pytest.Pytester) -> None:
    write_cassette(pytester, "cassettes/jobs.yaml")
    pytester.makeini("[pytest]\n")
    # every worker reads the rootdir's config: the listing's page does not count
    pytester.makefile(".yaml", replayproxy="match:\n  ignore_query: [page]\n")
    pytester.makepyfile(
        test_workers="""
        import os, pytest, requests

        @pytest.mark.parametrize("n", range(4))
        @pytest.mark.replayproxy("cassettes/jobs.yaml")
        def test_poll(replayproxy, n, tmp_path_factory):
            worker = os.environ.get("PYTEST_XDIST_WORKER", "none")
            assert worker != "none"
            assert requests.get(replayproxy.url + "/v1/jobs/6238").status_code == 200
            got = requests.get(replayproxy.url + f"/v1/jobs?status=COMPLETED&page={n + 2}")
            assert got.status_code == 200

        @pytest.mark.replayproxy("cassettes/jobs.yaml", strict=True)
        def test_strict_on_a_worker(replayproxy):
            requests.get(replayproxy.url + "/v1/jobs/6238")
        """
    )
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=4, failed=1)
    assert "4 of 5 interaction(s) never used (strict)" in result.stdout.str()


def test_missing_cassette_and_record_without_upstream_fail_clearly(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_missing="""
        def test_nothing_recorded(replayproxy):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*replayproxy: *test_nothing_recorded.yaml: no such cassette*"])
    result = run(pytester, "--replayproxy-mode", "record")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--replayproxy-mode record needs --replayproxy-upstream*"])


# ---------------------------------------------------------------------------------------------
# partial cassettes, strict, webhooks, the report during the test

#: A webhook receiver inside the inner test module: the app's route, answering RECEIVER_STATUS.
RECEIVER = '''
import http.server, json, threading
import pytest

GOT = []

class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        GOT.append(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps(ANSWER).encode()
        self.send_response(STATUS)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

SERVER = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
HOOK_URL = f"http://127.0.0.1:{SERVER.server_address[1]}/webhooks/camber"
threading.Thread(target=SERVER.serve_forever, daemon=True).start()

@pytest.fixture(scope="module", autouse=True)
def _stop_receiver():
    yield
    SERVER.shutdown()
    SERVER.server_close()
'''


def webhook_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, status: int = 200,
                    answer: str = '{"ok": True}') -> None:
    save(job_cassette(), pytester.path / "cassettes" / "jobs.yaml")
    pytester.makefile(".yaml", replayproxy="webhooks:\n  attempts: 2\n  backoff: 0.01\n")
    pytester.makeini("[pytest]\n")
    monkeypatch.setenv("WEBHOOK_SECRET", "plugin-test-secret")
    pytester.makepyfile(receiver=RECEIVER.replace("STATUS", str(status)).replace("ANSWER", answer))


SUBMIT = '{"command": "python run.py invoice.pdf", "engine_type": "MPI"}'


def test_a_partial_replay_passes_and_strict_names_what_was_left(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    webhook_project(pytester, monkeypatch)
    pytester.makepyfile(
        test_partial="""
        import pytest, requests
        from replayproxy.replayer import ReplayOptions
        from receiver import HOOK_URL

        OPTS = ReplayOptions(webhook_url=HOOK_URL)

        @pytest.mark.replayproxy("cassettes/jobs.yaml", options=OPTS)
        def test_listing_only(replayproxy):
            assert requests.get(replayproxy.url + "/v1/jobs?status=COMPLETED&page=1").ok
            assert replayproxy.report.unused == [1, 2, 3, 4]  # readable during the test
            assert replayproxy.report.webhooks_never_due == [1]

        @pytest.mark.replayproxy("cassettes/jobs.yaml", options=OPTS, strict=True)
        def test_listing_strict(replayproxy):
            assert requests.get(replayproxy.url + "/v1/jobs?status=COMPLETED&page=1").ok

        @pytest.mark.replayproxy("cassettes/jobs.yaml", options=OPTS, strict=True)
        def test_everything_strict(replayproxy):
            base = replayproxy.url
            assert requests.post(base + "/v1/jobs", json=SUBMIT).status_code == 201
            for _ in range(3):
                requests.get(base + "/v1/jobs/6238")
            assert replayproxy.wait_for_webhooks(5).deliveries[0].outcome == "delivered"
            requests.get(base + "/v1/jobs?status=COMPLETED&page=1")
        """.replace("SUBMIT", SUBMIT)
    )
    result = run(pytester, "-rfP")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "FAILED test_partial.py::test_listing_strict" in out
    # the passing partial replay still reports what it left (shown by -rP)
    assert "replay as recorded (served 1, unmatched 0, unused 4 of 5;" in out
    assert "not counted (strict mode would fail on these):" in out
    assert "4 of 5 interaction(s) never used (strict): #1 POST /v1/jobs, #2 GET /v1/jobs/62" in out
    assert (
        "webhook 1 (job.completed) never due: it waits for #1 POST /v1/jobs, #3 GET /v1/jobs/6238,"
        " never replayed" in out
    )
    result = run(pytester, "--replayproxy-strict", "-k", "listing_only")
    result.assert_outcomes(failed=1)
    assert "never used (strict)" in result.stdout.str()


def test_wait_for_webhooks_fails_with_the_refusal_and_the_hint(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    webhook_project(pytester, monkeypatch, status=401, answer='{"detail": "invalid signature"}')
    pytester.makepyfile(
        test_refused="""
        import pytest, requests
        from replayproxy.replayer import ReplayOptions
        from receiver import GOT, HOOK_URL

        @pytest.mark.replayproxy("cassettes/jobs.yaml", options=ReplayOptions(webhook_url=HOOK_URL))
        def test_job(replayproxy):
            assert requests.post(replayproxy.url + "/v1/jobs", json=SUBMIT).status_code == 201
            for _ in range(3):
                requests.get(replayproxy.url + "/v1/jobs/6238")
            replayproxy.wait_for_webhooks(5)
        """.replace("SUBMIT", SUBMIT)
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "WebhookError: webhooks not delivered as expected:" in out
    assert "webhook 1 (job.completed) to http://127.0.0.1:" in out
    assert '  attempt 2: 401 {"detail": "invalid signature"}' in out
    assert "hint: 401 usually means the app refused the signature" in out
    assert "$WEBHOOK_SECRET" in out and "plugin-test-secret" not in out
    assert "Captured replayproxy call" in out  # beside the test's own error, not instead of it


def test_under_run_the_plugin_starts_no_proxy_and_the_outer_one_checks(
    pytester: pytest.Pytester,
) -> None:
    write_cassette(pytester, "cassettes/jobs.yaml")
    pytester.makepyfile(
        test_inner="""
        import os, pytest, requests

        @pytest.mark.replayproxy("cassettes/jobs.yaml", strict=True)
        def test_poll(replayproxy):
            assert replayproxy.url == os.environ["REPLAYPROXY_URL"]
            assert requests.get(replayproxy.url + "/v1/jobs/6238").status_code == 200
            assert replayproxy.wait_for_webhooks(1) is None

        def test_miss(replayproxy):
            requests.get(replayproxy.url + "/v1/jobs?status=CANCELLED&page=1")
        """
    )
    exe = shutil.which("replayproxy")
    cmd = [exe] if exe else [sys.executable, "-m", "cli"]
    done = subprocess.run(
        [*cmd, "run", "cassettes/jobs.yaml", "--", sys.executable, "-m", "pytest", *QUIET,
         "-q", "test_inner.py"],
        cwd=pytester.path, capture_output=True, text=True, timeout=60,
    )
    assert "2 passed" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 1  # the outer proxy saw the miss
    assert "no recorded interaction matches GET /v1/jobs?status=CANCELLED&page=1" in done.stderr
    assert done.stderr.count("replayproxy replaying") == 1  # one proxy: the outer one


def test_config_comes_from_the_rootdir_not_the_current_folder(pytester: pytest.Pytester) -> None:
    project = pytester.path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "replayproxy.yaml").write_text("unmatched_status: 599\n")
    (pytester.path / "replayproxy.yaml").write_text("unmatched_status: 598\n")  # cwd: ignored
    cassette = job_cassette()
    cassette.webhooks = []
    save(cassette, project / "tests" / "cassettes" / "jobs.yaml")
    status = pytester.path / "status"
    (project / "tests" / "test_root.py").write_text(
        "import pytest, requests\n\n"
        "@pytest.mark.replayproxy('cassettes/jobs.yaml')\n"
        "def test_status(replayproxy):\n"
        "    got = requests.get(replayproxy.url + '/v1/nothing').status_code\n"
        f"    open({str(status)!r}, 'w').write(str(got))\n"
    )
    sub = pytester.path / "elsewhere"
    sub.mkdir()

    def inner(*args: str, cwd: Path) -> str:
        done = subprocess.run([sys.executable, "-m", "pytest", *QUIET, *args], cwd=cwd,
                              capture_output=True, text=True, timeout=60)
        # the miss fails the test after its body ran
        assert "1 failed" in done.stdout, done.stdout + done.stderr
        assert "no recorded interaction matches GET /v1/nothing" in done.stdout
        return status.read_text()

    assert inner("-q", "project", cwd=pytester.path) == "599"  # not the cwd's 598
    assert inner("-q", "../project/tests", cwd=sub) == "599"
    # the ini option wins, relative to the ini file
    (project / "conf").mkdir()
    (project / "conf" / "rp.yaml").write_text("unmatched_status: 597\n")
    (project / "pytest.ini").write_text("[pytest]\nreplayproxy_config = conf/rp.yaml\n")
    assert inner("-q", "../project/tests", cwd=sub) == "597"
    assert inner("-q", "project/tests", cwd=pytester.path) == "597"
