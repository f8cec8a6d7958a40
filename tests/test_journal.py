"""The recording journal and webhook correlation: pure, no sockets."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import exchange, job_cassette

from replayproxy.cassette import Webhook, load, save
from replayproxy.config import Config
from replayproxy.correlate import correlate, webhook_ids
from replayproxy.journal import (
    Journal,
    Session,
    fingerprint,
    journal_path,
    open_cassette,
    read,
    recover,
)


def _hook(body: dict, at: float) -> Webhook:
    return Webhook(body=json.dumps(body).encode(), path="/__replayproxy/webhooks/1", at=at,
                   target="http://app/webhooks", event_id="evt_1")


def test_recover_merges_finished_records_and_skips_the_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    session = Session(meta={"upstream": "https://camber.example"})
    journal = Journal(journal_path(path), session)
    submit = exchange("POST", "/v1/jobs", 201, {"job_id": 6238, "status": "PENDING"},
                      {"command": "x"}, at=0.0)
    submit.duration = 0.01
    poll = exchange("GET", "/v1/jobs/6238", 200, {"job_id": 6238, "status": "COMPLETED"}, at=0.1)
    poll.duration = 0.01
    journal.interaction(submit)
    journal.interaction(poll)
    journal.webhook(_hook({"type": "job.completed", "job_id": 6238, "status": "COMPLETED"}, 0.3),
                    hint=1)
    journal.close()
    with open(journal_path(path), "ab") as fh:
        fh.write(b'{"kind":"interaction","request":{"meth')  # what a kill -9 leaves mid-write

    recovered = recover(path, Config())
    assert recovered is not None
    assert (recovered.interactions, recovered.webhooks) == (2, 1)
    assert not journal_path(path).exists()
    cassette = load(path)
    assert [i.request.uri for i in cassette.interactions] == [
        "https://camber.example/v1/jobs", "https://camber.example/v1/jobs/6238"]
    hook = cassette.webhooks[0]
    assert (hook.cause, hook.after, round(hook.delay, 3)) == (1, 2, 0.19)
    assert cassette.meta["variables_detected"] is True
    assert recover(path, Config()) is None  # nothing left to recover


def test_recover_keeps_the_base_of_a_new_episodes_session(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    save(job_cassette(), path)
    session = Session(base_interactions=5, base_webhooks=1, origin=fingerprint(path))
    journal = Journal(journal_path(path), session)
    journal.interaction(exchange("GET", "/v1/jobs/7000", 200, {"job_id": 7000}, at=0.0))
    journal.close()
    assert read(journal_path(path)).base_interactions == 5
    recover(path, Config())
    cassette = load(path)
    assert len(cassette.interactions) == 6 and len(cassette.webhooks) == 1
    assert cassette.webhooks[0].cause == 1


def test_correlation_uses_ids_not_words_and_ignores_other_jobs() -> None:
    items = [
        exchange("POST", "/v1/jobs", 201, {"job_id": 6230, "status": "PENDING"}, at=0.0),
        exchange("POST", "/v1/jobs", 201, {"job_id": 6231, "status": "PENDING"}, at=0.0),
        exchange("GET", "/v1/jobs/6230", 200, {"job_id": 6230, "status": "COMPLETED"}, at=0.2),
        exchange("GET", "/v1/jobs/6231", 200, {"job_id": 6231, "status": "RUNNING"}, at=0.3),
        exchange("GET", "/v1/jobs?status=COMPLETED", 200, {"jobs": []}, at=0.35),
    ]
    body = json.dumps({"type": "job.completed", "job_id": 6230, "status": "COMPLETED",
                       "attempt": 1}).encode()
    assert webhook_ids(body) == {"6230"}
    found = correlate(items, body, at=0.4)
    assert (found.cause, found.after, found.delay) == (1, 3, 0.2)
    # arrived before any exchange of its conversation finished: no `after`
    assert correlate(items, body, at=-1.0).after is None
    # no shared id: the hint (the exchange that carried the callback URL), else nothing
    plain = b'{"status": "COMPLETED"}'
    assert correlate(items, plain, at=1.0, hint=2).cause == 2
    assert correlate(items, plain, at=1.0).cause is None


def test_a_journal_whose_session_was_saved_recovers_nothing_twice(tmp_path: Path) -> None:
    """The recorder died after saving the cassette, before removing the journal."""
    path = tmp_path / "c.yaml"
    save(job_cassette(), path)
    before = path.read_bytes()
    journal = Journal(journal_path(path), Session(origin="sha-of-the-old-file", replaces=True))
    journal.interaction(exchange("GET", "/v1/jobs/7000", 200, {"job_id": 7000}, at=0.0))
    journal.saved()
    journal.close()
    assert open_cassette(path).interactions  # nothing to save: the cassette opens
    recovered = recover(path, Config())
    assert recovered is not None and recovered.total == 0
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
