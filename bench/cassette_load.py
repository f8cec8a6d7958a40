#!/usr/bin/env python3
"""`cassette.load` of the bench workload: this tree against a baseline tree, side by side.

    git worktree add /tmp/rp-base main     # or any checkout to compare with
    python bench/cassette_load.py --baseline /tmp/rp-base [--count 10000] [--rounds 7]

Each round loads the same cassette once in a fresh interpreter per tree (order alternating),
measuring the process CPU time of `load()` alone (gc off, as `ReplayProxy.start` runs it).
Reported: each tree's median and the median of the per-round ratios (this / baseline).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import workload  # noqa: E402
from harness import ROOT, median  # noqa: E402

SNIPPET = (
    "import gc, sys, time\n"
    "from replayproxy.cassette import load\n"
    "gc.disable()\n"
    "t = time.process_time(); c = load(sys.argv[1]); t = time.process_time() - t\n"
    "print(t, len(c.interactions))\n"
)


def timed(tree: Path, cassette: Path) -> float:
    """CPU seconds of `load()` in a fresh interpreter that imports the package from `tree`."""
    out = harness.python(SNIPPET, str(cassette), tree=tree, env={"PATH": "/usr/bin:/bin"},
                         timeout=600)
    return float(out.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout to compare with")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    cassette = Path(tempfile.gettempdir()) / f"replayproxy-bench-load-{args.count}.yaml"
    if not cassette.exists():
        workload.write_cassette(cassette, workload.exchanges(args.count))
    ours: list[float] = []
    base: list[float] = []
    ratios: list[float] = []
    for n in range(args.rounds):
        pair = [(ROOT, ours), (args.baseline, base)]
        for tree, into in pair if n % 2 == 0 else pair[::-1]:
            into.append(timed(tree, cassette))
        ratios.append(ours[-1] / base[-1])
    print(json.dumps({
        "interactions": args.count,
        "this_s": round(median(ours), 3),
        "baseline_s": round(median(base), 3),
        "ratio_median": round(median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
    }, indent=1))


if __name__ == "__main__":
    main()
