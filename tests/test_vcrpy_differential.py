"""vcrpy is the oracle: what it plays from a cassette, replayproxy serves, to the same client.

Each case records a cassette with vcrpy itself (this machine's version) against a local origin,
through one client library vcrpy patches, with and without `decode_compressed_response`, in the
YAML and the JSON serializer. vcrpy then plays it to the client, replayproxy serves it to the
same client, and the two views are compared: status, reason, headers, body, byte for byte.
The origin counts its answers: neither playback may reach it.

Two things are served differently on purpose (README, "Cassette format"): `Content-Length`
is the length replayproxy sends (vcrpy plays the recorded value, the coded length for a body
it stored decoded), and a body stored decoded under a `Content-Encoding` header reaches a
client that did not accept that coding without the false label.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import vcr
import yaml
from vcr.serializers import yamlserializer
from vcr_clients import CALLS, CLIENTS, S3_CALLS, Call, Seen
from vcr_origin import Origin

from replayproxy.api import SyncReplayProxy

ROOT = Path(__file__).resolve().parent.parent
FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


@pytest.fixture(scope="module")
def origin():
    with Origin() as server:
        yield server


@pytest.fixture(autouse=True)
def quiet():
    """vcrpy logs every playback at INFO; the suite's output stays readable without it."""
    logging.getLogger("vcr").setLevel(logging.WARNING)


def _recorded(path: Path) -> list[dict]:
    return yamlserializer.deserialize(path.read_text())["interactions"]


def _text_only(calls, items: list[dict]) -> list[Call]:
    """The calls whose exchanges vcrpy's JSON serializer can write (it refuses bytes). Each call
    made one exchange, a followed redirect two."""
    keep, i = [], 0
    for call in calls:
        n = 2 if i + 1 < len(items) and "via=redirect" in items[i + 1]["request"]["uri"] else 1
        values = [v for item in items[i : i + n] for v in _values(item)]
        i += n
        if all(v is None or isinstance(v, (str, int, dict, list)) for v in values):
            keep.append(call)
    assert i == len(items), "calls and recorded exchanges do not line up"
    return keep


def _values(item: dict) -> list:
    req, res = item["request"], item["response"]
    heads = [v for values in req["headers"].values() for v in values]
    return [req["body"], res["body"].get("string"), *heads]


def _view(seen: Seen, base: str) -> tuple:
    headers = sorted(
        ((k.lower(), v.replace(base, "BASE")) for k, v in seen.headers if k.lower() not in FRAMING),
        key=lambda kv: kv[0],
    )
    return seen.status, seen.reason, headers, seen.body


def _unaccepted_codings(items: list[dict]) -> dict[str, str]:
    """Path -> coding, for answers stored decoded under a Content-Encoding the request did
    not accept: replayproxy serves those without the label (vcrpy keeps it)."""
    out = {}
    for item in items:
        res, req = item["response"], item["request"]
        coding = next((v for k, v in res["headers"] if k.lower() == "content-encoding"), None) \
            if isinstance(res["headers"], list) else next(
                (v for k, v in res["headers"].items() if k.lower() == "content-encoding"), None)
        if not coding:
            continue
        coding = coding[0] if isinstance(coding, list) else coding
        accepted = " ".join(
            " ".join(v) if isinstance(v, list) else str(v)
            for k, v in req["headers"].items()
            if k.lower() == "accept-encoding"
        )
        if coding not in accepted:
            out["/" + req["uri"].split("://", 1)[1].split("/", 1)[1]] = coding
    return out


def _compare(calls, played: list[Seen], served: list[Seen], bases, unaccepted, where) -> None:
    assert len(played) == len(served) == len(calls)
    for call, p, s in zip(calls, played, served, strict=True):
        want, got = _view(p, bases[0]), _view(s, bases[1])
        if call.path in unaccepted and "content-encoding" not in dict(got[2]):
            want = (*want[:2], [h for h in want[2] if h[0] != "content-encoding"], want[3])
        assert got == want, f"{where}: {call.method} {call.path}"
        length = dict((k.lower(), v) for k, v in s.headers).get("content-length")
        if length is not None and "content-encoding" not in dict(got[2]):
            assert int(length) == len(s.body), f"{where}: {call.path}: Content-Length is off"


CASES = [(name, decode) for name in CLIENTS for decode in (False, True)]


IDS = [f"{c}-{'decoded' if d else 'raw'}" for c, d in CASES]


@pytest.mark.parametrize(("client", "decode"), CASES, ids=IDS)
def test_replayproxy_serves_what_vcrpy_plays(origin, tmp_path: Path, client: str, decode: bool):
    fetch = CLIENTS[client]
    calls: tuple[Call, ...] | list[Call] = S3_CALLS if client == "boto3" else CALLS
    for serializer in ("yaml", "json"):
        if not calls:
            break  # botocore's bytes headers and file bodies: vcrpy writes those as YAML only
        path = tmp_path / f"{client}.{serializer}"
        recorder = vcr.VCR(serializer=serializer, decode_compressed_response=decode)
        with recorder.use_cassette(str(path), record_mode="all"):
            fetch(origin.url, calls)
        items = _recorded(path) if serializer == "yaml" else None
        if serializer == "yaml":
            yaml_items = items
        hits = origin.hits
        with recorder.use_cassette(str(path), record_mode="none", allow_playback_repeats=False):
            played = fetch(origin.url, calls)
        with SyncReplayProxy(path) as proxy:
            served = fetch(proxy.url, calls)
        assert origin.hits == hits, "a playback reached the origin"
        assert not proxy.report.unmatched, proxy.report.unmatched
        unaccepted = _unaccepted_codings(yaml_items)
        where = f"{client} {serializer}"
        _compare(calls, played, served, (origin.url, proxy.url), unaccepted, where)
        if serializer == "yaml":
            calls = _text_only(calls, yaml_items)  # for JSON, which holds text only
            assert len(calls) >= 6 or client == "boto3"


def test_the_cli_replays_a_vcrpy_json_cassette(origin, tmp_path: Path) -> None:
    """The `replay` command, as a real process, on a JSON cassette vcrpy wrote through requests."""
    calls = [c for c in CALLS if c.path.split("?")[0] in ("/json", "/text", "/teapot", "/echo")
             and c.data is None]
    path = tmp_path / "requests.json"
    recorder = vcr.VCR(serializer="json")
    with recorder.use_cassette(str(path), record_mode="all"):
        CLIENTS["requests"](origin.url, calls)
    assert "\\ud83d\\ude00" in path.read_text()  # how vcrpy's JSON writes the emoji
    with recorder.use_cassette(str(path), record_mode="none"):
        played = CLIENTS["requests"](origin.url, calls)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "replay", str(path), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:"), (line, proc.poll() and proc.stderr.read())
        served = CLIENTS["requests"](url, calls)
    finally:
        proc.terminate()
        proc.wait(10)
    _compare(calls, played, served, (origin.url, url), {}, "cli json")


def test_tags_vcrpy_reads_as_data_and_no_other() -> None:
    """The Python tags vcrpy's own loader reads as plain data load the same here; the ones it
    refuses (they would run code) are refused here too."""
    from replayproxy.yamlload import LoadError, load

    text = (
        "a: !!python/unicode caf\u00e9\n"
        "b: !!python/str plain\n"
        "c: !!python/tuple [x, [y]]\n"
        "d: !!python/object/new:_io.BytesIO {state: !!python/tuple [!!binary aGk=, 0, null]}\n"
        "e: !!python/object/apply:builtins.iter {args: !!python/tuple [[ab, cd]]}\n"
    )
    vcrpy = yaml.load(text, Loader=yamlserializer._CassetteLoader)  # noqa: S506 - vcrpy's own loader
    ours = load(text)
    assert ours["a"] == vcrpy["a"] and ours["b"] == vcrpy["b"]
    assert ours["c"] == list(vcrpy["c"])
    assert ours["d"] == vcrpy["d"].read() == b"hi"
    assert ours["e"] == b"".join(x.encode() for x in vcrpy["e"])
    for evil in ("!!python/object/apply:os.system [echo hi]", "!!python/name:os.system ''",
                 "!!python/object:vcr.request.Request {uri: x}", "!!python/bytes aGk="):
        with pytest.raises(yaml.YAMLError):
            yaml.load(f"x: {evil}\n", Loader=yamlserializer._CassetteLoader)  # noqa: S506
        with pytest.raises(LoadError):
            load(f"x: {evil}\n")
