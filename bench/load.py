"""Load: N concurrent clients x M requests each, through `replayproxy record` (against the
sandbox) and then through `replayproxy replay`, checking every exchange and every answer.

    python bench/load.py                      # the full size: 50 clients x 2,000 requests
    python bench/load.py --clients 50 --requests 40

The proxy runs as the real CLI in a subprocess (loopback only), so its peak RSS is the proxy's
own, not this driver's: for record, getrusage(RUSAGE_CHILDREN) once it has exited (writing the
cassette included); for replay, VmHWM from /proc/PID/status just before it is stopped. The
sandbox runs in this process. Each client is sequential (one connection); the clients run at
once. A quarter of the requests submit a job (a unique command), the rest poll the client's
latest job with a unique query; every answer must be the one for its own request.

Checks: the cassette holds every exchange exactly once, whole (request and answer belong
together), none interleaved; the replay answers every request with the recorded bytes.
`tests/test_load.py` runs the same code at a bounded size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

from replayproxy.cassette import load  # noqa: E402
from replayproxy.demo import sandbox  # noqa: E402

API_KEY = "sk_load_test_key_0d5e"
UPSTREAM_SECRET = "camber_load_upstream_f81c"
LOCAL_SECRET = "local_load_secret_93ab"


def _env() -> dict[str, str]:
    return {**os.environ, "CAMBER_API_KEY": API_KEY, "CAMBER_WEBHOOK_SECRET": UPSTREAM_SECRET,
            "WEBHOOK_SECRET": LOCAL_SECRET}


async def _start(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    cmd = [sys.executable, str(harness.ROOT / "cli.py"), *args, "--listen", "127.0.0.1:0"]
    return await harness.start_proxy(cmd, _env())


async def _stop(proc: asyncio.subprocess.Process, timeout: float) -> tuple[float | None, str]:
    """SIGTERM, bounded; (peak RSS in MiB just before, its stderr)."""
    peak = harness.memory(proc.pid).get("VmHWM")
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"the proxy exited {proc.returncode}: {err.decode()[-2000:]}")
    return peak, err.decode()


async def _client(url: str, c: int, requests: int, answers: dict[tuple[int, int], bytes],
                  expected: dict[tuple[int, int], bytes] | None, errors: list[str]) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    job_id = None
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as s:
        for n in range(requests):
            if job_id is None or n % 4 == 0:
                body = {"command": f"python run.py client-{c} request-{n}",
                        "engine_type": "MPI", "node_size": "MICRO", "tags": [f"c{c}", f"n{n}"]}
                call = s.post(f"{url}/v1/jobs", data=json.dumps(body))
            else:
                call = s.get(f"{url}/v1/jobs/{job_id}?client={c}&n={n}")
            async with call as r:
                raw = await r.read()
                if r.status not in (200, 201):
                    errors.append(f"client {c} request {n}: {r.status} {raw[:200]!r}")
                    return
            data = json.loads(raw)
            if "command" in data and data["command"].endswith(f"client-{c} request-{n}"):
                job_id = data["job_id"]
            elif job_id is None or data.get("job_id") != job_id:
                errors.append(f"client {c} request {n}: an answer that is not its own: {data}")
                return
            answers[(c, n)] = raw
            if expected is not None and expected[(c, n)] != raw:
                errors.append(f"client {c} request {n}: replay answered other bytes")
                return


async def _drive(url: str, clients: int, requests: int,
                 expected: dict[tuple[int, int], bytes] | None = None
                 ) -> tuple[dict[tuple[int, int], bytes], float]:
    answers: dict[tuple[int, int], bytes] = {}
    errors: list[str] = []
    started = time.monotonic()
    await asyncio.gather(*(_client(url, c, requests, answers, expected, errors)
                           for c in range(clients)))
    elapsed = time.monotonic() - started
    if errors:
        raise AssertionError(f"{len(errors)} wrong answers, e.g. " + "; ".join(errors[:3]))
    return answers, elapsed


def check_cassette(path: Path, clients: int, requests: int,
                   answers: dict[tuple[int, int], bytes]) -> int:
    """Every exchange exactly once and whole; returns how many interactions there are."""
    cassette = load(path)
    seen: set[tuple[int, int]] = set()
    for number, item in enumerate(cassette.interactions, start=1):
        req, res = item.request, item.response
        answer = json.loads(res.body)
        if req.method == "POST":
            command = json.loads(req.body)["command"]
            assert answer["command"] == command, f"#{number}: answer of another request"
            c, n = (int(part.split("-")[1]) for part in command.split()[-2:])
        else:
            query = dict(p.split("=") for p in req.uri.split("?", 1)[1].split("&"))
            c, n = int(query["client"]), int(query["n"])
            assert req.uri.split("?")[0].endswith(f"/v1/jobs/{answer['job_id']}"), f"#{number}"
        assert (c, n) not in seen, f"#{number}: client {c} request {n} recorded twice"
        seen.add((c, n))
        assert res.body == answers[(c, n)], f"#{number}: not the bytes the client got"
    missing = {(c, n) for c in range(clients) for n in range(requests)} - seen
    assert not missing, f"{len(missing)} exchanges not recorded, e.g. {sorted(missing)[:3]}"
    return len(cassette.interactions)


async def run_load(workdir: Path, clients: int, requests: int,
                   stop_timeout: float = 600.0) -> dict[str, Any]:
    """Record, check, replay; the measurements."""
    path = workdir / "load.yaml"
    upstream = sandbox.create_app(api_key=API_KEY, webhook_secret=UPSTREAM_SECRET,
                                  step_seconds=3600.0)
    runner = web.AppRunner(upstream, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    camber = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        proc, url = await _start("record", str(path), "--upstream", camber, "--mode", "all")
        try:
            answers, record_s = await _drive(url, clients, requests)
        finally:
            started = time.monotonic()
            record_rss, _ = await _stop(proc, stop_timeout)
            save_s = time.monotonic() - started
            # the record process is the only child that has ended: its peak, saving included
            record_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 or record_rss
    finally:
        await runner.cleanup()
    interactions = check_cassette(path, clients, requests, answers)

    started = time.monotonic()
    proc, url = await _start("replay", str(path))
    load_s = time.monotonic() - started
    try:
        _, replay_s = await _drive(url, clients, requests, expected=answers)
    finally:
        replay_rss, err = await _stop(proc, stop_timeout)
    assert f"served {clients * requests}, unmatched 0, unused 0" in err, err
    total = clients * requests
    return {
        "clients": clients,
        "requests_per_client": requests,
        "exchanges": total,
        "interactions_recorded": interactions,
        "cassette_bytes": path.stat().st_size,
        "record_seconds": round(record_s, 2),
        "record_rps": round(total / record_s),
        "record_stop_and_save_seconds": round(save_s, 2),
        "record_peak_rss_mib": round(record_rss, 1) if record_rss else None,
        "replay_start_seconds": round(load_s, 2),
        "replay_seconds": round(replay_s, 2),
        "replay_rps": round(total / replay_s),
        "replay_peak_rss_mib": round(replay_rss, 1) if replay_rss else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--keep", help="keep the cassette in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="replayproxy-load-") as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(run_load(workdir, args.clients, args.requests))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
