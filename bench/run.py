"""replayproxy's benchmark (issue 7): `python bench/run.py [--quick] [--profile]`.

Runs, side by side in one run, a baseline (bench/baseline_server.py: minimal aiohttp, answers from
a dict) and `replayproxy replay`, each in its own process pinned to its own core, and drives them
with wrk (bench/walk.lua walks the recorded request list). Prints a table and writes
bench/results/<stamp>.json and bench/results/latest.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CASSETTES = RESULTS / "cassettes"
sys.path.insert(0, str(HERE))

import extras  # noqa: E402
import peers  # noqa: E402
import workload  # noqa: E402

SMALL = 1200
READY_SIZE = 10_000
URL_RE = re.compile(r"https?://[^\s]+")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# the machine and the tools


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk is not installed: installing the Debian package with `apt-get install -y wrk`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"],
                ["apt-get", "install", "-y", "wrk"]):
        if shutil.which("wrk"):
            break
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(cmd, env=env, timeout=300, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    found = shutil.which("wrk")
    if not found:
        sys.exit("bench: wrk is missing and `apt-get install -y wrk` did not install it")
    log(f"installed {found}")
    return found


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    versions = {}
    for mod in ("aiohttp", "yaml", "vcr"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    wrk_version = ""
    with contextlib.suppress(Exception):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        wrk_version = (out.stdout + out.stderr).strip().splitlines()[0]
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    dirty = ""
    with contextlib.suppress(Exception):
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--short", "--", "replayproxy",
                                "cli.py"], capture_output=True, text=True, timeout=10).stdout
    return {
        "date": datetime.date.today().isoformat(),
        "uncommitted_changes_measured": dirty.split("\n")[:-1] if dirty else [],
        "loadavg_at_start": _loadavg(),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "wrk": wrk_version,
        "commit": commit,
    }


def _loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return ""


def cpu_plan() -> tuple[int | None, int | None]:
    """(client cpu, server cpu): wrk on one core, the server under test on another."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        return cpus[0], cpus[1]
    return None, None


def pinned(cpu: int | None):
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


# ---------------------------------------------------------------------------------------------
# server processes


class Server:
    """A server subprocess whose first stdout line names its URL; always stopped."""

    running: list[Server] = []

    def __init__(self, name: str, cmd: list[str], cpu: int | None, timeout: float = 600.0):
        self.name = name
        self.log_path = RESULTS / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.logfile = self.log_path.open("wb")
        start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.logfile,
                                     preexec_fn=pinned(cpu), cwd=ROOT)
        Server.running.append(self)
        try:
            line = self._first_line(timeout)
            match = URL_RE.search(line)
            if not match:
                raise RuntimeError(f"{name}: no URL in its first line {line!r}")
            self.url = match.group(0)
            self._wait_answering(timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.perf_counter() - start

    def _first_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.name}: no URL within {timeout:.0f} s")
                if not sel.select(min(left, 1.0)):
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"{self.name}: exited {self.proc.returncode}, "
                                           f"see {self.log_path}")
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"{self.name}: closed stdout, see {self.log_path}")
                buf += chunk
        finally:
            sel.close()
        return buf.split(b"\n", 1)[0].decode(errors="replace")

    def _wait_answering(self, timeout: float) -> None:
        parts = urlsplit(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
                conn.request("GET", "/__bench/ready")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: never answered at {self.url}") from None
                time.sleep(0.01)

    def memory(self) -> dict:
        """Peak and current resident size (MiB) from /proc/PID/status."""
        out = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0]) / 1024
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.logfile.close()
        if self in Server.running:
            Server.running.remove(self)


LAUNCHER: Path | None = None  # --launcher: a script that acts as `replayproxy` (prototypes)


def replayproxy_cmd(cassette: Path) -> list[str]:
    # The installed console script, run by this interpreter (no pyenv shim in the timing).
    script = LAUNCHER or Path(sys.executable).with_name("replayproxy")
    if script.exists():
        return [sys.executable, str(script), "replay", str(cassette), "--listen", "127.0.0.1:0"]
    return [sys.executable, str(ROOT / "cli.py"), "replay", str(cassette),
            "--listen", "127.0.0.1:0"]


def baseline_cmd(cassette: Path) -> list[str]:
    return [sys.executable, str(HERE / "baseline_server.py"), str(cassette),
            "--listen", "127.0.0.1:0"]


# ---------------------------------------------------------------------------------------------
# measurements


TICK = os.sysconf("SC_CLK_TCK")
QUIET_PCT = 10.0  # a run is quiet when other processes used at most this share of the cpus


def _busy_s() -> float:
    """CPU seconds spent busy by the whole machine (all cpus) since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICK


def _proc_s(pid: int) -> float:
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    return 0.0


def wait_quiet(max_s: float, threshold_pct: float = 15.0) -> float:
    """Wait (at most max_s) until the machine is nearly idle; the last busy share seen (%)."""
    deadline = time.monotonic() + max_s
    busy = 0.0
    while True:
        t0, b0 = time.perf_counter(), _busy_s()
        time.sleep(0.5)
        busy = 100 * (_busy_s() - b0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))
        if busy <= threshold_pct or time.monotonic() >= deadline:
            return busy


def wrk(url: str, requests: Path, conns: int, seconds: float, cpu: int | None,
        server: Server | None = None) -> dict:
    """One wrk run; also how busy the rest of the machine was meanwhile (foreign_cpu_pct)."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s",
           "-s", str(HERE / "walk.lua"), url, "--", str(requests)]
    before = (time.perf_counter(), _busy_s(), resource.getrusage(resource.RUSAGE_CHILDREN),
              _proc_s(server.proc.pid) if server else 0.0)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120,
                         preexec_fn=pinned(cpu), check=False)
    after = (time.perf_counter(), _busy_s(), resource.getrusage(resource.RUSAGE_CHILDREN),
             _proc_s(server.proc.pid) if server else 0.0)
    ours = ((after[2].ru_utime + after[2].ru_stime) - (before[2].ru_utime + before[2].ru_stime)
            + after[3] - before[3])
    foreign = max(0.0, (after[1] - before[1]) - ours)
    foreign_pct = 100 * foreign / ((after[0] - before[0]) * (os.cpu_count() or 1))
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    data = json.loads(line[len("BENCHJSON "):])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    data["foreign_cpu_pct"] = round(foreign_pct, 1)
    if server is not None and data["requests"]:
        # CPU the server spent per answer: unlike req/s, barely moved by other processes
        data["server_cpu_us_per_req"] = 1e6 * (after[3] - before[3]) / data["requests"]
    data["errors"] = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors",
                                           "status_errors", "timeouts"))
    return data


def check_bytes(url: str, items: list[workload.Exchange]) -> dict:
    """Fetch every answer once, in recorded order, with a plain client; compare to the recording."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    mismatches, examples = 0, []
    try:
        for number, x in enumerate(items, start=1):
            headers = {"Content-Type": "application/json"} if x.request_body else {}
            conn.request(x.method, x.path, body=x.request_body or None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            problems = []
            if resp.status != x.status:
                problems.append(f"status {resp.status} vs {x.status}")
            if body != x.body:
                problems.append(f"body {len(body)} bytes differs from the recorded {len(x.body)}")
            for name, value in x.headers:
                if resp.getheader(name) != value:
                    problems.append(f"header {name}: {resp.getheader(name)!r} vs {value!r}")
            if problems:
                mismatches += 1
                if len(examples) < 5:
                    examples.append(f"#{number} {x.method} {x.path}: " + "; ".join(problems))
    finally:
        conn.close()
    return {"checked": len(items), "mismatches": mismatches, "examples": examples}


def timed_snippet(code: str, timeout: float = 900) -> tuple[float, dict]:
    """Run `code` in a fresh interpreter; (wall seconds, the JSON it printed last)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT, check=False)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


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


def summarise(items: list[dict]) -> dict:
    """Medians (and the error total) of one server's wrk runs."""
    return {
        "rps": median([d["rps"] for d in items]),
        "p50_ms": median([d["p50_us"] / 1000 for d in items]),
        "p99_ms": median([d["p99_us"] / 1000 for d in items]),
        "errors": sum(d["errors"] for d in items),
        "rps_runs": [round(d["rps"]) for d in items],
        "foreign_cpu_pct_median": median([d["foreign_cpu_pct"] for d in items]),
        "server_cpu_us_per_req": median([d.get("server_cpu_us_per_req", float("nan"))
                                         for d in items]),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------
# profile (optional): py-spy on replayproxy under wrk


def profile(small: tuple[Path, Path], seconds: float, cpus: tuple[int | None, int | None],
            stamp: str) -> dict:
    spy = shutil.which("py-spy")
    if not spy:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    client_cpu, server_cpu = cpus
    server = Server("profile-replayproxy", replayproxy_cmd(small[0]), server_cpu)
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
    return {"raw": str(raw.relative_to(ROOT)), "rps_while_profiled": load["rps"],
            **summarise_profile(raw)}


def _frame(text: str) -> str:
    # "handle (replayproxy/replayer.py:97)" -> "handle (replayproxy/replayer.py)"
    name, _, where = text.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    where = where.replace(str(ROOT) + "/", "")
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


def run_extras(result: dict, args: argparse.Namespace, quick: bool, rounds: int, seconds: float,
               small: tuple[Path, Path], cpus: tuple[int | None, int | None]) -> None:
    """Record mode, webhook deliveries, turnaround (bench/extras.py); a failure is a note."""
    this = sys.modules[__name__]
    extra_rounds = 2 if quick else min(rounds, 3)
    hooks = max(100, min(args.webhooks or (2000 if quick else 5000), 100_000))
    with tempfile.TemporaryDirectory(prefix="replayproxy-bench-") as tmp:
        work = Path(tmp)
        steps = (
            ("record", lambda: extras.record_mode(
                this, small, extra_rounds, 1.0 if quick else seconds, cpus,
                min(args.quiet_wait, 5.0), work)),
            ("record_pinned", lambda: extras.record_mode(
                this, small, extra_rounds, 1.0 if quick else seconds, cpus,
                min(args.quiet_wait, 5.0), work, pinned=True)),
            ("webhooks", lambda: extras.webhooks(this, hooks, extra_rounds, cpus, work)),
            ("turnaround", lambda: extras.turnaround(this, 2 if quick else 4, cpus, work)),
        )
        for name, step in steps:
            log(f"{name}: starting")
            try:
                result[name] = step()
            except Exception as exc:  # one broken section must not lose the others
                result[name] = {"error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc()}
                result["notes"].append(f"{name} failed: {type(exc).__name__}: {exc}")
                log(f"{name} failed: {traceback.format_exc()}")
            finally:
                for server in list(Server.running):  # the replay servers are stopped by now
                    server.stop()


def run_peers(result: dict, small: tuple[Path, Path, list[workload.Exchange]], rounds: int,
              seconds: float, cpus: tuple[int | None, int | None], quiet_wait: float) -> None:
    """The optional mitmproxy and talkback columns (bench/peers.py); a failure is a note."""
    log("peers: installing (first run only) and converting the 1,200 interactions")
    try:
        with tempfile.TemporaryDirectory(prefix="replayproxy-bench-peers-") as tmp:
            found = peers.prepare(small[2], Path(tmp), RESULTS / "logs")
            result["peers"] = peers.measure(sys.modules[__name__], found, small, rounds,
                                            seconds, cpus, quiet_wait)
    except Exception as exc:
        result["peers"] = {"error": f"{type(exc).__name__}: {exc}",
                           "traceback": traceback.format_exc()}
        result["notes"].append(f"peers failed: {type(exc).__name__}: {exc}")
        log(f"peers failed: {traceback.format_exc()}")
    finally:
        for server in list(Server.running):
            if server.name.startswith("peer"):
                server.stop()
    result["notes"].extend(peers.notes(result.get("peers", {})))


def main() -> None:
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
    args = parser.parse_args()
    global LAUNCHER
    LAUNCHER = args.launcher.resolve() if args.launcher else None
    quick = args.quick
    rounds = max(1, min(args.rounds or (2 if quick else 5), 50))
    seconds = max(1.0, min(args.duration or (2.0 if quick else 5.0), 120.0))
    big = args.big or (READY_SIZE if quick else 100_000)
    ready_repeats = 1 if quick else 3
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if quick else 20.0
    args.quiet_wait = max(0.0, min(args.quiet_wait, 120.0))

    ensure_wrk()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    info = machine()
    client_cpu, server_cpu = cpu_plan()
    info["pinning"] = ({"wrk": client_cpu, "servers": server_cpu} if server_cpu is not None
                       else "none (one cpu)")
    log(f"{info['cpu_model']} x{info['nproc']}, python {info['python']}, {info['wrk']}; "
        f"rounds {rounds} x {seconds:g} s; big cassette {big:,}")

    sizes = sorted({SMALL, READY_SIZE, big})
    files = {}
    for n in sizes:
        t0 = time.perf_counter()
        files[n] = workload.ensure(CASSETTES, n)
        log(f"cassette {n:,}: {files[n][0].stat().st_size / 2**20:.1f} MiB "
            f"({time.perf_counter() - t0:.1f} s)")
    result: dict = {"machine": info, "launcher": str(LAUNCHER) if LAUNCHER else None,
                    "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
                    "mode": "quick" if quick else "full", "rounds": rounds,
                    "seconds_per_run": seconds, "notes": []}
    servers: dict[str, Server] = {}
    try:
        # -- time to ready, and vcrpy loading the same file -------------------------------
        ready: dict = {}
        checks: dict = {}
        for n in sorted({READY_SIZE, big}):
            times, mems = [], []
            for k in range(1 if n > READY_SIZE else ready_repeats):
                server = Server(f"replayproxy-{n}-ready{k}", replayproxy_cmd(files[n][0]),
                                server_cpu)
                times.append(server.ready_s)
                mems.append(server.memory())
                log(f"replayproxy ready with {n:,} interactions in {server.ready_s:.2f} s")
                if n == big and (n > READY_SIZE or k == ready_repeats - 1):
                    # kept for the throughput comparison; first, while it is fresh, every answer
                    if not quick:
                        log(f"checking all {big:,} answers byte for byte")
                        checks[str(big)] = check_bytes(server.url, files[big][2])
                    servers["big"] = server
                else:
                    server.stop()
            ready[str(n)] = {"replayproxy_ready_s": median(times), "runs": times,
                             "file_mib": files[n][0].stat().st_size / 2**20,
                             "rss_after_load_mib": mems[-1]}
        n = READY_SIZE
        path = str(files[n][0])
        try:
            vcr = [timed_snippet(VCR_LOAD.format(path=path)) for _ in range(ready_repeats)]
            ready[str(n)]["vcrpy_deserialize_s"] = median([v[1]["load_s"] for v in vcr])
            ready[str(n)]["vcrpy_process_s"] = median([v[0] for v in vcr])
            log(f"vcrpy deserialize of {n:,}: {ready[str(n)]['vcrpy_deserialize_s']:.2f} s")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result["notes"].append(f"vcrpy load skipped: {exc}")
        wall, parts = timed_snippet(RP_LOAD.format(path=path))
        ready[str(n)]["replayproxy_breakdown_s"] = parts
        result["ready"] = ready

        # -- throughput and latency, alternating ------------------------------------------
        small_cassette, small_requests, small_items = files[SMALL]
        servers["baseline"] = Server("baseline-1200", baseline_cmd(small_cassette), server_cpu)
        servers["replayproxy"] = Server("replayproxy-1200", replayproxy_cmd(small_cassette),
                                        server_cpu)
        # a fresh replay: every answer once, in recorded order, with a plain client
        checks[str(SMALL)] = check_bytes(servers["replayproxy"].url, small_items)
        result["bytes"] = dict(sorted(checks.items(), key=lambda kv: int(kv[0])))
        targets = [("baseline", small_requests), ("replayproxy", small_requests),
                   ("big", files[big][1])]
        for name, reqs in targets:  # warm up: first-use paths, caches, connection setup
            wrk(servers[name].url, reqs, 32, 1, client_cpu)
        runs: dict[str, list[dict]] = collections.defaultdict(list)
        quiet: list[float] = []
        result["busy_pct_before_each_pair"] = quiet
        for r in range(rounds):
            for conns in (32, 1):
                if args.quiet_wait > 0:
                    idle = wait_quiet(args.quiet_wait)
                    quiet.append(round(idle, 1))
                    if idle > 15:
                        log(f"machine still {idle:.0f}% busy after {args.quiet_wait:g} s: going on")
                order = ["baseline", "replayproxy"] if r % 2 == 0 else ["replayproxy", "baseline"]
                if conns == 32:
                    order.append("big")
                for name in order:
                    reqs = files[big][1] if name == "big" else small_requests
                    data = wrk(servers[name].url, reqs, conns, seconds, client_cpu,
                               servers[name])
                    runs[f"{name}@{conns}"].append(data)
                    log(f"round {r + 1}/{rounds} {name:<11} c{conns:<2} {data['rps']:>9,.0f} req/s "
                        f"p99 {data['p99_us'] / 1000:6.2f} ms "
                        f"cpu {data.get('server_cpu_us_per_req', 0):4.0f} us/req "
                        f"errors {data['errors']} "
                        f"(other processes: {data['foreign_cpu_pct']:.0f}% of the cpus)")
        summary = {key: summarise(items) for key, items in runs.items()}
        # Paired ratios: each round's two runs are back to back, so background load on a
        # shared machine moves both; the median of the per-round ratios is the robust figure.
        for key, (num, den) in {"replayproxy/baseline@32": ("replayproxy@32", "baseline@32"),
                                "replayproxy/baseline@1": ("replayproxy@1", "baseline@1"),
                                "big/replayproxy@32": ("big@32", "replayproxy@32")}.items():
            both = list(zip(runs[num], runs[den], strict=True))
            pairs = [a["rps"] / b["rps"] for a, b in both]
            p99 = [a["p99_us"] / b["p99_us"] for a, b in both]
            calm = [(a["rps"] / b["rps"], a["p99_us"] / b["p99_us"]) for a, b in both
                    if max(a["foreign_cpu_pct"], b["foreign_cpu_pct"]) <= QUIET_PCT]
            summary[key] = {"rps_ratio_median": median(pairs), "rps_ratios": pairs,
                            "p99_ratio_median": median(p99), "quiet_pairs": len(calm),
                            "rps_ratio_median_quiet": median([c[0] for c in calm]),
                            "p99_ratio_median_quiet": median([c[1] for c in calm])}
        result["throughput"] = summary
        result["wrk_runs"] = runs
        result["memory"] = {
            name: {"interactions": SMALL if name != "big" else big,
                   "file_mib": (files[SMALL if name != "big" else big][0].stat().st_size / 2**20),
                   **servers[name].memory()}
            for name in ("baseline", "replayproxy", "big")
        }
        for name in ("baseline", "replayproxy", "big"):
            servers.pop(name).stop()

        if args.skip_peers or (quick and not args.peers):
            result["notes"].append("mitmproxy and talkback columns not run ("
                                   + ("--skip-peers" if args.skip_peers else
                                      "--quick without --peers") + ")")
        else:
            run_peers(result, files[SMALL], rounds, seconds, (client_cpu, server_cpu),
                      args.quiet_wait)

        if not args.skip_extras:
            run_extras(result, args, quick, rounds, seconds, files[SMALL][:2],
                       (client_cpu, server_cpu))

        if args.profile:
            log("profiling replayproxy under wrk c32 with py-spy")
            result["profile"] = profile(files[SMALL][:2], 10 if not quick else 4,
                                        (client_cpu, server_cpu), stamp)
    finally:
        for server in list(Server.running):
            server.stop()

    info["loadavg_at_end"] = _loadavg()
    foreign = [d["foreign_cpu_pct"] for items in result.get("wrk_runs", {}).values()
               for d in items]
    if foreign and max(foreign) > 10:
        result["notes"].append(
            f"other processes used up to {max(foreign):.0f}% of the cpus during the wrk runs "
            f"(median {median(foreign):.0f}%, load at start {info['loadavg_at_start']}): "
            "absolute figures are depressed and noisy; the paired ratios are the figures to read")
    table = render(result, big)
    print(table)
    result["table"] = table
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(result, indent=2))
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2))
    log(f"wrote {out.relative_to(ROOT)}")


def extra_rows(res: dict, ok) -> list[tuple]:
    """Rows for record mode, webhook deliveries and turnaround (bench/extras.py)."""
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


def render(res: dict, big: int) -> str:
    t = res["throughput"]
    b32, r32, b1, r1, g32 = (t["baseline@32"], t["replayproxy@32"], t["baseline@1"],
                             t["replayproxy@1"], t["big@32"])
    m = res["machine"]

    def ok(good: bool) -> str:
        return "ok" if good else "MISS"

    rows = [("metric", "baseline", "replayproxy", "ratio", "quiet", "target", "")]

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
    rows.extend(extra_rows(res, ok))
    rows.extend(peers.rows(res.get("peers", {})))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{m['date']}  {m['cpu_model']} x{m['nproc']}  python {m['python']}  "
             f"{res['mode']}: {res['rounds']} rounds x {res['seconds_per_run']:g} s; req/s and "
             "p99 are medians, ratios the median of per-round paired ratios; quiet: the same "
             f"over pairs where other processes used <= {QUIET_PCT:g}% of the cpus"]
    for k, r in enumerate(rows):
        lines.append("  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                               for i, c in enumerate(r)).rstrip())
        if k == 0:
            lines.append("-" * len(lines[-1]))
    prof = res.get("profile")
    if prof and "self_pct" in prof:
        lines.append("")
        lines.append(f"py-spy, replayproxy under wrk c32 ({prof['samples']} samples), self time:")
        for name, pct in prof["self_pct"][:12]:
            lines.append(f"  {pct:5.1f}%  {name}")
    if res.get("turnaround") and "error" not in res["turnaround"]:
        lines.append("* turnaround baseline: an in-process fake of Camber the users wrote before "
                     "(issue 7); a reference, not measured here")
    for note in res["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
