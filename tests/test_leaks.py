"""Secrets never reach the disk, however they come back: an upstream that echoes them, a miss.

The upstream here is what httpbin-style debug endpoints and error pages do: it answers with the
request's headers, its cookies and its Basic credentials decoded, in JSON, in a URL and in base64.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from helpers import job_cassette, run, serving

from replayproxy.api import ReplayProxy
from replayproxy.cassette import save
from replayproxy.config import Config, RedactConfig
from replayproxy.journal import journal_path
from replayproxy.report import load_report
from replayproxy.timeline import render_html
from replayproxy.variables import spellings

BEARER = "tok_live_8Hq2Zr5Lw0Np"  # not in any environment variable: only learned
PASSWORD = "correct-horse-battery"
API_KEY_HEADER = "xk_9d8c7b6a5f4e3d2c"
COOKIE = "sess_Q1w2E3r4T5y6U7i8"
QUERY_TOKEN = "qt_secret_0a9b8c7d6e"
SECRETS = [BEARER, PASSWORD, API_KEY_HEADER, COOKIE, QUERY_TOKEN,
           base64.b64encode(f"alice:{PASSWORD}".encode()).decode(), f"alice:{PASSWORD}"]


def echo_upstream() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        headers = dict(request.headers)
        auth = headers.get("Authorization", "")
        basic = ""
        if auth.startswith("Basic "):
            basic = base64.b64decode(auth[6:]).decode()
        body = {
            "headers": headers,  # httpbin /headers
            "cookies": dict(request.cookies),  # httpbin /cookies
            "user": basic,
            "url": f"https://camber.example/next?auth={quote(json.dumps(headers))}",
            "b64": base64.b64encode(headers.get("X-Api-Key", "").encode()).decode(),
            "query": dict(request.query),
        }
        text = json.dumps(body)
        return web.Response(
            text=f"<html><pre>{text}</pre></html>" if request.path == "/error" else text,
            status=500 if request.path == "/error" else 200,
            content_type="text/html" if request.path == "/error" else "application/json",
            headers={"X-Echo-Auth": auth},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture(autouse=True)
def local_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "local_leaks_secret_77aa")


def leaked(data: bytes) -> list[str]:
    return [s for s in SECRETS for spelled in spellings(s) if spelled in data]


def test_an_upstream_echoing_credentials_leaks_nothing_to_journal_cassette_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "echo.yaml"
    config = Config(redact=RedactConfig(query=("token",)))
    caplog.set_level(logging.INFO)
    basic = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()

    async def session() -> tuple[list[bytes], bytes]:
        answers = []
        async with serving(echo_upstream()) as up, aiohttp.ClientSession() as s:
            async with ReplayProxy(path, mode="all", upstream=up, config=config) as proxy:
                for target, auth in (("/v1/jobs", f"Bearer {BEARER}"), ("/v1/me", basic),
                                     (f"/error?token={QUERY_TOKEN}", f"Bearer {BEARER}")):
                    headers = {"Authorization": auth, "X-Api-Key": API_KEY_HEADER,
                               "Cookie": f"session={COOKIE}; theme=dark"}
                    async with s.post(proxy.url + target, json={"n": 1}, headers=headers) as r:
                        answers.append(await r.read())
                journal = journal_path(path).read_bytes()  # what a crash would leave
        return answers, journal

    answers, journal = run(session())
    # the app got the echoes as the upstream sent them (a proxy does not alter answers)
    assert BEARER.encode() in answers[0] and PASSWORD.encode() in answers[1]
    assert not leaked(journal), leaked(journal)
    assert not leaked(path.read_bytes()), leaked(path.read_bytes())
    assert b"<redacted>" in path.read_bytes()
    logs = "\n".join(caplog.messages).encode()
    assert not leaked(logs)


def test_a_miss_with_a_redacted_query_value_shows_it_nowhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.yaml"
    save(job_cassette(), path)
    report = tmp_path / "report.json"
    config = Config(redact=RedactConfig(query=("token",)))
    caplog.set_level(logging.WARNING)

    async def session() -> bytes:
        async with ReplayProxy(path, config=config, report_path=report) as proxy, \
                aiohttp.ClientSession() as s:
            cookie = {"Cookie": f"session={COOKIE}", "Authorization": f"Bearer {BEARER}"}
            async with s.get(f"{proxy.url}/v1/jobs?status=CANCELLED&token={QUERY_TOKEN}",
                             headers=cookie) as r:
                assert r.status == 502
                return await r.read()

    answer = run(session())
    assert b"near_misses" in answer and not leaked(answer), answer
    assert not leaked(report.read_bytes())
    assert not leaked("\n".join(caplog.messages).encode())
    from replayproxy.cassette import load

    page = render_html(load(path), load_report(report)).encode()
    assert b"CANCELLED" in page and not leaked(page)
