"""vcrpy is the oracle: what it plays from a cassette, replayproxy serves, to the same client.

Each case records a cassette with vcrpy itself (this machine's version) against a local origin,
through one client library vcrpy patches, with and without `decode_compressed_response`, in the
YAML and the JSON serializer. vcrpy then plays it to the client, replayproxy serves it to the
same client, and the two views are compared: status, reason, headers, body, byte for byte.
The origin counts its answers: neither playback may reach it.

Two things are served differently on purpose (docs/cassette.md#vcrpys-cassettes): `Content-Length`
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
from vcr_clients import CALLS, CLIENTS, S3_CALLS, Call, Seen, compare, text_only, unaccepted_codings
from vcr_origin import Origin

from replayproxy.api import SyncReplayProxy

ROOT = Path(__file__).resolve().parent.parent


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
        unaccepted = unaccepted_codings(yaml_items)
        where = f"{client} {serializer}"
        compare(calls, played, served, (origin.url, proxy.url), unaccepted, where)
        if serializer == "yaml":
            calls = text_only(calls, yaml_items)  # for JSON, which holds text only
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
    compare(calls, played, served, (origin.url, url), {}, "cli json")


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


def test_forward_mode_serves_what_vcrpy_plays(origin, tmp_path: Path) -> None:
    """The same cassette through replayproxy as a plain-HTTP forward proxy (`HTTP_PROXY`): the
    client asks for the origin's own URLs, and the host takes part in matching."""
    import requests

    calls = [c for c in CALLS if c.path != "/redirect"]
    (tmp_path / "cassettes").mkdir()
    path = tmp_path / "cassettes" / "forward.yaml"  # the CA's folder must be outside
    recorder = vcr.VCR()
    with recorder.use_cassette(str(path), record_mode="all"):
        CLIENTS["requests"](origin.url, calls)
    hits = origin.hits
    with recorder.use_cassette(str(path), record_mode="none"):
        played = CLIENTS["requests"](origin.url, calls)
    with SyncReplayProxy(path, forward=True, ca_dir=tmp_path / "ca") as proxy:
        session = requests.Session()
        session.trust_env = False
        session.proxies = {"http": proxy.url}
        served = []
        for c in calls:
            r = session.request(c.method, origin.url + c.path, json=c.json, data=c.data,
                                headers={"Content-Type": "application/octet-stream"}
                                if c.data is not None else None)
            served.append(Seen(r.status_code, r.reason, list(r.headers.items()), r.content))
        session.close()
    assert origin.hits == hits, "a playback reached the origin"
    assert not proxy.report.unmatched, proxy.report.unmatched
    compare(calls, played, served, (origin.url, origin.url), unaccepted_codings(_recorded(path)),
            "forward")
