"""Secrets are the environment's exact values; rotation is a list of variables; the two sides of
a recording may sign differently; deliberate faults say what they did and what a correct app does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import stripe
from aiohttp import web
from helpers import job_cassette, run, serving

from replayproxy.api import ReplayProxy
from replayproxy.cassette import Interaction, Request, Response, Webhook, save
from replayproxy.config import Config, SignatureConfig, WebhooksConfig, env_secrets, load_config
from replayproxy.demo import sandbox
from replayproxy.errors import ConfigError
from replayproxy.redact import MARKER, Redactor
from replayproxy.replayer import Replayer, ReplayOptions

ROOT = Path(__file__).resolve().parent.parent
SPACES = "It's a Secret to Everybody"


def test_a_secret_is_the_variables_exact_value() -> None:
    env = {"A": " spaced, and,commas ", "B": SPACES, "EMPTY": "", "C": "ключ=="}
    assert env_secrets("A", env) == [" spaced, and,commas "]
    assert env_secrets(["B", "MISSING", "EMPTY", "C", "B"], env) == [SPACES, "ключ=="]
    assert env_secrets([], env) == [] and env_secrets(None, env) == []
    not_utf8 = os.fsdecode(b"\xff\xfe-latin-1")  # how os.environ shows such bytes
    with pytest.raises(ConfigError, match="environment variable BAD is not valid UTF-8"):
        env_secrets(["B", "BAD"], {"B": SPACES, "BAD": not_utf8})


def test_secret_env_takes_a_name_or_a_list(tmp_path: Path) -> None:
    path = tmp_path / "replayproxy.yaml"
    path.write_text(
        "secret_env: API_KEY\n"
        "webhooks:\n"
        "  local_secret_env: [WEBHOOK_SECRET, WEBHOOK_SECRET_PREVIOUS]\n"
        "  upstream_secret_env: CAMBER_SECRET\n"
        "  signature: {scheme: stripe}\n"
        "  upstream_signature:\n"
        "    {scheme: custom, header: X-Camber-Signature, format: 'v1={signature}'}\n"
    )
    config = load_config(path)
    assert config.secret_env == ("API_KEY",)
    assert config.webhooks.local_secret_env == ("WEBHOOK_SECRET", "WEBHOOK_SECRET_PREVIOUS")
    assert config.webhooks.upstream_secret_env == ("CAMBER_SECRET",)
    assert config.webhooks.signature.scheme == "stripe"
    assert config.webhooks.upstream_scheme.header == "X-Camber-Signature"
    # unset, the upstream signs as the app verifies
    assert Config().webhooks.upstream_scheme == Config().webhooks.signature
    assert WebhooksConfig(local_secret_env="ONE").local_secret_env == ("ONE",)

    path.write_text("webhooks:\n  local_secret_env: {name: X}\n")
    with pytest.raises(ConfigError, match=r"'webhooks.local_secret_env' must be a list of strings"):
        load_config(path)
    path.write_text("webhooks:\n  upstream_signature: {schema: github}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'webhooks.upstream_signature.schema'"):
        load_config(path)


def test_redaction_replaces_the_whole_secret_never_its_words() -> None:
    config = Config(webhooks=WebhooksConfig(local_secret_env=["S1", "S2"]))
    env = {"S1": SPACES, "S2": "alpha,beta,gamma", "CAMBER_WEBHOOK_SECRET": '"q" = \'x\''}
    redactor = Redactor.from_config(config, env)
    body = json.dumps({
        "text": f"key {SPACES}!", "motto": "a Secret to Everybody", "list": "alpha,beta,gamma",
        "words": "alpha beta gamma", "quoted": '"q" = \'x\'',
    }).encode()
    item = Interaction(
        Request("POST", f"https://camber.example/v1/jobs?k={SPACES}", [], body),
        Response(200, "OK", [("X-Echo", "alpha,beta,gamma")], b"Everybody"),
        {},
    )
    out = redactor.interaction(item)
    text = out.request.body.decode()
    assert SPACES not in text and "alpha,beta,gamma" not in text
    assert json.loads(text) == {
        "text": f"key {MARKER}!", "motto": "a Secret to Everybody", "list": MARKER,
        "words": "alpha beta gamma", "quoted": MARKER,
    }
    assert MARKER in out.request.uri and "Secret" not in out.request.uri  # URL-encoded, whole
    assert out.response.headers == [("X-Echo", MARKER)]
    assert out.response.body == b"Everybody"
    hook = redactor.webhook(Webhook(body=b'{"note": "Everybody knows alpha"}', headers=[]))
    assert hook.body == b'{"note": "Everybody knows alpha"}'


def test_stale_timestamp_is_refused_where_the_scheme_sends_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SPACES)
    stale = ReplayOptions(stale_timestamp=True)
    for signature in (
        SignatureConfig(scheme="github"),
        SignatureConfig(),
        SignatureConfig(scheme="custom", header="X-Sig", format="v1={signature}"),
    ):
        config = Config(webhooks=WebhooksConfig(signature=signature))
        with pytest.raises(ConfigError, match=f"the {signature.scheme} scheme signs no timestamp"):
            Replayer(job_cassette(), config, stale)
    for signature in (
        SignatureConfig(scheme="slack"),
        SignatureConfig(scheme="custom", header="X-Sig", format="t={timestamp},v1={signature}",
                        signed_payload="{timestamp}.{body}"),
    ):
        replayer = Replayer(job_cassette(), Config(webhooks=WebhooksConfig(signature=signature)),
                            stale)
        (fault,) = replayer.report.to_dict()["webhooks"]["faults"]
        assert fault["fault"] == "stale-timestamp" and fault["scheme"] == signature.scheme


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=60)


def test_cli_refuses_stale_timestamp_in_one_line_and_describes_every_fault(
    tmp_path: Path,
) -> None:
    cassette = tmp_path / "jobs.yaml"
    save(job_cassette(), cassette)
    (tmp_path / "replayproxy.yaml").write_text("webhooks:\n  signature: {scheme: github}\n")
    refused = _cli("run", str(cassette), "--stale-timestamp", "--", sys.executable, "-c", "pass",
                   cwd=tmp_path, WEBHOOK_SECRET=SPACES)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("replayproxy: --stale-timestamp: the github scheme signs no timestamp")

    (tmp_path / "replayproxy.yaml").write_text(
        "webhooks:\n  signature: {scheme: standard-webhooks}\n"
    )
    report = tmp_path / "report.json"
    done = _cli(
        "run", str(cassette), "--bad-signature", "--stale-timestamp", "--duplicate-webhooks", "3",
        "--shuffle-webhooks", "7", "--report", str(report), "--", sys.executable, "-c", "pass",
        cwd=tmp_path, WEBHOOK_SECRET="whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=",
    )
    assert "Traceback" not in done.stderr
    faults = json.loads(report.read_text())["webhooks"]["faults"]
    assert [f["fault"] for f in faults] == [
        "bad-signature", "stale-timestamp", "duplicate-webhooks", "shuffle-webhooks"
    ]
    for fault in faults:
        assert fault["scheme"] == "standard-webhooks"
        assert "standard-webhooks (webhook-signature)" in fault["applied"]
        assert fault["correct_app"]
        assert (f"--{fault['fault']} (standard-webhooks scheme): {fault['applied']}; "
                f"a correct app {fault['correct_app']}") in done.stderr
    assert "answers 4xx" in faults[0]["correct_app"] and "tolerance" in faults[1]["correct_app"]
    assert "webhook-id" in faults[2]["applied"] and "once" in faults[2]["correct_app"]
    assert "seed 7" in faults[3]["applied"]


def test_a_malformed_secret_fails_at_start_in_one_line_naming_its_variable(
    tmp_path: Path,
) -> None:
    """A standard-webhooks secret that is not base64 stops `run` (replay) and `record` before
    anything is served, in one line naming the variable; the secret itself is never shown."""
    cassette = tmp_path / "jobs.yaml"
    save(job_cassette(), cassette)
    (tmp_path / "replayproxy.yaml").write_text(
        "webhooks:\n  signature: {scheme: standard-webhooks}\n"
        "  upstream_secret_env: UP_SECRET\n  upstream_signature: {scheme: hmac-sha256}\n"
    )
    bad = "whsec_a"  # one base64 character: no whole byte
    replay = _cli("run", str(cassette), "--", sys.executable, "-c", "pass",
                  cwd=tmp_path, WEBHOOK_SECRET=bad)
    record = _cli("record", str(tmp_path / "new.yaml"), "--upstream", "http://127.0.0.1:9",
                  cwd=tmp_path, WEBHOOK_SECRET=bad, UP_SECRET="upstream-secret")
    for done in (replay, record):
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line == (
            "replayproxy: WEBHOOK_SECRET: standard-webhooks secret is not base64 "
            "(want whsec_<base64>)"
        )
    assert not (tmp_path / "new.yaml").exists()
    assert not list(tmp_path.glob("new.yaml*"))  # no journal claimed either


def test_sandbox_command_signs_in_the_configured_scheme_with_the_exact_secret(
    tmp_path: Path,
) -> None:
    """`replayproxy sandbox --config` signs as `webhooks.upstream_signature` says, with the
    secrets of `webhooks.upstream_secret_env`; `--scheme` overrides the scheme's name."""
    (tmp_path / "sandbox.yaml").write_text(
        "webhooks:\n"
        "  upstream_secret_env: [SANDBOX_SECRET]\n"
        "  upstream_signature: {scheme: slack}\n"
    )
    got: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((await request.read(), dict(request.headers)))
        return web.json_response({"ok": True})

    async def main() -> None:
        receiver = web.Application()
        receiver.router.add_post("/hooks", hook)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CAMBER_API_KEY": "sk_cli_sandbox",
               "SANDBOX_SECRET": SPACES, "PYTHONUNBUFFERED": "1"}
        env.pop("CAMBER_WEBHOOK_SECRET", None)
        async with serving(receiver) as hook_url:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "cli.py"), "sandbox", "--listen", "127.0.0.1:0",
                "--config", str(tmp_path / "sandbox.yaml"), "--scheme", "github",
                "--step-seconds", "0.01", env=env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
                assert line.startswith("sandbox listening on "), line
                url = line.split()[-1]
                job = {"command": "run", "engine_type": "MPI", "node_size": "MICRO",
                       "callback_url": f"{hook_url}/hooks"}
                async with aiohttp.ClientSession() as s, s.post(
                    f"{url}/v1/jobs", json=job, headers={"X-Api-Key": "sk_cli_sandbox"}
                ) as r:
                    assert r.status == 201
                for _ in range(1000):
                    if got:
                        break
                    await asyncio.sleep(0.01)
            finally:
                proc.terminate()
                _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err.decode()
            assert SPACES not in err.decode()

    run(main())
    ((body, headers),) = got
    expected = "sha256=" + hmac.new(SPACES.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == expected  # the whole secret: spaces and quote
    assert "X-Slack-Signature" not in headers

    missing = _cli("sandbox", "--config", str(tmp_path / "sandbox.yaml"), cwd=tmp_path,
                   CAMBER_API_KEY="k", SANDBOX_SECRET="")
    assert missing.returncode == 2
    assert "SANDBOX_SECRET (webhooks.upstream_secret_env" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_upstream_custom_scheme_app_stripe_needs_no_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox signs in a custom scheme; the recorder verifies that at the ingress and the
    app gets Stripe signatures that stripe's own library accepts. Only the config differs."""
    custom = SignatureConfig(scheme="custom", header="X-Camber-Signature",
                             format="t={timestamp},v1={signature}",
                             signed_payload="{id}.{timestamp}.{body}", id_header="X-Camber-Id")
    config = Config(webhooks=WebhooksConfig(signature=SignatureConfig(scheme="stripe"),
                                            upstream_signature=custom))
    monkeypatch.setenv("CAMBER_WEBHOOK_SECRET", "camber, with comma")
    monkeypatch.setenv("WEBHOOK_SECRET", SPACES)
    got: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((await request.read(), dict(request.headers)))
        return web.json_response({"ok": True})

    async def main() -> int:
        receiver = web.Application()
        receiver.router.add_post("/hooks", hook)
        upstream = sandbox.create_app(api_key="k", webhook_secret="camber, with comma",
                                      signature=custom, step_seconds=0.001)
        async with serving(receiver) as app_url, serving(upstream) as up_url:
            async with ReplayProxy(tmp_path / "c.yaml", mode="all", upstream=up_url,
                                   config=config) as proxy, aiohttp.ClientSession() as s:
                job = {"command": "run", "engine_type": "MPI", "node_size": "MICRO",
                       "callback_url": f"{app_url}/hooks"}
                async with s.post(f"{proxy.url}/v1/jobs", json=job,
                                  headers={"Authorization": "Bearer k"}) as r:
                    assert r.status == 201
                for _ in range(1000):
                    if got:
                        break
                    await asyncio.sleep(0.01)
                return proxy.recorder.refused_webhooks

    assert run(main()) == 0
    ((body, headers),) = got
    assert "X-Camber-Signature" not in headers
    event = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], SPACES)
    assert event["type"] == "job.completed"
