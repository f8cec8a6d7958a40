#!/usr/bin/env python3
"""Record cassettes with older vcrpy releases, for tests/test_vcrpy_old_formats.py.

An old vcrpy cannot be installed beside the project's, so each goes in its own venv under
/tmp/replayproxy-old-vcrpy/ with client libraries of its time. There, the origin of
tests/vcr_origin.py (127.0.0.1) is recorded through every client that installs, in YAML and
JSON, and the old vcrpy plays each cassette back to its client: what that client saw is saved
beside the cassettes (expected.json) as the oracle the test compares replayproxy with.

    python scripts/make_old_vcrpy_fixtures.py            # all versions below
    python scripts/make_old_vcrpy_fixtures.py 4.4.0      # one of them

Writes tests/fixtures/vcrpy-VERSION/ (committed). Needs the network for pip, once.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = Path(tempfile.gettempdir()) / "replayproxy-old-vcrpy"

#: vcrpy release -> what goes in its venv. 4.4.0: the last 4.x (urllib3 1, httpx's old
#: `status_code`/`content` format, aiohttp's `url`); 5.1.0: the last 5.x (urllib3 2, which
#: makes vcrpy store bodies decoded under their Content-Encoding; httpx still the old format);
#: 7.0.0: httpx's new format (`status`/`body`, the coded bytes) as of 6.0, before 8.2 added
#: the reason phrase.
VERSIONS = {
    "4.4.0": ["vcrpy==4.4.0", "urllib3<2", "requests<2.32", "httpx==0.24.1", "aiohttp==3.8.6",
              "tornado==6.3.3", "httplib2==0.22.0", "brotli"],
    "5.1.0": ["vcrpy==5.1.0", "urllib3>=2,<2.1", "requests==2.31.0", "httpx==0.24.1",
              "aiohttp==3.8.6", "tornado==6.3.3", "httplib2==0.22.0", "brotli"],
    "7.0.0": ["vcrpy==7.0.0", "urllib3>=2,<2.3", "requests==2.32.3", "httpx==0.27.2",
              "aiohttp==3.10.11", "tornado==6.4.2", "httplib2==0.22.0", "brotli"],
}
#: Clients each old vcrpy patches that are recorded (boto3 needs botocore of the era: left out).
CLIENT_NAMES = ("requests", "urllib3", "httpx", "httpx-async", "aiohttp", "tornado", "urllib",
                "http.client", "httplib2")


def build(version: str) -> None:
    venv = VENVS / version
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *VERSIONS[version]], check=True)
    out = ROOT / "tests" / "fixtures" / f"vcrpy-{version}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    expected: dict = {"vcrpy": version, "cassettes": {}}
    for name in CLIENT_NAMES:  # one process each: an old stub's patching stays in its process
        part = out / "part.json"
        subprocess.run([str(python), __file__, "--record", str(out), name], check=True, env=env)
        if part.exists():
            expected["cassettes"].update(json.loads(part.read_text()))
            part.unlink()
    (out / "expected.json").write_text(_dump(expected))
    print(f"wrote {len(expected['cassettes'])} cassettes to {out}")


def _dump(expected: dict) -> str:
    """One cassette's entry a line: diffs of a regenerated set stay readable, the file small."""
    entries = [f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
               for k, v in expected["cassettes"].items()]
    head = f'{{"vcrpy": {json.dumps(expected["vcrpy"])}, "cassettes": {{\n'
    return head + ",\n".join(entries) + "\n}}\n"


def record(out: Path, name: str) -> None:
    """Inside the old vcrpy's venv: record, play back, and write what the client saw."""
    import logging

    import vcr
    import yaml
    from vcr_clients import CALLS, CLIENTS, text_only
    from vcr_origin import Origin

    logging.disable(logging.WARNING)
    expected: dict = {}
    with Origin() as origin:
        fetch = CLIENTS[name]
        # the old httpx stub reads request bodies as UTF-8 text: no raw bytes for it
        calls = [c for c in CALLS if c.data is None or not name.startswith("httpx")]
        for serializer in ("yaml", "json"):
            path = out / f"{name.replace('.', '_')}.{serializer}"
            my = vcr.VCR(serializer=serializer)
            try:
                live, played = _round_trip(my, path, fetch, origin.url, calls)
            except ImportError as exc:
                print(f"{name}: not installed ({exc}); skipped", file=sys.stderr)
                break
            except Exception as exc:  # an old stub that cannot drive this client
                print(f"{name} {serializer}: {type(exc).__name__}: {exc}", file=sys.stderr)
                path.unlink(missing_ok=True)
                break
            expected[path.name] = {
                "client": name,
                "origin": origin.url,
                "calls": [CALLS.index(c) for c in calls],
                "played": played and [_seen(s) for s in played],  # what the old vcrpy played
                # and what the client saw from the origin, kept where they differ
                "live": None if played == live else [_seen(s) for s in live],
            }
            if serializer == "yaml":
                items = yaml.load(path.read_text(), Loader=_loader())["interactions"]
                calls = text_only(calls, items)
    if expected:
        (out / "part.json").write_text(json.dumps(expected))


def _round_trip(my, path: Path, fetch, url: str, calls) -> tuple[list, list | None]:
    """What the client saw from the origin, and from the old vcrpy playing the cassette
    (None when that vcrpy cannot play it back: its httpx stub with httpx 0.24)."""
    with my.use_cassette(str(path), record_mode="all"):
        live = fetch(url, calls)
    try:
        with my.use_cassette(str(path), record_mode="none"):
            return live, fetch(url, calls)
    except Exception as exc:
        print(f"{path.name}: vcrpy cannot play it: {type(exc).__name__}", file=sys.stderr)
        return live, None


def _seen(s) -> list:
    return [s.status, s.reason, [list(h) for h in s.headers], base64.b64encode(s.body).decode()]


def _loader():
    """The loader the old vcrpy reads its own cassettes with."""
    from vcr.serializers import yamlserializer

    return getattr(yamlserializer, "Loader", None) or __import__("yaml").Loader


if __name__ == "__main__":
    if sys.argv[1:2] == ["--record"]:
        record(Path(sys.argv[2]), sys.argv[3])
    else:
        for version in sys.argv[1:] or VERSIONS:
            build(version)
