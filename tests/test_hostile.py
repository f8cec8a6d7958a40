"""Hostile input: fuzzed cassettes, requests and signature headers; YAML bombs; oversized and
malformed HTTP; path traversal; webhooks that are forged, stale or unsigned.

Property tests keep their example counts modest so the suite stays fast; each example has a
deadline, so a hang fails the test instead of stalling it. Servers run on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from helpers import job_cassette, run, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replayproxy.api import ReplayProxy
from replayproxy.cassette import Cassette, dumps, load, loads, save
from replayproxy.config import Config, SignatureConfig, WebhooksConfig
from replayproxy.errors import ReplayProxyError
from replayproxy.journal import journal_path
from replayproxy.matching import Matcher
from replayproxy.pytest_plugin import cassette_path
from replayproxy.signing import SCHEMES, SignatureError, sign, verify, webhook_id

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_SECRET = "whsec_" + "dXBzdHJlYW0tc2VjcmV0LWZvci10ZXN0cw=="
LOCAL_SECRET = "whsec_bG9jYWwtYXBwLXNlY3JldC1ob3N0aWxl"
FUZZ = settings(
    max_examples=80, deadline=2000, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMBER_WEBHOOK_SECRET", UPSTREAM_SECRET)
    monkeypatch.setenv("WEBHOOK_SECRET", LOCAL_SECRET)


# ---------------------------------------------------------------------------------------------
# the cassette loader


def _use(cassette: Cassette) -> None:
    """What a replay does first with a cassette: index it and answer a request."""
    from replayproxy.cassette import Request

    matcher = Matcher(cassette, Config())
    req = Request("GET", "/v1/jobs/6238", [("Accept", "application/json")], b"")
    matcher.match(req)
    matcher.near_misses(req)


def _loads_cleanly(text: str) -> None:
    try:
        cassette = loads(text, "fuzz.yaml")
    except ReplayProxyError as exc:
        assert str(exc).startswith("fuzz.yaml"), exc  # names the file
        return
    try:
        _use(cassette)
    except ReplayProxyError:
        pass


@FUZZ
@given(st.text(max_size=400))
def test_fuzzed_text_loads_or_gives_a_cassette_error(text: str) -> None:
    _loads_cleanly(text)


KEYS = st.sampled_from(
    ["request", "response", "method", "uri", "headers", "body", "status", "code", "string",
     "message", "replayproxy", "cause", "after", "delay", "target", "event_id", "variables",
     "name", "value", "shape", "positions", "format", "at", "path"]
)
scalars = (
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats()
    | st.text(max_size=30) | st.binary(max_size=30)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=5),
                                                               inner, max_size=5),
    max_leaves=25,
)


@FUZZ
@given(
    interactions=values | st.lists(values, max_size=3),
    webhooks=values,
    meta=values,
    version=st.sampled_from([1, 1, 1, 2, "1", None]),
)
def test_fuzzed_structures_load_or_give_a_cassette_error(
    interactions: Any, webhooks: Any, meta: Any, version: Any
) -> None:
    doc = {"version": version, "interactions": interactions, "webhooks": webhooks,
           "replayproxy": meta}
    _loads_cleanly(yaml.safe_dump(doc, allow_unicode=True))


VALID = dumps(job_cassette())


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 8), st.text(max_size=6)),
                min_size=1, max_size=4))
def test_a_damaged_cassette_loads_or_gives_a_cassette_error(
    edits: list[tuple[int, int, str]]
) -> None:
    text = VALID
    for at, cut, insert in edits:
        text = text[:at] + insert + text[at + cut:]
    _loads_cleanly(text)


def _billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels):
        name, prev = chr(97 + n), chr(96 + n)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    return "\n".join(lines) + "\n"


# ours, or newer libyaml's own limit (PyYAML 6.0.4): both refuse before building anything
DEEP = "nested deeper than|maximum nesting depth"


@pytest.mark.parametrize(
    "text, message",
    [
        (_billion_laughs(), "YAML bomb"),
        ("version: 1\ninteractions: " + "[" * 100_000 + "]" * 100_000, DEEP),
        ("{a: " + "[" * 100_000 + "]" * 100_000 + "}", DEEP),  # used to segfault
        ("- " * 50_000 + "x", DEEP),
    ],
    ids=["billion-laughs", "deep-flow", "deep-flow-in-mapping", "deep-block"],
)
def test_yaml_bombs_and_deep_nesting_are_refused_quickly(text: str, message: str) -> None:
    with pytest.raises(ReplayProxyError, match=message) as caught:
        loads(text, "bomb.yaml")
    assert str(caught.value).startswith("bomb.yaml:")


def test_replay_refuses_a_yaml_bomb_with_one_line_and_bounded_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("version: 1\ninteractions: []\n" + _billion_laughs())
    script = (
        "import resource, runpy, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"  # 1 GiB: a bomb needs more
        f"sys.argv = ['replayproxy', 'replay', {str(bomb)!r}, '--listen', '127.0.0.1:0']\n"
        f"runpy.run_path({str(ROOT / 'cli.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "YAML bomb" in lines[0] and str(bomb) in lines[0], done.stderr
    assert done.stdout == ""  # never started listening


# ---------------------------------------------------------------------------------------------
# the matcher, on any request

methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]) | st.text(max_size=8)
paths = st.sampled_from(["/v1/jobs", "/v1/jobs/6238", "/v1/jobs?status=COMPLETED&page=1"]) | (
    st.text(max_size=60).map(lambda t: "/" + t)
) | st.text(max_size=60)
bodies = st.binary(max_size=120) | values.map(
    lambda v: json.dumps(v, default=lambda o: repr(o)).encode()
)
headers = st.lists(st.tuples(st.sampled_from(["Content-Type", "X-Request-Id", "Idempotency-Key"])
                             | st.text(max_size=12), st.text(max_size=40)), max_size=4)


def _variable_cassette() -> Cassette:
    from helpers import exchange

    tape = job_cassette()
    tape.interactions.append(exchange(
        "POST", "/v1/jobs", 201, {"job_id": 6239},
        {"external_id": "3f0c6d2e-8d4b-4c9a-9a57-5b2f0e1c7a11",
         "callback_url": "http://127.0.0.1:5001/hooks/camber?s=1", "n": [1, {"a": None}]},
    ))
    tape.interactions.append(exchange(
        "POST", "/v1/upload", 200, {}, None,
    ))
    tape.interactions[-1].request.headers = [
        ("Content-Type", "multipart/form-data; boundary=xyz")]
    tape.interactions[-1].request.body = (
        b'--xyz\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\n'
        b"abc\r\n--xyz--\r\n"
    )
    return tape


@FUZZ
@given(st.lists(st.tuples(methods, paths, headers, bodies), min_size=1, max_size=5))
def test_the_matcher_answers_any_request_or_misses_it(
    requests: list[tuple[str, str, list[tuple[str, str]], bytes]]
) -> None:
    from replayproxy.cassette import Request

    matcher = Matcher(_variable_cassette(), Config())
    for method, path, hdrs, body in requests:
        req = Request(method, path, hdrs, body)
        found = matcher.match(req)
        if found is None:
            for near in matcher.near_misses(req):
                assert isinstance(near.differences, list)


# ---------------------------------------------------------------------------------------------
# signature parsers, on any header

CONFIGS = {
    "stripe": SignatureConfig(scheme="stripe"),
    "standard-webhooks": SignatureConfig(scheme="standard-webhooks"),
    "github": SignatureConfig(scheme="github"),
    "slack": SignatureConfig(scheme="slack"),
    "hmac-sha256": SignatureConfig(),
    "custom": SignatureConfig(
        scheme="custom", header="X-Sig", format="t={timestamp},id={id},v1={signature}",
        signed_payload="{id}.{timestamp}.{body}", encoding="base64",
    ),
}
NAMES = ["Stripe-Signature", "Webhook-Signature", "Webhook-Timestamp", "Webhook-Id",
         "X-Hub-Signature-256", "X-Slack-Signature", "X-Slack-Request-Timestamp", "X-Signature",
         "X-Sig", "svix-signature", "svix-timestamp", "svix-id"]
hostile_values = (
    st.text(max_size=200)
    | st.text(st.sampled_from("t=v1,0123456789abcdef=; \t"), max_size=300)
    | st.integers().map(str)
    | st.just("9" * 5000)
    | st.just("t=" + "9" * 400 + ",v1=" + "a" * 64)
    | st.just("v1," * 2000)
)


@FUZZ
@given(
    scheme=st.sampled_from(SCHEMES),
    body=st.binary(max_size=100),
    hdrs=st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=10), hostile_values,
                         max_size=5),
    now=st.integers(-(2**63), 2**63),
)
def test_signature_parsers_refuse_any_header_cleanly(
    scheme: str, body: bytes, hdrs: dict[str, str], now: int
) -> None:
    config = CONFIGS[scheme]
    secret = "whsec_c2VjcmV0LWZvci1mdXp6aW5nLXRlc3Rz" if scheme == "standard-webhooks" else "k"
    try:
        verify(body, hdrs, [secret], config, now=now)
    except SignatureError:
        pass
    webhook_id(hdrs, config)  # never raises


# ---------------------------------------------------------------------------------------------
# HTTP: oversized, malformed, traversal (raw bytes over a socket: clients would not send them)


async def raw_http(url: str, data: bytes) -> tuple[int, bytes]:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def counting_upstream(hits: list[str]) -> web.Application:
    async def any_path(request: web.Request) -> web.Response:
        hits.append(request.path)
        await request.read()
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)
    return app


def test_oversized_bodies_and_headers_are_413_and_431_with_configurable_limits(
    tmp_path: Path
) -> None:
    path = tmp_path / "jobs.yaml"
    save(job_cassette(), path)
    config = Config(max_body_size=1024, max_header_size=2048)
    one_big = b"GET /v1/jobs/6238 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n"
    many = (b"GET /v1/jobs/6238 HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: %s\r\n" % (n, b"v" * 200) for n in range(20)) + b"\r\n")
    long_line = b"GET /v1/jobs/" + b"9" * 4000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    hits: list[str] = []

    async def session() -> None:
        async with ReplayProxy(path, config=config) as proxy, aiohttp.ClientSession() as s:
            for data in (one_big, many, long_line):
                status, body = await raw_http(proxy.url, data)
                assert status == 431 and b"max_header_size (2048 bytes)" in body
            async with s.post(f"{proxy.url}/v1/jobs", data=b"x" * 4096) as r:
                assert r.status == 413
            # none of that consumed an answer: the first poll still gets the first RUNNING
            async with s.get(f"{proxy.url}/v1/jobs/6238", headers={"X-Fine": "y" * 1000}) as r:
                assert r.status == 200 and (await r.json())["status"] == "RUNNING"
        assert proxy.report.served == 1
        async with serving(counting_upstream(hits)) as up:
            rec = tmp_path / "rec.yaml"
            async with ReplayProxy(rec, mode="all", upstream=up, config=config) as proxy:
                for data in (one_big, many, long_line):
                    assert (await raw_http(proxy.url, data))[0] == 431
                ingress = proxy.url + "/__replayproxy/webhooks"
                async with aiohttp.ClientSession() as s, s.post(
                    ingress, data=b"{}", headers={"X-Big": "b" * 3000}
                ) as r:
                    assert r.status == 431
            assert not rec.exists() and not journal_path(rec).exists()

    run(session())
    assert hits == []  # nothing reached the upstream


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        b"Transfer-Encoding: identity, chunked\r\nContent-Length: 3\r\n",
        b"Content-Length: -5\r\n",
        b"Content-Length: 5x\r\n",
    ],
    ids=["cl-te", "te-cl", "two-cl", "two-te", "te-list-cl", "negative-cl", "bad-cl"],
)
def test_conflicting_framing_is_400_and_nothing_is_recorded(tmp_path: Path, framing: bytes) -> None:
    path = tmp_path / "smuggle.yaml"
    hits: list[str] = []
    request = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n"
               b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")

    async def session() -> tuple[int, bytes]:
        async with serving(counting_upstream(hits)) as up:
            async with ReplayProxy(path, mode="all", upstream=up) as proxy:
                return await raw_http(proxy.url, request)

    status, body = run(session())
    assert status == 400, body
    assert b"malformed HTTP request" in body
    assert hits == []  # neither the request nor a smuggled one reached the upstream
    assert not path.exists() and not journal_path(path).exists()


def test_path_traversal_is_refused_and_never_forwarded(tmp_path: Path) -> None:
    path = tmp_path / "trav.yaml"
    hits: list[str] = []
    app_hits: list[str] = []
    body = b'{"event_id":"evt_9","type":"job.completed","job_id":1}'
    signature = SignatureConfig(scheme="standard-webhooks")

    async def app_hook(request: web.Request) -> web.Response:
        app_hits.append(request.path)
        return web.json_response({})

    async def session() -> dict[str, int]:
        app = web.Application()
        app.router.add_post("/hooks", app_hook)
        out: dict[str, int] = {}
        async with serving(counting_upstream(hits)) as up, serving(app) as app_url:
            config = Config(webhooks=WebhooksConfig(forward_to=f"{app_url}/hooks",
                                                    signature=signature))
            async with ReplayProxy(path, mode="all", upstream=up, config=config) as proxy, \
                    aiohttp.ClientSession() as s:
                async with s.post(f"{proxy.url}/v1/jobs",
                                  json={"callback_url": f"{app_url}/hooks"}) as r:
                    assert r.status == 200  # callback URL number 1 exists now
                for raw in (b"/v1/../../admin", b"/v1/%2e%2e/%2E%2E/etc/passwd", b"/./v1/jobs",
                            b"/__replayproxy/webhooks/../../v1/jobs",
                            b"/__replayproxy/webhooks/1/../../../v1/jobs"):
                    status, _ = await raw_http(proxy.url, b"POST " + raw + b" HTTP/1.1\r\n"
                                               b"Host: x\r\nContent-Length: 0\r\n\r\n")
                    out[raw.decode()] = status
                signed = {"Content-Type": "application/json",
                          **sign(body, [UPSTREAM_SECRET], signature, timestamp=int(time.time()))}
                for tail in ("/1/x", "/%2F1", "/%C2%B2", "/0", "/2", "/1%00", "/" + "9" * 40):
                    async with s.post(proxy.url + "/__replayproxy/webhooks" + tail, data=body,
                                      headers=signed) as r:
                        out[tail] = r.status
                        if r.status == 404:
                            assert "no callback URL number" in (await r.json())["error"]
        return out

    statuses = run(session())
    traversal = {k: v for k, v in statuses.items() if ".." in k or "/./" in k or "%2e" in k}
    assert set(traversal.values()) == {400}, statuses
    assert {k: v for k, v in statuses.items() if k not in traversal and v != 404} == {}
    assert hits == ["/v1/jobs"]  # only the one honest request went upstream
    assert app_hits == []  # no webhook was forwarded to the app
    assert load(path).webhooks == []


def test_cassette_names_from_test_ids_stay_in_their_folder(tmp_path: Path) -> None:
    folder = tmp_path / "tests"
    for name in ("test_x[../../../etc/passwd]", "test_x[..]", "test_y[/abs/path]",
                 "test_z[a\\..\\..\\b]", "test_w[\x00..%2f..]"):
        item = SimpleNamespace(path=folder / "test_mod.py", name=name)
        path = cassette_path(item, None)  # type: ignore[arg-type]
        assert path.resolve().parent == (folder / "cassettes" / "test_mod").resolve(), path
        assert path.name.endswith(".yaml") and "/" not in path.name
    # an explicit path is the test author's own choice and is taken as given
    item = SimpleNamespace(path=folder / "test_mod.py", name="test_v")
    assert cassette_path(item, "../shared/x.yaml") == folder / "../shared/x.yaml"  # type: ignore
    assert journal_path(folder / "x.yaml") == folder / "x.yaml.journal"  # always beside it


# ---------------------------------------------------------------------------------------------
# the webhook ingress: forged, replayed outside the tolerance, unsigned


@pytest.mark.parametrize("scheme", ["stripe", "standard-webhooks", "slack"])
def test_ingress_refuses_forged_stale_and_unsigned_webhooks(tmp_path: Path, scheme: str) -> None:
    path = tmp_path / "hooks.yaml"
    signature = SignatureConfig(scheme=scheme, tolerance=300)
    secret = UPSTREAM_SECRET
    app_hits: list[bytes] = []
    good = b'{"event_id":"evt_1","type":"job.completed","job_id":6230}'

    async def app_hook(request: web.Request) -> web.Response:
        app_hits.append(await request.read())
        return web.json_response({"ok": True})

    def signed(body: bytes, key: str, at: int) -> dict[str, str]:
        return {"Content-Type": "application/json",
                **sign(body, [key], signature, timestamp=at, webhook_id="msg_1")}

    async def session() -> list[tuple[str, int, str]]:
        app = web.Application()
        app.router.add_post("/hooks", app_hook)
        now = int(time.time())
        out = []
        async with serving(counting_upstream([])) as up, serving(app) as app_url:
            config = Config(webhooks=WebhooksConfig(forward_to=f"{app_url}/hooks",
                                                    signature=signature))
            async with ReplayProxy(path, mode="all", upstream=up, config=config) as proxy, \
                    aiohttp.ClientSession() as s:
                async with s.get(f"{proxy.url}/v1/jobs") as r:
                    assert r.status == 200
                captured = signed(good, secret, now - 301)  # a real one, replayed too late
                cases = [
                    ("unsigned", good, {"Content-Type": "application/json"}),
                    ("forged", good, signed(good, "whsec_Zm9yZ2VkLXNlY3JldC1mb3ItdGVzdHM=", now)),
                    ("tampered", good.replace(b"6230", b"6231"), signed(good, secret, now)),
                    ("stale", good, captured),
                    ("future", good, signed(good, secret, now + 3600)),
                    ("good", good, signed(good, secret, now)),
                ]
                for name, body, hdrs in cases:
                    async with s.post(f"{proxy.url}/__replayproxy/webhooks", data=body,
                                      headers=hdrs) as r:
                        out.append((name, r.status, await r.text()))
        return out

    results = run(session())
    assert [(n, s) for n, s, _ in results] == [
        ("unsigned", 401), ("forged", 401), ("tampered", 401), ("stale", 401), ("future", 401),
        ("good", 200)]
    for name, _, text in results[:-1]:
        assert "not recorded, not forwarded" in text, (name, text)
    assert "tolerance" in results[3][2] and "tolerance" in results[4][2]
    assert app_hits == [good]  # only the good one reached the app
    hooks = load(path).webhooks
    assert [h.body for h in hooks] == [good]
