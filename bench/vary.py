"""`replayproxy vary` against one run: the matrix of a three-job cassette over the sample app.

    python bench/vary.py [--repeats R] [--jobs N] [--only GLOBS]

The cassette is the committed three-job recording of the sample app (cassettes/camber-jobs.yaml),
the command the sample app's end-to-end check (`python -m replayproxy.demo.sample_app`).
Side by side in one run, alternating R times (default 3):

- **single**: `replayproxy run --timing recorded CASSETTE -- COMMAND`, wall time of the process;
- **matrix**: `replayproxy vary CASSETTE --only GLOBS -j N --json -- COMMAND` (recorded timing,
  vary's default), wall time of the process, and the per-variant proxy start times it reports
  (from nothing to a proxy listening, in the vary process).

The default selection is the variants whose runs end as soon as the app is done (the expected
set, plus early and reset): lost and bad-signature webhooks, and timeouts, make the app wait for
something that never comes, which no amount of parallelism shortens. Prints one JSON line with
the medians and the ratio to the target (variants / cores) x 1.3 x single.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import ROOT, median  # noqa: E402

CASSETTE = ROOT / "cassettes" / "camber-jobs.yaml"
COMMAND = [sys.executable, "-m", "replayproxy.demo.sample_app"]
ONLY = (
    "webhook-*-duplicate,webhook-*-sender-retry,webhook-*-early,webhooks-reordered,"
    "interaction-*-503-once,interaction-*-429,interaction-*-slow,interaction-*-reset"
)


def timed(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    return time.perf_counter() - start, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", default=ONLY)
    args = parser.parse_args()
    env = {**os.environ, "WEBHOOK_SECRET": "bench-vary-local-secret",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    single_cmd = harness.replayproxy("run", "--timing", "recorded", str(CASSETTE), "--", *COMMAND)
    matrix_cmd = harness.replayproxy("vary", str(CASSETTE), "--only", args.only, "-j",
                                     str(args.jobs), "--json", "--", *COMMAND)
    singles, matrices, starts, cells = [], [], [], 0
    for round_ in range(args.repeats):
        for which in harness.alternate(("single", "matrix"), round_):
            if which == "single":
                seconds, proc = timed(single_cmd, env)
                if proc.returncode != 0:
                    sys.exit(f"single run failed: {proc.stdout}{proc.stderr}")
                singles.append(seconds)
            else:
                seconds, proc = timed(matrix_cmd, env)
                matrix = json.loads(proc.stdout)
                if matrix["exit_status"] != 0:
                    sys.exit(f"matrix broke an expectation: {matrix['broken']}")
                cells = len(matrix["variants"])
                matrices.append(seconds)
                starts += [v["proxy_start_seconds"] for v in matrix["variants"]]
            print(f"round {round_ + 1} {which}: {seconds:.2f} s", file=sys.stderr)
    single, whole = median(singles), median(matrices)
    ideal = cells / args.jobs * single
    print(json.dumps({
        "variants_with_recorded": cells,
        "cores": os.cpu_count(),
        "jobs": args.jobs,
        "single_s": round(single, 3),
        "matrix_s": round(whole, 3),
        "matrix_over_ideal": round(whole / ideal, 3),  # target <= 1.3
        "target_s": round(1.3 * ideal, 3),
        "proxy_start_median_ms": round(1000 * median(starts), 1),
        "proxy_start_max_ms": round(1000 * max(starts), 1),
        "singles_s": [round(s, 3) for s in singles],
        "matrices_s": [round(s, 3) for s in matrices],
    }))


if __name__ == "__main__":
    main()
