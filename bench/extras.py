"""The issue-7 targets beyond replay throughput: record mode, webhook delivery rate, turnaround.

Called by bench/run.py (which passes itself as `h`, for its Server class, wrk and helpers); each
returns a dict for the JSON and the table. Every process started here is a `h.Server` (stopped by
run.py's `finally`) or a bounded `subprocess.run`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECRET = "whbench_local_secret_5f2a9c"  # WEBHOOK_SECRET of the replays and the receiver
UPSTREAM = "https://staging.camber.example"


def _get_json(url: str, method: str = "GET", timeout: float = 10) -> dict:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path or "/")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    return json.loads(body) if body else {"status": resp.status}


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _script(h: ModuleType) -> list[str]:
    script = h.LAUNCHER or Path(sys.executable).with_name("replayproxy")
    if not Path(script).exists():
        script = ROOT / "cli.py"
    return [sys.executable, str(script)]


def _stop_timed(server, timeout: float) -> tuple[float, int | None]:
    """SIGTERM and wait (bounded) for the process to end on its own; (seconds, exit status)."""
    start = time.perf_counter()
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    took = time.perf_counter() - start
    code = server.proc.poll()
    server.stop()  # SIGKILL if it is still running; closes the log
    return took, code


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


def record_mode(h: ModuleType, small: tuple[Path, Path], rounds: int, seconds: float,
                cpus: tuple[int | None, int | None], quiet_wait: float, workdir: Path,
                pinned: bool = False) -> dict:
    """Direct and through `record`, alternating. Three processes share two cpus here (wrk,
    the upstream, the proxy), so by default none is pinned and the OS places them, in the
    direct runs as in the record runs; `pinned` puts wrk and the upstream on a cpu each, as
    the replay runs do, which leaves the proxy the scraps of both (reported for comparison)."""
    client_cpu, server_cpu = cpus if pinned else (None, None)
    cassette_in, requests = small
    upstream = h.Server("upstream-1200", h.baseline_cmd(cassette_in) + ["--count"], server_cpu)
    count_url = upstream.url + "/__bench/count"

    def served() -> int:
        return _get_json(count_url)["served"]

    out_path = workdir / "recorded.yaml"
    journal = out_path.with_name(out_path.name + ".journal")
    for stale in (out_path, journal):
        stale.unlink(missing_ok=True)
    before_start = served()
    cmd = _script(h) + ["record", str(out_path), "--upstream", upstream.url, "--mode", "all",
                        "--listen", "127.0.0.1:0"]
    # the proxy is never pinned (with `pinned`, it competes with both pinned processes)
    recorder = h.Server("record-1200", cmd, None)
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
            data = h.wrk(target.url, requests, conns, secs, client_cpu, target)
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
                    h.wait_quiet(quiet_wait)
                order = ["direct", "record"] if r % 2 == 0 else ["record", "direct"]
                for name in order:
                    data = run(name, conns, seconds)
                    runs[f"{name}@{conns}"].append(data)
                    h.log(f"record{' (pinned)' if pinned else ''} round {r + 1}/{rounds} "
                          f"{name:<6} c{conns:<2} "
                          f"{data['rps']:>8,.0f} req/s p50 {data['p50_us'] / 1000:5.2f} ms "
                          f"p99 {data['p99_us'] / 1000:6.2f} ms errors {data['errors']} "
                          f"(other processes: {data['foreign_cpu_pct']:.0f}% of the cpus)")
        memory = recorder.memory()
        proxied = served() - before_start - direct_total
        stop_s, code = _stop_timed(recorder, 600)
    finally:
        recorder.stop()
        upstream.stop()
    in_cassette = _count_items(out_path)
    journal_left = journal.exists()
    size = out_path.stat().st_size if out_path.exists() else 0
    out_path.unlink(missing_ok=True)
    journal.unlink(missing_ok=True)

    med = h.median
    pairs32 = list(zip(runs["record@32"], runs["direct@32"], strict=True))
    pairs1 = list(zip(runs["record@1"], runs["direct@1"], strict=True))
    summary = {key: h.summarise(items) for key, items in runs.items()}
    return {
        "pinned": pinned,
        "runs": runs,
        "summary": summary,
        "rps_ratio_c32_median": med([a["rps"] / b["rps"] for a, b in pairs32]),
        "rps_ratios_c32": [a["rps"] / b["rps"] for a, b in pairs32],
        "added_p50_ms_c1_median": med([(a["p50_us"] - b["p50_us"]) / 1000 for a, b in pairs1]),
        "added_p50_ms_c32_median": med([(a["p50_us"] - b["p50_us"]) / 1000 for a, b in pairs32]),
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
        stats = _get_json(receiver_url + "/__bench/stats")
        if stats["ok"] + stats["bad"] >= n or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


def webhooks(h: ModuleType, n: int, rounds: int, cpus: tuple[int | None, int | None],
             workdir: Path) -> dict:
    """Deliveries per second to a verifying receiver: replayproxy vs a plain aiohttp client."""
    client_cpu, server_cpu = cpus
    cases = {
        # all N due at once from one request: replayproxy sends them one after the other
        "one_cause": (_hook_cassette(h.CASSETTES / f"hooks-one-cause-{n}.yaml", n, False), 1),
        # webhook i due when GET /hook/<i> is answered; 32 clients: a task per due webhook, on
        # one aiohttp session whose connector allows 100 connections
        "per_request": (_hook_cassette(h.CASSETTES / f"hooks-per-request-{n}.yaml", n, True),
                        100),
    }
    results: dict = {"n": n, "cases": {}}
    with _env(WEBHOOK_SECRET=SECRET):
        receiver = h.Server("webhook-receiver", [sys.executable, str(HERE / "webhook_receiver.py"),
                                                 "--listen", "127.0.0.1:0"], client_cpu)
        hook_url = receiver.url + "/webhooks/camber"
        try:
            for case, (cassette, concurrency) in cases.items():
                runs: dict[str, list[dict]] = {"baseline": [], "replayproxy": []}
                for r in range(rounds):
                    order = ["baseline", "replayproxy"] if r % 2 == 0 else ["replayproxy",
                                                                            "baseline"]
                    for side in order:
                        _get_json(receiver.url + "/__bench/reset", "POST")
                        if side == "baseline":
                            res = _baseline_send(cassette, hook_url, concurrency, server_cpu, n)
                        else:
                            res = _replay_send(h, cassette, hook_url, case, n, server_cpu,
                                               client_cpu, workdir)
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
                        h.log(f"webhooks {case} round {r + 1}/{rounds} {side:<11} "
                              f"{res['per_s']:>7,.0f}/s ({stats['ok']}/{n} verified, "
                              f"{stats['bad']} rejected)")
                med = h.median
                base, rp = runs["baseline"], runs["replayproxy"]
                results["cases"][case] = {
                    "concurrency": concurrency,
                    "runs": runs,
                    "baseline_per_s": med([x["per_s"] for x in base]),
                    "replayproxy_per_s": med([x["per_s"] for x in rp]),
                    "ratio_median": med([a["per_s"] / b["per_s"] for a, b in zip(rp, base,
                                                                                 strict=True)]),
                    "all_delivered": all(x["received_ok"] == n and x["unique_events"] == n
                                         and x["rejected"] == 0 for x in base + rp)
                    and all(x.get("report_delivered") == n for x in rp),
                }
        finally:
            receiver.stop()
    return results


def _baseline_send(cassette: Path, url: str, concurrency: int, cpu: int | None, n: int) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "webhook_client.py"), "send", str(cassette),
                          url, "--concurrency", str(concurrency)], capture_output=True, text=True,
                         timeout=300, check=False, preexec_fn=_pin(cpu), cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"webhook baseline sender failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pin(cpu: int | None):
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _replay_send(h: ModuleType, cassette: Path, url: str, case: str, n: int,
                 server_cpu: int | None, client_cpu: int | None, workdir: Path) -> dict:
    report = workdir / f"hooks-{case}-report.json"
    report.unlink(missing_ok=True)
    cmd = _script(h) + ["replay", str(cassette), "--listen", "127.0.0.1:0", "--timing",
                        "immediate", "--webhook-url", url, "--report", str(report)]
    server = h.Server(f"replay-hooks-{case}", cmd, server_cpu)
    try:
        if case == "one_cause":
            parts = urlsplit(server.url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
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
                                 preexec_fn=_pin(client_cpu), cwd=ROOT)
            if out.returncode != 0:
                raise RuntimeError(f"webhook trigger failed: {out.stderr[-2000:]}")
            trig = json.loads(out.stdout.strip().splitlines()[-1])
            res = {"start": trig["start"], "trigger_statuses": trig["statuses"],
                   "trigger_s": trig["end"] - trig["start"]}
    except BaseException:
        server.stop()
        raise

    def finish() -> dict:
        _wait_received_done = _stop_timed(server, 60)
        data = json.loads(report.read_text()) if report.exists() else {}
        hooks = data.get("webhooks", {})
        return {"report_delivered": hooks.get("delivered"), "report_failed": hooks.get("failed"),
                "report_pending": hooks.get("pending"), "stop_s": _wait_received_done[0]}

    res["_finish"] = finish
    return res


# ---------------------------------------------------------------------------------------------
# 3. turnaround: the sample app against a replay of a recorded session


def turnaround(h: ModuleType, repeats: int, cpus: tuple[int | None, int | None],
               workdir: Path) -> dict:
    client_cpu, server_cpu = cpus
    cmd = [sys.executable, str(HERE / "turnaround.py"), "--workdir", str(workdir),
           "--repeats", str(repeats), "--launcher", _script(h)[1]]
    if server_cpu is not None:
        cmd += ["--proxy-cpu", str(server_cpu), "--app-cpu", str(client_cpu)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"turnaround failed: {out.stderr[-3000:]}")
    for line in out.stderr.splitlines():
        h.log(line)
    return json.loads(out.stdout.strip().splitlines()[-1])
