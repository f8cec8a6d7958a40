"""The targets beyond replay throughput: record mode, webhook delivery rate, turnaround.

Called by bench/run.py; each returns a dict for the JSON, and `rows` draws their table rows.
Every process started here is a `harness.Server` (stopped by run.py's `finally`) or a bounded
`subprocess.run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import CASSETTES, HERE, ROOT, Cpus, Server, get_json, log, median, ok, pinned

SECRET = "whbench_local_secret_5f2a9c"  # WEBHOOK_SECRET of the replays and the receiver
UPSTREAM = "https://staging.camber.example"


# ---------------------------------------------------------------------------------------------
# 1. record mode: wrk -> replayproxy record -> upstream, against wrk -> upstream


def _count_lines(path: Path, offset: int, needle: bytes) -> tuple[int, int]:
    """Complete lines from `offset` that contain `needle`; (count, offset after the last one)."""
    count = 0
    with contextlib.suppress(FileNotFoundError), path.open("rb") as fh:
        fh.seek(offset)
        tail = b""
        while True:
            chunk = fh.read(1 << 22)
            if not chunk:
                break
            data = tail + chunk
            cut = data.rfind(b"\n") + 1
            count += data[:cut].count(needle)
            offset += cut
            tail = data[cut:]
    return count, offset


def _count_items(path: Path) -> int:
    """Interactions in a saved cassette: its top-level `- request:` lines."""
    with contextlib.suppress(FileNotFoundError), path.open("rb") as fh:
        return sum(1 for line in fh if line == b"- request:\n")
    return 0


def record_mode(small: tuple[Path, Path], rounds: int, seconds: float, cpus: Cpus,
                quiet_wait: float, workdir: Path, pinned: bool = False) -> dict:
    """Direct and through `record`, alternating. Three processes share two cpus here (wrk,
    the upstream, the proxy), so by default none is pinned and the OS places them, in the
    direct runs as in the record runs; `pinned` puts wrk and the upstream on a cpu each, as
    the replay runs do, which leaves the proxy the scraps of both (reported for comparison)."""
    client_cpu, server_cpu = cpus if pinned else (None, None)
    cassette_in, requests = small
    upstream = Server("upstream-1200", [*harness.baseline_cmd(cassette_in), "--count"],
                      server_cpu)
    count_url = upstream.url + "/__bench/count"

    def served() -> int:
        return get_json(count_url)["served"]

    out_path = workdir / "recorded.yaml"
    journal = out_path.with_name(out_path.name + ".journal")
    for stale in (out_path, journal):
        stale.unlink(missing_ok=True)
    before_start = served()
    cmd = harness.replayproxy("record", str(out_path), "--upstream", upstream.url, "--mode", "all",
                              "--listen", "127.0.0.1:0")
    # the proxy is never pinned (with `pinned`, it competes with both pinned processes)
    recorder = Server("record-1200", cmd, None)
    direct_total = 0
    _, journal_offset = _count_lines(journal, 0, b"")  # past the ready probe's exchange
    runs: dict[str, list[dict]] = {"direct@32": [], "record@32": [], "direct@1": [],
                                   "record@1": []}
    per_run_checks = []
    try:
        def run(name: str, conns: int, secs: float) -> dict:
            nonlocal direct_total, journal_offset
            target = upstream if name == "direct" else recorder
            c0 = served()
            data = harness.wrk(target.url, requests, conns, secs, client_cpu, target)
            time.sleep(0.2)  # requests wrk left in flight reach the upstream and the journal
            delta = served() - c0
            if name == "direct":
                direct_total += delta
            else:
                got, journal_offset = _count_lines(journal, journal_offset,
                                                   b'"kind":"interaction"')
                per_run_checks.append({"forwarded": delta, "journaled": got,
                                       "wrk_requests": data["requests"]})
            return data

        run("direct", 32, 1)  # warm up
        run("record", 32, 1)
        for r in range(rounds):
            for conns in (32, 1):
                if quiet_wait > 0:
                    harness.wait_quiet(quiet_wait)
                for name in harness.alternate(["direct", "record"], r):
                    data = run(name, conns, seconds)
                    runs[f"{name}@{conns}"].append(data)
                    log(f"record{' (pinned)' if pinned else ''} round {r + 1}/{rounds} "
                        f"{name:<6} c{conns:<2} "
                        f"{data['rps']:>8,.0f} req/s p50 {data['p50_us'] / 1000:5.2f} ms "
                        f"p99 {data['p99_us'] / 1000:6.2f} ms errors {data['errors']} "
                        f"(other processes: {data['foreign_cpu_pct']:.0f}% of the cpus)")
        memory = recorder.memory()
        proxied = served() - before_start - direct_total
        stop_s, code = recorder.stop_timed(600)
    finally:
        recorder.stop()
        upstream.stop()
    in_cassette = _count_items(out_path)
    journal_left = journal.exists()
    size = out_path.stat().st_size if out_path.exists() else 0
    out_path.unlink(missing_ok=True)
    journal.unlink(missing_ok=True)

    pairs32 = list(zip(runs["record@32"], runs["direct@32"], strict=True))
    pairs1 = list(zip(runs["record@1"], runs["direct@1"], strict=True))
    summary = {key: harness.summarise(items) for key, items in runs.items()}
    return {
        "pinned": pinned,
        "runs": runs,
        "summary": summary,
        "rps_ratio_c32_median": median([a["rps"] / b["rps"] for a, b in pairs32]),
        "rps_ratios_c32": [a["rps"] / b["rps"] for a, b in pairs32],
        "added_p50_ms_c1_median": median((a["p50_us"] - b["p50_us"]) / 1000 for a, b in pairs1),
        "added_p50_ms_c32_median": median((a["p50_us"] - b["p50_us"]) / 1000
                                          for a, b in pairs32),
        "per_run_journal_checks": per_run_checks,
        "journal_complete_every_run": all(c["forwarded"] == c["journaled"]
                                          for c in per_run_checks),
        "forwarded_total": proxied,
        "interactions_in_saved_cassette": in_cassette,
        "cassette_mib": size / 2**20,
        "stop_and_save_s": stop_s,
        "exit_status": code,
        "journal_left_after_save": journal_left,
        "recorder_memory_mib": memory,
    }


# ---------------------------------------------------------------------------------------------
# 2. webhook delivery rate


def _hook_cassette(path: Path, n: int, per_request: bool) -> Path:
    """N webhooks; all caused by interaction 1 (one POST), or webhook i by GET /hook/<i>."""
    if path.exists():
        return path
    sys.path.insert(0, str(ROOT))
    from replayproxy.cassette import Cassette, Interaction, Request, Response, Webhook, save

    ctype = [("Content-Type", "application/json")]
    if per_request:
        items = [Interaction(Request("GET", f"{UPSTREAM}/hook/{i}", [], b""),
                             Response(200, "OK", list(ctype), b'{"ok": %d}' % i))
                 for i in range(1, n + 1)]
    else:
        items = [Interaction(Request("POST", f"{UPSTREAM}/v1/trigger", list(ctype), b"{}"),
                             Response(200, "OK", list(ctype), b'{"ok": true}'))]
    hooks = []
    for i in range(1, n + 1):
        body = json.dumps({"event_id": f"evt_{i:06d}", "type": "job.completed",
                           "job_id": 700_000 + i, "status": "COMPLETED",
                           "finished_at": "2026-11-29T10:00:00Z"}).encode()
        hooks.append(Webhook(body, list(ctype), "POST", "/webhooks/camber", None,
                             cause=i if per_request else 1, event_id=f"evt_{i:06d}"))
    save(Cassette(items, hooks, [], {"upstream": UPSTREAM}), path)
    return path


def _wait_received(receiver_url: str, n: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = get_json(receiver_url + "/__bench/stats")
        if stats["ok"] + stats["bad"] >= n or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


def webhooks(n: int, rounds: int, cpus: Cpus, workdir: Path) -> dict:
    """Deliveries per second to a verifying receiver: replayproxy vs a plain aiohttp client."""
    client_cpu, server_cpu = cpus
    cases = {
        # all N due at once from one request: replayproxy sends them one after the other
        "one_cause": (_hook_cassette(CASSETTES / f"hooks-one-cause-{n}.yaml", n, False), 1),
        # webhook i due when GET /hook/<i> is answered; 32 clients: a task per due webhook, on
        # one aiohttp session whose connector allows 100 connections
        "per_request": (_hook_cassette(CASSETTES / f"hooks-per-request-{n}.yaml", n, True),
                        100),
    }
    results: dict = {"n": n, "cases": {}}
    env = {**os.environ, "WEBHOOK_SECRET": SECRET}  # secrets reach each process this way only
    receiver = Server("webhook-receiver", [sys.executable, str(HERE / "webhook_receiver.py"),
                                           "--listen", "127.0.0.1:0"], client_cpu, env=env)
    hook_url = receiver.url + "/webhooks/camber"
    try:
        for case, (cassette, concurrency) in cases.items():
            runs: dict[str, list[dict]] = {"baseline": [], "replayproxy": []}
            for r in range(rounds):
                for side in harness.alternate(["baseline", "replayproxy"], r):
                    get_json(receiver.url + "/__bench/reset", "POST")
                    if side == "baseline":
                        res = _baseline_send(cassette, hook_url, concurrency, server_cpu, n, env)
                    else:
                        res = _replay_send(cassette, hook_url, case, n, server_cpu,
                                           client_cpu, workdir, env)
                    stats = _wait_received(receiver.url, n, 120)
                    res["received_ok"] = stats["ok"]
                    res["rejected"] = stats["bad"]
                    res["unique_events"] = stats["unique"]
                    res["signature_errors"] = stats["errors"]
                    last = stats["last"] or res["start"]
                    res["seconds"] = last - res["start"]
                    res["per_s"] = stats["ok"] / res["seconds"] if res["seconds"] > 0 else 0
                    if side == "replayproxy":
                        res.update(res.pop("_finish")())
                    runs[side].append(res)
                    log(f"webhooks {case} round {r + 1}/{rounds} {side:<11} "
                        f"{res['per_s']:>7,.0f}/s ({stats['ok']}/{n} verified, "
                        f"{stats['bad']} rejected)")
                    base, rp = runs["baseline"], runs["replayproxy"]
            results["cases"][case] = {
                "concurrency": concurrency,
                "runs": runs,
                "baseline_per_s": median([x["per_s"] for x in base]),
                "replayproxy_per_s": median([x["per_s"] for x in rp]),
                "ratio_median": median([a["per_s"] / b["per_s"] for a, b in zip(rp, base,
                                                                             strict=True)]),
                "all_delivered": all(x["received_ok"] == n and x["unique_events"] == n
                                     and x["rejected"] == 0 for x in base + rp)
                and all(x.get("report_delivered") == n for x in rp),
            }
    finally:
        receiver.stop()
    return results


def _baseline_send(cassette: Path, url: str, concurrency: int, cpu: int | None, n: int,
                   env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "webhook_client.py"), "send", str(cassette),
                          url, "--concurrency", str(concurrency)], capture_output=True, text=True,
                         timeout=300, check=False, preexec_fn=pinned(cpu), cwd=ROOT, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"webhook baseline sender failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _replay_send(cassette: Path, url: str, case: str, n: int,
                 server_cpu: int | None, client_cpu: int | None, workdir: Path,
                 env: dict[str, str]) -> dict:
    report = workdir / f"hooks-{case}-report.json"
    report.unlink(missing_ok=True)
    cmd = harness.replayproxy("replay", str(cassette), "--listen", "127.0.0.1:0", "--timing",
                              "immediate", "--webhook-url", url, "--report", str(report))
    server = Server(f"replay-hooks-{case}", cmd, server_cpu, env=env)
    res: dict
    try:
        if case == "one_cause":
            conn = harness.connect(server.url, timeout=30)
            start = time.monotonic()
            conn.request("POST", "/v1/trigger", body=b"{}",
                         headers={"Content-Type": "application/json"})
            status = conn.getresponse()
            status.read()
            conn.close()
            res = {"start": start, "trigger_status": status.status}
        else:
            out = subprocess.run([sys.executable, str(HERE / "webhook_client.py"), "trigger",
                                  server.url, str(n), "--concurrency", "32"],
                                 capture_output=True, text=True, timeout=300, check=False,
                                 preexec_fn=pinned(client_cpu), cwd=ROOT, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"webhook trigger failed: {out.stderr[-2000:]}")
            trig = json.loads(out.stdout.strip().splitlines()[-1])
            res = {"start": trig["start"], "trigger_statuses": trig["statuses"],
                   "trigger_s": trig["end"] - trig["start"]}
    except BaseException:
        server.stop()
        raise

    def finish() -> dict:
        stop_s, _ = server.stop_timed(60)
        data = json.loads(report.read_text()) if report.exists() else {}
        hooks = data.get("webhooks", {})
        return {"report_delivered": hooks.get("delivered"), "report_failed": hooks.get("failed"),
                "report_pending": hooks.get("pending"), "stop_s": stop_s}

    res["_finish"] = finish
    return res


# ---------------------------------------------------------------------------------------------
# 3. turnaround: the sample app against a replay of a recorded session


def turnaround(repeats: int, cpus: Cpus, workdir: Path) -> dict:
    client_cpu, server_cpu = cpus
    cmd = [sys.executable, str(HERE / "turnaround.py"), "--workdir", str(workdir),
           "--repeats", str(repeats), "--launcher", harness.replayproxy()[1]]
    if server_cpu is not None:
        cmd += ["--proxy-cpu", str(server_cpu), "--app-cpu", str(client_cpu)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"turnaround failed: {out.stderr[-3000:]}")
    for line in out.stderr.splitlines():
        log(line)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# the table


def rows(res: dict) -> list[tuple]:
    """Table rows for run.render: record mode, webhook deliveries and turnaround."""
    rows: list[tuple] = []
    rec = res.get("record")
    if rec and "error" not in rec:
        s = rec["summary"]
        d32, r32, d1, r1 = s["direct@32"], s["record@32"], s["direct@1"], s["record@1"]
        rows.append(("record: req/s c32, none pinned (direct | record)", f"{d32['rps']:,.0f}",
                     f"{r32['rps']:,.0f}", f"{rec['rps_ratio_c32_median']:.2f}", "", ">= 0.5",
                     ok(rec["rps_ratio_c32_median"] >= 0.5)))
        rows.append(("record: p50 ms c1 (direct | through record)", f"{d1['p50_ms']:.2f}",
                     f"{r1['p50_ms']:.2f}", f"+{rec['added_p50_ms_c1_median']:.2f}", "",
                     "<= +0.5 ms", ok(rec["added_p50_ms_c1_median"] <= 0.5)))
        rows.append(("record: p50 | p99 ms c32 through record", "",
                     f"{r32['p50_ms']:.1f} | {r32['p99_ms']:.1f}", "", "", "", ""))
        rows.append(("record: CPU us/request c32 (upstream | proxy)",
                     f"{d32['server_cpu_us_per_req']:.0f}",
                     f"{r32['server_cpu_us_per_req']:.0f}",
                     f"{r32['server_cpu_us_per_req'] / d32['server_cpu_us_per_req']:.2f}", "",
                     "", ""))
        checks = rec["per_run_journal_checks"]
        journaled = sum(c["journaled"] for c in checks)
        forwarded = sum(c["forwarded"] for c in checks)
        rows.append(("record: exchanges journaled after each run", "", f"{journaled}/{forwarded}",
                     "", "", "all", ok(rec["journal_complete_every_run"])))
        rows.append((f"record: exchanges in the saved cassette (saved in "
                     f"{rec['stop_and_save_s']:.1f} s)", "",
                     f"{rec['interactions_in_saved_cassette']}/{rec['forwarded_total']}", "", "",
                     "all", ok(rec["interactions_in_saved_cassette"] == rec["forwarded_total"]
                               and rec["exit_status"] == 0)))
    elif rec:
        rows.append(("record mode", "", "error", "", "", "", "MISS"))
    pin = res.get("record_pinned")
    if pin and "error" not in pin:
        d32, r32 = pin["summary"]["direct@32"], pin["summary"]["record@32"]
        rows.append(("record, wrk + upstream pinned: req/s c32 (direct | record)",
                     f"{d32['rps']:,.0f}", f"{r32['rps']:,.0f}",
                     f"{pin['rps_ratio_c32_median']:.2f}", "", "(for comparison)", ""))
    hooks = res.get("webhooks")
    if hooks and "error" not in hooks:
        n = hooks["n"]
        labels = {"one_cause": f"webhooks/s, {n:,} due at once (1 conn)",
                  "per_request": f"webhooks/s, 1 per request, {n:,} (32 clients)"}
        delivered = total = 0
        for case, label in labels.items():
            c = hooks["cases"][case]
            rows.append((label, f"{c['baseline_per_s']:,.0f}", f"{c['replayproxy_per_s']:,.0f}",
                         f"{c['ratio_median']:.2f}", "", ">= 2,000/s",
                         ok(c["replayproxy_per_s"] >= 2000)))
            for x in c["runs"]["replayproxy"]:
                delivered += min(x["received_ok"], x["unique_events"])
                total += n
        all_ok = all(hooks["cases"][k]["all_delivered"] for k in labels)
        rows.append(("webhooks verified by the receiver (replays)", "", f"{delivered}/{total}", "",
                     "", "none lost", ok(all_ok)))
    elif hooks:
        rows.append(("webhook deliveries", "", "error", "", "", "", "MISS"))
    turn = res.get("turnaround")
    if turn and "error" not in turn:
        for mode, label in (("sequence", "--timing sequence"),
                            ("fast_forward", "--fast-forward")):
            m = turn["summary"][mode]
            rows.append((f"turnaround ms, {label} (med | max)", "50-100*",
                         f"{m['turnaround_ms_median']:.1f} | {m['turnaround_ms_max']:.1f}", "",
                         "", "<= 20", ok(m["turnaround_ms_max"] <= 20 and m["all_same_outcome"]
                                         and m["all_delivered_no_unmatched"])))
    elif turn:
        rows.append(("turnaround", "", "error", "", "", "", "MISS"))
    return rows
