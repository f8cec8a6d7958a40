"""`replayproxy check` measured: precision and recall on the labeled corpus, time per MiB.

    PYTHONPATH=. python bench/check_precision.py [--mib 16]

The corpus (tests/leak_corpus.py) is recorded here, against local servers, by vcrpy and by the
recorder: once with secrets planted in every place one sits, once with placeholders in their
place (the cleaned copy a team commits). Precision counts every finding on both; recall counts
the planted secrets found. Side by side, the baseline: detect-secrets' own file scan (all its
default plugins, as `detect-secrets scan` runs them) on the same files, and its JWT pattern
with Python's engine on crafted text, which is why `check` runs the formats through RE2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from leak_corpus import CONFIG_PLACEHOLDERS, record_corpus  # noqa: E402

from replayproxy.cassette import load, save  # noqa: E402
from replayproxy.check import Context, check_paths  # noqa: E402
from replayproxy.config import CheckConfig, Config  # noqa: E402


def _label(secret: str, planted: dict[str, str]) -> str | None:
    for label, value in planted.items():
        if secret == value or (len(secret) >= 8 and (secret in value or value in secret)):
            return label
    return None


def detect_secrets_count(paths: list[Path]) -> tuple[int, float]:
    """Findings and seconds of detect-secrets' own scan (default plugins and filters)."""
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    collection = SecretsCollection()
    started = time.perf_counter()
    with default_settings():
        for path in paths:
            collection.scan_file(str(path))
    elapsed = time.perf_counter() - started
    return sum(len(found) for _, found in collection.data.items()), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16, help="size of the large cassette")
    args = parser.parse_args()
    os.environ.setdefault("CAMBER_WEBHOOK_SECRET", "bench-upstream-secret-1")
    os.environ.setdefault("WEBHOOK_SECRET", "bench-local-secret-1")
    config = Config(check=CheckConfig(placeholders=CONFIG_PLACEHOLDERS))

    with tempfile.TemporaryDirectory() as tmp:
        planted_dir, clean_dir = Path(tmp, "planted"), Path(tmp, "clean")
        planted = record_corpus(planted_dir)
        record_corpus(clean_dir, planted=False)
        planted_files = sorted(planted_dir.glob("*.yaml"))
        clean_files = sorted(clean_dir.glob("*.yaml"))

        found = [f for f in check_paths(planted_files, Context(config)) if f.check == "secret"]
        clean = [f for f in check_paths(clean_files, Context(config)) if f.check == "secret"]
        true = [f for f in found if _label(f.secret, planted)]
        false = [f for f in found if not _label(f.secret, planted)] + clean
        labels = {_label(f.secret, planted) for f in true}
        precision = len(true) / max(1, len(true) + len(false))
        recall = len(labels) / len(planted)
        ds_planted, _ = detect_secrets_count(planted_files)
        ds_clean, _ = detect_secrets_count(clean_files)
        print("corpus: planted secrets", len(planted), "in", len(planted_files), "cassettes")
        print(f"  check:          recall {recall:.3f} ({len(labels)}/{len(planted)}), "
              f"precision {precision:.3f} ({len(true)} true, {len(false)} false findings; "
              f"{len(clean)} on the cleaned copy)")
        print(f"  detect-secrets: {ds_planted} findings on the planted copy, "
              f"{ds_clean} on the cleaned copy (which holds no secret)")

        # a large cassette: the planted corpus, repeated to --mib
        source = load(planted_dir / "vcrpy.yaml")
        size = (planted_dir / "vcrpy.yaml").stat().st_size
        big = load(planted_dir / "vcrpy.yaml")
        big.interactions = source.interactions * max(1, (args.mib << 20) // size)
        big_path = Path(tmp, "big.yaml")
        save(big, big_path)
        mib = big_path.stat().st_size / (1 << 20)
        started = time.perf_counter()
        cassette = load(big_path)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        from replayproxy.check import check_cassette

        findings = check_cassette(cassette, "big", Context(config))
        scanned = time.perf_counter() - started
        _, ds_time = detect_secrets_count([big_path])
        print(f"large cassette: {mib:.1f} MiB, {len(cassette.interactions)} interactions, "
              f"{len(findings)} findings")
        print(f"  check:          {scanned / mib * 1000:.0f} ms/MiB scanning "
              f"(+ {loaded / mib * 1000:.0f} ms/MiB loading the YAML)")
        print(f"  detect-secrets: {ds_time / mib * 1000:.0f} ms/MiB "
              f"(ratio check/detect-secrets {scanned / ds_time:.2f})")

    # crafted text: the library's JWT pattern on Python's engine, and the same through check
    from detect_secrets.plugins.jwt import JwtTokenDetector

    from replayproxy import formats

    for kib in (64, 128):
        text = "eyJ-" * (kib * 256)
        started = time.perf_counter()
        list(JwtTokenDetector().analyze_string(text))
        python_re = time.perf_counter() - started
        started = time.perf_counter()
        list(formats.find(text))
        ours = time.perf_counter() - started
        print(f"crafted 'eyJ-' x {kib} KiB: detect-secrets' JWT pattern (re) {python_re:.2f} s, "
              f"all formats through RE2 {ours * 1000:.1f} ms (ratio {python_re / ours:.0f}x)")


if __name__ == "__main__":
    main()
