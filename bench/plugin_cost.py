"""The pytest plugin's cost per test: `python bench/plugin_cost.py [--tests N] [--rounds R]`.

Writes a suite of N tests twice, alike but for one thing:

- `test_with_plugin.py`: each test is marked `@pytest.mark.replayproxy("cassettes/jobs.yaml")`,
  so the plugin starts a proxy on a small cassette (5 interactions), the test sends one request
  to it, and the plugin stops it and checks the replay;
- `test_without.py`: each test sends the same request to one server started for the whole run,
  bench/baseline_server.py answering the same cassette's bytes from a dict (harness.Server,
  the bench's own server process), and uses no fixture (the plugin is installed, unused).

Each suite runs in a fresh `python -m pytest` process, the two alternating, R rounds. Reported:
the wall time of each (medians), the plugin's cost per test (median over rounds of
(with - without) / N), and what that makes for a 1,000-test suite; the CPU time of each, which
barely depends on what else runs on the machine; and, in this process, the fixture's own work
(a SyncReplayProxy started, asked once, stopped) against the bare request, in alternating blocks.
Targets: under 10 ms per test; a 1,000-test suite no more than 10 s slower. Prints the figures
and writes bench/results/plugin_cost.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402
from harness import RESULTS, Server, log, median, proc_s, wait_quiet  # noqa: E402

from replayproxy.cassette import Cassette, Interaction, Request, Response, save  # noqa: E402

#: Plugins neither suite needs, off in both: start-up noise only.
QUIET = ("-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:benchmark", "-p", "no:asyncio",
         "-p", "no:anyio", "-p", "no:hypothesispytest", "-p", "no:randomly")

WITH = '''
import urllib.request
import pytest

@pytest.mark.parametrize("n", range({n}))
@pytest.mark.replayproxy("cassettes/jobs.yaml")
def test_poll(replayproxy, n):
    with urllib.request.urlopen(replayproxy.url + "/v1/jobs/6238") as resp:
        assert resp.status == 200 and resp.read()
'''

WITHOUT = '''
import os, urllib.request
import pytest

URL = os.environ["BENCH_URL"]

@pytest.mark.parametrize("n", range({n}))
def test_poll(n):
    with urllib.request.urlopen(URL + "/v1/jobs/6238") as resp:
        assert resp.status == 200 and resp.read()
'''


def cassette() -> Cassette:
    """Submit, three polls, a listing: the shape of a focused test's cassette."""

    def ex(method: str, uri: str, status: int, body: bytes, request_body: bytes = b"") -> Any:
        headers = [("Content-Type", "application/json")]
        return Interaction(
            Request(method, f"https://camber.example{uri}", headers if request_body else [],
                    request_body),
            Response(status, "OK", headers, body),
        )

    return Cassette([
        ex("POST", "/v1/jobs", 201, b'{"job_id": 6238, "status": "PENDING"}',
           b'{"command": "python run.py invoice.pdf", "engine_type": "MPI"}'),
        ex("GET", "/v1/jobs/6238", 200, b'{"job_id": 6238, "status": "RUNNING"}'),
        ex("GET", "/v1/jobs/6238", 200, b'{"job_id": 6238, "status": "RUNNING"}'),
        ex("GET", "/v1/jobs/6238", 200, b'{"job_id": 6238, "status": "COMPLETED"}'),
        ex("GET", "/v1/jobs?status=COMPLETED&page=1", 200, b'{"jobs": [6238]}'),
    ])


def suite(work: Path, n: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    save(cassette(), work / "cassettes" / "jobs.yaml")
    (work / "pytest.ini").write_text("[pytest]\n")
    (work / "test_with_plugin.py").write_text(WITH.format(n=n))
    (work / "test_without.py").write_text(WITHOUT.format(n=n))
    return work


def timed(work: Path, test_file: str, n: int, env: dict[str, str],
          server_pid: int | None = None) -> tuple[float, float]:
    """Wall seconds of one pytest process, and the CPU seconds it spent (plus, for the suite
    without the plugin, what the shared server spent answering it)."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server0 = proc_s(server_pid) if server_pid else 0.0
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", *QUIET, test_file], cwd=work,
                          env=env, capture_output=True, text=True, timeout=900)
    took = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = (proc_s(server_pid) - server0) if server_pid else 0.0
    if done.returncode != 0 or f"{n} passed" not in done.stdout:
        raise SystemExit(f"plugin_cost: {test_file} did not pass:\n{done.stdout[-3000:]}")
    cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime + server
    return took, cpu


def in_process(cassette_path: Path, url: str, blocks: int = 10, per_block: int = 50) -> dict:
    """The fixture's own work without pytest around it, alternating blocks: a SyncReplayProxy
    started, asked once and stopped, against the same request to the shared server."""
    import urllib.request

    from replayproxy.api import SyncReplayProxy

    def plugin() -> None:
        with SyncReplayProxy(cassette_path) as proxy:
            with urllib.request.urlopen(proxy.url + "/v1/jobs/6238") as resp:
                resp.read()

    def plain() -> None:
        with urllib.request.urlopen(url + "/v1/jobs/6238") as resp:
            resp.read()

    wall: dict[str, list[float]] = {"with": [], "without": []}
    cpu: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(3):
        plugin()
        plain()
    for b in range(blocks):
        for name, fn in harness.alternate((("with", plugin), ("without", plain)), b):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(per_block):
                fn()
            wall[name].append(1000 * (time.perf_counter() - t0) / per_block)
            cpu[name].append(1000 * (time.process_time() - c0) / per_block)
    return {
        "with_ms": median(wall["with"]),
        "without_ms": median(wall["without"]),
        "with_cpu_ms": median(cpu["with"]),
        "without_cpu_ms": median(cpu["without"]),
        "plugin_ms": median([w - o for w, o in zip(wall["with"], wall["without"],
                                                       strict=True)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=1000, help="tests per suite (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="200 tests, 3 rounds")
    parser.add_argument("--quiet-wait", type=float, default=10.0,
                        help="wait up to S seconds for an idle machine before each round")
    args = parser.parse_args()
    n, rounds = (200, 3) if args.quick else (args.tests, args.rounds)
    work = suite(RESULTS / "plugin_cost", n)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    base = Server("plugin-cost-baseline", harness.baseline_cmd(work / "cassettes" / "jobs.yaml"),
                  None)
    times: dict[str, list[float]] = {"with": [], "without": []}
    cpus: dict[str, list[float]] = {"with": [], "without": []}
    try:
        env["BENCH_URL"] = base.url
        wait_quiet(args.quiet_wait)
        inner = in_process(work / "cassettes" / "jobs.yaml", base.url)
        log(f"in process: {inner['with_ms']:.2f} ms per start + request + stop, "
                f"{inner['without_ms']:.2f} ms per request to the shared server")
        for r in range(rounds):
            busy = wait_quiet(args.quiet_wait)
            for name in harness.alternate(("with", "without"), r):
                test_file = "test_with_plugin.py" if name == "with" else "test_without.py"
                pid = base.proc.pid if name == "without" else None
                took, cpu = timed(work, test_file, n, env, pid)
                times[name].append(took)
                cpus[name].append(cpu)
            log(f"round {r + 1}/{rounds}: with {times['with'][-1]:.2f} s "
                    f"(cpu {cpus['with'][-1]:.2f}), without {times['without'][-1]:.2f} s "
                    f"(cpu {cpus['without'][-1]:.2f}); {n} tests, machine {busy:.0f}% busy before")
    finally:
        base.stop()

    def per_test(series: dict[str, list[float]]) -> list[float]:
        return [1000 * (w - o) / n for w, o in zip(series["with"], series["without"], strict=True)]

    ratios = [w / o for w, o in zip(times["with"], times["without"], strict=True)]
    result = {
        "machine": harness.machine(),
        "tests": n,
        "rounds": rounds,
        "with_s": times["with"],
        "without_s": times["without"],
        "with_cpu_s": cpus["with"],
        "without_cpu_s": cpus["without"],
        "with_s_median": median(times["with"]),
        "without_s_median": median(times["without"]),
        "plugin_ms_per_test_median": median(per_test(times)),
        "plugin_cpu_ms_per_test_median": median(per_test(cpus)),
        "suite_ratio_median": median(ratios),
        "per_1000_tests_s": median(per_test(times)),  # ms per test x 1,000 tests = s
        "in_process": inner,
    }
    out = harness.write_result("plugin_cost", result)
    print(f"{n} tests, {rounds} rounds (medians)")
    print(f"  without the plugin (one shared server): {result['without_s_median']:.2f} s")
    print(f"  with the plugin (a proxy per test):     {result['with_s_median']:.2f} s "
          f"({result['suite_ratio_median']:.2f}x)")
    print(f"  plugin cost per test: {result['plugin_ms_per_test_median']:.2f} ms wall, "
          f"{result['plugin_cpu_ms_per_test_median']:.2f} ms cpu (target < 10)")
    print(f"  a 1,000-test suite: {result['per_1000_tests_s']:+.1f} s (target <= 10 s)")
    print(f"  in process: start + one request + stop {inner['with_ms']:.2f} ms "
          f"({inner['with_cpu_ms']:.2f} ms cpu) vs one request {inner['without_ms']:.2f} ms: "
          f"{inner['plugin_ms']:+.2f} ms")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
