"""Webhooks in replay, end to end: a real replay proxy, a real app client, a real webhook receiver
that checks signatures as the providers' own libraries do.

No timed assertions: ordering is checked through what the proxy had served when each webhook
arrived, and waits are bounded polls that end as soon as the expected thing has happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import standardwebhooks
import stripe
from aiohttp import web
from helpers import exchange, job_cassette, run, serving, webhook
from slack_sdk.signature import SignatureVerifier

from replayproxy import signing
from replayproxy.api import ReplayProxy
from replayproxy.cassette import Cassette, save
from replayproxy.config import Config, SignatureConfig, WebhooksConfig
from replayproxy.delivery import _retry_after, pick
from replayproxy.errors import ReplayProxyError, WebhookError
from replayproxy.replayer import ReplayOptions
from replayproxy.variables import Bindings
from replayproxy.webhooks import Due, Schedule, order, outgoing, shuffled

ROOT = Path(__file__).resolve().parent.parent
WHSEC = "whsec_" + "cmVwbGF5cHJveHktdGVzdC1zZWNyZXQtMzItYnl0ZXMh"  # base64 of 32 bytes
PLAIN = "replayproxy-test-secret"
SCHEMES = {
    "hmac-sha256": (SignatureConfig(), PLAIN),
    "stripe": (SignatureConfig(scheme="stripe"), PLAIN),
    "standard-webhooks": (SignatureConfig(scheme="standard-webhooks"), WHSEC),
    "github": (SignatureConfig(scheme="github"), PLAIN),
    "slack": (SignatureConfig(scheme="slack"), PLAIN),
}


# ---------------------------------------------------------------------------------------------
# the app's webhook route: verifies like the provider libraries, records what it got


@dataclass
class Got:
    path: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    body: bytes
    valid: bool
    error: str | None
    served: int  # interactions the proxy had served when this webhook arrived
    content_length: int | None


@dataclass
class Receiver:
    """Answers 2xx to valid webhooks and 400 to invalid ones, unless `plan` says otherwise."""

    secret: str
    signature: SignatureConfig
    plan: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    lax: bool = False  # a careless app: accepts anything
    proxy: ReplayProxy | None = None
    got: list[Got] = field(default_factory=list)

    def check(self, body: bytes, headers: dict[str, str]) -> None:
        signing.verify(body, headers, [self.secret], self.signature)
        if self.signature.scheme == "stripe":
            stripe.Webhook.construct_event(
                body.decode(), headers["Stripe-Signature"], self.secret, tolerance=300
            )
        elif self.signature.scheme == "standard-webhooks":
            standardwebhooks.Webhook(self.secret).verify(body, headers)
        elif self.signature.scheme == "slack":
            if not SignatureVerifier(self.secret).is_valid_request(body, headers):
                raise ValueError("slack_sdk SignatureVerifier: invalid")

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        try:
            self.check(body, headers)
            valid, error = True, None
        except Exception as exc:  # every library has its own error type
            valid, error = False, f"{type(exc).__name__}: {exc}"
        self.got.append(
            Got(
                request.path,
                headers,
                list(request.headers.items()),
                body,
                valid,
                error,
                self.proxy.report.served if self.proxy else -1,
                request.content_length,
            )
        )
        if self.plan:
            status, extra = self.plan.pop(0)
            return web.Response(status=status, headers=extra, text="planned")
        if valid or self.lax:
            return web.json_response({"received": True})
        return web.json_response({"error": error}, status=400)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


async def until(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll until `condition()`; the limit only turns a hang into a clear failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def config(scheme: str = "hmac-sha256", **webhooks: Any) -> Config:
    webhooks.setdefault("backoff", 0.01)
    webhooks.setdefault("attempts", 5)
    return Config(
        webhooks=WebhooksConfig(signature=SCHEMES[scheme][0], **webhooks),
    )


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    def set_secret(scheme: str) -> None:
        monkeypatch.setenv("WEBHOOK_SECRET", SCHEMES[scheme][1])

    set_secret("hmac-sha256")
    return set_secret


@asynccontextmanager
async def replaying(cassette: Cassette, tmp_path: Path, cfg: Config, **options: Any):
    path = tmp_path / f"c{uuid.uuid4().hex[:6]}.yaml"
    save(cassette, path)
    proxy = ReplayProxy(path, config=cfg, options=ReplayOptions(**options))
    await proxy.start()
    try:
        async with aiohttp.ClientSession(base_url=proxy.url) as http:
            yield proxy, http
    finally:
        await proxy.stop()


async def submit_and_poll(http: aiohttp.ClientSession, polls: int = 3) -> None:
    async with http.post(
        "/v1/jobs", json={"command": "python run.py invoice.pdf", "engine_type": "MPI"}
    ) as resp:
        assert resp.status == 201, await resp.text()
    for _ in range(polls):
        async with http.get("/v1/jobs/6238") as resp:
            assert resp.status == 200


def receiver_for(scheme: str = "hmac-sha256", **kw: Any) -> Receiver:
    sig, secret = SCHEMES[scheme]
    return Receiver(secret, sig, **kw)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# timing modes


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_sequence_webhook_arrives_once_its_after_exchange_is_served(
    tmp_path: Path, secret_env: Callable[[str], None], scheme: str
) -> None:
    secret_env(scheme)

    async def main() -> None:
        rx = receiver_for(scheme)
        async with serving(rx.app()) as hook_base:
            async with replaying(
                job_cassette(), tmp_path, config(scheme), webhook_url=f"{hook_base}/hook"
            ) as (proxy, http):
                rx.proxy = proxy
                await submit_and_poll(http, polls=1)  # interactions 1 and 2; the hook follows 3
                assert proxy.report.deliveries == []
                async with http.get("/v1/jobs/6238") as resp:
                    assert (await resp.json())["status"] == "RUNNING"  # interaction 3
                await until(lambda: rx.got, "the webhook")
            report = proxy.report
        (got,) = rx.got
        assert got.valid, got.error
        assert got.served >= 3
        assert got.path == "/hook"
        assert json.loads(got.body) == {"type": "job.completed", "job_id": 6238}
        (delivery,) = report.deliveries
        assert delivery.outcome == "delivered"
        assert [a.status for a in delivery.attempts] == [200]
        assert delivery.attempts[0].at >= 0
        assert delivery.event_id == "evt_1"
        assert not report.diverged
        if scheme == "standard-webhooks":
            assert got.headers["webhook-id"] == "evt_1"

    run(main())


def test_immediate_sends_as_soon_as_the_cause_is_served(
    tmp_path: Path, secret_env: Callable[[str], None]
) -> None:
    async def main() -> None:
        rx = receiver_for()
        async with serving(rx.app()) as hook_base:
            async with replaying(
                job_cassette(), tmp_path, config(), timing="immediate", webhook_url=hook_base
            ) as (proxy, http):
                rx.proxy = proxy
                await submit_and_poll(http, polls=0)
                await until(lambda: rx.got, "the webhook")
                assert rx.got[0].served == 1  # never waited for interaction 3
        assert rx.got[0].valid
        assert proxy.report.deliveries[0].outcome == "delivered"
        assert not proxy.report.webhooks_never_due

    run(main())


def two_delays() -> Cassette:
    cassette = job_cassette()
    cassette.webhooks = [
        webhook({"type": "job.running", "n": 1}, cause=1, after=3, event_id="slow", delay=2.0),
        webhook({"type": "job.queued", "n": 2}, cause=1, after=1, event_id="fast", delay=0.0),
    ]
    return cassette


def test_recorded_timing_orders_by_scaled_delay_without_waiting_for_polls(
    tmp_path: Path, secret_env: Callable[[str], None]
) -> None:
    async def main() -> None:
        rx = receiver_for()
        async with serving(rx.app()) as hook_base:
            async with replaying(
                two_delays(), tmp_path, config(), timing="recorded", speed=40.0,
                webhook_url=hook_base,
            ) as (proxy, http):
                rx.proxy = proxy
                await submit_and_poll(http, polls=0)
                await until(lambda: len(rx.got) == 2, "both webhooks")
        assert [json.loads(g.body)["n"] for g in rx.got] == [2, 1]
        assert all(g.served == 1 for g in rx.got)
        assert all(g.valid for g in rx.got)
        first, second = sorted(proxy.report.deliveries, key=lambda d: d.attempts[0].at)
        assert (first.event_id, second.event_id) == ("fast", "slow")

    run(main())


def test_schedule_scales_recorded_delays_and_measures_them_from_the_cause() -> None:
    cassette = two_delays()
    due = Schedule(cassette, "recorded", speed=4.0).serve(1)
    assert [(d.number, d.delay) for d in due] == [(1, 0.5), (2, 0.0)]
    assert [d.number for d in order(due, None)] == [2, 1]
    # With timestamps, the delay counts from the end of the cause's exchange.
    cassette.interactions[0].at, cassette.interactions[0].duration = 1.0, 0.5
    cassette.webhooks[0].at = 3.5
    assert Schedule(cassette, "recorded", speed=2.0).serve(1)[0].delay == 1.0
    # sequence waits for `after`; immediate does not; neither delays.
    seq = Schedule(cassette, "sequence")
    assert [d.number for d in seq.serve(1)] == [2]
    assert seq.serve(2) == [] and seq.pending() == [1]
    assert [(d.number, d.delay) for d in seq.serve(3)] == [(1, 0.0)]
    assert [d.delay for d in Schedule(cassette, "immediate").serve(1)] == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# failures and retries


def test_receiver_down_then_up(tmp_path: Path, secret_env: Callable[[str], None]) -> None:
    port = free_port()

    async def main() -> None:
        rx = receiver_for()
        async with replaying(
            job_cassette(), tmp_path, config(attempts=12), timing="immediate",
            webhook_url=f"http://127.0.0.1:{port}/hook",
        ) as (proxy, http):
            await submit_and_poll(http, polls=0)
            (delivery,) = proxy.report.deliveries
            await until(lambda: len(delivery.attempts) >= 2, "two failed attempts")
            runner = web.AppRunner(rx.app())
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                await until(lambda: delivery.outcome != "pending", "the delivery to end")
            finally:
                await runner.cleanup()
        assert delivery.outcome == "delivered"
        assert delivery.attempts[0].status is None and delivery.attempts[0].error
        assert delivery.attempts[-1].status == 200
        assert all(a.status is None for a in delivery.attempts[:-1])
        times = [a.at for a in delivery.attempts]
        assert times == sorted(times)
        assert len(rx.got) == 1 and rx.got[0].valid
        assert not proxy.report.diverged

    run(main())


def test_500_then_200_each_attempt_freshly_signed(
    tmp_path: Path, secret_env: Callable[[str], None]
) -> None:
    secret_env("standard-webhooks")

    async def main() -> None:
        rx = receiver_for("standard-webhooks", plan=[(500, {}), (502, {})])
        async with serving(rx.app()) as hook_base:
            async with replaying(
                job_cassette(), tmp_path, config("standard-webhooks"), webhook_url=hook_base
            ) as (proxy, http):
                await submit_and_poll(http)
                (delivery,) = proxy.report.deliveries
                await until(lambda: delivery.outcome != "pending", "the delivery to end")
        assert [a.status for a in delivery.attempts] == [500, 502, 200]
        assert all(g.valid for g in rx.got), [g.error for g in rx.got]
        assert {g.headers["webhook-id"] for g in rx.got} == {"evt_1"}  # stable across retries
        assert len({g.body for g in rx.got}) == 1
        assert delivery.outcome == "delivered" and not proxy.report.diverged
        entry = proxy.report.to_dict()["webhooks"]["deliveries"][0]
        assert [a["status"] for a in entry["attempts"]] == [500, 502, 200]
        assert all(isinstance(a["at"], float) for a in entry["attempts"])

    run(main())


def test_retry_after_is_honoured(tmp_path: Path, secret_env: Callable[[str], None]) -> None:
    async def main() -> None:
        rx = receiver_for(plan=[(503, {"Retry-After": "0.3"})])
        async with serving(rx.app()) as hook_base:
            async with replaying(
                job_cassette(), tmp_path, config(backoff=0.001), webhook_url=hook_base
            ) as (proxy, http):
                await submit_and_poll(http)
                (delivery,) = proxy.report.deliveries
                await until(lambda: delivery.outcome != "pending", "the delivery to end")
        first, second = delivery.attempts
        assert (first.status, second.status) == (503, 200)
        assert second.at - first.at >= 0.29  # a lower bound: the backoff alone is 0.001s

    run(main())


def test_retry_after_forms() -> None:
    assert _retry_after("2") == 2.0
    assert _retry_after("0.5") == 0.5
    assert _retry_after("-3") == 0.0
    assert _retry_after("99999") == 60.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert _retry_after("soon") is None and _retry_after(None) is None


def test_gives_up_after_the_configured_attempts(
    tmp_path: Path, secret_env: Callable[[str], None]
) -> None:
    async def main() -> None:
        rx = receiver_for(plan=[(500, {})] * 10)
        async with serving(rx.app()) as hook_base:
            async with replaying(
                job_cassette(), tmp_path, config(attempts=3), webhook_url=hook_base
            ) as (proxy, http):
                await submit_and_poll(http)
                (delivery,) = proxy.report.deliveries
                await until(lambda: delivery.outcome != "pending", "the delivery to end")
        assert [a.status for a in delivery.attempts] == [500, 500, 500]
        assert delivery.outcome == "failed"
        data = proxy.report.to_dict()
        assert data["webhooks"]["failed"] == 1 and data["diverged"] is True

    run(main())


def test_a_webhook_not_yet_sent_at_shutdown_is_reported_pending(
    tmp_path: Path, secret_env: Callable[[str], None]
) -> None:
    cassette = job_cassette()
    cassette.webhooks[0].delay = 600.0

    async def main() -> None:
        rx = receiver_for()
        async with serving(rx.app()) as hook_base:
            async with replaying(
                cassette, tmp_path, config(), timing="recorded", webhook_url=hook_base,
                drain_timeout=0.05,
            ) as (proxy, http):
                await submit_and_poll(http, polls=0)
        assert rx.got == []
        data = proxy.report.to_dict()
        assert data["webhooks"]["pending"] == 1 and data["diverged"] is True
        assert data["webhooks"]["deliveries"][0]["attempts"] == []

    run(main())


# ---------------------------------------------------------------------------------------------
# testing the app's handler


def test_duplicates_carry_the_same_event_id_and_body(
    tmp_path: Path, secret_env: Callable[[str], None]
) -> None:
    secret_env("standard-webhooks")

    async def main() -> None:
        rx = receiver_for("standard-webhooks")
        async with serving(rx.app()) as hook_base:
            async with replaying(
                job_cassette(), tmp_path, config("standard-webhooks"),
                webhook_url=hook_base, duplicate_webhooks=3,
            ) as (proxy, http):
                await submit_and_poll(http)
                await until(lambda: len(rx.got) == 3, "three copies")
        assert all(g.valid for g in rx.got)
        assert {g.headers["webhook-id"] for g in rx.got} == {"evt_1"}
        assert len({g.body for g in rx.got}) == 1
        assert [(d.copy, d.outcome) for d in proxy.report.deliveries] == [
            (1, "delivered"), (2, "delivered"), (3, "delivered")
        ]
        assert {d.event_id for d in proxy.report.deliveries} == {"evt_1"}

    run(main())


def many_hooks(count: int = 6) -> Cassette:
    cassette = job_cassette()
    cassette.webhooks = [
        webhook({"type": "job.event", "n": n}, cause=1, event_id=f"evt_{n}")
        for n in range(1, count + 1)
    ]
    return cassette


def test_shuffle_is_deterministic_for_a_seed(
    tmp_path: Path, secret_env: Callable[[str], None]
) -> None:
    async def arrivals(seed: int | None) -> list[int]:
        rx = receiver_for()
        async with serving(rx.app()) as hook_base:
            async with replaying(
                many_hooks(), tmp_path, config(), webhook_url=hook_base, shuffle_webhooks=seed
            ) as (proxy, http):
                await submit_and_poll(http, polls=0)
                await until(lambda: len(rx.got) == 6, "six webhooks")
        assert all(g.valid for g in rx.got)
        return [json.loads(g.body)["n"] for g in rx.got]

    async def main() -> None:
        expected = shuffled([1, 2, 3, 4, 5, 6], 7)
        assert expected != [1, 2, 3, 4, 5, 6]
        assert await arrivals(7) == expected
        assert await arrivals(7) == expected
        assert await arrivals(None) == [1, 2, 3, 4, 5, 6]

    run(main())


def test_order_of_due_webhooks() -> None:
    due = [Due(1, 0.0), Due(2, 0.0), Due(3, 0.0)]
    assert [d.number for d in order(due, None)] == [1, 2, 3]
    assert [d.number for d in order(due, 3)] == shuffled([1, 2, 3], 3)


@pytest.mark.parametrize("scheme", ["stripe", "standard-webhooks"])
@pytest.mark.parametrize("test", ["bad_signature", "stale_timestamp"])
def test_bad_webhooks_are_rejected_and_reported(
    tmp_path: Path, secret_env: Callable[[str], None], scheme: str, test: str
) -> None:
    secret_env(scheme)

    async def main() -> None:
        rx = receiver_for(scheme)
        async with serving(rx.app()) as hook_base:
            async with replaying(
                job_cassette(), tmp_path, config(scheme), webhook_url=hook_base, **{test: True}
            ) as (proxy, http):
                await submit_and_poll(http)
                (delivery,) = proxy.report.deliveries
                await until(lambda: delivery.outcome != "pending", "the delivery to end")
        (got,) = rx.got  # a 4xx is not retried
        assert not got.valid
        assert ("timestamp" in got.error.lower()) == (test == "stale_timestamp"), got.error
        assert delivery.test == test.replace("_", "-")
        assert delivery.outcome == "rejected"
        entry = proxy.report.to_dict()["webhooks"]["deliveries"][0]
        assert entry["rejected_as_expected"] is True
        assert proxy.report.to_dict()["webhooks"]["rejected"] == 1
        assert not proxy.report.diverged

    run(main())


def test_key_rotation_signs_with_every_local_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET_NEXT", "next-secret-1234")
    monkeypatch.setenv("WEBHOOK_SECRET", PLAIN)
    cfg = config("stripe", local_secret_env=["WEBHOOK_SECRET_NEXT", "WEBHOOK_SECRET"])

    async def main() -> None:
        rx = receiver_for("stripe")  # knows only the second (current) secret
        async with serving(rx.app()) as hook_base:
            async with replaying(job_cassette(), tmp_path, cfg, webhook_url=hook_base) as (
                proxy,
                http,
            ):
                await submit_and_poll(http)
                await until(lambda: rx.got, "the webhook")
        (got,) = rx.got
        assert got.valid, got.error
        assert got.headers["Stripe-Signature"].count("v1=") == 2

    run(main())


def test_an_app_that_accepts_a_bad_signature_is_reported(
    tmp_path: Path, secret_env: Callable[[str], None]
) -> None:
    async def main() -> None:
        rx = receiver_for(lax=True)
        async with serving(rx.app()) as hook_base:
            async with replaying(
                job_cassette(), tmp_path, config(), webhook_url=hook_base, bad_signature=True
            ) as (proxy, http):
                await submit_and_poll(http)
                (delivery,) = proxy.report.deliveries
                await until(lambda: delivery.outcome != "pending", "the delivery to end")
        assert not rx.got[0].valid
        assert delivery.rejected_as_expected is False
        assert proxy.report.diverged

    run(main())


# ---------------------------------------------------------------------------------------------
# live values, headers


RECORDED_PORT = 5001
RECORDED_UUID = "3f0c2a9e-8b1d-4c5e-9f2a-1b2c3d4e5f60"


def callback_cassette() -> Cassette:
    callback = f"http://127.0.0.1:{RECORDED_PORT}/hook"
    hook = webhook(
        {"type": "job.completed", "job_id": 6238, "external_id": RECORDED_UUID,
         "note": f"for {callback}", "nested": {"ids": [RECORDED_UUID]}},
        cause=1, after=1, target=callback, event_id="evt_9",
    )
    hook.headers += [
        ("Content-Length", "9999"),
        ("Stripe-Signature", "t=1,v1=deadbeef"),
        ("X-Signature", "sha256=stale"),
        ("webhook-signature", "v1,c3RhbGU="),
        ("webhook-timestamp", "1"),
        ("X-Hub-Signature-256", "sha256=stale"),
        ("X-Camber-Job", RECORDED_UUID),
    ]
    return Cassette(
        interactions=[
            exchange("POST", "/v1/jobs", 201, {"job_id": 6238, "status": "PENDING"},
                     {"command": "run", "callback_url": callback, "external_id": RECORDED_UUID}),
        ],
        webhooks=[hook],
    )


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_live_values_go_into_target_body_and_headers(
    tmp_path: Path, secret_env: Callable[[str], None], scheme: str
) -> None:
    secret_env(scheme)

    async def main() -> None:
        rx = receiver_for(scheme)
        live_uuid = str(uuid.uuid4())
        async with serving(rx.app()) as hook_base:
            assert not hook_base.endswith(f":{RECORDED_PORT}")
            async with replaying(callback_cassette(), tmp_path, config(scheme)) as (proxy, http):
                async with http.post(
                    "/v1/jobs",
                    json={"command": "run", "callback_url": f"{hook_base}/hook",
                          "external_id": live_uuid},
                ) as resp:
                    assert resp.status == 201, await resp.text()
                await until(lambda: rx.got, "the webhook")
        (got,) = rx.got
        assert got.valid, got.error
        assert got.path == "/hook"
        assert proxy.report.deliveries[0].url == f"{hook_base}/hook"
        data = json.loads(got.body)
        assert data["external_id"] == live_uuid and data["nested"]["ids"] == [live_uuid]
        assert data["note"] == f"for {hook_base}/hook"
        assert RECORDED_UUID.encode() not in got.body
        assert got.content_length == len(got.body)
        assert got.headers["X-Camber-Job"] == live_uuid
        names = [k.lower() for k, _ in got.raw_headers]
        assert names.count("content-length") == 1
        own = signing.signature_header_names(SCHEMES[scheme][0])
        stale = {"stripe-signature", "x-signature", "webhook-signature", "webhook-timestamp",
                 "x-hub-signature-256"} - own
        assert not stale & set(names), names

    run(main())


def test_keep_headers_names_headers_in_any_case(
    tmp_path: Path, secret_env: Callable[[str], None]
) -> None:
    """A recorded header replay drops goes out again, by replay and by send-webhook, when
    `webhooks.keep_headers` names it, whatever the case of either name."""
    from replayproxy.delivery import send_recorded

    cfg = config(keep_headers=("AUTHORIZATION", "X-Forwarded-For"))
    assert cfg.webhooks.keep_headers == ("authorization", "x-forwarded-for")
    cassette = callback_cassette()
    cassette.webhooks[0].headers += [("authorization", "Bearer recorded"),
                                     ("Cookie", "dropped=1")]

    async def main() -> tuple[Got, Got]:
        rx = receiver_for()
        async with serving(rx.app()) as hook_base:
            async with replaying(cassette, tmp_path, cfg) as (_, http):
                async with http.post("/v1/jobs", json={
                    "command": "run", "callback_url": f"{hook_base}/hook",
                    "external_id": str(uuid.uuid4())}) as resp:
                    assert resp.status == 201, await resp.text()
                await until(lambda: rx.got, "the webhook")
            (sent,) = await send_recorded(cassette, [1], f"{hook_base}/again", [PLAIN],
                                          cfg.webhooks.signature, keep=cfg.webhooks.keep_headers)
            assert sent.ok, sent
        replayed, again = rx.got
        return replayed, again

    for got in run(main()):
        assert got.valid, got.error
        assert got.headers["Authorization"] == "Bearer recorded"
        assert "Cookie" not in got.headers


def test_target_falls_back_to_forward_to_then_webhook_url(
    tmp_path: Path, secret_env: Callable[[str], None]
) -> None:
    async def main() -> None:
        forward, flag = receiver_for(), receiver_for()
        async with serving(forward.app()) as f_base, serving(flag.app()) as w_base:
            cfg = config(forward_to=f"{f_base}/fwd")
            async with replaying(
                job_cassette(), tmp_path, cfg, webhook_url=f"{w_base}/flag"
            ) as (proxy, http):
                await submit_and_poll(http)
                await until(lambda: forward.got, "the webhook")
            async with replaying(
                job_cassette(), tmp_path, config(), webhook_url=f"{w_base}/flag"
            ) as (proxy, http):
                await submit_and_poll(http)
                await until(lambda: flag.got, "the webhook")
        assert [g.path for g in forward.got] == ["/fwd"]
        assert [g.path for g in flag.got] == ["/flag"]

    run(main())


def test_no_target_fails_the_delivery(tmp_path: Path, secret_env: Callable[[str], None]) -> None:
    async def main() -> None:
        async with replaying(job_cassette(), tmp_path, config()) as (proxy, http):
            await submit_and_poll(http)
        (delivery,) = proxy.report.deliveries
        assert delivery.outcome == "failed"
        assert "no target URL" in delivery.attempts[0].error
        assert proxy.report.diverged

    run(main())


def test_outgoing_is_pure_and_keeps_a_recorded_webhook_id() -> None:
    hook = webhook({"a": 1}, cause=1)
    hook.headers.append(("webhook-id", "msg_recorded"))
    sig = SignatureConfig(scheme="standard-webhooks")
    out = outgoing(hook, "http://x/", Bindings(), [WHSEC], sig, now=1_700_000_000)
    headers = dict(out.headers)
    assert headers["webhook-id"] == "msg_recorded"
    assert [k.lower() for k, _ in out.headers].count("webhook-id") == 1
    signing.verify(out.body, headers, [WHSEC], sig, now=1_700_000_000)


# ---------------------------------------------------------------------------------------------
# start-up errors


def test_missing_secret_is_a_start_up_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("APP_HOOK_KEY", raising=False)
    cfg = replace(config(), webhooks=replace(config().webhooks, local_secret_env="APP_HOOK_KEY"))

    async def main() -> None:
        with pytest.raises(ReplayProxyError, match="APP_HOOK_KEY"):
            async with replaying(job_cassette(), tmp_path, cfg):
                pass

    run(main())


def test_a_malformed_secret_is_a_start_up_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "whsec_abcde")

    async def main() -> None:
        with pytest.raises(ReplayProxyError, match="base64"):
            async with replaying(job_cassette(), tmp_path, config("standard-webhooks")):
                pass

    run(main())


def test_pick_numbers() -> None:
    cassette = many_hooks(3)
    assert pick(cassette, 2, False) == [2]
    assert pick(cassette, None, True) == [1, 2, 3]
    for index, every in ((4, False), (0, False), (None, False), (1, True)):
        with pytest.raises(ReplayProxyError):
            pick(cassette, index, every)


# ---------------------------------------------------------------------------------------------
# the CLI in a subprocess


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_SECRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def write_config(tmp_path: Path, scheme: str = "hmac-sha256", attempts: int = 2) -> Path:
    path = tmp_path / "replayproxy.yaml"
    path.write_text(
        f"webhooks:\n  attempts: {attempts}\n  backoff: 0.01\n"
        f"  signature:\n    scheme: {scheme}\n"
    )
    return path


async def cli(*args: str, env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from cli import main; main()", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd,
    )


async def strict_replay(
    tmp_path: Path, webhook_url: str, polls: int, extra: tuple[str, ...] = (),
    listing: bool = False,
) -> tuple[int, dict[str, Any], str]:
    cassette = tmp_path / "jobs.yaml"
    save(job_cassette(), cassette)
    report = tmp_path / "report.json"
    proc = await cli(
        "replay", str(cassette), "--listen", "127.0.0.1:0", "--strict", "--report", str(report),
        "--config", str(write_config(tmp_path)), "--webhook-url", webhook_url,
        "--drain-timeout", "5", *extra,
        env=cli_env(WEBHOOK_SECRET=PLAIN), cwd=tmp_path,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith(f"replayproxy replaying {cassette} on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].strip()
        async with aiohttp.ClientSession(base_url=url) as http:
            await submit_and_poll(http, polls=polls)
            if listing:  # strict: every interaction played, the listing too
                async with http.get("/v1/jobs?status=COMPLETED&page=1") as resp:
                    assert resp.status == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode, json.loads(report.read_text()), err.decode()


def test_cli_strict_exits_1_when_a_webhook_failed(tmp_path: Path) -> None:
    async def main() -> None:
        code, report, err = await strict_replay(tmp_path, f"http://127.0.0.1:{free_port()}/", 3)
        assert code == 1, err
        hooks = report["webhooks"]
        assert hooks["failed"] == 1 and hooks["delivered"] == 0
        attempts = hooks["deliveries"][0]["attempts"]
        assert len(attempts) == 2 and all(a["status"] is None and a["error"] for a in attempts)
        assert report["diverged"] is True
        assert "failed 1" in err

    run(main())


def test_cli_strict_exits_1_when_a_webhook_never_became_due(tmp_path: Path) -> None:
    async def main() -> None:
        rx = receiver_for()
        async with serving(rx.app()) as hook_base:
            code, report, err = await strict_replay(tmp_path, hook_base, polls=1)
        assert code == 1, err
        assert report["webhooks"]["never_due"] == [1]
        assert report["webhooks"]["deliveries"] == []
        assert rx.got == []

    run(main())


def test_cli_strict_exits_0_when_all_went_as_recorded(tmp_path: Path) -> None:
    async def main() -> None:
        rx = receiver_for()
        async with serving(rx.app()) as hook_base:
            code, report, err = await strict_replay(tmp_path, hook_base, polls=3, listing=True)
        assert code == 0, err
        assert report["strict"] is True and report["interactions"]["unused"] == []
        assert report["webhooks"]["delivered"] == 1 and report["diverged"] is False
        assert report["webhooks"]["deliveries"][0]["attempts"][0]["status"] == 200
        assert rx.got and rx.got[0].valid

    run(main())


@pytest.mark.parametrize("command", ["replay", "send-webhook"])
def test_cli_names_the_missing_secret_variable(tmp_path: Path, command: str) -> None:
    cassette = tmp_path / "jobs.yaml"
    save(job_cassette(), cassette)
    args = {
        "replay": ("replay", str(cassette), "--listen", "127.0.0.1:0"),
        "send-webhook": ("send-webhook", str(cassette), "--all", "--to", "http://127.0.0.1:9/"),
    }[command]

    async def main() -> None:
        proc = await cli(*args, env=cli_env(), cwd=tmp_path)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 2, (out, err)
        assert b"WEBHOOK_SECRET" in err and b"Traceback" not in err
        assert out == b""

    run(main())


def test_send_webhook_prints_status_and_body(tmp_path: Path) -> None:
    cassette = tmp_path / "hooks.yaml"
    save(many_hooks(3), cassette)

    async def main() -> None:
        rx = receiver_for("stripe")
        async with serving(rx.app()) as base:
            proc = await cli(
                "send-webhook", str(cassette), "--index", "2", "--to", f"{base}/hook",
                "--scheme", "stripe", env=cli_env(WEBHOOK_SECRET=PLAIN), cwd=tmp_path,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err
        (got,) = rx.got
        assert got.valid and got.path == "/hook" and json.loads(got.body)["n"] == 2
        text = out.decode()
        assert "200" in text and '{"received": true}' in text and "evt_2" in text

    run(main())


def test_send_webhook_all_exits_non_zero_on_a_non_2xx(tmp_path: Path) -> None:
    cassette = tmp_path / "hooks.yaml"
    save(many_hooks(3), cassette)
    config_file = write_config(tmp_path, "standard-webhooks")

    async def main() -> None:
        rx = receiver_for("standard-webhooks", plan=[(200, {}), (500, {}), (200, {})])
        async with serving(rx.app()) as base:
            proc = await cli(
                "send-webhook", str(cassette), "--all", "--to", base, "--config", str(config_file),
                env=cli_env(WEBHOOK_SECRET=WHSEC), cwd=tmp_path,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 1, (out, err)
        assert [json.loads(g.body)["n"] for g in rx.got] == [1, 2, 3]
        assert all(g.valid for g in rx.got)
        assert [g.headers["webhook-id"] for g in rx.got] == ["evt_1", "evt_2", "evt_3"]
        assert "500" in out.decode()

    run(main())


def test_send_webhook_index_out_of_range(tmp_path: Path) -> None:
    cassette = tmp_path / "hooks.yaml"
    save(many_hooks(2), cassette)

    async def main() -> None:
        proc = await cli(
            "send-webhook", str(cassette), "--index", "5", "--to", "http://127.0.0.1:9/",
            env=cli_env(WEBHOOK_SECRET=PLAIN), cwd=tmp_path,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 2 and b"1 to 2" in err and b"Traceback" not in err

    run(main())


def test_wait_for_webhooks_returns_once_settled_and_raises_the_sentence(
    tmp_path: Path, secret_env: Callable[[str], None]
) -> None:
    async def main() -> None:
        ok = receiver_for()
        refusing = receiver_for(plan=[(403, {})] * 10)
        async with serving(ok.app()) as good, serving(refusing.app()) as bad:
            cassette = job_cassette()
            cassette.webhooks[0].delay = 0.3
            async with replaying(
                cassette, tmp_path, config(), webhook_url=good, timing="recorded"
            ) as (proxy, http):
                await submit_and_poll(http)
                report = await proxy.wait_for_webhooks(5)  # waits out the recorded delay
                assert report.deliveries[0].outcome == "delivered" and ok.got
                assert not report.diverged  # the listing is unused: not a divergence
            assert proxy.report.unused == [5] and not proxy.report.diverged
            async with replaying(
                job_cassette(), tmp_path, config(attempts=2), webhook_url=bad
            ) as (proxy, http):
                await submit_and_poll(http)
                with pytest.raises(WebhookError) as caught:
                    await proxy.wait_for_webhooks(5)
        text = str(caught.value)
        assert text.startswith("webhooks not delivered as expected:\nwebhook 1 (job.completed)")
        assert "failed after 2 attempt(s)\n  attempt 1: 403" in text
        assert "hint: 403 usually means the app refused the signature" in text

    run(main())


def test_strict_proxy_counts_unused_and_never_due(
    tmp_path: Path, secret_env: Callable[[str], None]
) -> None:
    path = tmp_path / "jobs.yaml"
    save(job_cassette(), path)

    async def main() -> ReplayProxy:
        async with ReplayProxy(path, config=config(), strict=True) as proxy:
            async with aiohttp.ClientSession(base_url=proxy.url) as http:
                await submit_and_poll(http, polls=1)
        return proxy

    proxy = run(main())
    report = proxy.report
    assert report.strict and report.diverged
    assert report.divergences(strict=False) == []  # the same replay, not strict: fine
    assert report.divergences() == [
        "3 of 5 interaction(s) never used (strict): #3 GET /v1/jobs/6238, #4 GET /v1/jobs/6238, "
        "#5 GET /v1/jobs?status=COMPLETED&page=1",
        "webhook 1 (job.completed) never due: it waits for #3 GET /v1/jobs/6238, never replayed",
    ]
    assert report.to_dict()["webhooks"]["waiting"] == {"1": [3]}
