"""Fuzzing what a stranger's cassette reaches: the loader, then `check`, `inspect`, `diff` and a
real replay server answering every recorded request (and its webhooks delivered to a sink).

Each example must end in a loaded cassette or one `CassetteError` line naming the file and
line; then nothing may raise, no handler may fail (aiohttp's "Error handling request"), and the
loaded data stays within a small multiple of the file's size. Hypothesis' per-example deadline
turns a hang into a failure; example counts are small so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from helpers import exchange, job_cassette, webhook
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proc import PEAK_THEN_RUN

from replayproxy.cassette import Cassette, dumps, loads
from replayproxy.check import check_cassette
from replayproxy.config import Config, WebhooksConfig
from replayproxy.diff import diff
from replayproxy.errors import CassetteError
from replayproxy.inspect import render_inspect
from replayproxy.replayer import Replayer, ReplayOptions
from replayproxy.server import Server
from replayproxy.terminal import printable

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=40, deadline=3000, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "replayproxy-fuzz-secret")


# ---------------------------------------------------------------------------------------------
# what is done with a loaded cassette


class _Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def _size(cassette: Cassette) -> int:
    total = 0
    for item in cassette.interactions:
        for r in (item.request, item.response):
            total += len(r.body) + sum(len(k) + len(v) for k, v in r.headers)
        total += len(item.request.uri)
    for hook in cassette.webhooks:
        total += len(hook.body) + sum(len(k) + len(v) for k, v in hook.headers)
    return total


async def _serve(cassette: Cassette, sink: list[str]) -> None:
    """Every recorded request, sent to a real replay server; webhooks go to our own sink."""

    async def got(request: aiohttp.web.BaseRequest) -> aiohttp.web.Response:
        sink.append(request.method)
        return aiohttp.web.Response(text="ok")

    receiver = Server(got)
    hook_url = await receiver.start()
    config = Config(webhooks=WebhooksConfig(callback_fields=(), forward_to=hook_url,
                                            attempts=1, timeout=2.0))
    replayer = Replayer(cassette, config, ReplayOptions(drain_timeout=1.0, shift_time=True))
    server = Server(replayer.handle)
    url = await server.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for item in cassette.interactions[:6]:
                req = item.request
                target = req.uri if req.uri.startswith("/") else "/" + req.uri.split("/", 3)[-1]
                headers = [(k, v) for k, v in req.headers
                           if k.lower() not in ("host", "content-length", "transfer-encoding")]
                try:
                    async with http.request(req.method, url + target, headers=headers,
                                            data=req.body or None) as resp:
                        await resp.read()
                except (aiohttp.ClientError, ValueError):
                    pass  # a target the client itself will not send
        await replayer.close()
    finally:
        await server.stop()
        await receiver.stop()


def exercise(text: str | bytes) -> None:
    """Load, then check, inspect, diff and serve: no traceback, no handler failure."""
    try:
        cassette = loads(text, "fuzz.yaml")
    except CassetteError as exc:
        message = str(exc)
        assert message.startswith("fuzz.yaml") and "\n" not in message, message
        return
    assert _size(cassette) <= 4 * len(text) + (2 << 20)
    check_cassette(cassette, "fuzz.yaml")
    shown = render_inspect(cassette, color=True)
    assert "\x1b]" not in shown and "\x07" not in shown
    other = loads(text, "fuzz.yaml")
    if other.interactions:
        other.interactions[0].response.body += b" "
    printable(diff(cassette, other, Config()).render(), keep_newlines=True)
    failures = _Failures()
    logger = logging.getLogger("aiohttp.server")
    logger.addHandler(failures)
    try:
        asyncio.run(_serve(cassette, []))
    finally:
        logger.removeHandler(failures)
    assert failures.records == []


# ---------------------------------------------------------------------------------------------
# structure-aware: the cassette's own shape, with hostile values in every field

hostile_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["\r\nX-Injected: 1", "\x1b]52;c;ZXZpbA==\x07", "a\x00b", "\u202e", " ",
                     "9" * 400, "%00", "//evil", "http://[::1", "*", ""]),
)
numbers = st.one_of(st.integers(-(10**20), 10**20), st.floats(allow_nan=True),
                    st.booleans(), st.none(), st.sampled_from([100, 101, 199, 1000]))
anything = st.one_of(hostile_text, numbers, st.binary(max_size=20),
                     st.lists(hostile_text, max_size=2), st.dictionaries(hostile_text,
                                                                         hostile_text, max_size=2))


methods = st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "PATCH"])
uris = st.sampled_from(["https://camber.example/v1/jobs", "https://camber.example/v1/jobs/7",
                        "/v1/jobs?status=COMPLETED", "https://camber.example//v1/x"])
names = st.sampled_from(["Content-Type", "X-Request-Id", "Location", "Set-Cookie", "ETag"])
values = st.sampled_from(["application/json", "text/plain", "/v1/jobs/7", "gzip", "a=b; Path=/"])
bodies = st.one_of(st.sampled_from(['{"job_id": 7, "status": "RUNNING"}', "", "plain"]),
                   st.binary(max_size=40))
codes = st.sampled_from([200, 201, 204, 304, 404, 500, 599, 999])


@st.composite
def cassettes(draw: Any) -> dict[str, Any]:
    """A cassette of our own shape; each field is hostile with a rate drawn per document, so
    most documents load and carry one or two hostile values into check, inspect and replay."""
    rate = draw(st.sampled_from([0, 2, 5, 15]))

    def pick(valid: st.SearchStrategy[Any]) -> Any:
        return draw(anything) if draw(st.integers(0, 99)) < rate else draw(valid)

    def headers() -> Any:
        if draw(st.integers(0, 99)) < rate:
            return draw(anything)
        out = {}
        for _ in range(draw(st.integers(0, 3))):
            key = draw(hostile_text) if draw(st.integers(0, 99)) < rate else draw(names)
            out[key] = draw(st.lists(values, max_size=2))
        return out

    interactions = []
    for _ in range(draw(st.integers(1, 3))):
        interactions.append({
            "request": {"method": pick(methods), "uri": pick(uris), "headers": headers(),
                        "body": pick(bodies)},
            "response": {"status": {"code": pick(codes), "message": pick(st.just("OK"))},
                         "headers": headers(), "body": {"string": pick(bodies)}},
            "replayproxy": pick(st.fixed_dictionaries(
                {"at": st.floats(0, 100), "duration": st.floats(0, 5)})),
        })
    hooks = []
    for _ in range(draw(st.integers(0, 2))):
        hooks.append({
            "method": pick(st.just("POST")), "path": pick(st.just("/hooks")),
            "headers": headers(), "body": pick(bodies),
            "cause": pick(st.integers(1, len(interactions))),
            "after": pick(st.none()), "delay": pick(st.floats(0, 0.01)),
            "target": pick(st.just("http://127.0.0.1:9/hooks")),
            "at": pick(st.floats(0, 100)), "event_id": pick(st.just("evt_1")),
        })
    meta = {
        "format": pick(st.just(1)),
        "upstream": pick(st.just("https://camber.example")),
        "recorded_at": pick(st.just("2026-01-02T03:04:05+00:00")),
        "variables": pick(st.lists(st.fixed_dictionaries({
            "name": st.just("uuid_1"), "value": st.sampled_from(["7", "RUNNING"]),
            "shape": st.just("uuid"), "positions": st.just(["1:path.3"]),
        }), max_size=2)),
    }
    return {"version": pick(st.just(1)), "interactions": interactions,
            "webhooks": hooks, "replayproxy": meta}


@FUZZ
@given(cassettes())
def test_structured_fuzz_loads_then_checks_inspects_diffs_and_serves(doc: dict[str, Any]) -> None:
    exercise(yaml.safe_dump(doc, allow_unicode=False))


# ---------------------------------------------------------------------------------------------
# byte-level: a real cassette with bytes flipped, cut and inserted


def _seed() -> bytes:
    tape = job_cassette()
    tape.interactions.append(exchange("GET", "/v1/jobs/6238/outputs", 200, b"\x00\x01binary",
                                      headers=[("Content-Type", "application/octet-stream")]))
    tape.webhooks.append(webhook({"type": "job.failed", "job_id": 6238}, cause=2,
                                 target="http://127.0.0.1:9/hooks"))
    return dumps(tape).encode()


SEED = _seed()


@settings(FUZZ, max_examples=60)
@given(st.lists(st.tuples(st.integers(0, len(SEED)), st.integers(0, 6), st.binary(max_size=6)),
                min_size=1, max_size=6))
def test_byte_level_fuzz_loads_then_checks_inspects_diffs_and_serves(
    edits: list[tuple[int, int, bytes]]
) -> None:
    data = SEED
    for at, cut, insert in edits:
        data = data[:at] + insert + data[at + cut:]
    exercise(data)


# ---------------------------------------------------------------------------------------------
# hand-made hostile values: each one line naming file, line and field


BASE = """version: 1
interactions:
- request:
    method: POST
    uri: https://camber.example/v1/jobs
    headers: {Content-Type: [application/json]}
    body: '{"a": 1}'
  response:
    status: {code: 201, message: Created}
    headers: {Content-Type: [application/json]}
    body: {string: '{"job_id": 1}'}
  replayproxy: {at: 0.5, duration: 0.1}
webhooks:
- method: POST
  path: /hooks
  headers: {Content-Type: [application/json]}
  body: '{"type": "done"}'
  cause: 1
  at: 1.0
  event_id: evt_1
replayproxy:
  format: 1
  upstream: https://camber.example
  recorded_at: '2026-01-02T03:04:05+00:00'
  variables: [{name: uuid_1, value: abc, shape: uuid, positions: ['1:body.a']}]
"""

HOSTILE = [
    ("variables: [{name: uuid_1, value: abc, shape: uuid, positions: ['1:body.a']}]",
     "variables: [{name: uuid_1, value: abc, shape: uuid, positions: 7}]",
     25, "replayproxy.variables[0].positions"),
    ("variables: [{name: uuid_1, value: abc, shape: uuid, positions: ['1:body.a']}]",
     "variables: {name: uuid_1}", 25, "replayproxy.variables"),
    ("variables: [{name: uuid_1, value: abc, shape: uuid, positions: ['1:body.a']}]",
     "variables: [{name: uuid_1, value: abc, shape: [1], positions: []}]",
     25, "replayproxy.variables[0].shape"),
    ("upstream: https://camber.example", "upstream: [1, 2]", 23, "replayproxy.upstream"),
    ("recorded_at: '2026-01-02T03:04:05+00:00'", "recorded_at: yesterday", 24,
     "replayproxy.recorded_at"),
    ("recorded_at: '2026-01-02T03:04:05+00:00'", "recorded_at: 12", 24,
     "replayproxy.recorded_at"),
    ("  at: 1.0", "  at: soon", 19, "webhooks[0].at"),
    ("  at: 1.0", "  at: .nan", 19, "webhooks[0].at"),
    ("- method: POST\n  path: /hooks", "- method: [PUT]\n  path: /hooks", 14,
     "webhooks[0].method"),
    ("- method: POST\n  path: /hooks", "- method: \"PO ST\"\n  path: /hooks", 14,
     "webhooks[0].method"),
    ("  path: /hooks", "  path: {a: 1}", 15, "webhooks[0].path"),
    ("  event_id: evt_1", "  event_id: [1]", 20, "webhooks[0].event_id"),
    ("  cause: 1", "  cause: true", 18, "webhooks[0].cause"),
    ("message: Created", 'message: "Created\\r\\nX-Injected: 1"', 9,
     "interactions[0].response.status.message"),
    ("    headers: {Content-Type: [application/json]}\n    body: {string",
     '    headers: {Content-Type: ["text/html\\r\\nSet-Cookie: a=b"]}\n    body: {string',
     10, "interactions[0].response.headers.Content-Type"),
    ("    headers: {Content-Type: [application/json]}\n    body: {string",
     '    headers: {"Bad Name": [x]}\n    body: {string', 10,
     "interactions[0].response.headers.Bad Name"),
    ("    method: POST", "    method: 7", 4, "interactions[0].request.method"),
    ("  replayproxy: {at: 0.5, duration: 0.1}", "  replayproxy: {at: 0.5, duration: x}", 12,
     "interactions[0].replayproxy.duration"),
    ("  replayproxy: {at: 0.5, duration: 0.1}", "  replayproxy: {at: .inf}", 12,
     "interactions[0].replayproxy.at"),
    ("    uri: https://camber.example/v1/jobs", '    uri: "https://camber.example/v1\\r\\n"',
     5, "interactions[0].request.uri"),
]


@pytest.mark.parametrize("old, new, line, field", HOSTILE, ids=[h[3] + "=" + h[1][:12]
                                                                 for h in HOSTILE])
def test_hostile_field_values_are_one_line_errors(old: str, new: str, line: int,
                                                  field: str) -> None:
    assert old in BASE
    loads(BASE, "ok.yaml")
    with pytest.raises(CassetteError) as caught:
        loads(BASE.replace(old, new), "bad.yaml")
    message = str(caught.value)
    assert message.startswith(f"bad.yaml:{line}: {field}:"), message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------
# aliases: bounded in characters, not only in values


def test_one_big_string_aliased_a_thousand_times_is_refused_in_bounded_memory(
    tmp_path: Path
) -> None:
    big = "x" * (1 << 20)
    path = tmp_path / "alias.yaml"
    body = "{string: *big}"
    path.write_text(
        "version: 1\nanchor: &big " + big + "\ninteractions:\n"
        + "".join(
            "- request: {method: GET, uri: /x, headers: {}, body: null}\n"
            f"  response: {{status: {{code: 200, message: OK}}, headers: {{}}, body: {body}}}\n"
            for _ in range(1000)
        )
    )
    started = time.monotonic()
    err, peak = tmp_path / "stderr", tmp_path / "peak"
    with open(err, "wb") as stderr:
        # the child's own high-water mark (VmHWM of its own memory, read as it exits): rusage
        # would also count the pytest worker it was forked from (hundreds of MiB late in a run)
        child = subprocess.Popen(
            [sys.executable, "-c", PEAK_THEN_RUN, str(peak), str(ROOT / "cli.py"),
             "inspect", str(path)],
            stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        child.wait(timeout=60)
    took = time.monotonic() - started
    peak_mib = int(peak.read_text().split()[1]) / 1024  # "VmHWM:   53040 kB"
    assert child.returncode == 2, err.read_text()
    (line,) = err.read_text().strip().splitlines()
    assert line.startswith(f"replayproxy: {path}:") and "YAML bomb" in line, line
    assert peak_mib < 300, peak_mib  # it was a GiB, then MemoryError
    assert took < 30 and not math.isnan(took)


def test_aliases_a_cassette_may_really_hold_still_load() -> None:
    """PyYAML's dumper writes anchors for objects used twice: such files keep loading."""
    headers = {"Content-Type": ["application/json"]}
    doc = {"version": 1, "interactions": [
        {"request": {"method": "GET", "uri": f"/v1/jobs/{n}", "headers": headers, "body": None},
         "response": {"status": {"code": 200, "message": "OK"}, "headers": headers,
                      "body": {"string": "{}"}}} for n in range(200)]}
    text = yaml.safe_dump(doc)
    assert "&id001" in text and "*id001" in text
    assert len(loads(text, "anchors.yaml").interactions) == 200
