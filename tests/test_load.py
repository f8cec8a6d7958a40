"""Load, bounded: 50 concurrent clients x 40 requests through `record` (against the sandbox) and
through `replay`. Every exchange is recorded exactly once and whole, none interleaved, and the
replay answers every request with the recorded bytes. The full-size run (50 x 2,000, with the
proxy's peak RSS) is `python bench/load.py`; this runs the same code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from helpers import run

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("replayproxy_bench_load", ROOT / "bench" / "load.py")
assert _spec and _spec.loader
bench_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_load)


def test_50_clients_through_record_and_replay(tmp_path: Path) -> None:
    result = run(bench_load.run_load(tmp_path, clients=50, requests=40, stop_timeout=60))
    assert result["exchanges"] == result["interactions_recorded"] == 2000
    if result["replay_peak_rss_mib"] is not None:  # /proc present
        assert result["replay_peak_rss_mib"] < 300  # 2,000 exchanges: well under, not a leak
