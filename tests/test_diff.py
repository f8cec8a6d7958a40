"""`replayproxy diff A B` from the outside (click's runner) and the engine's rules."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from camber_session import record
from click.testing import CliRunner
from helpers import exchange, job_cassette, webhook

from cli import main
from replayproxy.cassette import Cassette, load, save
from replayproxy.diff import diff


def rerecorded(job_id: int = 7001) -> Cassette:
    """The same session recorded again: Camber gave another job id, the app minted new values."""
    cassette = job_cassette()
    for item in cassette.interactions:
        item.request.uri = item.request.uri.replace("6238", str(job_id))
        item.response.body = item.response.body.replace(b"6238", str(job_id).encode())
    for hook in cassette.webhooks:
        hook.body = hook.body.replace(b"6238", str(job_id).encode())
    return cassette


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_equal_recordings_exit_0(tmp_path: Path) -> None:
    save(job_cassette(), tmp_path / "a.yaml")
    save(rerecorded(), tmp_path / "b.yaml")
    code, out = cli("diff", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))
    assert code == 0, out
    assert "no differences" in out
    assert "6238 -> 7001" in out  # said, not counted


def test_variables_timestamps_header_order_and_redactions_are_not_differences() -> None:
    def session(uuid: str, when: str, stamp: int, auth: str, headers: list) -> Cassette:
        submit = exchange(
            "POST", "/v1/jobs", 201,
            {"job_id": 6238, "created_at": when, "external_id": uuid},
            {"command": "go", "external_id": uuid, "submitted": stamp},
            headers=headers,
        )
        submit.request.headers.append(("Authorization", auth))
        submit.request.headers.append(("Idempotency-Key", uuid))
        poll = exchange("GET", f"/v1/things/{uuid}", 200, {"ok": True})
        return Cassette([submit, poll], [webhook({"type": "job.completed", "at": when}, cause=1)])

    a = session("3f0c1a2b-1111-2222-3333-444455556666", "2024-05-01T10:00:00Z", 1714557600,
                "<redacted>", [("Content-Type", "application/json"), ("Date", "Wed, 1 May")])
    b = session("9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff", "2024-06-02T11:30:00Z", 1717327800,
                "Bearer <redacted>", [("Date", "Sun, 2 Jun"), ("Content-Type", "application/json")])
    b.interactions[0].request.headers[-2] = ("Authorization", "<redacted>")
    result = diff(a, b)
    assert result.equal, result.render()


def test_added_removed_changed_with_field_level_json(tmp_path: Path) -> None:
    a = job_cassette()
    b = rerecorded()
    b.interactions[0].request.body = (
        b'{"command": "python run.py invoice.pdf", "engine_type": "GPU"}'
    )
    b.interactions[3].response.body = b'{"job_id": 7001, "status": "FAILED", "error": "oom"}'
    b.interactions[3].response.status = 500
    del b.interactions[4]  # the listing is gone
    b.interactions.append(exchange("DELETE", "/v1/jobs/7001", 204))
    b.webhooks[0].body = json.dumps({"type": "job.failed", "job_id": 7001}).encode()
    save(a, tmp_path / "a.yaml")
    save(b, tmp_path / "b.yaml")
    code, out = cli("diff", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))
    assert code == 1
    assert "~ interaction A#1 -> B#1 POST /v1/jobs" in out
    assert 'request.body.engine_type: "MPI" -> "GPU"' in out
    assert "response.status: 200 -> 500" in out
    assert 'response.body.status: "COMPLETED" -> "FAILED"' in out
    assert 'response.body.error: added "oom"' in out
    assert "- interaction A#5 GET /v1/jobs?status=COMPLETED&page=1" in out
    assert "+ interaction B#5 DELETE /v1/jobs/7001" in out
    assert "- webhook A#1 job.completed" in out and "+ webhook B#1 job.failed" in out
    assert "2 added, 2 removed, 2 changed" in out

    code, out = cli("diff", "--json", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))
    data = json.loads(out)
    assert code == 1 and data["equal"] is False
    assert {c["kind"] for c in data["changes"]} == {"added", "removed", "changed"}


def test_identical_requests_pair_in_order_and_webhook_causes_are_compared() -> None:
    a = job_cassette()
    b = job_cassette()
    b.interactions[2].response.body = b'{"job_id": 6238, "status": "QUEUED"}'
    b.webhooks[0].after = 4
    result = diff(a, b)
    rendered = result.render()
    assert "~ interaction A#3 -> B#3 GET /v1/jobs/6238" in rendered  # the second poll, not the 1st
    assert "~ webhook A#1 -> B#1 job.completed" in rendered
    assert "after: interaction A#3 -> B#4" in rendered


def test_bad_file_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("version: 1\ninteractions: [\n")
    save(job_cassette(), tmp_path / "a.yaml")
    code, out = cli("diff", str(tmp_path / "a.yaml"), str(tmp_path / "bad.yaml"))
    assert code == 2
    assert "bad.yaml:3: not a valid cassette" in out


# ---------------------------------------------------------------------------------------------
# sessions, not positions: two real recordings against the sandbox


def two_recordings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The same three jobs recorded twice, submitted in opposite orders: each job gets the other
    recording's id. Slow polling, so both recordings see the same states (the webhook, not a
    poll, tells the app a job is over)."""
    monkeypatch.setenv("CAMBER_API_KEY", "sk_sandbox_diff_4f1c9e27b8")
    monkeypatch.setenv("CAMBER_WEBHOOK_SECRET", "camber_diff_secret_81d2a7")
    monkeypatch.setenv("WEBHOOK_SECRET", "local_diff_secret_5e93b0")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"

    async def both() -> None:
        await record(a, step=0.2, poll_interval=3.0, files=("a.pdf", "b.pdf", "fail.pdf"))
        await record(b, step=0.2, poll_interval=3.0, files=("fail.pdf", "b.pdf", "a.pdf"))

    asyncio.run(both())
    return a, b


def test_two_sandbox_recordings_in_other_orders_are_the_same_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_recordings(tmp_path, monkeypatch)
    first, second = load(a), load(b)
    submits = [i for i in first.interactions if i.request.method == "POST"]
    assert len(submits) == 3 and b'"process invoice a.pdf"' in submits[0].request.body
    assert b'"process invoice a.pdf"' in [i for i in second.interactions
                                          if i.request.method == "POST"][2].request.body
    code, out = cli("diff", str(a), str(b))
    assert code == 0, out
    assert out.startswith("no differences")
    ids = {json.loads(i.response.body)["job_id"] for i in submits}
    low, high = min(ids), max(ids)
    assert f"{low} -> {high}" in out and f"{high} -> {low}" in out  # a.pdf and fail.pdf swapped

    # A real change in one job is still one change, on that job's pair
    job_a = json.loads(submits[0].response.body)["job_id"]  # a.pdf in A; fail.pdf's id in B
    for item in second.interactions:
        if item.request.method == "POST" and b"a.pdf" in item.request.body:
            data = json.loads(item.response.body)
            data["output_dir"] = f"jobs/{data['job_id']}/results"
            item.response.body = json.dumps(data).encode()
            changed = second.interactions.index(item) + 1
    save(second, b)
    code, out = cli("diff", str(a), str(b))
    assert code == 1, out
    assert f"~ interaction A#1 -> B#{changed} POST /v1/jobs" in out
    assert f'response.body.output_dir: "jobs/{job_a}/outputs" -> "jobs/' in out
    assert "0 added, 0 removed, 1 changed" in out

    # --ignore and config diff.ignore drop it
    code, out = cli("diff", "--ignore", "response.body.output_dir", str(a), str(b))
    assert code == 0, out
    (tmp_path / "rp.yaml").write_text("diff:\n  ignore: [response.body.output_dir]\n")
    code, out = cli("diff", "--config", str(tmp_path / "rp.yaml"), str(a), str(b))
    assert code == 0, out


def test_renamed_ids_inside_strings_and_urls_are_not_changes() -> None:
    a = job_cassette()
    a.interactions[0].response.body = json.dumps(
        {"job_id": 6238, "status": "PENDING", "output_dir": "jobs/6238/outputs",
         "links": {"self": "/v1/jobs/6238?view=full"}}
    ).encode()
    b = rerecorded()
    b.interactions[0].response.body = json.dumps(
        {"job_id": 7001, "status": "PENDING", "output_dir": "jobs/7001/outputs",
         "links": {"self": "/v1/jobs/7001?view=full"}}
    ).encode()
    assert diff(a, b).equal, diff(a, b).render()
    b.interactions[0].response.body = b.interactions[0].response.body.replace(
        b"jobs/7001/outputs", b"jobs/7002/outputs"
    )  # another job's id: a change
    result = diff(a, b)
    assert not result.equal
    assert 'response.body.output_dir: "jobs/6238/outputs" -> "jobs/7002/outputs"' in result.render()
    assert len(result.changes) == 1


def test_ignore_patterns_drop_subtrees_and_segments() -> None:
    a, b = job_cassette(), job_cassette()
    b.interactions[3].response.body = b'{"job_id": 6238, "status": "DONE"}'
    b.interactions[4].response.body = b'{"jobs": [6238, 6239]}'
    assert len(diff(a, b).changes) == 2
    assert len(diff(a, b, ignore=["response.body.status"]).changes) == 1
    assert diff(a, b, ignore=["response.body.status", "response.body.jobs.*"]).equal
    assert diff(a, b, ignore=["response.body"]).equal


def test_a_recording_without_the_submit_still_pairs_its_polls() -> None:
    a = job_cassette()
    b = rerecorded()
    del b.interactions[0]  # B began after the submit: its polls carry an id nothing introduced
    result = diff(a, b)
    assert [(c.kind, c.a, c.b) for c in result.changes if c.what == "interaction"] == [
        ("removed", 1, None)
    ], result.render()


def test_a_poll_more_answered_as_the_one_before_is_not_a_change() -> None:
    a = job_cassette()  # polls: RUNNING, RUNNING, COMPLETED
    b = rerecorded()
    del b.interactions[2]  # B polled once less while the job ran
    b.webhooks[0].after = 2
    result = diff(a, b)
    assert result.equal, result.render()
    assert "(polls more, answered as the poll before them, not counted: 1 in A, 0 in B)" in (
        result.render()
    )
    c = rerecorded()
    queued = exchange("GET", "/v1/jobs/7001", 200, {"job_id": 7001, "status": "QUEUED"})
    c.interactions.insert(1, queued)  # B saw a state A never saw: a difference, in its place
    c.webhooks[0].cause, c.webhooks[0].after = 1, 4
    result = diff(a, c)
    assert [(x.kind, x.a, x.b) for x in result.changes] == [("added", None, 2)], result.render()


@pytest.mark.parametrize(
    ("value", "alone", "under_job_id"),
    [
        (6238, "6238", "6238"),
        (42, None, None),  # a count or a flag far more often than an id
        (-42, None, "-42"),  # the name vouches for three characters
        (True, None, None),
        (3.5, None, None),
        ("job_6238", "job_6238", "job_6238"),
        ("COMPLETED", None, "COMPLETED"),  # a plain word is an id only where the name says so
        ("ab", None, None),
        ("7" * 3000, None, "7" * 3000),
    ],
)
def test_one_id_rule_and_its_named_variant(value: object, alone: str | None,
                                           under_job_id: str | None) -> None:
    """Correlation finds ids by the value alone; diff, under a field named like an id, by the
    name: the same module holds both, side by side."""
    from replayproxy.correlate import id_like, named_id

    assert id_like(value) == alone
    assert named_id("job_id", value) == under_job_id
    assert named_id("jobId", value) == under_job_id and named_id("ID", value) == under_job_id
    assert named_id("status", value) is None and named_id("", value) is None


def test_a_renamed_id_under_an_id_name_is_no_difference_elsewhere_it_is() -> None:
    def session(job: str, state: str) -> Cassette:
        return Cassette([exchange("POST", "/v1/jobs", 201, {"job_id": job, "state": state})])

    result = diff(session("abc", "RUNNING"), session("xyz", "FAILED"))
    assert [c.render() for c in result.changes] == [
        '~ interaction A#1 -> B#1 POST /v1/jobs\n    response.body.state: "RUNNING" -> "FAILED"'
    ]


def test_polls_compared_to_align_them_teach_no_renames() -> None:
    """Aligning a poll's answers compares every A answer with every B one; only the pairs it
    keeps may teach a rename (s100 -> s200 and s200 -> s100 both would be a lie)."""
    def session(job: str) -> Cassette:
        return Cassette([
            exchange("POST", "/v1/jobs", 201, {"job_id": job}),
            exchange("GET", f"/v1/jobs/{job}", 200, {"job_id": job, "step_id": "s100"}),
            exchange("GET", f"/v1/jobs/{job}", 200, {"job_id": job, "step_id": "s200"}),
        ])

    result = diff(session("j100"), session("j200"))
    assert result.equal, result.render()
    assert result.renamed == {"j100": "j200"}
    assert result.render().endswith("(upstream ids renamed, not counted: j100 -> j200)")
