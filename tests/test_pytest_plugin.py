"""The pytest plugin, run for real with pytester: marker, fixture, paths, divergence, xdist."""

from __future__ import annotations

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
    assert "replay diverged from" in out
    assert "body.engine_type: GPU vs MPI" in out
    assert "the app's own failure" in out
    assert "query: status=CANCELLED vs status=COMPLETED" in out  # the section, next to it


def test_each_xdist_worker_runs_its_own_proxy(pytester: pytest.Pytester) -> None:
    write_cassette(pytester, "cassettes/jobs.yaml")
    pytester.makepyfile(
        test_workers="""
        import os, pytest, requests

        @pytest.mark.parametrize("n", range(4))
        @pytest.mark.replayproxy("cassettes/jobs.yaml")
        def test_poll(replayproxy, n, tmp_path_factory):
            worker = os.environ.get("PYTEST_XDIST_WORKER", "none")
            assert worker != "none"
            assert requests.get(replayproxy.url + "/v1/jobs/6238").status_code == 200
        """
    )
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=4)


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


VARIED = """
import dataclasses, os, time
import pytest, requests

HOOKS = []


@pytest.fixture
def receiver():
    HOOKS.clear()
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            HOOKS.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks"
    server.shutdown()


def test_submit(receiver, replayproxy, replayproxy_variant):
    replayer = replayproxy.proxy.replayer  # the cassette has no target: tell it the receiver's
    replayer.options = dataclasses.replace(replayer.options, webhook_url=receiver)
    body = {"command": "python run.py invoice.pdf", "engine_type": "MPI"}
    for _ in range(2):  # a client that retries a 503 / 429 once
        resp = requests.post(replayproxy.url + "/v1/jobs", json=body)
        if resp.status_code not in (429, 503):
            break
    for _ in range(3):
        requests.get(replayproxy.url + "/v1/jobs/6238")
    deadline = time.monotonic() + 2
    while not HOOKS and time.monotonic() < deadline:
        time.sleep(0.01)
    assert HOOKS, f"no webhook under {replayproxy_variant}"
    with open(os.environ["SEEN_FILE"], "a") as seen:
        seen.write(replayproxy_variant + "\\n")
"""


def test_vary_parametrizes_over_variants_named_in_test_ids(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(job_cassette(), pytester.path / "cassettes" / "jobs.yaml")
    pytester.makepyfile(
        test_varied=VARIED.replace(
            "def test_submit", '@pytest.mark.replayproxy("cassettes/jobs.yaml", '
            'vary=["webhooks", "interaction-1-503-once"])\ndef test_submit'
        )
    )
    seen = pytester.path / "seen.txt"
    monkeypatch.setenv("WEBHOOK_SECRET", "plugin-vary-secret")
    monkeypatch.setenv("SEEN_FILE", str(seen))
    result = run(pytester, "-n", "2", "-p", "xdist", "-v")
    ids = {line.split("::test_submit[", 1)[1].split("]", 1)[0]
           for line in result.outlines if "::test_submit[" in line}
    assert ids == {"recorded", "webhook-1-lost", "webhook-1-late", "webhook-1-early",
                   "webhook-1-duplicate", "webhook-1-sender-retry", "webhook-1-bad-signature",
                   "interaction-1-503-once"}
    # lost: no webhook comes (xfail, vary.expect allows it); bad-signature: the receiver
    # accepts a forged webhook, so the replay diverged and the test fails, as it should
    result.assert_outcomes(passed=6, xfailed=1, failed=1)
    result.stdout.fnmatch_lines(["*_ test_submit[[]webhook-1-bad-signature[]] _*",
                                 "*replay diverged from*"])
    assert '"test": "bad-signature"' in result.stdout.str()
    assert sorted(seen.read_text().split()) == sorted(
        ["recorded", "webhook-1-late", "webhook-1-early", "webhook-1-duplicate",
         "webhook-1-sender-retry", "webhook-1-bad-signature", "interaction-1-503-once"])
    result = run(pytester, "-k", "webhook-1-early")
    result.assert_outcomes(passed=1, deselected=7)
