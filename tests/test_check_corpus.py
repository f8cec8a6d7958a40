"""`check` measured on a labeled corpus: cassettes written by vcrpy and by the recorder against
local servers, secrets planted in every place one sits, realistic noise around them.

Every planted secret is found, nothing else is; the cleaned copy (placeholders where the secrets
were) has no finding; `--fix` cleans a recorded cassette that then replays as before; crafted
multi-MiB bodies are scanned in linear time.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from click.testing import CliRunner
from helpers import run, serving
from leak_corpus import CONFIG_PLACEHOLDERS, PLANTED, record_corpus

from cli import main
from replayproxy.api import ReplayProxy
from replayproxy.cassette import load
from replayproxy.check import Context, check_paths
from replayproxy.config import CheckConfig, Config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def webhook_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMBER_WEBHOOK_SECRET", "corpus-upstream-secret-7d1")
    monkeypatch.setenv("WEBHOOK_SECRET", "corpus-local-secret-2b9")


def _label(secret: str, planted: dict[str, str]) -> str | None:
    for label, value in planted.items():
        if secret == value or (len(secret) >= 8 and (secret in value or value in secret)):
            return label
    return None


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_every_planted_secret_is_found_and_nothing_else(tmp_path: Path) -> None:
    planted = record_corpus(tmp_path)
    config = Config(check=CheckConfig(placeholders=CONFIG_PLACEHOLDERS))
    findings = [f for f in check_paths(sorted(tmp_path.glob("*.yaml")), Context(config))]
    secrets = [f for f in findings if f.check == "secret"]
    labels = {_label(f.secret, planted) for f in secrets}
    missed = sorted(set(planted) - labels)
    noise = [f.render() for f in secrets if _label(f.secret, planted) is None]
    assert not missed, f"planted and not found: {missed}"
    assert not noise, "findings on the noise:\n" + "\n".join(noise)
    assert len(planted) == len(PLANTED) >= 30


def test_the_cleaned_copy_has_no_finding(tmp_path: Path) -> None:
    """The same traffic with placeholders where the secrets were: `<redacted>`, REDACTED, ***,
    XXXX, `<CLIENT_SECRET>`, `{{session_id}}`, `ntn_***`, `sk_live_XXXX...`, and a value the
    config names as a placeholder."""
    record_corpus(tmp_path, planted=False)
    (tmp_path / "replayproxy.yaml").write_text(
        yaml.safe_dump({"check": {"placeholders": list(CONFIG_PLACEHOLDERS)}})
    )
    cassettes = sorted(str(p) for p in tmp_path.glob("*.yaml") if p.name != "replayproxy.yaml")
    code, out = cli("check", "--config", str(tmp_path / "replayproxy.yaml"), *cassettes)
    assert code == 0, out
    assert "no findings" in out


def test_json_output_and_accepting_a_finding_once(tmp_path: Path) -> None:
    record_corpus(tmp_path)
    path = str(tmp_path / "webhooks.yaml")
    result = CliRunner().invoke(main, ["check", "--json", path])
    assert result.exit_code == 1
    out = result.output
    doc = json.loads(result.stdout)
    secrets = [f for f in doc["findings"] if f["check"] == "secret"]
    assert {f["field"] for f in secrets} >= {
        "headers.X-Delivery-Session", "body.result.download_token", "target.query.token",
    }
    for f in doc["findings"]:
        assert set(f) == {"cassette", "where", "field", "check", "message", "fingerprint"}
        assert f["fingerprint"].endswith(f"{f['where']}:{f['field']}:" + f["fingerprint"][-16:])
    for value in (PLANTED["webhook body download_token"][0],
                  PLANTED["webhook header X-Delivery-Session"][0]):
        assert value not in out  # never the value, only its first characters and a hash

    allow = tmp_path / "check.allow"
    code, out = cli("check", "--accept", str(allow), path)
    assert code == 0 and "accepted" in out
    text = allow.read_text()
    assert all(value not in text for value, _ in PLANTED.values())
    code, out = cli("check", "--allow", str(allow), path)
    assert code == 0 and "accepted)" in out, out

    # the same through the config; a changed value is a new finding
    fingerprints = [line.split("  #")[0] for line in text.splitlines()]
    (tmp_path / "replayproxy.yaml").write_text(yaml.safe_dump({"check": {"allow": fingerprints}}))
    code, _ = cli("check", "--config", str(tmp_path / "replayproxy.yaml"), path)
    assert code == 0
    cassette_text = Path(path).read_text()
    secret = PLANTED["webhook header X-Delivery-Session"][0]
    Path(path).write_text(cassette_text.replace(secret, secret[::-1]))
    code, out = cli("check", "--config", str(tmp_path / "replayproxy.yaml"), path)
    assert code == 1 and out.count("X-Delivery-Session") == 1, out


# ---------------------------------------------------------------------------------------------
# --fix, then replay

TELEGRAM = "7012345678:AAF3kq9ZxLmN0pQrStUvWxYz12345678AbC"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1XzEiLCJleHAiOjE5OTk5OTk5OTl9."
       "3q9W0bKk7d1Zr2c8mYp4Xv6Ls5Tn0Ja9Hq2Ue7Rw1Io")
PASSWORD = "pw-7Hc2Lq9Zx4Mn"
CLIENT_SECRET = "cs_9Fh2Kd8Lq3Zm7Xv1Bn6Wt4Yp"
REFRESH = "rt_Q2w9E8r7T6y5U4i3O2p1A0s9D8f7G6h5"


def _upstream() -> web.Application:
    async def any_path(request: web.Request) -> web.Response:
        await request.read()
        if request.path == "/v1/token":
            doc = {"access_token": JWT, "refresh_token": REFRESH, "token_type": "Bearer",
                   "expires_in": 3600}
            return web.Response(body=gzip.compress(json.dumps(doc).encode()), headers={
                "Content-Type": "application/json", "Content-Encoding": "gzip"})
        return web.json_response({"ok": True, "path": request.path.split("/")[1][:3]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)
    return app


async def _session(s: aiohttp.ClientSession, url: str) -> list[tuple[int, bytes]]:
    out = []
    for method, path, kwargs in (
        ("GET", f"/bot{TELEGRAM}/sendMessage?chat_id=42", {}),
        ("GET", f"/v1/feed?access_token={JWT}&limit=5", {}),
        ("POST", "/v1/login", {"data": {"user": "ada", "password": PASSWORD}}),
        ("POST", "/v1/jobs", {"json": {"command": "run", "client_secret": CLIENT_SECRET}}),
        ("GET", "/v1/token", {}),
    ):
        async with s.request(method, url + path, **kwargs) as r:
            out.append((r.status, await r.read()))
    return out


def test_fix_cleans_a_recorded_cassette_that_still_replays_and_matches(tmp_path: Path) -> None:
    path = tmp_path / "session.yaml"

    async def record() -> list[tuple[int, bytes]]:
        async with serving(_upstream()) as up:
            async with ReplayProxy(path, mode="all", upstream=up) as proxy, \
                    aiohttp.ClientSession() as s:
                return await _session(s, proxy.url)

    recorded = run(record())
    code, out = cli("check", str(path))
    assert code == 1
    for field in ("request.path.1", "request.query.access_token", "request.body.password",
                  "request.body.client_secret", "response.body.access_token",
                  "response.body.refresh_token"):
        assert field in out, out

    code, out = cli("check", "--fix", str(path))
    assert code == 0, out
    assert out.count("fixed: ") == 6 and "not fixed" not in out, out
    text = path.read_text()
    for secret in (TELEGRAM, JWT, PASSWORD, CLIENT_SECRET, REFRESH):
        assert secret not in text
    cassette = load(path)  # still loads, and vcrpy still reads it
    assert json.loads(cassette.interactions[4].response.body)["refresh_token"] == "<redacted>"
    assert cassette.variables == []  # the recorder took the client secret for a minted value
    import vcr.serializers.yamlserializer as vy

    assert len(vy.deserialize(text)["interactions"]) == 5

    async def replay() -> tuple[list[tuple[int, bytes]], object]:
        proxy = ReplayProxy(path)
        async with proxy, aiohttp.ClientSession() as s:
            answers = await _session(s, proxy.url)
        return answers, proxy.report

    answers, report = run(replay())
    assert [status for status, _ in answers] == [status for status, _ in recorded]
    assert report.unmatched == [] and report.served == 5
    assert answers[:4] == recorded[:4]  # the app's requests, with their real secrets, matched
    assert json.loads(answers[4][1])["access_token"] == "<redacted>"


def test_a_redacted_path_segment_stands_for_any_value_in_that_path_only() -> None:
    from helpers import exchange

    from replayproxy.cassette import Cassette, Request
    from replayproxy.matching import Matcher

    cassette = Cassette([
        exchange("GET", "/download/sessions/<redacted>/report.csv"),
        exchange("GET", "/v1/jobs/6238/outputs"),
        exchange("GET", "/v1/jobs/6239/outputs"),
        exchange("GET", "/bot<redacted>/sendMessage?chat_id=1"),
        exchange("GET", "/v1/feed?access_token=<redacted>&limit=5"),
    ])
    matcher = Matcher(cassette, Config())

    def number(uri: str) -> int | None:
        found = matcher.match(Request("GET", uri))
        return found.number if found else None

    assert number("/v1/jobs/6239/outputs") == 3  # other paths keep every segment
    assert number("/v1/jobs/6238/outputs") == 2
    assert number("/download/sessions/9f86d081884c7d659a2feaa0c55ad015/report.csv") == 1
    assert number("/download/sessions/9f86d081884c7d659a2feaa0c55ad015/other.csv") is None
    assert number(f"/bot{TELEGRAM}/sendMessage?chat_id=1") == 4
    assert number(f"/bot{TELEGRAM}/sendMessage?chat_id=2") is None
    assert number(f"/v1/feed?limit=5&access_token={JWT}") == 5


def test_fix_in_a_compressed_body_written_by_vcrpy_which_still_replays_it(tmp_path: Path) -> None:
    import urllib.request

    import vcr
    from leak_corpus import serve_upstream

    record_corpus(tmp_path)
    path = tmp_path / "vcrpy.yaml"
    before = load(path)
    archive = next(i for i in before.interactions if i.request.uri.endswith("/archive"))
    assert archive.response.body[:2] == b"\x1f\x8b"  # stored compressed
    password = PLANTED["response gzip JSON password"][0]
    assert password.encode() not in path.read_bytes()  # only inside the gzip stream
    code, out = cli("check", "--fix", str(path))
    assert "response.body.password" in out and "not fixed" not in out, out
    assert code == 0, out
    uri = archive.request.uri
    with serve_upstream({}) as up, vcr.use_cassette(str(path), record_mode="none"):
        del up  # nothing may reach it: vcrpy answers from the cassette
        with urllib.request.urlopen(uri) as answer:
            doc = json.loads(gzip.decompress(answer.read()))
    assert doc["password"] == "<redacted>" and doc["user"] == "ada"


# ---------------------------------------------------------------------------------------------
# linear time on crafted input


def test_crafted_multi_mib_bodies_are_scanned_in_linear_time() -> None:
    """Each of these made a backtracking pattern quadratic (detect-secrets' JWT pattern took
    1.2 s on 64 KiB of `eyJ-`, its OpenAI one 11 s on `sk-a`; ours took seconds per MiB on
    `a.a.a.`): 1 MiB of each in a URI, a header, request and response bodies and a webhook.
    Quadratic scanning of these 40 MiB would take hours. In a subprocess, so a regression is a
    timeout, not a hung suite."""
    script = textwrap.dedent(
        """
        import json
        from replayproxy.cassette import Cassette, Interaction, Request, Response, Webhook
        from replayproxy.check import check_cassette
        units = ["eyJ-", "sk-a", "//a/", "xoxb-1-", "a.", "<a b>", "token=a&", "Bearer ",
                 "https://u:", "AKIA", "a:\u00e9 "]
        size = 1 << 20
        items, hooks = [], []
        for unit in units:
            text = unit * (size // len(unit))
            items.append(Interaction(
                Request("POST", "http://x/" + text[:8192], [("X-Token-Thing", text[:65536])],
                        text.encode()),
                Response(200, "OK", [("Content-Type", "application/json")],
                         json.dumps({"token": text, "log": text}).encode())))
            hooks.append(Webhook(body=text.encode(), headers=[("Content-Type", "text/xml")],
                                 cause=1))
        findings = check_cassette(Cassette(items, hooks), "crafted")
        print(len(findings))
        """
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > len("eyJ- sk-a".split())  # the token fields are findings
