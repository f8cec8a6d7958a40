"""replayproxy's replay benchmark: `python bench/run.py [--quick] [--profile]`.

Runs, side by side in one run, a baseline (bench/baseline_server.py: minimal aiohttp, answers from
a dict) and `replayproxy replay`, each in its own process pinned to its own core, and drives them
with wrk (bench/walk.lua walks the recorded request list). Then, unless left out, the peers
(bench/peers.py) and record mode, webhook delivery and turnaround (bench/extras.py). Prints a
table and writes bench/results/<stamp>.json and bench/results/latest.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import extras  # noqa: E402
import harness  # noqa: E402
import peers  # noqa: E402
import workload  # noqa: E402
from harness import (  # noqa: E402
    CASSETTES,
    QUIET_PCT,
    RESULTS,
    Cpus,
    Server,
    baseline_cmd,
    check_bytes,
    log,
    median,
    ok,
    replay_cmd,
    wrk,
)

SMALL = 1200
READY_SIZE = 10_000

Files = dict[int, tuple[Path, Path, list[workload.Exchange]]]  # n -> cassette, requests, items


@dataclass
class Plan:
    """The options, resolved: what this run measures and how long."""

    quick: bool
    rounds: int
    seconds: float
    big: int
    ready_repeats: int
    quiet_wait: float
    webhooks: int
    with_peers: bool
    skip_note: str  # why the peers are left out ("" when they run)
    extras: bool
    profile: bool
    cpus: Cpus
    stamp: str


def parse_args(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description="replayproxy vs a minimal aiohttp baseline")
    parser.add_argument("--quick", action="store_true",
                        help="2 short rounds, 10,000 as the big cassette (under a minute)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 5; quick 2)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 5; quick 2)")
    parser.add_argument("--big", type=int, help="interactions in the big cassette "
                        "(default 100000; quick 10000)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile replayproxy under load with py-spy")
    parser.add_argument("--quiet-wait", type=float,
                        help="before each pair of runs, wait up to this many seconds for the "
                        "machine to be idle (<= 15%% busy) (default 20; quick 0)")
    parser.add_argument("--webhooks", type=int, help="webhooks in the delivery benchmark "
                        "(default 5000; quick 2000)")
    parser.add_argument("--skip-extras", action="store_true",
                        help="skip record mode, webhook delivery and turnaround")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--peers", action="store_true",
                       help="also run the mitmproxy and talkback columns with --quick")
    group.add_argument("--skip-peers", action="store_true",
                       help="skip the mitmproxy and talkback columns (installed on first use "
                       "into bench/.peers/)")
    parser.add_argument("--launcher", type=Path,
                        help="run this script instead of the `replayproxy` console script "
                        "(it must take the same arguments), e.g. to measure a prototype")
    args = parser.parse_args(argv)
    harness.use_launcher(args.launcher)
    quick = args.quick
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (0.0 if quick else 20.0)
    skip_note = ("--skip-peers" if args.skip_peers else
                 "--quick without --peers" if quick and not args.peers else "")
    return Plan(
        quick=quick,
        rounds=max(1, min(args.rounds or (2 if quick else 5), 50)),
        seconds=max(1.0, min(args.duration or (2.0 if quick else 5.0), 120.0)),
        big=args.big or (READY_SIZE if quick else 100_000),
        ready_repeats=1 if quick else 3,
        quiet_wait=max(0.0, min(quiet_wait, 120.0)),
        webhooks=max(100, min(args.webhooks or (2000 if quick else 5000), 100_000)),
        with_peers=not skip_note,
        skip_note=skip_note,
        extras=not args.skip_extras,
        profile=args.profile,
        cpus=harness.cpu_plan(),
        stamp=time.strftime("%Y%m%d-%H%M%S"),
    )


def main() -> None:
    plan = parse_args()
    harness.ensure_wrk()
    result = start_result(plan)
    files = workloads(plan)
    servers: dict[str, Server] = {}
    try:
        result["ready"], checks = time_to_ready(plan, files, servers, result["notes"])
        start_replay_servers(plan, files[SMALL][0], servers)
        checks[str(SMALL)] = check_bytes(servers["replayproxy"].url, files[SMALL][2])
        result["bytes"] = dict(sorted(checks.items(), key=lambda kv: int(kv[0])))
        throughput(plan, files, servers, result)
        peer_columns(plan, files[SMALL], result)
        if plan.extras:
            extra_sections(plan, files[SMALL][:2], result)
        if plan.profile:
            log("profiling replayproxy under wrk c32 with py-spy")
            result["profile"] = profile(files[SMALL][:2], 4 if plan.quick else 10, plan.cpus,
                                        plan.stamp)
    finally:
        harness.stop_all()
    finish(plan, result)


# ---------------------------------------------------------------------------------------------
# the steps, in the order main runs them


def start_result(plan: Plan) -> dict:
    """The JSON's head: the machine, the command, the mode."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = harness.machine()
    client_cpu, server_cpu = plan.cpus
    info["pinning"] = ({"wrk": client_cpu, "servers": server_cpu} if server_cpu is not None
                       else "none (one cpu)")
    log(f"{info['cpu_model']} x{info['nproc']}, python {info['python']}, {info['wrk']}; "
        f"rounds {plan.rounds} x {plan.seconds:g} s; big cassette {plan.big:,}")
    launcher = harness.launcher()
    return {"machine": info, "launcher": str(launcher) if launcher else None,
            "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
            "mode": "quick" if plan.quick else "full", "rounds": plan.rounds,
            "seconds_per_run": plan.seconds, "notes": []}


def workloads(plan: Plan) -> Files:
    """The cassettes and request lists (written once into bench/results/cassettes/)."""
    files: Files = {}
    for n in sorted({SMALL, READY_SIZE, plan.big}):
        t0 = time.perf_counter()
        files[n] = workload.ensure(CASSETTES, n)
        log(f"cassette {n:,}: {files[n][0].stat().st_size / 2**20:.1f} MiB "
            f"({time.perf_counter() - t0:.1f} s)")
    return files


def time_to_ready(plan: Plan, files: Files, servers: dict[str, Server],
                  notes: list[str]) -> tuple[dict, dict]:
    """From Popen to answering, at 10,000 and the big size; vcrpy loading the same 10,000 file;
    replayproxy's own split of it. The last big replay is kept (servers["big"]) for the
    throughput runs; in full mode, first, every one of its answers is checked byte for byte."""
    ready: dict = {}
    checks: dict = {}
    server_cpu = plan.cpus[1]
    for n in sorted({READY_SIZE, plan.big}):
        times, mems = [], []
        for k in range(1 if n > READY_SIZE else plan.ready_repeats):
            server = Server(f"replayproxy-{n}-ready{k}", replay_cmd(files[n][0]), server_cpu)
            times.append(server.ready_s)
            mems.append(server.memory())
            log(f"replayproxy ready with {n:,} interactions in {server.ready_s:.2f} s")
            if n == plan.big and (n > READY_SIZE or k == plan.ready_repeats - 1):
                if not plan.quick:
                    log(f"checking all {plan.big:,} answers byte for byte")
                    checks[str(plan.big)] = check_bytes(server.url, files[plan.big][2])
                servers["big"] = server
            else:
                server.stop()
        ready[str(n)] = {"replayproxy_ready_s": median(times), "runs": times,
                         "file_mib": files[n][0].stat().st_size / 2**20,
                         "rss_after_load_mib": mems[-1]}
    entry = ready[str(READY_SIZE)]
    path = str(files[READY_SIZE][0])
    try:
        vcr = [harness.timed_snippet(VCR_LOAD.format(path=path))
               for _ in range(plan.ready_repeats)]
        entry["vcrpy_deserialize_s"] = median([v[1]["load_s"] for v in vcr])
        entry["vcrpy_process_s"] = median([v[0] for v in vcr])
        log(f"vcrpy deserialize of {READY_SIZE:,}: {entry['vcrpy_deserialize_s']:.2f} s")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        notes.append(f"vcrpy load skipped: {exc}")
    entry["replayproxy_breakdown_s"] = harness.timed_snippet(RP_LOAD.format(path=path))[1]
    return ready, checks


VCR_LOAD = """
import json, time
from pathlib import Path
t0 = time.perf_counter()
from vcr.serialize import deserialize
from vcr.serializers import yamlserializer
t1 = time.perf_counter()
requests, responses = deserialize(Path({path!r}).read_text(), yamlserializer)
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "interactions": len(requests)}}))
"""

RP_LOAD = """
import json, time
t0 = time.perf_counter()
from replayproxy.cassette import load
from replayproxy.config import Config
from replayproxy.replayer import Replayer
t1 = time.perf_counter()
cassette = load({path!r})
t2 = time.perf_counter()
Replayer(cassette, Config())
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "yaml_load_s": t2 - t1, "replayer_build_s": t3 - t2}}))
"""


def start_replay_servers(plan: Plan, cassette: Path, servers: dict[str, Server]) -> None:
    """The baseline and replayproxy on the 1,200 cassette (the big replay is already up)."""
    server_cpu = plan.cpus[1]
    servers["baseline"] = Server("baseline-1200", baseline_cmd(cassette), server_cpu)
    servers["replayproxy"] = Server("replayproxy-1200", replay_cmd(cassette), server_cpu)


PAIRS = {"replayproxy/baseline@32": ("replayproxy@32", "baseline@32"),
         "replayproxy/baseline@1": ("replayproxy@1", "baseline@1"),
         "big/replayproxy@32": ("big@32", "replayproxy@32")}


def throughput(plan: Plan, files: Files, servers: dict[str, Server], result: dict) -> None:
    """Alternating rounds, c32 then c1: baseline and replayproxy back to back (the order
    reversed every other round), the big cassette right after at c32; medians and the median
    of the per-round paired ratios. Stops the three servers."""
    client_cpu = plan.cpus[0]
    requests = {"baseline": files[SMALL][1], "replayproxy": files[SMALL][1],
                "big": files[plan.big][1]}
    for name, reqs in requests.items():  # warm up: first-use paths, caches, connection setup
        wrk(servers[name].url, reqs, 32, 1, client_cpu)
    runs: dict[str, list[dict]] = collections.defaultdict(list)
    quiet: list[float] = []
    result["busy_pct_before_each_pair"] = quiet
    for r in range(plan.rounds):
        for conns in (32, 1):
            idle = harness.settle(plan.quiet_wait)
            if idle is not None:
                quiet.append(round(idle, 1))
            order = harness.alternate(["baseline", "replayproxy"], r)
            if conns == 32:
                order.append("big")
            for name in order:
                data = wrk(servers[name].url, requests[name], conns, plan.seconds, client_cpu,
                           servers[name])
                runs[f"{name}@{conns}"].append(data)
                log(harness.wrk_line(f"round {r + 1}/{plan.rounds}", name, conns, data))
    summary = {key: harness.summarise(items) for key, items in runs.items()}
    for key, (num, den) in PAIRS.items():
        summary[key] = harness.paired(runs[num], runs[den])
    result["throughput"] = summary
    result["wrk_runs"] = runs
    result["memory"] = {
        name: {"interactions": SMALL if name != "big" else plan.big,
               "file_mib": files[SMALL if name != "big" else plan.big][0].stat().st_size / 2**20,
               **servers[name].memory()}
        for name in ("baseline", "replayproxy", "big")
    }
    for name in ("baseline", "replayproxy", "big"):
        servers.pop(name).stop()


def peer_columns(plan: Plan, small: tuple[Path, Path, list[workload.Exchange]],
                 result: dict) -> None:
    """The optional mitmproxy and talkback columns (bench/peers.py); a failure is a note."""
    if not plan.with_peers:
        result["notes"].append(f"mitmproxy and talkback columns not run ({plan.skip_note})")
        return
    log("peers: installing (first run only) and converting the 1,200 interactions")

    def step() -> dict:
        with tempfile.TemporaryDirectory(prefix="replayproxy-bench-peers-") as tmp:
            found = peers.prepare(small[2], Path(tmp), RESULTS / "logs")
            return peers.measure(found, small, plan.rounds, plan.seconds, plan.cpus,
                                 plan.quiet_wait)

    harness.guarded(result, "peers", step, cleanup="peer")
    result["notes"].extend(peers.notes(result.get("peers", {})))


def extra_sections(plan: Plan, small: tuple[Path, Path], result: dict) -> None:
    """Record mode, webhook deliveries, turnaround (bench/extras.py); a failure is a note."""
    rounds = 2 if plan.quick else min(plan.rounds, 3)
    seconds = 1.0 if plan.quick else plan.seconds
    quiet_wait = min(plan.quiet_wait, 5.0)
    with tempfile.TemporaryDirectory(prefix="replayproxy-bench-") as tmp:
        work = Path(tmp)
        steps = {
            "record": lambda: extras.record_mode(small, rounds, seconds, plan.cpus, quiet_wait,
                                                 work),
            "record_pinned": lambda: extras.record_mode(small, rounds, seconds, plan.cpus,
                                                        quiet_wait, work, pinned=True),
            "webhooks": lambda: extras.webhooks(plan.webhooks, rounds, plan.cpus, work),
            "turnaround": lambda: extras.turnaround(2 if plan.quick else 4, plan.cpus, work),
        }
        for name, step in steps.items():
            log(f"{name}: starting")
            harness.guarded(result, name, step)  # the replay servers are stopped by now


def finish(plan: Plan, result: dict) -> None:
    """The load note, the table printed, the JSON written."""
    info = result["machine"]
    info["loadavg_at_end"] = harness.loadavg()
    share = harness.foreign_share(result.get("wrk_runs", {}))
    if share:
        result["notes"].append(
            f"other processes used up to {share[0]:.0f}% of the cpus during the wrk runs "
            f"(median {share[1]:.0f}%, load at start {info['loadavg_at_start']}): "
            "absolute figures are depressed and noisy; the paired ratios are the figures to read")
    text = render(result, plan.big)
    print(text)
    result["table"] = text
    out = harness.write_result(plan.stamp, result, "latest")
    log(f"wrote {out.relative_to(harness.ROOT)}")


# ---------------------------------------------------------------------------------------------
# profile (optional): py-spy on replayproxy under wrk


def profile(small: tuple[Path, Path], seconds: float, cpus: Cpus, stamp: str) -> dict:
    """py-spy on replayproxy's 1,200 replay under wrk c32: self and inclusive shares."""
    spy = shutil.which("py-spy")
    if not spy:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    client_cpu, server_cpu = cpus
    server = Server("profile-replayproxy", replay_cmd(small[0]), server_cpu)
    raw = RESULTS / f"profile-{stamp}.txt"
    try:
        wrk(server.url, small[1], 32, 1, client_cpu)  # warm up
        spy_proc = subprocess.Popen(
            [spy, "record", "--pid", str(server.proc.pid), "--rate", "200", "--duration",
             str(int(seconds)), "--format", "raw", "--output", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        load = wrk(server.url, small[1], 32, seconds + 1, client_cpu)
        spy_proc.wait(timeout=seconds + 60)
    finally:
        server.stop()
    if not raw.exists():
        return {"skipped": "py-spy wrote nothing (ptrace not permitted?)"}
    return {"raw": str(raw.relative_to(harness.ROOT)), "rps_while_profiled": load["rps"],
            **summarise_profile(raw)}


def _frame(text: str) -> str:
    # "handle (replayproxy/replayer.py:97)" -> "handle (replayproxy/replayer.py)"
    name, _, where = text.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    where = where.replace(str(harness.ROOT) + "/", "")
    return f"{name} ({where})" if where else name


def summarise_profile(raw: Path, top: int = 25, focus: str = "Replayer.handle ") -> dict:
    """Self and inclusive shares of busy samples; and what runs below `focus` (our handler)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    below: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
        at = next((i for i, f in enumerate(frames) if f.startswith(focus)), None)
        if at is not None:
            for f in set(frames[at:]):
                below[f] += n

    def pct(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]

    return {"samples": total, "self_pct": pct(own), "inclusive_pct": pct(inclusive),
            f"inclusive_pct_below {focus.strip()}": pct(below)}


# ---------------------------------------------------------------------------------------------
# the table


def replay_rows(res: dict, big: int) -> list[tuple]:
    """Rows for the replay targets: throughput, latency, CPU, ready, memory, bytes, errors."""
    t = res["throughput"]
    b32, r32, b1, r1, g32 = (t["baseline@32"], t["replayproxy@32"], t["baseline@1"],
                             t["replayproxy@1"], t["big@32"])
    rows: list[tuple] = []

    def quiet(pair: dict, key: str) -> str:
        n = pair["quiet_pairs"]
        return f"{pair[key]:.2f} n={n}" if n else "n=0"

    def ratio_row(label, base, rp, fmt, target, pair, key, good):
        rows.append((label, fmt.format(base), fmt.format(rp), f"{pair[key]:.2f}",
                     quiet(pair, key + "_quiet"), target, ok(good(pair[key]))))

    p32, p1, pbig = (t["replayproxy/baseline@32"], t["replayproxy/baseline@1"],
                     t["big/replayproxy@32"])
    ratio_row("req/s, 32 connections", b32["rps"], r32["rps"], "{:,.0f}", ">= 0.8",
              p32, "rps_ratio_median", lambda x: x >= 0.8)
    ratio_row("p99 ms, 32 connections", b32["p99_ms"], r32["p99_ms"], "{:.2f}", "<= 2.0",
              p32, "p99_ratio_median", lambda x: x <= 2.0)
    ratio_row("req/s, 1 connection", b1["rps"], r1["rps"], "{:,.0f}", ">= 0.7",
              p1, "rps_ratio_median", lambda x: x >= 0.7)
    ratio_row("p99 ms, 1 connection", b1["p99_ms"], r1["p99_ms"], "{:.2f}", "",
              p1, "p99_ratio_median", lambda x: True)
    rows.append(("server CPU us per request, c32", f"{b32['server_cpu_us_per_req']:.0f}",
                 f"{r32['server_cpu_us_per_req']:.0f}",
                 f"{r32['server_cpu_us_per_req'] / b32['server_cpu_us_per_req']:.2f}", "",
                 "<= 1.25", ok(r32["server_cpu_us_per_req"]
                               <= 1.25 * b32["server_cpu_us_per_req"])))
    rows.append((f"server CPU us per request c32, {SMALL:,} | {big:,}",
                 f"{r32['server_cpu_us_per_req']:.0f}", f"{g32['server_cpu_us_per_req']:.0f}",
                 f"{g32['server_cpu_us_per_req'] / r32['server_cpu_us_per_req']:.2f}", "",
                 "<= 1.1", ok(g32["server_cpu_us_per_req"]
                              <= 1.1 * r32["server_cpu_us_per_req"])))
    rows.append((f"req/s c32, {SMALL:,} | {big:,} interactions", f"{r32['rps']:,.0f}",
                 f"{g32['rps']:,.0f}", f"{pbig['rps_ratio_median']:.2f}",
                 quiet(pbig, "rps_ratio_median_quiet"), "0.9..1.1",
                 ok(0.9 <= pbig["rps_ratio_median"] <= 1.1)))
    ready = res["ready"]
    r10 = ready[str(READY_SIZE)]
    vcr = r10.get("vcrpy_deserialize_s")
    rows.append((f"ready s, {READY_SIZE:,} (vcrpy deserialize | replayproxy)",
                 f"{vcr:.2f}" if vcr else "n/a", f"{r10['replayproxy_ready_s']:.2f}",
                 f"{r10['replayproxy_ready_s'] / vcr:.2f}" if vcr else "", "", "<= 1 s, <= vcrpy",
                 ok(r10["replayproxy_ready_s"] <= 1.0 and (not vcr or
                                                         r10["replayproxy_ready_s"] <= vcr))))
    if str(big) in ready and big != READY_SIZE:
        rb = ready[str(big)]
        rows.append((f"ready s, {big:,}", "", f"{rb['replayproxy_ready_s']:.2f}", "", "",
                     "<= 10 s", ok(rb["replayproxy_ready_s"] <= 10)))
    for name, label in (("replayproxy", f"{SMALL:,}"), ("big", f"{big:,}")):
        mem = res["memory"][name]
        limit = 3 * mem["file_mib"] + 60
        rows.append((f"peak RSS MiB, {label} ({mem['file_mib']:.1f} MiB file)",
                     f"{res['memory']['baseline']['VmHWM']:.0f}" if name == "replayproxy" else "",
                     f"{mem.get('VmHWM', float('nan')):.0f}", "", "", f"<= {limit:.0f}",
                     ok(mem.get("VmHWM", 1e18) <= limit)))
    for n, check in res["bytes"].items():
        rows.append((f"byte-identical answers, {int(n):,}", "",
                     f"{check['checked'] - check['mismatches']}/{check['checked']}", "", "",
                     "all", ok(check["mismatches"] == 0)))
    errors = sum(v.get("errors", 0) for v in t.values())
    rows.append(("wrk errors / non-2xx (all runs)", "", str(errors), "", "", "0",
                 ok(errors == 0)))
    return rows


def render(res: dict, big: int) -> str:
    m = res["machine"]
    rows = [("metric", "baseline", "replayproxy", "ratio", "quiet", "target", ""),
            *replay_rows(res, big), *extras.rows(res), *peers.rows(res.get("peers", {}))]
    title = (f"{m['date']}  {m['cpu_model']} x{m['nproc']}  python {m['python']}  "
             f"{res['mode']}: {res['rounds']} rounds x {res['seconds_per_run']:g} s; req/s and "
             "p99 are medians, ratios the median of per-round paired ratios; quiet: the same "
             f"over pairs where other processes used <= {QUIET_PCT:g}% of the cpus")
    lines = harness.table(title, rows)
    prof = res.get("profile")
    if prof and "self_pct" in prof:
        lines.append("")
        lines.append(f"py-spy, replayproxy under wrk c32 ({prof['samples']} samples), self time:")
        for name, pct in prof["self_pct"][:12]:
            lines.append(f"  {pct:5.1f}%  {name}")
    if res.get("turnaround") and "error" not in res["turnaround"]:
        lines.append("* turnaround baseline: an in-process fake of Camber the users wrote before; "
                     "a reference, not measured here")
    for note in res["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
