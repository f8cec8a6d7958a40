"""Live job lines: one per job on a terminal, one line per finished job in CI logs."""

from __future__ import annotations

import io

from helpers import job_cassette

from replayproxy.progress import LiveView, jobs, line
from replayproxy.report import Attempt, Delivery


def test_a_job_is_a_webhooks_conversation() -> None:
    (job,) = jobs(job_cassette())
    assert job.label == "job 6238"
    assert job.interactions == [1, 2, 3, 4, 5]  # the listing carries the job id too
    assert job.webhooks == [1] and job.events == ["job.completed"]


def test_line_reports_progress_and_outcome() -> None:
    (job,) = jobs(job_cassette())
    text, over = line(job, {1, 2}, {})
    assert "2/5" in text and "job.completed waiting" in text and not over
    delivery = Delivery(
        1,
        "http://127.0.0.1:1/hook",
        outcome="delivered",
        attempts=[Attempt(500, None, 0.1), Attempt(200, None, 0.2)],
    )
    text, over = line(job, {1, 2, 3}, {1: [delivery]})
    assert "job.completed delivered (2 attempts)" in text and over


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_redraws_in_place_and_ci_prints_once() -> None:
    state = {"served": {1}, "deliveries": []}
    tty, log = Tty(), io.StringIO()
    views = [
        LiveView(job_cassette(), lambda: (state["served"], state["deliveries"]), s)
        for s in (tty, log)
    ]
    for view in views:
        view.update()
    state["served"] = {1, 2, 3}
    state["deliveries"] = [Delivery(1, "u", outcome="delivered", attempts=[Attempt(200, None, 0)])]
    for view in views:
        view.update()
        view.update()
    assert tty.getvalue().count("\x1b[1F") == 2  # moved up to redraw its one line, twice
    assert log.getvalue().count("\n") == 1 and "delivered" in log.getvalue()
    assert "\x1b" not in log.getvalue()


def test_record_view_lists_webhooks_under_a_status_line() -> None:
    from replayproxy.progress import RecordView

    cassette = job_cassette()
    state = {"n": 1, "w": 0}
    tty, log = Tty(), io.StringIO()
    views = [
        RecordView(
            lambda: (
                state["n"],
                cassette.interactions[state["n"] - 1],
                cassette.webhooks[: state["w"]],
            ),
            s,
        )
        for s in (tty, log)
    ]
    for view in views:
        view.update()
    state.update(n=4, w=1)
    for view in views:
        view.update(final=True)
    out = tty.getvalue()
    assert "recording: 1 exchanges, 0 webhooks; last POST /v1/jobs -> 201\r" in out
    assert "webhook job.completed  job 6238\n" in out
    assert out.endswith("recording: 4 exchanges, 1 webhooks; last GET /v1/jobs/6238 -> 200\n")
    assert log.getvalue() == ""
