"""The cassette file: round trips, vcrpy compatibility both ways, and errors that say where."""

from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp
import pytest
import requests
import vcr
from aiohttp import web
from helpers import job_cassette, run, serving, webhook

from replayproxy.api import ReplayProxy
from replayproxy.cassette import Cassette, dumps, load, loads, save
from replayproxy.errors import CassetteError

BINARY = bytes(range(256)) * 4
ODD_TEXT = "line one\r\nline two  \n\ttabbed \u00e9\u4e2d \U0001f600 trailing   "


def test_round_trip_keeps_every_byte(tmp_path: Path) -> None:
    cassette = job_cassette()
    cassette.interactions[1].response.body = BINARY
    cassette.webhooks.append(webhook(ODD_TEXT.encode(), cause=2))
    cassette.webhooks.append(webhook(b"\x85 next line \xe2\x80\xa8 \x00 nul", cause=2))
    path = tmp_path / "c.yaml"
    save(cassette, path)
    text = path.read_text()
    assert "!!binary" in text
    assert '"command": "python run.py invoice.pdf"' in text  # text bodies stay readable
    again = load(path)
    assert again.interactions[1].response.body == BINARY
    assert [h.body for h in again.webhooks] == [h.body for h in cassette.webhooks]
    assert again.webhooks[0].cause == 1 and again.webhooks[0].after == 3
    assert dumps(again) == text


def test_times_are_fields_and_the_file_keeps_them_as_written(tmp_path: Path) -> None:
    """`at` and `duration` sit in the `replayproxy` key beside vcrpy's shape; loaded they are
    typed fields, the rest of that key stays `meta`; saved again, the file is the same."""
    cassette = job_cassette()
    first, second = cassette.interactions[:2]
    first.at, first.duration = 0.012, 0.25
    first.meta = {"content_encoding": "gzip"}
    second.at = 3  # an integer stays one
    path = tmp_path / "c.yaml"
    save(cassette, path)
    text = path.read_text()
    assert "  replayproxy:\n    at: 0.012\n    duration: 0.25\n    content_encoding: gzip\n" in text
    assert "  replayproxy:\n    at: 3\n- request:" in text
    again = load(path)
    a, b, c = again.interactions[:3]
    assert (a.at, a.duration, a.meta) == (0.012, 0.25, {"content_encoding": "gzip"})
    assert (b.at, b.duration, b.meta) == (3, None, {})
    assert (c.at, c.duration, c.meta) == (None, None, {})
    assert "replayproxy" not in text.split("- request:")[3]  # nothing written when nothing known
    assert dumps(again) == text
    # vcrpy's own reader takes the file as it is: our key is beside its request and response
    from vcr.serialize import deserialize
    from vcr.serializers import yamlserializer

    requests_, responses = deserialize(text, yamlserializer)
    assert [r.uri for r in requests_][:2] == [
        "https://camber.example/v1/jobs", "https://camber.example/v1/jobs/6238"]
    assert responses[0]["status"]["code"] == 201


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    save(job_cassette(), path)
    first = path.read_bytes()
    save(Cassette(), path)
    assert path.read_bytes() != first
    assert sorted(os.listdir(tmp_path)) == ["c.yaml"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\ninteractions: [\n", ":3: not a valid cassette"),
        ("version: 2\ninteractions: []\n", ":1: version: unknown format version 2"),
        ("interactions: []\n", "missing field 'version'"),
        (
            "version: 1\ninteractions:\n- request: {method: GET, uri: /x}\n"
            "  response:\n    status: {code: abc}\n    body: {string: ''}\n",
            ":5: interactions[0].response.status.code: must be an integer",
        ),
        (
            "version: 1\ninteractions:\n- request: {uri: /x}\n  response: {}\n",
            ":3: interactions[0].request: missing field 'method'",
        ),
        (
            "version: 1\ninteractions: []\nwebhooks:\n- body: x\n  cause: 7\n",
            ":5: webhooks[0].cause: must be an interaction number 1..0",
        ),
        (
            "version: 1\ninteractions:\n- request: {method: GET, uri: /x}\n"
            "  response: {status: {code: 200}, body: {string: ''}}\n"
            "  replayproxy: {at: soon}\n",
            ":5: interactions[0].replayproxy.at: must be an integer or a number, got str 'soon'",
        ),
        (
            "version: 1\ninteractions:\n- request: {method: GET, uri: /x}\n"
            "  response: {status: {code: 200}, body: {string: ''}}\n"
            "  replayproxy:\n    at: 1.5\n    duration: true\n",
            ":7: interactions[0].replayproxy.duration: must be an integer or a number, got bool",
        ),
        (
            "version: 1\ninteractions:\n- request: {method: GET, uri: /x}\n"
            "  response: {status: {code: 200}, body: {string: ''}}\n"
            "  replayproxy: {duration: .inf}\n",
            "interactions[0].replayproxy.duration: must be a finite number, got inf",
        ),
        (
            "version: 1\ninteractions:\n- request: {method: GET, uri: /x}\n"
            "  response: {status: {code: 200}, body: {string: ''}}\n"
            f"  replayproxy: {{at: {'9' * 400}}}\n",
            "interactions[0].replayproxy.at: must be a finite number, got 400 digits",
        ),
        (
            f"version: 1\ninteractions: []\nwebhooks:\n- body: x\n  at: {'9' * 400}\n",
            ":5: webhooks[0].at: must be a finite number, got 400 digits",
        ),
    ],
)
def test_bad_cassettes_name_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(CassetteError) as err:
        loads(text, "bad.yaml")
    assert str(err.value).startswith("bad.yaml")
    assert expected in str(err.value)


def test_python_tags_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = (
        "version: 1\ninteractions: []\nwebhooks: !!python/object/apply:os.system "
        f"['touch {marker}']\n"
    )
    with pytest.raises(CassetteError, match="tags are never executed"):
        loads(text, "evil.yaml")
    assert not marker.exists()


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CassetteError, match="no such cassette"):
        load(tmp_path / "nope.yaml")


def test_vcrpy_replays_a_replayproxy_cassette(tmp_path: Path) -> None:
    """vcrpy 9 loads our file and answers a real `requests` call from it, offline."""
    cassette = job_cassette()
    cassette.interactions[1].response.body = BINARY
    cassette.interactions[1].response.headers = [("Content-Type", "application/octet-stream")]
    path = tmp_path / "ours.yaml"
    save(cassette, path)
    with vcr.use_cassette(str(path), record_mode="none"):
        created = requests.post(
            "https://camber.example/v1/jobs",
            json={"command": "python run.py invoice.pdf", "engine_type": "MPI"},
        )
        polled = requests.get("https://camber.example/v1/jobs/6238")
    assert created.status_code == 201 and created.json() == {"job_id": 6238, "status": "PENDING"}
    assert polled.content == BINARY


def test_replayproxy_serves_a_cassette_that_vcrpy_recorded(tmp_path: Path) -> None:
    async def upstream_and_record() -> str:
        async def job(request: web.Request) -> web.Response:
            return web.json_response({"job_id": int(request.match_info["id"]), "status": "RUNNING"})

        async def blob(request: web.Request) -> web.Response:
            return web.Response(body=BINARY, content_type="application/octet-stream")

        app = web.Application()
        app.router.add_get("/v1/jobs/{id}", job)
        app.router.add_get("/v1/blob", blob)
        async with serving(app) as url:

            def record() -> None:
                with vcr.use_cassette(str(tmp_path / "vcr.yaml"), record_mode="all"):
                    assert requests.get(f"{url}/v1/jobs/7").status_code == 200
                    assert requests.get(f"{url}/v1/blob").content == BINARY

            import asyncio

            await asyncio.to_thread(record)
        return url

    run(upstream_and_record())

    async def replay() -> None:
        async with ReplayProxy(tmp_path / "vcr.yaml") as proxy, aiohttp.ClientSession() as s:
            async with s.get(f"{proxy.url}/v1/jobs/7") as resp:
                assert resp.status == 200
                assert json.loads(await resp.read()) == {"job_id": 7, "status": "RUNNING"}
            async with s.get(f"{proxy.url}/v1/blob") as resp:
                assert await resp.read() == BINARY
        assert proxy.report.served == 2 and not proxy.report.unmatched

    run(replay())


def test_a_uri_that_cannot_be_parsed_is_named() -> None:
    text = (
        "version: 1\ninteractions:\n- request: {method: GET, uri: 'https://[bad/x'}\n"
        "  response: {status: {code: 200}, body: {string: ''}}\n"
    )
    expected = r"bad.yaml:3: interactions\[0\].request.uri: not a valid URI"
    with pytest.raises(CassetteError, match=expected):
        loads(text, "bad.yaml")


def test_bytes_that_are_not_utf8_are_named_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\ninteractions: []\nnote: caf\xe9\n")
    with pytest.raises(CassetteError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}:3: not UTF-8 text")
