"""Webhook signatures checked by the providers' own code, in Python and in Node.js.

Python: stripe, standardwebhooks, svix, slack_sdk. Node.js (tests/providers, `npm ci` there):
stripe-node `webhooks.constructEvent`, svix, standardwebhooks, `@octokit/webhooks-methods`,
`@slack/bolt`'s request verification. GitHub has no official Python library; its Python check is
the HMAC its documentation spells out. The secrets are the awkward ones providers allow (spaces,
commas, quotes, `=` padding, non-ASCII) and rotation lists, on the upstream side (what the
ingress verifies while recording) and on the local side (what replayproxy signs for the app), in
record, replay and `send-webhook`. All Node cases of a test go through one Node process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import slack_sdk.signature
import standardwebhooks.webhooks
import stripe
import svix.webhooks
from aiohttp import web
from helpers import run, serving

from replayproxy.api import ReplayProxy
from replayproxy.cassette import load
from replayproxy.config import Config, SignatureConfig, WebhooksConfig
from replayproxy.signing import SignatureError, sign, verify

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "providers"

SPACES = "It's a Secret to Everybody"  # GitHub's documented example
COMMAS = "rotation,looking,secret,value"
QUOTES = "\"double\" 'single' `back` \\slash"
PADDING = base64.b64encode(b"sixteen byte key").decode() + "=="  # ends in '=' twice
NON_ASCII = "clé-secrète-ключ-秘密-🔑"
PLAIN = {"spaces": SPACES, "commas": COMMAS, "quotes": QUOTES, "padding": PADDING,
         "non-ascii": NON_ASCII}


def whsec(n: int, seed: bytes) -> str:
    return "whsec_" + base64.b64encode(hashlib.sha256(seed).digest()[:n]).decode()


WHSEC = {"pad-1": whsec(32, b"a"), "pad-2": whsec(31, b"b"), "no-pad": whsec(30, b"c")}
assert WHSEC["pad-1"].endswith("=") and WHSEC["pad-2"].endswith("==")

#: Which providers' code checks each scheme.
VERIFIERS = {
    "stripe": ("stripe",),
    "standard-webhooks": ("standard-webhooks", "svix"),
    "github": ("github",),
    "slack": ("slack",),
}
#: Schemes that carry one signature per secret; the others carry the first secret's only.
MULTI = ("stripe", "standard-webhooks")


def near_misses(secret: str) -> set[str]:
    """What a splitting or trimming loader would have used instead of the secret (padding
    dropped too, but not from a whsec_ key, whose decoders accept it unpadded)."""
    parts = {secret.strip(), *secret.split(), *secret.split(",")}
    if not secret.startswith("whsec_"):
        parts.add(secret.replace("=", ""))
    return {p for p in parts if p and p != secret}


# -- the providers' code ------------------------------------------------------------------------


def node_missing() -> str | None:
    """Why the Node.js side cannot run here, or None. In CI (CI set) it must run."""
    if shutil.which("node") is None or not (NODE_DIR / "node_modules").is_dir():
        message = "Node.js or tests/providers/node_modules missing: run `npm ci` in tests/providers"
        if os.environ.get("CI"):
            pytest.fail(message)
        return message
    return None


def node(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run `cases` through tests/providers/verify.mjs in one Node process."""
    missing = node_missing()
    if missing:
        pytest.skip(missing)
    done = subprocess.run(
        ["node", "verify.mjs"], cwd=NODE_DIR, input=json.dumps(cases).encode(),
        capture_output=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    results = json.loads(done.stdout)
    assert len(results) == len(cases)
    return results


def node_verify(provider: str, secret: str, body: bytes, headers: dict[str, str]) -> dict:
    return {"op": "verify", "provider": provider, "secret": secret,
            "body_b64": base64.b64encode(body).decode(), "headers": headers}


def python_verify(provider: str, secret: str, body: bytes, headers: dict[str, str]) -> None:
    """Raise unless the provider's Python library (GitHub: its documented HMAC) accepts."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if provider == "stripe":
        stripe.Webhook.construct_event(body, lowered["stripe-signature"], secret, tolerance=300)
    elif provider == "standard-webhooks":
        standardwebhooks.webhooks.Webhook(secret).verify(body, lowered)
    elif provider == "svix":
        svix.webhooks.Webhook(secret).verify(body, lowered)
    elif provider == "slack":
        if not slack_sdk.signature.SignatureVerifier(secret).is_valid_request(body, lowered):
            raise ValueError("slack_sdk: invalid signature")
    elif provider == "github":
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, lowered.get("x-hub-signature-256", "")):
            raise ValueError("X-Hub-Signature-256 does not match")
    else:
        raise AssertionError(provider)


def python_accepts(provider: str, secret: str, body: bytes, headers: dict[str, str]) -> bool:
    try:
        python_verify(provider, secret, body, headers)
        return True
    except Exception:  # each library has its own error type
        return False


@dataclass
class Checks:
    """Expectations on signed webhooks, checked by every provider library of the scheme; the
    Node ones are batched and run by `done()`."""

    cases: list[dict[str, Any]] = field(default_factory=list)
    wanted: list[tuple[bool, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def expect(self, accepted: bool, scheme: str, secret: str, body: bytes,
               headers: dict[str, str], what: str) -> None:
        for provider in VERIFIERS[scheme]:
            where = f"{what}: {provider} with secret {secret!r}"
            if python_accepts(provider, secret, body, headers) != accepted:
                self.failures.append(f"python {where}: expected accepted={accepted}")
            self.cases.append(node_verify(provider, secret, body, headers))
            self.wanted.append((accepted, f"node {where}"))

    def done(self, extra: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        """Run the Node cases, plus `extra` ones in the same process (whose results it returns),
        and fail with every expectation that did not hold."""
        missing = node_missing()
        if missing:  # the Python libraries' verdicts still count
            assert not self.failures, "\n".join(self.failures)
            pytest.skip(missing)
        results = node([*self.cases, *extra])
        mine, theirs = results[: len(self.cases)], results[len(self.cases):]
        for result, (accepted, where) in zip(mine, self.wanted, strict=True):
            if result["ok"] != accepted:
                self.failures.append(f"{where}: expected accepted={accepted}, {result}")
        assert not self.failures, "\n".join(self.failures)
        return theirs

    def local(self, scheme: str, secrets: Sequence[str], body: bytes, headers: dict[str, str],
              what: str) -> None:
        """A webhook replayproxy signed with `secrets` (current first): the app holding the
        current secret accepts it; holding an earlier one, where the scheme carries every
        secret's signature; never with what a splitting loader would have made of them."""
        self.expect(True, scheme, secrets[0], body, headers, what)
        for old in secrets[1:]:
            self.expect(scheme in MULTI, scheme, old, body, headers, what)
        for miss in sorted(near_misses(secrets[0]))[:2]:
            self.expect(False, scheme, miss, body, headers, what)


# -- signing alone: every secret, every scheme --------------------------------------------------


def secrets_for(scheme: str) -> dict[str, str]:
    return WHSEC if scheme == "standard-webhooks" else PLAIN


def test_every_secret_signs_as_the_providers_compute() -> None:
    """Ours signs, the providers verify (single secrets and rotation lists); the providers sign,
    ours verifies, with the secret exactly as the provider took it. Every scheme, one Node run."""
    body = json.dumps({"event_id": "evt_m", "note": "Secret to Everybody, ünïcode"},
                      ensure_ascii=False).encode()
    now = int(time.time())
    checks = Checks()
    theirs: list[dict[str, Any]] = []
    signed: list[tuple[str, str, dict[str, str]]] = []  # (scheme, secret, headers)
    for scheme in VERIFIERS:
        config = SignatureConfig(scheme=scheme)
        kinds = secrets_for(scheme)
        names = list(kinds)
        for i, name in enumerate(names):
            secret, previous = kinds[name], kinds[names[i - 1]]
            one = sign(body, [secret], config, timestamp=now, webhook_id="msg_1")
            checks.local(scheme, [secret], body, one, f"ours {scheme}, {name}")
            both = sign(body, [secret, previous], config, timestamp=now, webhook_id="msg_1")
            checks.local(scheme, [secret, previous], body, both,
                         f"ours {scheme}, {name} + {names[i - 1]}")
        # the providers sign: Node where they ship a signer, and the Python libraries
        signers = {"stripe": ["stripe"], "github": ["github"],
                   "standard-webhooks": ["standard-webhooks", "svix"]}.get(scheme, [])
        theirs += [
            {"op": "sign", "provider": p, "secret": s, "timestamp": now, "id": f"msg_{n}",
             "body_b64": base64.b64encode(body).decode(), "scheme": scheme}
            for p in signers for n, s in enumerate(kinds.values())
        ]
        for secret in kinds.values():
            if scheme == "slack":  # @slack/bolt only verifies; slack_sdk signs
                sig = slack_sdk.signature.SignatureVerifier(secret).generate_signature(
                    timestamp=str(now), body=body
                )
                headers = {"X-Slack-Signature": sig, "X-Slack-Request-Timestamp": str(now)}
            elif scheme == "stripe":
                value = stripe.WebhookSignature.generate_signature_header(
                    body.decode(), secret, now
                )
                headers = {"Stripe-Signature": value}
            elif scheme == "standard-webhooks":
                when = datetime.fromtimestamp(now, tz=UTC)
                value = standardwebhooks.webhooks.Webhook(secret).sign("msg_p", when, body.decode())
                headers = {"webhook-id": "msg_p", "webhook-timestamp": str(now),
                           "webhook-signature": value}
            else:
                continue
            signed.append((scheme, secret, headers))

    # guard: the providers really check the time, so "accepted" above means fresh
    old = now - 3600
    for scheme, secret in (("stripe", SPACES), ("slack", QUOTES),
                           ("standard-webhooks", WHSEC["pad-1"])):
        stale = sign(body, [secret], SignatureConfig(scheme=scheme), timestamp=old)
        checks.expect(False, scheme, secret, body, stale, f"an hour old, {scheme}")

    results = checks.done(theirs)
    signed += [(c["scheme"], c["secret"], r["headers"])
               for c, r in zip(theirs, results, strict=True)]
    assert len(signed) == 5 * 3 + 3 * 3 + 5  # (stripe 2, github, slack) x 5; whsec 3 x 3
    for scheme, secret, headers in signed:
        config = SignatureConfig(scheme=scheme)
        verify(body, headers, [secret], config)
        other = WHSEC["no-pad"] if secret != WHSEC["no-pad"] else WHSEC["pad-1"]
        other = other if scheme == "standard-webhooks" else "another-secret-entirely"
        verify(body, headers, [other, secret], config)  # rotation: any listed secret
        for miss in near_misses(secret):
            with pytest.raises(SignatureError):
                verify(body, headers, [miss], config)


# -- record, replay, send-webhook: both sides ---------------------------------------------------


@dataclass
class Session:
    """One recording: the upstream signs in `upstream` (with the provider's own code), the app
    verifies `local`; each side's secrets are a rotation list (current first)."""

    upstream: str
    upstream_secrets: tuple[str, str]
    local: str
    local_secrets: tuple[str, str]
    replay_secrets: tuple[str, str]  # the app's secrets when replaying and sending
    default_upstream: bool = False  # leave webhooks.upstream_signature unset

    def config(self, forward_to: str | None = None) -> Config:
        hooks = WebhooksConfig(
            forward_to=forward_to,
            upstream_secret_env=["UP_SECRET", "UP_SECRET_PREVIOUS"],
            local_secret_env=["APP_SECRET", "APP_SECRET_PREVIOUS"],
            signature=SignatureConfig(scheme=self.local),
            upstream_signature=(
                None if self.default_upstream else SignatureConfig(scheme=self.upstream)
            ),
            backoff=0.01,
        )
        return Config(webhooks=hooks)

    def yaml(self) -> str:
        lines = [
            "webhooks:",
            "  upstream_secret_env: [UP_SECRET, UP_SECRET_PREVIOUS]",
            "  local_secret_env: [APP_SECRET, APP_SECRET_PREVIOUS]",
            f"  signature: {{scheme: {self.local}}}",
        ]
        if not self.default_upstream:
            lines.append(f"  upstream_signature: {{scheme: {self.upstream}}}")
        return "\n".join(lines) + "\n"


SESSIONS = [
    Session("github", (SPACES, COMMAS), "stripe", (QUOTES, NON_ASCII), (PADDING, SPACES)),
    Session("stripe", (NON_ASCII, PADDING), "slack", (SPACES, COMMAS), (QUOTES, NON_ASCII)),
    Session("slack", (QUOTES, SPACES), "github", (PADDING, NON_ASCII), (COMMAS, QUOTES)),
    Session("standard-webhooks", (WHSEC["pad-1"], WHSEC["pad-2"]), "standard-webhooks",
            (WHSEC["no-pad"], WHSEC["pad-1"]), (WHSEC["pad-2"], WHSEC["no-pad"]),
            default_upstream=True),
]


def upstream_signed(items: list[tuple[str, str, bytes, str]]) -> list[dict[str, str]]:
    """Headers for each (scheme, secret, body, event id) as the provider's own code makes them:
    Node where the provider ships a signer (svix for standard-webhooks, with svix-* headers),
    slack_sdk for Slack (@slack/bolt only verifies). One Node process for all."""
    now = int(time.time())
    out: list[dict[str, str] | None] = []
    cases = []
    for scheme, secret, body, event in items:
        if scheme == "slack":
            sig = slack_sdk.signature.SignatureVerifier(secret).generate_signature(
                timestamp=str(now), body=body
            )
            out.append({"X-Slack-Signature": sig, "X-Slack-Request-Timestamp": str(now)})
            continue
        provider = "svix" if scheme == "standard-webhooks" else scheme
        cases.append({"op": "sign", "provider": provider, "secret": secret, "timestamp": now,
                      "id": event, "body_b64": base64.b64encode(body).decode()})
        out.append(None)
    results = iter(node(cases))
    return [h if h is not None else next(results)["headers"] for h in out]


@dataclass
class App:
    """The app's webhook route: records what arrives, answers 200."""

    got: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    async def hook(self, request: web.Request) -> web.Response:
        self.got.append((await request.read(), dict(request.headers)))
        return web.json_response({"ok": True})


def test_record_replay_and_send_webhook_with_awkward_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = Checks()
    forged_statuses: list[int] = []
    sends: list[tuple[Session, Path]] = []

    async def upstream_job(request: web.Request) -> web.Response:
        spec = await request.json()
        request.app["callbacks"].append(spec["callback_url"])
        return web.json_response({"job_id": 77, "status": "PENDING",
                                  "motto": "Secret to Everybody"}, status=201)

    def bodies(n: int) -> list[tuple[bytes, str, str]]:
        """Session n's webhooks: (body, secret, event id); two good ones (signed with the
        current and the previous upstream secret), then forgeries signed with near misses."""
        session = SESSIONS[n]
        out = []
        for k, secret in enumerate(session.upstream_secrets):
            event = f"evt_{n}_{k}"
            body = {"event_id": event, "job_id": 77, "status": "COMPLETED",
                    "motto": "Secret to Everybody"}
            out.append((json.dumps(body).encode(), secret, event))
        for k, miss in enumerate(sorted(near_misses(session.upstream_secrets[0]))[:2]):
            out.append((b'{"event_id": "evt_forged", "job_id": 77}', miss, f"evt_forged_{k}"))
        return out

    planned = [bodies(n) for n in range(len(SESSIONS))]
    flat = [(SESSIONS[n].upstream, sec, body, ev)
            for n, items in enumerate(planned) for body, sec, ev in items]
    signed_iter = iter(upstream_signed(flat))
    presigned = [[next(signed_iter) for _ in items] for items in planned]

    async def one(session: Session, n: int) -> None:
        path = tmp_path / f"s{n}.yaml"
        monkeypatch.setenv("UP_SECRET", session.upstream_secrets[0])
        monkeypatch.setenv("UP_SECRET_PREVIOUS", session.upstream_secrets[1])
        monkeypatch.setenv("APP_SECRET", session.local_secrets[0])
        monkeypatch.setenv("APP_SECRET_PREVIOUS", session.local_secrets[1])
        app, upstream = App(), web.Application()
        upstream["callbacks"] = []
        upstream.router.add_post("/v1/jobs", upstream_job)
        receiver = web.Application()
        receiver.router.add_post("/hooks", app.hook)
        async with serving(receiver) as app_url, serving(upstream) as up_url:
            job = {"command": "run", "callback_url": f"{app_url}/hooks"}
            async with ReplayProxy(path, mode="all", upstream=up_url,
                                   config=session.config()) as proxy, aiohttp.ClientSession() as s:
                async with s.post(f"{proxy.url}/v1/jobs", json=job) as r:
                    assert r.status == 201
                (ingress,) = upstream["callbacks"]
                assert "/__replayproxy/webhooks/" in ingress
                for k, ((body, _, _), headers) in enumerate(
                    zip(planned[n], presigned[n], strict=True)
                ):
                    async with s.post(ingress, data=body, headers=headers) as r:
                        if k < 2:  # current, then previous upstream secret: accepted
                            assert r.status == 200, (session, await r.text())
                        else:  # what a splitting or trimming loader would have kept: refused
                            forged_statuses.append(r.status)
            assert len(app.got) == 2
            for body, headers in app.got:
                checks.local(session.local, session.local_secrets, body, headers,
                             f"record {session.upstream}->{session.local}")

            text = path.read_text(encoding="utf-8")
            for secret in (*session.upstream_secrets, *session.local_secrets):
                assert secret not in text and json.dumps(secret)[1:-1] not in text
            assert "Secret to Everybody" in text  # words of a secret are ordinary text
            recorded = load(path)
            assert len(recorded.webhooks) == 2
            assert recorded.meta["signature_scheme"] == session.local
            assert recorded.meta.get("upstream_signature_scheme") == (
                None if session.default_upstream else session.upstream
            )

            # replay: the app (new secrets) submits again; the webhooks come signed for it
            monkeypatch.setenv("APP_SECRET", session.replay_secrets[0])
            monkeypatch.setenv("APP_SECRET_PREVIOUS", session.replay_secrets[1])
            app.got.clear()
            async with ReplayProxy(path, config=session.config()) as proxy, \
                    aiohttp.ClientSession() as s:
                async with s.post(f"{proxy.url}/v1/jobs", json=job) as r:
                    assert r.status == 201, await r.text()
                for _ in range(500):
                    if len(app.got) == 2:
                        break
                    await asyncio.sleep(0.01)
            assert len(app.got) == 2, proxy.report.to_dict()
            for body, headers in app.got:
                checks.local(session.local, session.replay_secrets, body, headers,
                             f"replay {session.local}")
        sends.append((session, path))

    async def send_all() -> list[tuple[Session, App]]:
        """send-webhook, from the command line, each session's cassette at once."""
        out = []
        for session, path in sends:
            app = App()
            receiver = web.Application()
            receiver.router.add_post("/hooks", app.hook)
            out.append((session, path, app, receiver))
        results = []
        for session, path, app, receiver in out:
            async with serving(receiver) as url:
                cfg = path.with_suffix(".config.yaml")
                cfg.write_text(session.yaml())
                env = {**os.environ, "PYTHONPATH": str(ROOT),
                       "APP_SECRET": session.replay_secrets[0],
                       "APP_SECRET_PREVIOUS": session.replay_secrets[1]}
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, str(ROOT / "cli.py"), "send-webhook", str(path), "--all",
                    "--to", f"{url}/hooks", "--config", str(cfg), env=env,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )
                stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode == 0, stderr.decode()
                for secret in session.replay_secrets:
                    assert secret not in (stdout + stderr).decode()
            results.append((session, app))
        return results

    async def main() -> list[tuple[Session, App]]:
        for n, session in enumerate(SESSIONS):
            await one(session, n)
        return await send_all()

    for session, app in run(main()):
        assert len(app.got) == 2
        for body, headers in app.got:
            checks.local(session.local, session.replay_secrets, body, headers,
                         f"send-webhook {session.local}")
    assert forged_statuses and set(forged_statuses) == {401}, forged_statuses
    checks.done()


# -- the sandbox signs as configured ------------------------------------------------------------


SANDBOX_CASES = [
    ("github", (SPACES,)),
    ("stripe", (COMMAS, NON_ASCII)),
    ("slack", (QUOTES,)),
    ("standard-webhooks", (WHSEC["pad-2"], WHSEC["pad-1"])),
]


def test_sandbox_webhooks_pass_the_providers_checks() -> None:
    """The sandbox signs in the scheme and with the secrets it is given (a rotation list too)."""
    from replayproxy.demo import sandbox

    async def one(scheme: str, secrets: tuple[str, ...]) -> App:
        app = App()
        receiver = web.Application()
        receiver.router.add_post("/hooks", app.hook)
        async with serving(receiver) as hook_url:
            upstream = sandbox.create_app(api_key="sk_sandbox_key", webhook_secret=secrets,
                                          signature=SignatureConfig(scheme=scheme),
                                          step_seconds=0.001)
            async with serving(upstream) as url, aiohttp.ClientSession() as s:
                job = {"command": "run", "engine_type": "MPI", "node_size": "MICRO",
                       "callback_url": f"{hook_url}/hooks"}
                async with s.post(f"{url}/v1/jobs", json=job,
                                  headers={"Authorization": "Bearer sk_sandbox_key"}) as r:
                    assert r.status == 201
                for _ in range(500):
                    if app.got:
                        break
                    await asyncio.sleep(0.01)
        return app

    async def main() -> list[App]:
        return [await one(scheme, secrets) for scheme, secrets in SANDBOX_CASES]

    checks = Checks()
    for (scheme, secrets), app in zip(SANDBOX_CASES, run(main()), strict=True):
        ((body, headers),) = app.got
        assert json.loads(body)["type"] == "job.completed"
        checks.local(scheme, list(secrets), body, headers, f"sandbox {scheme}")
    checks.done()
