"""The variants a cassette yields (pure rules), and each one played by a real replay.

The replays run a real aiohttp client against a ReplayProxy on 127.0.0.1 and a real webhook
receiver; what each variant promises (docs/vary.md) is checked from the outside.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from helpers import exchange, run, serving, webhook

from replayproxy.api import ReplayProxy
from replayproxy.cassette import Cassette, load, save
from replayproxy.config import ExpectConfig, SignatureConfig
from replayproxy.errors import ReplayProxyError
from replayproxy.replayer import ReplayOptions
from replayproxy.signing import signs_timestamp
from replayproxy.variants import (
    INTERACTION_KINDS,
    WEBHOOK_KINDS,
    Variant,
    depended_on,
    derive,
    expectation,
    facts,
    find,
    select,
)

ROOT = Path(__file__).resolve().parents[1]
SECRET = "variants-test-secret"


def committed() -> Cassette:
    return load(ROOT / "cassettes" / "camber-jobs.yaml")


# -- the rules ------------------------------------------------------------------------------


def test_names_of_the_committed_three_job_cassette() -> None:
    names = [v.name for v in derive(committed())]
    webhook_kinds = [k for k in WEBHOOK_KINDS if k != "stale-timestamp"]  # hmac-sha256: no ts
    expected = [f"webhook-{n}-{k}" for n in (1, 2, 3) for k in webhook_kinds]
    expected.append("webhooks-reordered")
    expected += [f"interaction-{n}-{k}" for n in (1, 4, 34) for k in INTERACTION_KINDS]
    assert names == expected
    assert len(set(names)) == len(names)


def test_the_varied_interactions_are_the_first_submit_poll_and_download() -> None:
    tape = committed()
    numbers = depended_on(facts(tape, SignatureConfig()))
    assert numbers == [1, 4, 34]
    paths = [urlsplit(tape.interactions[n - 1].request.uri).path for n in numbers]
    assert paths == ["/v1/jobs", "/v1/jobs/6230", "/v1/jobs/6230/outputs/result.bin"]


@pytest.mark.parametrize(
    "scheme, signs", [("stripe", True), ("standard-webhooks", True), ("slack", True),
                      ("github", False), ("hmac-sha256", False)]
)
def test_stale_timestamp_only_where_the_scheme_signs_one(scheme: str, signs: bool) -> None:
    config = SignatureConfig(scheme=scheme)
    assert signs_timestamp(config) is signs
    stale = [v.name for v in derive(committed(), config) if v.kind == "stale-timestamp"]
    assert stale == ([f"webhook-{n}-stale-timestamp" for n in (1, 2, 3)] if signs else [])


def test_derivation_is_deterministic_and_describes_each_variant() -> None:
    first, second = derive(committed()), derive(committed())
    assert first == second
    for v in first:
        assert v.did and v.models and v.name.endswith(v.kind) or v.kind == "reordered"
    late = find(first, "webhook-1-late")
    assert late.wait_for == (31, 34)  # its job's last poll and download, recorded after it
    reorder = find(first, "webhooks-reordered")
    assert reorder.order == (3, 2, 1)
    early = find(first, "webhook-2-early")
    assert early.interaction == 2  # its cause


def test_select_by_group_glob_and_comma() -> None:
    variants = derive(committed())
    assert len(select(variants, "webhooks")) == 19
    assert [v.name for v in select(variants, "interaction-34-*")] == [
        f"interaction-34-{k}" for k in INTERACTION_KINDS
    ]
    both = select(variants, ["webhook-1-lost,webhooks-reordered", "interaction-1-429"])
    assert [v.name for v in both] == ["webhook-1-lost", "webhooks-reordered", "interaction-1-429"]
    with pytest.raises(ReplayProxyError, match="'interaction-7-\\*' matches no variant"):
        select(variants, "interaction-7-*")
    with pytest.raises(ReplayProxyError, match="no variant 'webhook-9-lost'.*webhook-1-lost"):
        find(variants, "webhook-9-lost")


def test_default_expectations() -> None:
    expect = ExpectConfig()
    survive = ["webhook-2-duplicate", "webhooks-reordered", "webhook-1-sender-retry",
               "interaction-4-503-once", "interaction-1-429", "interaction-34-slow", "recorded"]
    assert {expectation(n, expect) for n in survive} == {"survive"}
    assert expectation("webhook-3-lost", expect) == "may-fail"
    for name in ("webhook-1-early", "webhook-1-bad-signature", "interaction-1-timeout",
                 "interaction-1-reset", "webhook-1-late"):
        assert expectation(name, expect) is None
    everything = ExpectConfig(survive=("*",), may_fail=("webhook-*-lost",))
    assert expectation("webhook-1-lost", everything) == "may-fail"
    assert expectation("webhook-1-early", everything) == "survive"


def test_no_webhooks_no_webhook_variants_every_kind_of_exchange_varied() -> None:
    tape = Cassette(interactions=[
        exchange("POST", "/v1/jobs", 201, {"job_id": 7001}),
        exchange("GET", "/v1/jobs/7001", 200, {"status": "RUNNING"}),
        exchange("GET", "/v1/jobs/7001", 200, {"status": "COMPLETED"}),
    ])
    names = [v.name for v in derive(tape)]
    assert names == [f"interaction-{n}-{k}" for n in (1, 2) for k in INTERACTION_KINDS]


# -- played by a replay ---------------------------------------------------------------------


def two_jobs() -> Cassette:
    """Two submits, a poll each, a download; one webhook per job due after its submit."""
    return Cassette(
        interactions=[
            exchange("POST", "/v1/jobs", 201, {"job_id": 7001, "status": "PENDING"},
                     {"command": "a"}, at=0.0),
            exchange("POST", "/v1/jobs", 201, {"job_id": 7002, "status": "PENDING"},
                     {"command": "b"}, at=0.1),
            exchange("GET", "/v1/jobs/7001", 200, {"job_id": 7001, "status": "COMPLETED"},
                     at=1.0),
            exchange("GET", "/v1/jobs/7002", 200, {"job_id": 7002, "status": "COMPLETED"},
                     at=1.1),
        ],
        webhooks=[
            webhook({"event_id": "evt_a", "job_id": 7001, "type": "job.completed"}, cause=1,
                    after=1, event_id="evt_a", delay=0.1),
            webhook({"event_id": "evt_b", "job_id": 7002, "type": "job.completed"}, cause=2,
                    after=2, event_id="evt_b", delay=0.1),
        ],
    )


class Receiver:
    """The app's webhook route, and a log of what happened in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        good = hmac.compare_digest(
            request.headers.get("X-Signature", ""),
            "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
        )
        self.log.append(("webhook", (body, good)))
        await asyncio.sleep(0.05)  # a handler that takes a moment
        return web.json_response({"ok": good}, status=self.status if good else 401)

    def webhooks(self) -> list[tuple[bytes, bool]]:
        return [item for kind, item in self.log if kind == "webhook"]


async def play(variant: Variant | None, calls: Any, cassette: Cassette | None = None,
               tmp: Path | None = None, **options: Any):
    """Replay `cassette` under `variant`; `calls(http, url, log)` is the client's side."""
    path = tmp / "c.yaml"
    save(cassette or two_jobs(), path)
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    async with serving(app) as hooks, aiohttp.ClientSession() as http:
        opts = ReplayOptions(webhook_url=f"{hooks}/hooks", variant=variant, **options)
        async with ReplayProxy(path, options=opts) as proxy:
            await calls(http, proxy.url, receiver.log)
            await asyncio.sleep(0.3)
    return receiver, proxy.report


async def submit(http: aiohttp.ClientSession, url: str, log: list, command: str = "a") -> int:
    async with http.post(f"{url}/v1/jobs", json={"command": command}) as resp:
        await resp.read()
        log.append(("answer", (command, resp.status)))
        return resp.status


def named(name: str) -> Variant:
    return find(derive(two_jobs()), name)


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)


@pytest.mark.parametrize("name, status", [("interaction-1-503-once", 503),
                                          ("interaction-1-429", 429)])
def test_refused_once_then_answered_as_recorded(tmp_path: Path, name: str, status: int) -> None:
    seen = []

    async def calls(http, url, log):
        for _ in range(2):
            async with http.post(f"{url}/v1/jobs", json={"command": "a"}) as resp:
                seen.append((resp.status, resp.headers.get("Retry-After"), await resp.json()))

    receiver, report = run(play(named(name), calls, tmp=tmp_path))
    assert [s for s, _, _ in seen] == [status, 201]
    assert seen[0][1] == ("1" if status == 429 else None)
    assert seen[1][2]["job_id"] == 7001
    assert len(receiver.webhooks()) == 1  # due after the real answer, once
    assert not report.unmatched and report.deliveries[0].outcome == "delivered"


def test_reset_once_then_answered(tmp_path: Path) -> None:
    errors = []

    async def calls(http, url, log):
        try:
            await submit(http, url, log)
        except aiohttp.ClientError as exc:
            errors.append(exc)
        assert await submit(http, url, log) == 201

    receiver, report = run(play(named("interaction-1-reset"), calls, tmp=tmp_path))
    assert len(errors) == 1 and isinstance(
        errors[0], (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
    ), errors
    assert len(receiver.webhooks()) == 1 and not report.unmatched
    assert report.deliveries[0].outcome == "delivered"


def test_timeout_holds_until_the_client_gives_up_and_the_work_is_done(tmp_path: Path) -> None:
    async def calls(http, url, log):
        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            async with http.post(f"{url}/v1/jobs", json={"command": "a"},
                                 timeout=aiohttp.ClientTimeout(total=0.4)) as resp:
                await resp.read()
        assert time.monotonic() - start >= 0.4
        await asyncio.sleep(0.2)

    receiver, report = run(play(named("interaction-1-timeout"), calls, tmp=tmp_path))
    # Camber accepted the job although the app never heard: its webhook still comes.
    assert len(receiver.webhooks()) == 1 and report.served == 1


def test_slow_answer(tmp_path: Path) -> None:
    variant = named("interaction-3-slow")
    took = []

    async def calls(http, url, log):
        await submit(http, url, log)
        start = time.monotonic()
        async with http.get(f"{url}/v1/jobs/7001") as resp:
            assert resp.status == 200
        took.append(time.monotonic() - start)

    run(play(variant, calls, tmp=tmp_path))
    assert variant.hold == 0.5 and took[0] >= 0.5


def test_lost_webhook_is_not_sent_and_not_a_divergence(tmp_path: Path) -> None:
    async def calls(http, url, log):
        await submit(http, url, log, "a")
        await submit(http, url, log, "b")

    receiver, report = run(play(named("webhook-1-lost"), calls, tmp=tmp_path))
    assert [b for b, _ in receiver.webhooks()] == [b'{"event_id": "evt_b", "job_id": 7002, '
                                                   b'"type": "job.completed"}']
    assert not report.diverged


def test_early_webhook_arrives_and_is_answered_before_the_submit_answer(tmp_path: Path) -> None:
    async def calls(http, url, log):
        await submit(http, url, log, "a")

    receiver, report = run(play(named("webhook-1-early"), calls, tmp=tmp_path))
    kinds = [k for k, _ in receiver.log]
    assert kinds == ["webhook", "answer"]
    assert [d.outcome for d in report.deliveries] == ["delivered"]
    assert report.webhooks_never_due == [2]  # job b was never submitted; webhook 1 is not late


def test_early_webhook_refused_is_retried_before_the_answer_then_fails(tmp_path: Path) -> None:
    """An app that 404s a webhook for a job it does not know yet gets every retry before its
    submit answer arrives: the event is lost, and the replay says so."""
    async def calls(http, url, log):
        await submit(http, url, log, "a")

    async def scenario():
        path = tmp_path / "c.yaml"
        save(two_jobs(), path)
        receiver = Receiver()
        receiver.status = 404
        app = web.Application()
        app.router.add_post("/hooks", receiver.handle)
        async with serving(app) as hooks, aiohttp.ClientSession() as http:
            opts = ReplayOptions(webhook_url=f"{hooks}/hooks", variant=named("webhook-1-early"))
            async with ReplayProxy(path, options=opts) as proxy:
                await calls(http, proxy.url, receiver.log)
        return receiver, proxy.report

    receiver, report = run(scenario())
    kinds = [k for k, _ in receiver.log]
    assert kinds == ["webhook"] * 5 + ["answer"]  # webhooks.attempts, all before the answer
    assert report.deliveries[0].outcome == "failed" and report.diverged


def test_duplicate_and_sender_retry_deliver_the_event_twice(tmp_path: Path) -> None:
    async def calls(http, url, log):
        await submit(http, url, log, "a")
        await submit(http, url, log, "b")

    receiver, report = run(play(named("webhook-1-duplicate"), calls, tmp=tmp_path))
    assert len(receiver.webhooks()) == 3
    assert [(d.webhook, d.copy) for d in report.deliveries] == [(1, 1), (1, 2), (2, 1)]
    assert not report.diverged

    receiver, report = run(play(named("webhook-1-sender-retry"), calls, tmp=tmp_path))
    assert len(receiver.webhooks()) == 3  # the app got webhook 1 twice, all signed well
    assert all(good for _, good in receiver.webhooks())
    delivery, _ = report.deliveries
    first, second = delivery.attempts
    assert first.status is None and "hung up" in first.error
    assert second.status == 200 and delivery.outcome == "delivered" and not report.diverged


def test_bad_signature_on_one_webhook_only(tmp_path: Path) -> None:
    async def calls(http, url, log):
        await submit(http, url, log, "a")
        await submit(http, url, log, "b")

    receiver, report = run(play(named("webhook-2-bad-signature"), calls, tmp=tmp_path))
    assert [good for _, good in receiver.webhooks()] == [True, False]
    assert [d.outcome for d in report.deliveries] == ["delivered", "rejected"]
    assert not report.diverged  # the app refused the forged one, as it must


def test_reordered_webhooks_go_out_last_job_first(tmp_path: Path) -> None:
    async def calls(http, url, log):
        await submit(http, url, log, "a")
        await submit(http, url, log, "b")

    receiver, report = run(play(named("webhooks-reordered"), calls, tmp=tmp_path))
    assert [b'evt_b' in b for b, _ in receiver.webhooks()] == [True, False]
    assert not report.diverged


def test_late_webhook_waits_for_the_apps_poll(tmp_path: Path) -> None:
    variant = named("webhook-1-late")
    assert variant.wait_for == (3,)

    async def calls(http, url, log):
        await submit(http, url, log, "a")
        await asyncio.sleep(0.3)
        log.append(("poll", None))
        async with http.get(f"{url}/v1/jobs/7001") as resp:
            await resp.read()

    receiver, report = run(play(variant, calls, tmp=tmp_path))
    assert [k for k, _ in receiver.log] == ["answer", "poll", "webhook"]
    assert [d.outcome for d in report.deliveries] == ["delivered"]


def test_late_webhook_without_a_poll_comes_after_its_hold(tmp_path: Path) -> None:
    variant = dataclasses.replace(named("webhook-1-late"), hold=0.4)
    times = []

    async def calls(http, url, log):
        await submit(http, url, log, "a")
        times.append(time.monotonic())
        while not any(k == "webhook" for k, _ in log):
            await asyncio.sleep(0.01)
        times.append(time.monotonic())

    run(play(variant, calls, tmp=tmp_path))
    assert times[1] - times[0] >= 0.4
