"""The Python API: ReplayProxy (async) and SyncReplayProxy (a background thread) for plain tests."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import aiohttp
import pytest
import requests
from helpers import job_cassette

from replayproxy.api import ReplayProxy, SyncReplayProxy
from replayproxy.cassette import save
from replayproxy.errors import CassetteError


@pytest.fixture
def cassette(tmp_path: Path) -> Path:
    data = job_cassette()
    data.webhooks = []
    path = tmp_path / "jobs.yaml"
    save(data, path)
    return path


def test_sync_proxy_serves_requests_from_a_plain_test(cassette: Path, tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    with SyncReplayProxy(cassette, report_path=report_file) as proxy:
        created = requests.post(
            f"{proxy.url}/v1/jobs",
            json={"engine_type": "MPI", "command": "python run.py invoice.pdf"},
        )
        assert created.status_code == 201 and created.json()["job_id"] == 6238
        statuses = [requests.get(f"{proxy.url}/v1/jobs/6238").json()["status"] for _ in range(4)]
        assert statuses == ["RUNNING", "RUNNING", "COMPLETED", "COMPLETED"]  # last one repeats
    assert proxy.report.served == 5
    assert proxy.report.unused == [5] and not proxy.report.diverged
    assert json.loads(report_file.read_text())["requests"]["served"] == 5


def test_sync_proxy_reports_a_miss_with_its_near_misses(cassette: Path) -> None:
    with SyncReplayProxy(cassette) as proxy:
        got = requests.get(f"{proxy.url}/v1/jobs?status=CANCELLED&page=1")
        assert got.status_code == 502
        assert got.json()["near_misses"][0]["interaction"] == 5
    assert proxy.report.diverged
    assert "query: status=CANCELLED vs status=COMPLETED" in proxy.report.summary()


def test_sync_proxy_start_failure_leaves_no_thread(tmp_path: Path) -> None:
    before = threading.active_count()
    with pytest.raises(CassetteError, match="no such cassette"):
        with SyncReplayProxy(tmp_path / "missing.yaml"):
            pass  # pragma: no cover
    assert threading.active_count() == before


def test_async_proxy_with_asyncio_run(cassette: Path) -> None:
    async def main() -> ReplayProxy:
        async with ReplayProxy(cassette) as proxy, aiohttp.ClientSession() as http:
            async with http.get(f"{proxy.url}/v1/jobs/6238") as resp:
                assert resp.status == 200
                assert (await resp.json())["status"] == "RUNNING"
        return proxy

    proxy = asyncio.run(main())
    assert proxy.report.served == 1 and proxy.report.interactions_total == 5


def test_two_proxies_at_once_get_their_own_ports(cassette: Path) -> None:
    with SyncReplayProxy(cassette) as one, SyncReplayProxy(cassette) as two:
        assert one.url != two.url
        assert requests.get(f"{one.url}/v1/jobs/6238").ok
        assert requests.get(f"{two.url}/v1/jobs/6238").ok
    assert one.report.served == two.report.served == 1


def test_record_modes_are_vcrpys_and_the_aliases_stand_for_two_of_them(cassette: Path) -> None:
    """Every mode's value is one vcrpy's own RecordMode takes; `replay` is none, `record` once;
    anything else is refused with the names a user may type."""
    from vcr.record_mode import RecordMode as VcrMode

    from replayproxy.config import RecordMode, record_mode
    from replayproxy.errors import ConfigError

    assert {m.value for m in RecordMode} <= {m.value for m in VcrMode}
    assert [record_mode(m.value) for m in RecordMode] == list(RecordMode)
    assert (record_mode("replay"), record_mode("record")) == (RecordMode.NONE, RecordMode.ONCE)
    assert ReplayProxy(cassette).mode is RecordMode.NONE
    with pytest.raises(ConfigError) as refused:
        ReplayProxy(cassette, mode="any")
    assert str(refused.value) == (
        "unknown mode 'any' (one of: replay, record, once, new_episodes, all, none)"
    )


@pytest.mark.parametrize("mode", ["replay", "once"])
def test_strict_holds_in_every_mode_that_replays(cassette: Path, mode: str) -> None:
    """`once` with a cassette on disk replays it: `strict` must count there as in `replay`."""
    with SyncReplayProxy(cassette, mode=mode, strict=True) as proxy:
        created = requests.post(
            f"{proxy.url}/v1/jobs",
            json={"engine_type": "MPI", "command": "python run.py invoice.pdf"},
        )
        assert created.status_code == 201
    assert proxy.report.served == 1  # the cassette answered: nothing was recorded
    assert proxy.report.strict is True
    assert proxy.report.unused and proxy.report.diverged
