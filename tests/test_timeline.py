"""The picture of the conversation (inspect --html): the page's data, its safety, and what a real
browser draws from it (headless Chromium); and inspect's colour on a TTY only."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner
from helpers import exchange, job_cassette, run, serving, webhook

from cli import main
from replayproxy.api import ReplayProxy
from replayproxy.cassette import Cassette, load, save
from replayproxy.inspect import render_inspect, table
from replayproxy.replayer import ReplayOptions
from replayproxy.report import Report, load_report
from replayproxy.timeline import build_model, embed_json, render_html

HOSTILE = '</script><img src=x onerror="alert(1)"><!-- & </style>'


def timed_cassette() -> Cassette:
    """The job cassette with recorded timings, a binary request body, a hostile answer body,
    and a second webhook."""
    tape = job_cassette()
    for n, item in enumerate(tape.interactions):
        item.at, item.duration = 0.012 + n * 0.4, 0.08
    tape.interactions[2].request.body = b"\x00\x01\xff\xfebinary"
    tape.interactions[3].response.body = json.dumps({"note": HOSTILE}).encode()
    tape.interactions.append(exchange("DELETE", "/v1/jobs/6238", 500, {"error": "boom"}, at=2.5))
    tape.webhooks.append(webhook({"type": "job.failed", "job_id": 7}, cause=1, after=4, delay=0.3))
    return tape


def replay_report() -> dict[str, Any]:
    """As `replay --report` writes it: one miss, webhook 1 delivered on its second attempt,
    webhook 2 failed after three."""
    refused = "ClientConnectorError: connection refused"
    return {
        "requests": {
            "served": 6,
            "unmatched": [
                {
                    "request": "GET /v1/jobs?status=CANCELLED",
                    "near_misses": [
                        {
                            "interaction": 5,
                            "request": "GET /v1/jobs?status=COMPLETED&page=1",
                            "differences": ["query: status=CANCELLED vs status=COMPLETED"],
                        }
                    ],
                }
            ],
        },
        "interactions": {"total": 6, "unused": [5]},
        "webhooks": {
            "delivered": 1,
            "rejected": 0,
            "failed": 1,
            "pending": 0,
            "never_due": [],
            "deliveries": [
                {
                    "webhook": 1,
                    "url": "http://127.0.0.1:5001/hooks",
                    "copy": 1,
                    "attempts": [
                        {"status": 500, "error": None, "at": 1.0},
                        {"status": 200, "error": None, "at": 1.05},
                    ],
                    "outcome": "delivered",
                    "test": None,
                    "event_id": "evt_1",
                    "rejected_as_expected": None,
                },
                {
                    "webhook": 2,
                    "url": "http://127.0.0.1:5001/hooks",
                    "copy": 1,
                    "attempts": [
                        {"status": None, "error": refused, "at": 2.0},
                        {"status": None, "error": refused, "at": 2.05},
                        {"status": None, "error": refused, "at": 2.15},
                    ],
                    "outcome": "failed",
                    "test": None,
                    "event_id": None,
                    "rejected_as_expected": None,
                },
            ],
        },
        "diverged": True,
    }


# what the page must draw for timed_cassette() + replay_report()
EXPECTED = {"request": 6, "response": 6, "webhook": 2, "miss": 1, "retry": 3, "failed": 1}


class Page(HTMLParser):
    """Collects tags, attributes, script contents and nesting errors."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "area", "base", "col", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._script: dict[str, str | None] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self._script is not None and self.stack and self.stack[-1] == "script":
            self.scripts.append((self._script, data))
            self._script = None
        else:
            self.text.append(data)


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    return parser


def embedded(page: str) -> dict[str, Any]:
    parsed = parse(page)
    data = [text for attrs, text in parsed.scripts if attrs.get("type") == "application/json"]
    assert len(data) == 1
    return json.loads(data[0])


def kinds(events: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in events:
        out[e["kind"]] = out.get(e["kind"], 0) + 1
    return out


# ---------------------------------------------------------------------------------------------
# the page as text


def test_page_is_well_formed_with_one_data_island_and_one_script() -> None:
    page = render_html(timed_cassette(), Report.from_dict(replay_report()))
    parsed = parse(page)
    assert parsed.errors == []
    assert parsed.stack == []
    assert page.startswith("<!DOCTYPE html>")
    scripts = [attrs for attrs, _ in parsed.scripts]
    assert scripts == [{"type": "application/json", "id": "timeline-data"}, {}]
    model = embedded(page)
    assert kinds(model["events"]) == EXPECTED
    assert model["lanes"] == ["app", "replayproxy", "Camber"]


def test_page_has_no_external_assets() -> None:
    page = render_html(timed_cassette(), Report.from_dict(replay_report()))
    parsed = parse(page)
    for tag, attrs in parsed.tags:
        for name in ("src", "href", "action", "srcset", "poster", "data"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, name, value)
        assert tag not in ("link", "iframe", "object", "embed", "img", "base")
    scripts = [text for _, text in parsed.scripts]
    css = "".join(parsed.text)
    for text in (css, *scripts):
        assert "@import" not in text
        assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", text)
    code = scripts[1]
    for call in ("fetch(", "XMLHttpRequest", "WebSocket", "EventSource", "import(", "innerHTML"):
        assert call not in code
    # and the browser is told to refuse any network load anyway
    assert "default-src 'none'" in page


def test_hostile_bodies_and_titles_are_inert_and_round_trip() -> None:
    tape = timed_cassette()
    page = render_html(tape, Report.from_dict(replay_report()), title=HOSTILE)
    parsed = parse(page)
    assert parsed.errors == []
    assert page.count("</script>") == 2  # the data island's and the code's, nothing from a body
    assert "<img" not in page and "<!--" not in page
    assert not any(tag == "img" for tag, _ in parsed.tags)
    assert parsed.tags[[t for t, _ in parsed.tags].index("title")][0] == "title"
    assert HOSTILE in "".join(parsed.text)  # the title, as text
    model = embedded(page)
    answer = next(e for e in model["events"] if e["id"] == "response-4")
    assert json.loads(answer["detail"]["body"]["text"]) == {"note": HOSTILE}


def test_embed_json_escapes_everything_that_could_end_a_script() -> None:
    text = embed_json({"a": "</script><!-- & \u2028"})
    assert not set("<>&") & set(text)
    assert "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028"}


def test_bodies_headers_and_binary_hex_preview() -> None:
    model = build_model(timed_cassette())
    events = {e["id"]: e for e in model["events"]}
    binary = events["request-3"]["detail"]["body"]
    assert binary["binary"] is True and binary["size"] == 10
    assert binary["text"].startswith("00000000  00 01 ff fe 62 69 6e 61 72 79")
    first = events["request-1"]["detail"]
    assert ["Content-Type", "application/json"] in first["headers"]
    assert json.loads(first["body"]["text"])["engine_type"] == "MPI"
    assert "\n  " in first["body"]["text"]  # pretty-printed
    assert events["response-6"]["flags"] == ["error"]  # a 500
    assert events["webhook-1"]["detail"]["body"]["text"].count("job.completed") == 1


def test_times_recorded_or_evenly_spaced() -> None:
    timed = build_model(timed_cassette())
    ev = {e["id"]: e for e in timed["events"]}
    assert timed["summary"]["timed"] is True
    assert ev["request-2"]["t"] == pytest.approx(0.412)
    assert ev["response-2"]["t"] == pytest.approx(0.492)
    assert ev["webhook-2"]["t"] == pytest.approx(1.292 + 0.3)  # after #4's answer + delay
    order = [e["t"] for e in timed["events"]]
    assert order == sorted(order)

    untimed = build_model(job_cassette())
    assert untimed["summary"]["timed"] is False
    ids = [e["id"] for e in untimed["events"]]
    # evenly spaced in recorded order; the webhook right after interaction 3 (its `after`)
    assert ids.index("response-3") < ids.index("webhook-1") < ids.index("request-4")
    starts = [e["t"] for e in untimed["events"] if e["kind"] == "request"]
    assert starts == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_report_overlay_marks_misses_retries_failures_and_unused() -> None:
    model = build_model(timed_cassette(), Report.from_dict(replay_report()))
    ev = {e["id"]: e for e in model["events"]}
    miss = ev["miss-1"]
    assert miss["from"] == "app" and miss["to"] == "replayproxy"
    assert "GET /v1/jobs?status=CANCELLED" in miss["label"]
    assert any("status=CANCELLED vs status=COMPLETED" in v for _, v in miss["detail"]["fields"])
    assert set(ev) >= {"retry-1-1-2", "retry-2-1-2", "retry-2-1-3", "failed-2-1"}
    assert ev["retry-1-1-2"]["flags"] == []  # that retry got its 200
    assert ev["failed-2-1"]["t"] == pytest.approx(ev["webhook-2"]["t"] + 0.15)
    assert "failed" in ev["webhook-2"]["flags"] and "failed" not in ev["webhook-1"]["flags"]
    assert "unused" in ev["request-5"]["flags"]
    attempts = ev["webhook-2"]["detail"]["attempts"][0]
    assert attempts["outcome"] == "failed" and len(attempts["attempts"]) == 3
    assert model["summary"]["report"]["unmatched"] == 1


def test_a_bad_signature_test_the_app_accepted_is_a_failure() -> None:
    report = replay_report()
    report["webhooks"]["deliveries"] = [
        {
            "webhook": 1,
            "url": "http://127.0.0.1:5001/hooks",
            "copy": 1,
            "attempts": [{"status": 200, "error": None, "at": 0.5}],
            "outcome": "delivered",
            "test": "bad-signature",
            "rejected_as_expected": False,
        }
    ]
    model = build_model(timed_cassette(), Report.from_dict(report))
    failed = [e for e in model["events"] if e["kind"] == "failed"]
    assert [e["id"] for e in failed] == ["failed-1-1"]
    assert "accepted" in failed[0]["label"]


def test_the_page_reads_a_written_report_as_the_live_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real replay (a miss; the webhook sent twice, its first attempt answered 500) writes
    its report: read back (Report.from_dict) it is the live Report again, and the page drawn
    from the file is the page drawn from the live one."""
    monkeypatch.setenv("WEBHOOK_SECRET", "whsec_timeline")
    path, written = tmp_path / "jobs.yaml", tmp_path / "report.json"
    save(job_cassette(), path)
    got: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response(status=500 if len(got) == 1 else 200)

    async def session() -> Report:
        app = web.Application()
        app.router.add_post("/hook", hook)
        async with serving(app) as base:
            options = ReplayOptions(
                timing="immediate", webhook_url=f"{base}/hook", duplicate_webhooks=2
            )
            async with ReplayProxy(path, options=options, report_path=written) as proxy:
                async with aiohttp.ClientSession(base_url=proxy.url) as http:
                    submit = {"command": "python run.py invoice.pdf", "engine_type": "MPI"}
                    async with http.post("/v1/jobs", json=submit) as r:
                        assert r.status == 201
                    async with http.get("/v1/jobs?status=CANCELLED&page=1") as r:
                        assert r.status == 502
                await proxy.wait_for_webhooks(10)
        return proxy.report

    live = run(session())
    read = load_report(written)
    assert len(got) == 3 and live.unmatched and live.deliveries
    # `summary` names unused interactions by their labels, which the JSON does not carry
    assert {**read.to_dict(), "summary": ""} == {**live.to_dict(), "summary": ""}
    tape = load(path)
    assert build_model(tape, read) == build_model(tape, live)
    drawn = kinds(build_model(tape, read)["events"])
    assert (drawn["miss"], drawn["retry"], drawn["duplicate"]) == (1, 1, 1)


@pytest.mark.parametrize(
    ("change", "place", "wanted"),
    [
        (lambda r: r["requests"]["unmatched"].append("GET /x"), "requests.unmatched[1]",
         "must be an object, not a string"),
        (lambda r: r["webhooks"]["deliveries"][1]["attempts"][0].update(status="500"),
         "webhooks.deliveries[1].attempts[0].status", "must be an integer or null, not a string"),
        (lambda r: r["webhooks"]["deliveries"][0].update(copy=True),
         "webhooks.deliveries[0].copy", "must be an integer, not true or false"),
        (lambda r: r["requests"]["unmatched"][0]["near_misses"][0].pop("differences"),
         "requests.unmatched[0].near_misses[0].differences", "is missing"),
        (lambda r: r["webhooks"]["deliveries"][0].update(outcome="lost"),
         "webhooks.deliveries[0].outcome", "must be one of delivered, rejected, failed, pending"),
    ],
)
def test_a_report_with_a_field_of_the_wrong_kind_is_named_in_one_line(
    tmp_path: Path, change: Any, place: str, wanted: str
) -> None:
    path, bad = tmp_path / "jobs.yaml", tmp_path / "r.json"
    save(timed_cassette(), path)
    report = replay_report()
    change(report)
    bad.write_text(json.dumps(report))
    result = CliRunner().invoke(main, ["inspect", str(path), "--report", str(bad)])
    assert result.exit_code == 2, result.output
    assert result.output == f"replayproxy: {bad}: not a replay report: '{place}' {wanted}\n"


@pytest.mark.parametrize(
    "at", ["NaN", "Infinity", "-Infinity", "1" + "0" * 400], ids=["nan", "inf", "-inf", "huge"]
)
def test_a_report_time_that_is_no_finite_number_is_named_in_one_line(
    tmp_path: Path, at: str
) -> None:
    """json.loads takes NaN, Infinity and any integer: none is a time, and none may reach the
    page (its embedded JSON would not parse) or a float() (OverflowError)."""
    path, bad, page = tmp_path / "jobs.yaml", tmp_path / "r.json", tmp_path / "t.html"
    save(timed_cassette(), path)
    report = replay_report()
    report["webhooks"]["deliveries"][0]["attempts"][0]["at"] = "AT"
    bad.write_text(json.dumps(report).replace('"AT"', at))
    result = CliRunner().invoke(
        main, ["inspect", str(path), "--html", str(page), "--report", str(bad)]
    )
    assert result.exit_code == 2, result.output
    place = "webhooks.deliveries[0].attempts[0].at"
    assert result.output == (
        f"replayproxy: {bad}: not a replay report: '{place}' must be a finite number\n"
    )
    assert not page.exists()


# ---------------------------------------------------------------------------------------------
# inspect: the CLI and colour


def test_inspect_writes_the_page_and_still_prints_tables(tmp_path: Path) -> None:
    path, page, report = tmp_path / "jobs.yaml", tmp_path / "out" / "t.html", tmp_path / "r.json"
    save(timed_cassette(), path)
    report.write_text(json.dumps(replay_report()))
    result = CliRunner().invoke(
        main, ["inspect", str(path), "--html", str(page), "--report", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "interactions (6)"
    assert "\x1b[" not in result.output  # not a TTY: no colour
    assert kinds(embedded(page.read_text())["events"]) == EXPECTED


def test_inspect_rejects_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    path, bad = tmp_path / "jobs.yaml", tmp_path / "r.json"
    save(job_cassette(), path)
    bad.write_text('{"not": "a report"}')
    result = CliRunner().invoke(main, ["inspect", str(path), "--report", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: not a replay report" in result.output
    assert "Traceback" not in result.output


def test_colour_marks_error_statuses_and_keeps_columns_aligned() -> None:
    tape = timed_cassette()
    plain = render_inspect(tape)
    coloured = render_inspect(tape, color=True)
    assert "\x1b[" not in plain
    assert re.sub(r"\x1b\[\d+m", "", coloured) == plain
    red = [line for line in coloured.splitlines() if "\x1b[31m" in line]
    assert len(red) == 1 and "\x1b[31m500\x1b[0m" in red[0]
    rows = plain.splitlines()[1:8]
    column = rows[0].index("status")
    assert all(r[column : column + 6].strip().isdigit() for r in rows[1:])


def test_table_pads_before_styling() -> None:
    def star(row: int, col: int, cell: str) -> str:
        return f"[{cell}]" if col == 1 else cell

    text = table(("a", "b", "c"), [(1, "x", "end"), (22, "longer", "z")], star)
    assert text.splitlines()[1:] == [" 1  [x     ]  end", "22  [longer]  z"]


# ---------------------------------------------------------------------------------------------
# what a real browser draws


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                                        else None)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI must install it (.ci/run does)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); CI runs this")
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1400,900",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def drawn(dom: str) -> list[tuple[str, dict[str, str | None]]]:
    return [(tag, attrs) for tag, attrs in parse(dom).tags if attrs.get("data-kind")]


def test_chromium_draws_every_message_and_highlights_misses_and_failures(tmp_path: Path) -> None:
    page = tmp_path / "timeline.html"
    page.write_text(render_html(timed_cassette(), Report.from_dict(replay_report()), title=HOSTILE))
    dom = chromium(tmp_path, "--dump-dom", f"{page.as_uri()}#request-3").stdout
    parsed = parse(dom)
    assert any(tag == "svg" and a.get("id") == "timeline" for tag, a in parsed.tags)
    elements = drawn(dom)
    count: dict[str, int] = {}
    for _, attrs in elements:
        count[attrs["data-kind"] or ""] = count.get(attrs["data-kind"] or "", 0) + 1
    assert count == EXPECTED
    assert all(tag == "g" for tag, _ in elements)
    by_id = {a.get("id"): a for _, a in elements}
    assert by_id["request-3"]["data-number"] == "3"
    # highlighted: a miss, the failed mark and the failed webhook carry a highlight rectangle
    for wanted in ("miss-1", "failed-2-1", "webhook-2"):
        classes = (by_id[wanted].get("class") or "").split()
        assert "flag-failed" in classes or "flag-miss" in classes, (wanted, classes)
    highlighted = re.findall(r'<g [^>]*id="([^"]+)"[^>]*>(?:(?!</g>).)*class="highlight"', dom)
    assert set(highlighted) == {"miss-1", "failed-2-1", "webhook-2"}
    assert "flag-unused" in (by_id["request-5"].get("class") or "")
    # the message the link names is shown in the panel: its binary body as a hex preview
    assert 'data-showing="request-3"' in dom
    assert "00000000  00 01 ff fe 62 69 6e 61 72 79" in dom
    # the hostile title became text; nothing from it ran or was parsed as markup
    assert not any(tag == "img" for tag, _ in parsed.tags)


def test_chromium_screenshot_is_a_real_picture(tmp_path: Path) -> None:
    page = tmp_path / "timeline.html"
    page.write_text(render_html(timed_cassette(), Report.from_dict(replay_report())))
    shot = tmp_path / "timeline.png"
    chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # a blank 1400x900 page is a few KB
