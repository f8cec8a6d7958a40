"""Turnaround: the sample app's jobs against a replay, from submission to the webhook answered.

    python bench/turnaround.py --workdir DIR [--repeats R] [--launcher SCRIPT]
                               [--proxy-cpu N --app-cpu M]

1. Records a session once: `replayproxy.demo.sandbox` (jobs climb one status every 0.1 s) behind an
   in-process `ReplayProxy(mode="all")`, and `replayproxy.demo.sample_app` (polling every 0.05 s)
   submitting three jobs one after the other (invoice-march, invoice-april, fail-corrupt), each
   waited for until done (final status, output downloaded, webhook answered).
2. Replays it R times with `--timing sequence` and R times with `--fast-forward` (alternating),
   each a fresh `replayproxy replay` process (the CLI, pinned to --proxy-cpu), with a fresh
   sample app in this process (pinned to --app-cpu) whose poll sleep is 0: the app does not wait
   between polls, so the time left is the proxy's answers, the webhook delivery, loopback and the
   app's own handling.

Measured per job, on this process's clock (time.perf_counter): from just before the client
POSTs /jobs to the app, to the moment the app's `/webhooks/camber` handler has returned 200 for
that job (an aiohttp middleware around the sample app's handler). Also: how many requests the app
sent to the proxy in that span, and the time covered by at least one of them (aiohttp client
tracing on the app's own session; the rest is the webhook's delivery and the app's own work).
Prints one JSON line; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from harness import median  # noqa: E402

from replayproxy.api import ReplayProxy  # noqa: E402
from replayproxy.demo import sample_app, sandbox  # noqa: E402
from replayproxy.server import Server  # noqa: E402

FILES = ("invoice-march.pdf", "invoice-april.pdf", "fail-corrupt.pdf")
API_KEY = "sk_turnaround_3c1d9e0a"
UPSTREAM_SECRET = "camber_turnaround_upstream_77aa"
RECORD_SECRET = "local_turnaround_record_12ef"
REPLAY_SECRET = "local_turnaround_replay_9b3c"


def say(message: str) -> None:
    print(f"turnaround: {message}", file=sys.stderr, flush=True)


async def drive(camber_url: str, secret: str, api_key: str, poll_interval: float) -> list[dict]:
    """The sample app against `camber_url`; each job submitted once the one before is done."""
    app = sample_app.create_app(camber_url=camber_url, api_key=api_key, webhook_secret=secret,
                                poll_interval=poll_interval)
    hooks: list[float] = []
    spans: list[tuple[float, float]] = []

    @web.middleware
    async def mark(request: web.Request, handler):
        resp = await handler(request)
        if request.path == "/webhooks/camber" and resp.status == 200:
            hooks.append(time.perf_counter())
        return resp

    app.middlewares.append(mark)

    async def on_start(session, ctx, params) -> None:
        ctx.start = time.perf_counter()

    async def on_end(session, ctx, params) -> None:
        spans.append((ctx.start, time.perf_counter()))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    trace.on_request_end.append(on_end)
    state = app[sample_app.STATE]
    state.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"},
                                          trace_configs=[trace])
    server = Server(app, "127.0.0.1", 0)
    await server.start()
    state.self_url = server.url
    jobs = []
    try:
        async with aiohttp.ClientSession() as client:
            for name in FILES:
                spec = {"portal_schema_name": "invoice", "filename": name}
                seen = len(hooks)
                t0 = time.perf_counter()
                async with client.post(f"{server.url}/jobs", json=spec) as resp:
                    job = await resp.json()
                await asyncio.wait_for(state.done[job["id"]].wait(), 20)
                t_done = time.perf_counter()
                t_hook = hooks[seen] if len(hooks) > seen else float("nan")
                inside = [(a, b) for a, b in spans if a >= t0 and b <= t_hook]
                jobs.append({
                    "file": name,
                    "status": state.jobs[job["id"]].status,
                    "events": state.jobs[job["id"]].events,
                    "turnaround_ms": 1000 * (t_hook - t0),
                    "done_ms": 1000 * (t_done - t0),
                    "proxy_requests": len(inside),
                    "in_proxy_requests_ms": 1000 * _covered(inside),
                })
    finally:
        await server.stop()
    return jobs


def _covered(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one span (the app's requests overlap: poll and download)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


async def record(cassette: Path) -> list[dict]:
    upstream = sandbox.create_app(api_key=API_KEY, webhook_secret=UPSTREAM_SECRET,
                                  step_seconds=0.1)
    up = Server(upstream, "127.0.0.1", 0)
    await up.start()
    os.environ.update(CAMBER_WEBHOOK_SECRET=UPSTREAM_SECRET, WEBHOOK_SECRET=RECORD_SECRET,
                      CAMBER_API_KEY=API_KEY)
    try:
        async with ReplayProxy(cassette, mode="all", upstream=up.url) as proxy:
            jobs = await drive(proxy.url, RECORD_SECRET, API_KEY, 0.05)
    finally:
        await up.stop()
    return jobs


async def replay(launcher: str, cassette: Path, flags: list[str], report: Path,
                 cpu: int | None) -> tuple[list[dict], dict]:
    env = {**os.environ, "WEBHOOK_SECRET": REPLAY_SECRET}
    report.unlink(missing_ok=True)
    proc, url = await harness.start_proxy(
        [sys.executable, launcher, "replay", str(cassette), "--listen", "127.0.0.1:0",
         "--report", str(report), *flags], env, cpu)
    try:
        jobs = await drive(url, REPLAY_SECRET, "sk_not_needed_offline", 0.0)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.communicate()
    data = json.loads(report.read_text()) if report.exists() else {}
    return jobs, {"served": data.get("requests", {}).get("served"),
                  "unmatched": len(data.get("requests", {}).get("unmatched", [])),
                  "delivered": data.get("webhooks", {}).get("delivered"),
                  "diverged": data.get("diverged")}


async def main_async(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cassette = workdir / "turnaround.yaml"
    if args.app_cpu is not None:
        os.sched_setaffinity(0, {args.app_cpu})
    recorded = await record(cassette)
    say("recorded " + ", ".join(f"{j['file']} {j['status']} in {j['turnaround_ms']:.0f} ms "
                                f"({j['proxy_requests']} requests)" for j in recorded))
    modes = {"sequence": ["--timing", "sequence"],
             "fast_forward": ["--timing", "sequence", "--fast-forward"]}
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in harness.alternate(list(modes), r):
            jobs, report = await replay(args.launcher, cassette, modes[mode],
                                        workdir / f"turnaround-{mode}.json", args.proxy_cpu)
            same = [(j["status"], j["events"]) for j in jobs] == [
                (j["status"], j["events"]) for j in recorded]
            runs[mode].append({"jobs": jobs, "report": report, "same_outcome_as_recorded": same})
            say(f"{mode:<12} round {r + 1}: " + ", ".join(
                f"{j['turnaround_ms']:.1f} ms ({j['proxy_requests']} req)" for j in jobs)
                + f"; report {report}")
    summary = {}
    for mode, items in runs.items():
        jobs = [j for run in items for j in run["jobs"]]
        summary[mode] = {
            "turnaround_ms_median": median(j["turnaround_ms"] for j in jobs),
            "turnaround_ms_max": max(j["turnaround_ms"] for j in jobs),
            "in_proxy_requests_ms_median": median(j["in_proxy_requests_ms"]
                                                             for j in jobs),
            "proxy_requests_median": median(j["proxy_requests"] for j in jobs),
            "done_ms_median": median(j["done_ms"] for j in jobs),
            "jobs_measured": len(jobs),
            "all_same_outcome": all(run["same_outcome_as_recorded"] for run in items),
            "all_delivered_no_unmatched": all(run["report"]["unmatched"] == 0
                                              and run["report"]["delivered"] == len(FILES)
                                              for run in items),
        }
    return {"recorded": recorded, "runs": runs, "summary": summary,
            "recorded_polls_per_job": [j["proxy_requests"] for j in recorded]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--launcher", default=str(harness.ROOT / "cli.py"))
    parser.add_argument("--proxy-cpu", type=int)
    parser.add_argument("--app-cpu", type=int)
    args = parser.parse_args()
    args.repeats = max(1, min(args.repeats, 20))
    print(json.dumps(asyncio.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
