"""A cassette from a stranger: it decides nothing about where replay sends signed webhooks, and
loading it (then checking, inspecting, diffing and serving it) is bounded in bytes, time and
memory, with one-line errors naming file, line and field.

The webhook targets use 0.0.0.0: not a loopback address by its number, yet on Linux a connection
to it reaches this machine, so a real receiver on 127.0.0.1 sees whatever the check lets through.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from helpers import exchange, run, serving, webhook

from replayproxy.api import ReplayProxy
from replayproxy.cassette import Cassette, save
from replayproxy.check import check_cassette
from replayproxy.config import Config, WebhooksConfig
from replayproxy.replayer import ReplayOptions

ROOT = Path(__file__).resolve().parent.parent
SECRET = "replayproxy-hostile-secret"
RECORDED_UUID = "7d1f3a52-0c4e-4b8e-9a61-2f5b8c9d0e17"


@pytest.fixture(autouse=True)
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)


class Sink:
    """Every request any path gets: method, path, headers."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, dict[str, str]]] = []

    def app(self) -> web.Application:
        async def any_path(request: web.Request) -> web.Response:
            await request.read()
            self.got.append((request.method, request.path, dict(request.headers)))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_path)
        return app


def hostile(port: int) -> Cassette:
    """What the attacker commits: a PUT with its own headers to an internal admin path, its
    target carrying a recorded variable (so a naive replay would prefer it to --webhook-url)."""
    hook = webhook({"type": "job.completed", "external_id": RECORDED_UUID}, cause=1, after=1,
                   target=f"http://0.0.0.0:{port}/internal/admin/{RECORDED_UUID}",
                   event_id="evt_x")
    hook.method = "PUT"
    hook.headers += [
        ("Authorization", "Bearer stolen"),
        ("Cookie", "admin=1"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("Origin", "http://intranet"),
        ("X-Camber-Event", "job.completed"),
    ]
    return Cassette(
        interactions=[exchange("POST", "/v1/jobs", 201, {"job_id": 1},
                               {"external_id": RECORDED_UUID, "command": "run"})],
        webhooks=[hook],
    )


async def _replay(tape: Cassette, tmp_path: Path, config: Config, **options: object):
    path = tmp_path / f"h{uuid.uuid4().hex[:6]}.yaml"
    save(tape, path)
    async with ReplayProxy(path, config=config, options=ReplayOptions(**options)) as proxy:
        async with aiohttp.ClientSession() as http, http.post(
            f"{proxy.url}/v1/jobs", json={"external_id": str(uuid.uuid4()), "command": "run"}
        ) as r:
            assert r.status == 201
        await proxy.replayer.deliverer.drain(5)  # type: ignore[union-attr]
    return proxy.report


def test_a_cassette_cannot_choose_where_signed_webhooks_go(tmp_path: Path) -> None:
    sink, app = Sink(), Sink()

    async def main() -> None:
        async with serving(sink.app()) as sink_url, serving(app.app()) as app_url:
            port = int(sink_url.rsplit(":", 1)[1])
            # --webhook-url given: the cassette's target (with a live value in it) loses
            report = await _replay(hostile(port), tmp_path, Config(),
                                   webhook_url=f"{app_url}/hooks")
            assert [d.outcome for d in report.deliveries] == ["delivered"]
            assert sink.got == []
            (method, path, headers) = app.got[0]
            assert (method, path) == ("POST", "/hooks")  # PUT is not allowed by default
            lowered = {k.lower() for k in headers}
            assert not lowered & {"authorization", "cookie", "x-forwarded-for", "origin",
                                  "x-http-method-override"}
            assert headers["X-Camber-Event"] == "job.completed"
            assert headers["Content-Type"] == "application/json"
            assert "X-Signature" in headers  # signed anew with the local secret

            # nothing configured: the recorded target is not loopback, so nothing is sent
            report = await _replay(hostile(port), tmp_path, Config())
            (delivery,) = report.deliveries
            assert delivery.outcome == "failed" and sink.got == []
            assert "refused the target host '0.0.0.0'" in delivery.attempts[0].error
            assert "--allow-webhook-host" in delivery.attempts[0].error

            # allow-listed (and PUT allowed) by the user, not by the cassette: then it goes
            config = Config(webhooks=WebhooksConfig(allow_hosts=("0.0.0.0",),
                                                    allow_methods=("POST", "PUT")))
            report = await _replay(hostile(port), tmp_path, config)
            assert [d.outcome for d in report.deliveries] == ["delivered"]
            assert [(m, p.split("/")[-1] != RECORDED_UUID) for m, p, _ in sink.got] == [
                ("PUT", True)]  # the live id went in

    run(main())


def test_the_apps_live_callback_url_is_where_webhooks_go(tmp_path: Path) -> None:
    sink, app = Sink(), Sink()
    recorded = "http://0.0.0.0:5999/hooks/camber"
    tape = Cassette(
        interactions=[exchange("POST", "/v1/jobs", 201, {"job_id": 1},
                               {"command": "run", "callback_url": recorded})],
        webhooks=[webhook({"type": "job.completed"}, cause=1, after=1, target=recorded)],
    )

    async def main() -> None:
        async with serving(sink.app()) as sink_url, serving(app.app()) as app_url:
            path = tmp_path / "cb.yaml"
            save(tape, path)
            async with ReplayProxy(path, config=Config(),
                                   options=ReplayOptions(webhook_url=f"{sink_url}/flag")) as proxy:
                async with aiohttp.ClientSession() as http, http.post(
                    f"{proxy.url}/v1/jobs",
                    json={"command": "run", "callback_url": f"{app_url}/hooks/camber"},
                ) as r:
                    assert r.status == 201, await r.text()
                await proxy.replayer.deliverer.drain(5)  # type: ignore[union-attr]
        assert [(m, p) for m, p, _ in app.got] == [("POST", "/hooks/camber")]
        assert sink.got == []

    run(main())


def test_replay_and_run_refuse_the_hostile_target_from_the_command_line(tmp_path: Path) -> None:
    """`run` with nothing configured: the webhook is refused, the run diverges (exit 1) and
    stderr says why."""
    tape = tmp_path / "hostile.yaml"
    save(hostile(9), tape)
    script = tmp_path / "app.py"
    script.write_text(
        "import json, os, urllib.request, uuid\n"
        "body = {'external_id': str(uuid.uuid4()), 'command': 'run'}\n"
        "req = urllib.request.Request(os.environ['REPLAYPROXY_URL'] + '/v1/jobs',\n"
        "    method='POST', data=json.dumps(body).encode(),\n"
        "    headers={'Content-Type': 'application/json'})\n"
        "urllib.request.urlopen(req).read()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WEBHOOK_SECRET": SECRET}
    done = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "run", str(tape), "--drain-timeout", "2", "--",
         sys.executable, str(script)],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert "refused the target host '0.0.0.0'" in done.stderr


def test_check_flags_crafted_webhooks() -> None:
    tape = hostile(8080)
    tape.webhooks.append(webhook({"type": "ok"}, cause=1, target="http://127.0.0.1:5001/hooks"))
    findings = [f for f in check_cassette(tape, "x.yaml") if f.where == "webhook 1"]
    fields = {f.field: f.message for f in findings}
    assert "target" in fields and "0.0.0.0" in fields["target"]
    assert "method" in fields and "PUT" in fields["method"]
    for name in ("Authorization", "Cookie", "X-Forwarded-For", "X-HTTP-Method-Override",
                 "Origin"):
        assert f"headers.{name}" in fields, fields
    assert "headers.X-Camber-Event" not in fields
    assert not [f for f in check_cassette(tape, "x.yaml") if f.where == "webhook 2"]
    rendered = json.dumps([f.render() for f in findings])
    assert "stolen" not in rendered  # a finding never prints the value


# ---------------------------------------------------------------------------------------------
# terminal output: cassette text never drives the reviewer's terminal

EVIL = "\x1b[2K\x1b[1A\x1b]0;owned\x07\x1b]52;c;ZXZpbA==\x07\x9b31m\u202e"


def _evil_pair(tmp_path: Path) -> tuple[Path, Path]:
    from replayproxy.cassette import Variable

    a = Cassette(
        interactions=[
            exchange("GET", "/v1/jobs/7", 200, {"status": "RUNNING" + EVIL}),
            exchange("GET", "/v1/jobs/7", 500, {"note": EVIL,
                                                "token" + EVIL: "Zx9Qm2Lr8Tk4Wb7Yc3Nd6Pf1"}),
        ],
        webhooks=[webhook({"type": "job." + EVIL}, cause=1)],
        variables=[Variable("uuid_1", "x" + EVIL, "uuid", ["1:path.3"])],
    )
    b = Cassette(interactions=[exchange("GET", "/v1/jobs/7", 200, {"status": "DONE" + EVIL})])
    save(a, tmp_path / "a.yaml")
    save(b, tmp_path / "b.yaml")
    return tmp_path / "a.yaml", tmp_path / "b.yaml"


def _driver(a: Path, b: Path) -> list[str]:
    """One process running inspect, check and diff in turn (three interpreters cost seconds)."""
    runs = [["inspect", str(a)], ["check", str(a)], ["diff", str(a), str(b)]]
    code = (
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport cli\n"
        f"for args in {runs!r}:\n"
        "    print('=== ' + args[0], flush=True)\n"
        "    try:\n        cli.main(args)\n    except SystemExit:\n        pass\n"
    )
    return [sys.executable, "-c", code]


def _only_our_colours(text: str) -> str:
    return text.replace("\x1b[31m", "").replace("\x1b[0m", "")


def _assert_escaped(out: str, tty: bool) -> None:
    parts = out.split("=== ")[1:]
    assert [p.split()[0] for p in parts] == ["inspect", "check", "diff"], out
    for part in parts:
        if tty and part.startswith("inspect"):
            assert "\x1b[31m" in part  # a TTY gets inspect's own colour for the 500
        for bad in ("\x1b", "\x07", "\x9b", "\u202e"):
            assert bad not in _only_our_colours(part), part
        assert "\\x1b]52;c;" in part, part  # shown, not obeyed


def test_inspect_check_and_diff_escape_control_characters_in_a_pipe(tmp_path: Path) -> None:
    a, b = _evil_pair(tmp_path)
    done = subprocess.run(_driver(a, b), capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = done.stdout.decode("utf-8") + done.stderr.decode("utf-8")
    assert "\x1b" not in out
    _assert_escaped(done.stdout.decode("utf-8"), tty=False)


def test_inspect_check_and_diff_escape_control_characters_on_a_tty(tmp_path: Path) -> None:
    import pty

    a, b = _evil_pair(tmp_path)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(_driver(a, b), stdout=follower, stderr=follower,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(leader)
    _assert_escaped(b"".join(chunks).decode("utf-8"), tty=True)


def test_every_test_the_threat_model_names_exists() -> None:
    import re

    text = (ROOT / "SECURITY.md").read_text()
    section = text[text.index("## Threat model"):text.index("## Reporting a problem")]
    named, current = [], None
    for m in re.finditer(r"`(tests/[\w/]+\.py)?::(\w+)`", section):
        current = m.group(1) or current
        named.append((current, m.group(2)))
    assert len(named) >= 25
    missing = [(f, n) for f, n in named if f"def {n}(" not in (ROOT / f).read_text()]
    assert missing == []


@pytest.mark.parametrize("url", [
    "http://evil.example\\@127.0.0.1:8080/", "http://127.0.0.1:8080\\@evil.example/",
    "http://127.0.0.1@evil.example/", "http://evil.example#@127.0.0.1/", "http://127.1/",
    "http://2130706433/", "http://0.0.0.0:80/", "http://[::ffff:10.0.0.1]/", "file:///etc/passwd",
    "gopher://127.0.0.1/", "http:///x",
])
def test_targets_that_only_look_local_are_refused(url: str) -> None:
    from replayproxy.webhooks import destination_refused

    assert destination_refused(url, [], [None, None], []) is not None
    for local in ("http://127.0.0.1:5001/hooks", "http://localhost/x", "http://[::1]:8/"):
        assert destination_refused(local, [], [None, None], []) is None
