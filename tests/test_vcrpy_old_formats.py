"""Cassettes older vcrpy releases wrote (tests/fixtures/vcrpy-*/, made by
scripts/make_old_vcrpy_fixtures.py) are served as that vcrpy played them.

Each fixture folder holds, beside the cassettes, what each client saw when the old vcrpy played
the cassette back (`played`), and from the origin while recording (`live`): the oracle where the
old vcrpy could not play its own cassette (its httpx stub with httpx 0.24).
"""

from __future__ import annotations

import base64
import json
import logging
from http import HTTPStatus
from pathlib import Path

import pytest
import vcr
from vcr.serializers import jsonserializer, yamlserializer
from vcr_clients import CALLS, CLIENTS, Seen, same, unaccepted_codings

from replayproxy.api import SyncReplayProxy
from replayproxy.cassette import load

FIXTURES = Path(__file__).parent / "fixtures"
CASES = [
    (folder, name, entry)
    for folder in sorted(FIXTURES.glob("vcrpy-*"))
    for name, entry in json.loads((folder / "expected.json").read_text())["cassettes"].items()
]


def _seen(rows: list) -> list[Seen]:
    return [Seen(s, r, [tuple(h) for h in hs], base64.b64decode(b)) for s, r, hs, b in rows]


def _items(path: Path) -> list[dict]:
    serializer = jsonserializer if path.suffix == ".json" else yamlserializer
    items = serializer.deserialize(path.read_text())["interactions"]
    for item in items:  # vcrpy's httpx stub before 6.0: `status_code`, `content`
        item["response"].setdefault("body", {"string": item["response"].get("content")})
    return items


def test_every_old_format_is_here() -> None:
    """The fixtures cover what the old formats differ in, so nothing below passes vacuously."""
    texts = {p.name + p.parent.name: p.read_text() for p in FIXTURES.glob("vcrpy-*/*.yaml")}
    joined = "\n".join(texts.values())
    assert "status_code:" in joined and "content:" in joined  # httpx before vcrpy 6
    assert "!!python/tuple" in joined  # tornado's header pairs
    assert "    url: http" in joined  # aiohttp before vcrpy 5, tornado
    assert {f.name for f, *_ in CASES} == {"vcrpy-4.4.0", "vcrpy-5.1.0", "vcrpy-7.0.0"}
    assert {c[2]["client"] for c in CASES} >= {"requests", "aiohttp", "tornado", "httpx"}


@pytest.mark.parametrize(
    ("folder", "name", "entry"), CASES, ids=[f"{f.name}/{n}" for f, n, _ in CASES]
)
def test_old_cassette_is_served_as_vcrpy_played_it(folder: Path, name: str, entry: dict) -> None:
    logging.getLogger("vcr").setLevel(logging.WARNING)
    path = folder / name
    load(path)  # loads without error
    calls = [CALLS[i] for i in entry["calls"]]
    oracles = _oracles(entry, path, calls)
    with SyncReplayProxy(path) as proxy:
        served = CLIENTS[entry["client"]](proxy.url, calls)
    assert not proxy.report.unmatched, proxy.report.unmatched
    unaccepted = unaccepted_codings(_items(path))
    bases = (entry["origin"], proxy.url)
    for n, call in enumerate(calls):
        seen = served[n]
        assert any(same(call, o[n], seen, bases, unaccepted) for o in oracles), (
            f"{folder.name}/{name}: {call.method} {call.path}"
        )
        length = {k.lower(): v for k, v in seen.headers}.get("content-length")
        if length is not None and "content-encoding" not in {k.lower() for k, _ in seen.headers}:
            assert int(length) == len(seen.body)


def _oracles(entry: dict, path: Path, calls) -> list[list[Seen]]:
    """What the old vcrpy played; and what this machine's vcrpy plays from the same file.

    Where the two differ, the older one had lost part of its own recording (5.1.0 with
    urllib3 2 plays one value of a repeated header; 4.x and 5.x could not play back their
    httpx cassettes at all): replayproxy must match one of them.
    """
    out = []
    if entry["played"]:
        out.append(_seen(entry["played"]))
    else:  # the old stub could not play it: what it kept of what the client saw live. It kept
        # no reason phrase (the status's standard one is served) and only text: it dropped
        # what was not UTF-8 (`content.decode("utf-8", "ignore")`)
        live = _seen(entry["live"])
        for seen in live:
            seen.reason = HTTPStatus(seen.status).phrase
            seen.body = seen.body.decode("utf-8", "ignore").encode()
        out.append(live)
    serializer = "json" if path.suffix == ".json" else "yaml"
    try:
        with vcr.VCR(serializer=serializer).use_cassette(str(path), record_mode="none"):
            out.append(CLIENTS[entry["client"]](entry["origin"], calls))
    except Exception:  # noqa: BLE001 - vcrpy 9 cannot play httpx's old format with a coding
        pass
    return out
