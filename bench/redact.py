"""CPU per recorded exchange spent redacting, this tree against a baseline tree, side by side.

    python bench/redact.py --baseline /path/to/other/checkout [--rounds 4] [--n 30000]

Each round runs the same exchange (a Bearer API key in the request, a 1 KiB JSON answer that
holds no secret: the usual case) through `Redactor` in a fresh process per tree, alternating,
and reports the best CPU time per exchange of each and their ratio. What the recorder does per
exchange: learn the request's redacted values (when the tree has `learn_request`), then redact.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import ROOT  # noqa: E402

PROBE = r"""
import json, sys, time
from replayproxy.cassette import Interaction, Request, Response
from replayproxy.config import Config
from replayproxy.redact import Redactor

r = Redactor.from_config(Config(), {"CAMBER_API_KEY": "sk_test_abcdefgh1234"})
body = json.dumps({"job_id": 6238, "status": "RUNNING", "pad": "x" * 900}).encode()
item = Interaction(
    Request("GET", "https://camber.example/v1/jobs/6238",
            [("Host", "camber.example"), ("Authorization", "Bearer sk_test_abcdefgh1234"),
             ("Accept", "*/*"), ("User-Agent", "python-requests/2.32")], b""),
    Response(200, "OK", [("Content-Type", "application/json"), ("X-Request-Id", "req_1"),
                         ("Content-Length", str(len(body)))], body),
    {},
)
learn = getattr(r, "learn_request", None)
n = int(sys.argv[1])
start = time.process_time()
for _ in range(n):
    if learn is not None:
        learn(item.request)
    r.interaction(item)
print((time.process_time() - start) / n)
"""


def one(tree: Path, n: int) -> float:
    """CPU seconds per exchange in a fresh interpreter that imports the package from `tree`."""
    return float(harness.python(PROBE, str(n), tree=tree, timeout=300))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, type=Path, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n", type=int, default=30000, help="exchanges per run")
    args = parser.parse_args()
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.rounds):
        theirs.append(one(args.baseline, args.n))
        ours.append(one(ROOT, args.n))
    a, b = min(theirs), min(ours)
    print(f"baseline {args.baseline}: {a * 1e6:.1f} us/exchange")
    print(f"this tree {ROOT}: {b * 1e6:.1f} us/exchange")
    print(f"ratio (this / baseline): {b / a:.2f}x")


if __name__ == "__main__":
    main()
