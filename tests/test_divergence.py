"""Every divergence as a sentence, from the outside: `replayproxy run` against real aiohttp apps
that refuse webhooks, the same text in the report's `summary`, bounded near misses, `-v` lines."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from aiohttp import web
from helpers import exchange, job_cassette, run, serving

from replayproxy.cassette import Cassette, save
from replayproxy.report import Report, Unmatched

ROOT = Path(__file__).parent.parent
SECRET = "divergence-test-secret"

#: The app's side: submit, poll three times (the webhook falls due after the third).
CLIENT = textwrap.dedent(
    """
    import json, os, sys, urllib.error, urllib.request

    base = os.environ["REPLAYPROXY_URL"]
    body = json.dumps({"command": "python run.py invoice.pdf", "engine_type": "MPI"}).encode()
    req = urllib.request.Request(base + "/v1/jobs", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
    for _ in range(int(sys.argv[1])):
        urllib.request.urlopen(base + "/v1/jobs/6238").read()
    """
)


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "WEBHOOK_SECRET"}
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    out["WEBHOOK_SECRET"] = SECRET
    out.update(extra)
    return out


async def cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from cli import main; main()", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env(), cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def project(tmp_path: Path, attempts: int = 2) -> Path:
    save(job_cassette(), tmp_path / "jobs.yaml")
    (tmp_path / "client.py").write_text(CLIENT)
    (tmp_path / "replayproxy.yaml").write_text(
        f"webhooks:\n  attempts: {attempts}\n  backoff: 0.01\n"
    )
    return tmp_path


def refusing_app(status: int, answer: Any, got: list[bytes]) -> web.Application:
    """The app's webhook route, refusing everything with `status` and `answer` (JSON)."""

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_post("/webhooks/camber", hook)
    return app


def run_against(tmp_path: Path, status: int, answer: Any, *extra: str,
                polls: int = 3) -> tuple[int, str, dict[str, Any], list[bytes]]:
    got: list[bytes] = []

    async def main() -> tuple[int, str]:
        async with serving(refusing_app(status, answer, got)) as base:
            code, _, err = await cli(
                "run", "jobs.yaml", "--webhook-url", f"{base}/webhooks/camber",
                "--report", "report.json", *extra, "--", sys.executable, "client.py", str(polls),
                cwd=tmp_path,
            )
        return code, err

    code, err = run(main())
    return code, err, json.loads((tmp_path / "report.json").read_text()), got


def test_a_webhook_the_app_refuses_with_401_reads_like_a_sentence(tmp_path: Path) -> None:
    code, err, report, got = run_against(
        project(tmp_path), 401, {"detail": "invalid signature"}
    )
    assert code == 1, err
    assert len(got) == 2  # both attempts reached the real app
    url = report["webhooks"]["deliveries"][0]["url"]
    expected = [
        f"webhook 1 (job.completed) to {url}: failed after 2 attempt(s)",
        '  attempt 1: 401 {"detail": "invalid signature"}',
        '  attempt 2: 401 {"detail": "invalid signature"}',
        "  hint: 401 usually means the app refused the signature: replayproxy signed it with the "
        "secret in $WEBHOOK_SECRET (config webhooks.local_secret_env) and scheme hmac-sha256 "
        "(webhooks.signature.scheme); the app must verify with that same secret and scheme",
    ]
    block = "\n".join(expected)
    assert block in err
    assert block in report["summary"]  # the same text in the report, beside the JSON
    assert report["diverged"] is True and report["strict"] is False
    attempts = report["webhooks"]["deliveries"][0]["attempts"]
    assert [a["answer"] for a in attempts] == ['{"detail": "invalid signature"}'] * 2
    assert SECRET not in err and SECRET not in (tmp_path / "report.json").read_text()


def test_a_refusal_without_an_answer_and_a_server_error_get_no_signature_hint(
    tmp_path: Path,
) -> None:
    code, err, report, _ = run_against(project(tmp_path), 500, "database is down")
    assert code == 1
    assert '  attempt 1: 500 "database is down"' in err
    assert "hint" not in err


def test_a_huge_answer_is_quoted_by_its_start_and_size(tmp_path: Path) -> None:
    code, err, report, _ = run_against(project(tmp_path), 403, {"trace": "x" * 200_000})
    assert code == 1
    assert "... (200,013 bytes)" in err
    assert "hint: 403 usually means" in err
    assert len(err) < 5_000 and len(report["summary"]) < 5_000


def test_a_bad_signature_the_app_accepts_is_a_divergence(tmp_path: Path) -> None:
    code, err, report, got = run_against(
        project(tmp_path), 200, {"ok": True}, "--bad-signature"
    )
    assert code == 1, err
    assert len(got) == 1
    assert (
        "webhook 1 (job.completed) to http://127.0.0.1:" in err
        and ': the app accepted a webhook sent with --bad-signature (a correct app answers 4xx): '
        'it answered 200 {"ok": true}' in err
    )


def test_a_bad_signature_refused_and_a_partial_replay_pass_unless_strict(tmp_path: Path) -> None:
    code, err, report, _ = run_against(
        project(tmp_path), 401, {"detail": "bad"}, "--bad-signature", polls=3
    )
    assert code == 0, err  # the listing (#5) is unused: reported, not a failure
    assert "not counted (strict mode would fail on these)" in err
    assert "1 of 5 interaction(s) never used (strict): #5 GET /v1/jobs?status=COMPLETED" in err
    code, err, report, _ = run_against(project(tmp_path), 200, {}, "--strict", polls=1)
    assert code == 1
    assert (
        "webhook 1 (job.completed) never due: it waits for #3 GET /v1/jobs/6238, never replayed"
        in err
    )
    assert "3 of 5 interaction(s) never used (strict): #3 GET /v1/jobs/6238, #4 GET" in err
    assert report["strict"] is True and report["summary"] in err


def test_a_webhook_still_due_at_shutdown_says_so(tmp_path: Path) -> None:
    cassette = job_cassette()
    cassette.webhooks[0].delay = 600.0
    save(cassette, project(tmp_path) / "jobs.yaml")
    code, err, report, got = run_against(
        tmp_path, 200, {}, "--timing", "recorded", "--drain-timeout", "0.1"
    )
    assert code == 1 and got == []
    assert (
        "webhook 1 (job.completed) to http://127.0.0.1:" in err
        and ": due, not delivered yet (0 attempt(s) so far; at shutdown --drain-timeout sets "
        "how long replayproxy waits)" in err
    )


def test_a_miss_near_a_huge_upload_stays_small_everywhere(tmp_path: Path) -> None:
    blob = "A" * (5 * 1024 * 1024)
    upload = exchange("POST", "/v1/uploads", 201, {"ok": True},
                      {"name": "scan.pdf", "data": blob, "note": "n" * 10_000})
    save(Cassette([upload]), tmp_path / "up.yaml")
    (tmp_path / "client.py").write_text(textwrap.dedent(
        """
        import json, os, urllib.error, urllib.request
        body = json.dumps({"name": "scan.pdf", "data": "B" * (5 * 1024 * 1024),
                           "note": "m" * 10_000}).encode()
        req = urllib.request.Request(os.environ["REPLAYPROXY_URL"] + "/v1/uploads" + "?q=" +
                                     "z" * 20_000, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req)
        except urllib.error.HTTPError as exc:
            answer = exc.read()
            print(len(answer))
            print(json.loads(answer)["message"])
        """
    ))

    async def main() -> tuple[int, str, str]:
        return await cli("-v", "run", "up.yaml", "--report", "r.json", "--",
                         sys.executable, "client.py", cwd=tmp_path)

    code, out, err = run(main())
    assert code == 1, err
    assert "POST /v1/uploads?q=zzz" in err  # -v: the miss is logged as it happens
    size = int(out.splitlines()[0])
    assert size < 8_000, size  # the 502 body
    assert len(err) < 12_000  # the log line and the summary
    assert (tmp_path / "r.json").stat().st_size < 12_000
    assert "body.data: " in out and "... (5,242,880 chars) vs " in out
    assert "zzz... (20,014 chars); the closest, first:" in out  # the live target, cut too
    assert "query: q=zzz" in out and "zzz... (20,000 chars) not in the recording" in out
    assert "body.note: mmm" in out and "mmm... (10,000 chars) vs nnn" in out
    message = "\n".join(out.splitlines()[1:])
    assert message in err  # one formatter: the 502 body's text is the log's and the summary's
    assert message in json.loads((tmp_path / "r.json").read_text())["summary"]


def test_verbose_logs_one_line_per_request_and_per_webhook_attempt(tmp_path: Path) -> None:
    project(tmp_path)
    got: list[bytes] = []

    async def main() -> tuple[int, str]:
        async with serving(refusing_app(401, {"detail": "no"}, got)) as base:
            code, _, err = await cli(
                "-v", "run", "jobs.yaml", "--webhook-url", f"{base}/webhooks/camber", "--",
                sys.executable, "client.py", "4", cwd=tmp_path,
            )
        return code, err

    code, err = run(main())
    lines = err.splitlines()
    assert "POST /v1/jobs -> interaction 1 (201)" in lines
    assert "GET /v1/jobs/6238 -> interaction 2 (200)" in lines
    assert "GET /v1/jobs/6238 -> interaction 4 (200, played again)" in lines
    hooks = [line for line in lines if line.startswith("webhook 1 attempt ")]
    assert len(hooks) == 2, err
    assert hooks[0].startswith("webhook 1 attempt 1 -> http://127.0.0.1:")
    assert "/webhooks/camber: 401 at " in hooks[0] and hooks[0].endswith(" ms)")


def test_an_answer_that_echoes_the_secret_is_quoted_redacted(tmp_path: Path) -> None:
    code, err, report, _ = run_against(
        project(tmp_path, attempts=1), 401, {"detail": f"signed with {SECRET}? no"}
    )
    assert code == 1
    assert '  attempt 1: 401 {"detail": "signed with <redacted>? no"}' in err
    assert SECRET not in err and SECRET not in json.dumps(report)


def test_the_summary_spells_out_twenty_divergences_and_counts_the_rest() -> None:
    misses = [Unmatched(f"GET /x/{n}", []) for n in range(25)]
    report = Report(interactions_total=1, unmatched=misses)
    text = report.summary()
    assert text.count("no recorded interaction matches GET /x/") == 20
    assert text.endswith("... and 5 more (every one is in the report's JSON)")
    assert len(report.to_dict()["requests"]["unmatched"]) == 25


def test_send_webhook_to_an_app_refusing_it_prints_the_start_of_its_answer_and_the_hint(
    tmp_path: Path,
) -> None:
    project(tmp_path)
    (tmp_path / "replayproxy.yaml").write_text("webhooks:\n  signature:\n    scheme: stripe\n")

    async def main() -> tuple[int, str, str]:
        async with serving(refusing_app(403, {"detail": "no", "pad": "p" * 50_000}, [])) as base:
            return await cli("send-webhook", "jobs.yaml", "--index", "1", "--to",
                             f"{base}/webhooks/camber", cwd=tmp_path)

    code, out, err = run(main())
    assert code == 1
    assert out.startswith("webhook 1 (evt_1) -> http://127.0.0.1:")
    assert ': 403 Forbidden\n{"detail": "no", "pad": "ppp' in out and "(50," in out
    assert len(out) < 1_000
    assert err.strip() == (
        "hint: 403 usually means the app refused the signature: replayproxy signed it with the "
        "secret in $WEBHOOK_SECRET (config webhooks.local_secret_env) and scheme stripe "
        "(webhooks.signature.scheme); the app must verify with that same secret and scheme"
    )
