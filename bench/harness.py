"""What every bench script shares: paths, the machine, server processes, wrk, medians, tables.

Each script under bench/ measures one thing side by side with its baseline; this module holds the
parts they have in common, so a server is started, a wrk run timed, a ratio taken and a table
drawn one way everywhere. It imports nothing outside the standard library, so a script (or a test
loading one) can import it before the package is on the path. Loopback only; every process a
`Server` starts is stopped (`stop_all` in a `finally`).
"""

from __future__ import annotations

import asyncio
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
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CASSETTES = RESULTS / "cassettes"
URL_RE = re.compile(r"https?://[^\s]+")
TICK = os.sysconf("SC_CLK_TCK")
QUIET_PCT = 10.0  # a run is quiet when other processes used at most this share of the cpus

T = TypeVar("T")
Cpus = tuple[int | None, int | None]  # (client cpu, server cpu); None: the OS places it


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def ok(good: bool) -> str:
    """The verdict column of a table row."""
    return "ok" if good else "MISS"


def alternate(names: Sequence[T], round_: int) -> list[T]:
    """The order of one round: as given on even rounds, reversed on odd ones, so drift in the
    background load falls on each side alike."""
    return list(names) if round_ % 2 == 0 else list(reversed(names))


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
    """What a result needs to be read later: date, hardware, versions, commit."""
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
        "loadavg_at_start": loadavg(),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "wrk": wrk_version,
        "commit": commit,
    }


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return ""


def cpu_plan() -> Cpus:
    """(client cpu, server cpu): wrk on one core, the server under test on another."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        return cpus[0], cpus[1]
    return None, None


def pinned(cpu: int | None) -> Callable[[], None] | None:
    """A `preexec_fn` that keeps the child on `cpu` (None: no pinning)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def memory(pid: int) -> dict[str, float]:
    """Peak and current resident size (MiB) of a process, from /proc/PID/status."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024
    return out


# ---------------------------------------------------------------------------------------------
# the commands under test

_launcher: Path | None = None  # --launcher: a script that acts as `replayproxy` (prototypes)


def use_launcher(script: Path | None) -> None:
    """Run `script` instead of the `replayproxy` console script from now on."""
    global _launcher
    _launcher = script.resolve() if script else None


def launcher() -> Path | None:
    return _launcher


def replayproxy(*args: str) -> list[str]:
    """The command line of `replayproxy ARGS`: the installed console script run by this
    interpreter (no pyenv shim in the timing), the launcher if one is set, else cli.py."""
    script = _launcher or Path(sys.executable).with_name("replayproxy")
    if not script.exists():
        script = ROOT / "cli.py"
    return [sys.executable, str(script), *args]


def replay_cmd(cassette: Path) -> list[str]:
    return replayproxy("replay", str(cassette), "--listen", "127.0.0.1:0")


def baseline_cmd(cassette: Path) -> list[str]:
    return [sys.executable, str(HERE / "baseline_server.py"), str(cassette),
            "--listen", "127.0.0.1:0"]


# ---------------------------------------------------------------------------------------------
# server processes


class Server:
    """A server subprocess whose first stdout line names its URL; always stopped."""

    running: list[Server] = []

    def __init__(self, name: str, cmd: list[str], cpu: int | None, timeout: float = 600.0,
                 env: dict[str, str] | None = None):
        self.name = name
        self.log_path = RESULTS / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.logfile = self.log_path.open("wb")
        start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.logfile,
                                     preexec_fn=pinned(cpu), cwd=ROOT, env=env)
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
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = connect(self.url, timeout=5)
                conn.request("GET", "/__bench/ready")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: never answered at {self.url}") from None
                time.sleep(0.01)

    def memory(self) -> dict[str, float]:
        """Peak and current resident size (MiB)."""
        return memory(self.proc.pid)

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

    def stop_timed(self, timeout: float) -> tuple[float, int | None]:
        """SIGTERM and wait (bounded) for the process to end on its own; (seconds, exit
        status). Then `stop`: SIGKILL if it is still running, the log closed."""
        start = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        took = time.perf_counter() - start
        code = self.proc.poll()
        self.stop()
        return took, code


def stop_all(prefix: str = "") -> None:
    """Stop every `Server` still running (whose name starts with `prefix`)."""
    for server in list(Server.running):
        if server.name.startswith(prefix):
            server.stop()


async def start_proxy(cmd: list[str], env: dict[str, str],
                      cpu: int | None = None) -> tuple[asyncio.subprocess.Process, str]:
    """For asyncio drivers: start `replayproxy record|replay ...` and read its URL from its
    first stdout line (`... on http://HOST:PORT`); the process is killed if that fails."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        preexec_fn=pinned(cpu))
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()  # type: ignore
        if " on http://" not in line:
            raise RuntimeError(f"the proxy did not start: {line!r}")
    except BaseException:
        proc.kill()
        await proc.communicate()
        raise
    return proc, line.split(" on ", 1)[1].split()[0]


def guarded(result: dict, name: str, step: Callable[[], dict], cleanup: str = "") -> None:
    """result[name] = step(); a failure becomes an error entry and a note, so one broken
    section never loses the others. Afterwards the servers named `cleanup...` are stopped."""
    try:
        result[name] = step()
    except Exception as exc:
        result[name] = {"error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()}
        result["notes"].append(f"{name} failed: {type(exc).__name__}: {exc}")
        log(f"{name} failed: {traceback.format_exc()}")
    finally:
        stop_all(cleanup)


# ---------------------------------------------------------------------------------------------
# measurements


def busy_s() -> float:
    """CPU seconds spent busy by the whole machine (all cpus) since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICK


def proc_s(pid: int) -> float:
    """CPU seconds (user + system) a process has spent so far."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    return 0.0


def wait_quiet(max_s: float, threshold_pct: float = 15.0) -> float:
    """Wait (at most max_s) until the machine is nearly idle; the last busy share seen (%)."""
    deadline = time.monotonic() + max_s
    busy = 0.0
    while True:
        t0, b0 = time.perf_counter(), busy_s()
        time.sleep(0.5)
        busy = 100 * (busy_s() - b0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))
        if busy <= threshold_pct or time.monotonic() >= deadline:
            return busy


def settle(quiet_wait: float) -> float | None:
    """Before a pair of runs: wait up to `quiet_wait` s for an idle machine, saying so when it
    stays busy; the busy share seen (None when not waiting)."""
    if quiet_wait <= 0:
        return None
    idle = wait_quiet(quiet_wait)
    if idle > 15:
        log(f"machine still {idle:.0f}% busy after {quiet_wait:g} s: going on")
    return idle


def wrk(url: str, requests: Path, conns: int, seconds: float, cpu: int | None,
        server: Server | None = None) -> dict:
    """One wrk run; also how busy the rest of the machine was meanwhile (foreign_cpu_pct)."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s",
           "-s", str(HERE / "walk.lua"), url, "--", str(requests)]
    before = (time.perf_counter(), busy_s(), resource.getrusage(resource.RUSAGE_CHILDREN),
              proc_s(server.proc.pid) if server else 0.0)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120,
                         preexec_fn=pinned(cpu), check=False)
    after = (time.perf_counter(), busy_s(), resource.getrusage(resource.RUSAGE_CHILDREN),
             proc_s(server.proc.pid) if server else 0.0)
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


def wrk_line(label: str, name: str, conns: int, data: dict) -> str:
    """One progress line for a wrk run."""
    return (f"{label} {name:<11} c{conns:<2} {data['rps']:>9,.0f} req/s "
            f"p99 {data['p99_us'] / 1000:7.2f} ms "
            f"cpu {data.get('server_cpu_us_per_req', 0):5.0f} us/req errors {data['errors']} "
            f"(other processes: {data['foreign_cpu_pct']:.0f}% of the cpus)")


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


def paired(runs: list[dict], bases: list[dict]) -> dict:
    """Per-round ratios of two servers' wrk runs (run k of each back to back, so background
    load on a shared machine moves both) and their medians, the robust figure; "quiet" repeats
    them over the pairs where other processes used at most QUIET_PCT of the cpus."""
    both = list(zip(runs, bases, strict=True))
    rps = [a["rps"] / b["rps"] for a, b in both]
    p99 = [a["p99_us"] / b["p99_us"] for a, b in both]
    calm = [(a["rps"] / b["rps"], a["p99_us"] / b["p99_us"]) for a, b in both
            if max(a["foreign_cpu_pct"], b["foreign_cpu_pct"]) <= QUIET_PCT]
    return {"rps_ratio_median": median(rps), "rps_ratios": rps,
            "p99_ratio_median": median(p99), "quiet_pairs": len(calm),
            "rps_ratio_median_quiet": median(c[0] for c in calm),
            "p99_ratio_median_quiet": median(c[1] for c in calm)}


def foreign_share(runs: dict[str, list[dict]]) -> tuple[float, float] | None:
    """(max, median) share of the cpus other processes used in these wrk runs, when the max is
    over 10 % (absolute figures then are depressed and noisy); else None."""
    foreign = [d["foreign_cpu_pct"] for items in runs.values() for d in items]
    if not foreign or max(foreign) <= 10:
        return None
    return max(foreign), median(foreign)


def connect(url: str, timeout: float) -> http.client.HTTPConnection:
    """A plain HTTP/1.1 connection to the host and port of `url` (a bench server's)."""
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)


def check_bytes(url: str, items: list) -> dict:
    """Fetch every answer once, in recorded order, with a plain client; compare to the recording
    (`items`: workload.Exchange)."""
    conn = connect(url, timeout=30)
    mismatches, examples = 0, list[str]()
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


def get_json(url: str, method: str = "GET", timeout: float = 10) -> dict:
    """A bench server's JSON answer (its status when the body is empty)."""
    conn = connect(url, timeout)
    try:
        conn.request(method, urlsplit(url).path or "/")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    return json.loads(body) if body else {"status": resp.status}


def python(code: str, *args: str, tree: Path = ROOT, env: dict[str, str] | None = None,
           timeout: float = 900) -> str:
    """Run `code` in a fresh interpreter that imports the package from `tree` (run in `tree`
    with `tree` as its PYTHONPATH: `python -c` puts the working folder first on the path);
    its stdout. `env` replaces the rest of the environment (default: this one's)."""
    tree = Path(tree).resolve()
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=timeout, cwd=tree, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    return out.stdout


def timed_snippet(code: str, timeout: float = 900) -> tuple[float, dict]:
    """Run `code` in a fresh interpreter; (wall seconds, the JSON it printed last)."""
    start = time.perf_counter()
    out = python(code, timeout=timeout)
    return time.perf_counter() - start, json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# reporting


def table(title: str, rows: list[tuple]) -> list[str]:
    """`rows[0]` is the header; the first column left-aligned, the others right-aligned, a rule
    under the header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = [title]
    for k, r in enumerate(rows):
        lines.append("  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                               for i, c in enumerate(r)).rstrip())
        if k == 0:
            lines.append("-" * len(lines[-1]))
    return lines


def write_result(name: str, result: dict, *also: str) -> Path:
    """bench/results/NAME.json (and each of `also`), indented JSON; the first path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    out = RESULTS / f"{name}.json"
    for path in (out, *(RESULTS / f"{other}.json" for other in also)):
        path.write_text(text)
    return out
