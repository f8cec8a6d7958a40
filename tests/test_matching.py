"""Matching without sockets: rules, order, repeats, variables and the near-miss explanation."""

from __future__ import annotations

import json
import uuid

from helpers import exchange, job_cassette

from replayproxy.cassette import Cassette, Request
from replayproxy.config import Config, MatchConfig, VariablesConfig
from replayproxy.matching import Matcher


def live(method: str, target: str, body: object = None, headers: list | None = None) -> Request:
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = (
        headers if headers is not None else ([("Content-Type", "application/json")] if body else [])
    )
    return Request(method, target, hdrs, raw)


def test_polling_plays_in_order_then_the_last_repeats() -> None:
    m = Matcher(job_cassette(), Config())
    assert (
        m.match(
            live("POST", "/v1/jobs", {"engine_type": "MPI", "command": "python run.py invoice.pdf"})
        ).number
        == 1
    )
    numbers = [m.match(live("GET", "/v1/jobs/6238")) for _ in range(5)]
    assert [n.number for n in numbers] == [2, 3, 4, 4, 4]
    assert [n.repeat for n in numbers] == [False, False, False, True, True]
    assert m.unused() == [5]


def test_host_is_ignored_and_query_order_does_not_count() -> None:
    m = Matcher(job_cassette(), Config())
    assert m.match(live("GET", "http://127.0.0.1:9999/v1/jobs?page=1&status=COMPLETED")).number == 5


def test_json_body_is_compared_as_data() -> None:
    m = Matcher(job_cassette(), Config())
    body = b'{ "engine_type" : "MPI", "command": "python run.py invoice.pdf" }'
    assert m.match(live("POST", "/v1/jobs", body)).number == 1


def test_near_miss_names_the_rule_and_the_values() -> None:
    m = Matcher(job_cassette(), Config())
    assert m.match(live("GET", "/v1/jobs?status=CANCELLED&page=1")) is None
    (best, *_) = m.near_misses(live("GET", "/v1/jobs?status=CANCELLED&page=1"))
    assert best.number == 5
    assert best.differences == ["query: status=CANCELLED vs status=COMPLETED"]
    miss = m.near_misses(live("POST", "/v1/jobs", {"engine_type": "MPI", "command": "x.pdf"}))
    assert miss[0].number == 1
    assert miss[0].differences == ["body.command: x.pdf vs python run.py invoice.pdf"]


def test_ignored_query_and_body_fields() -> None:
    cassette = Cassette(
        [
            exchange("GET", "/v1/jobs?page=1&nonce=a", body={"ok": 1}),
            exchange(
                "POST",
                "/v1/jobs",
                201,
                {"job_id": 1},
                {"command": "x", "meta": {"sent_at": "yesterday", "n": 1}},
            ),
        ]
    )
    config = Config(
        match=MatchConfig(ignore_query=("nonce",), ignore_body_fields=("meta.sent_at",))
    )
    m = Matcher(cassette, config)
    assert m.match(live("GET", "/v1/jobs?nonce=zzz&page=1")).number == 1
    assert (
        m.match(
            live("POST", "/v1/jobs", {"command": "x", "meta": {"sent_at": "now", "n": 1}})
        ).number
        == 2
    )
    assert (
        m.match(live("POST", "/v1/jobs", {"command": "x", "meta": {"sent_at": "now", "n": 2}}))
        is None
    )


def test_configured_headers_must_match() -> None:
    cassette = Cassette([exchange("GET", "/v1/me", body={"tenant": "a"})])
    cassette.interactions[0].request.headers = [("X-Tenant", "a")]
    m = Matcher(cassette, Config(match=MatchConfig(headers=("x-tenant",))))
    assert m.match(live("GET", "/v1/me", headers=[("x-tenant", "b")])) is None
    (miss,) = m.near_misses(live("GET", "/v1/me", headers=[("x-tenant", "b")]))
    assert miss.differences == ["headers: x-tenant=b vs x-tenant=a"]
    assert m.match(live("GET", "/v1/me", headers=[("X-TENANT", "a")])).number == 1


def test_form_and_multipart_bodies() -> None:
    form = exchange("POST", "/v1/form", body={"ok": 1})
    form.request.headers = [("Content-Type", "application/x-www-form-urlencoded")]
    form.request.body = b"b=2&a=1"
    upload = exchange("POST", "/v1/upload", body={"ok": 2})
    upload.request.headers = [("Content-Type", "multipart/form-data; boundary=AAAA")]
    upload.request.body = (
        b'--AAAA\r\nContent-Disposition: form-data; name="f"; filename="t.pdf"'
        b"\r\n\r\n%PDF-1\r\n--AAAA--\r\n"
    )
    m = Matcher(Cassette([form, upload]), Config())
    assert (
        m.match(
            live(
                "POST",
                "/v1/form",
                b"a=1&b=2",
                [("Content-Type", "application/x-www-form-urlencoded")],
            )
        ).number
        == 1
    )
    other = upload.request.body.replace(b"AAAA", b"ZZZZZZ")
    assert (
        m.match(
            live(
                "POST",
                "/v1/upload",
                other,
                [("Content-Type", "multipart/form-data; boundary=ZZZZZZ")],
            )
        ).number
        == 2
    )


def test_minted_values_bind_and_flow_into_answers() -> None:
    rec_id, rec_key = str(uuid.uuid4()), str(uuid.uuid4())
    cassette = Cassette(
        [
            exchange(
                "POST",
                "/v1/jobs",
                201,
                {"job_id": 7, "external_id": rec_id},
                {"external_id": rec_id, "command": "run a.pdf"},
            ),
            exchange("GET", f"/v1/things/{rec_id}", body={"id": rec_id}),
        ]
    )
    cassette.interactions[0].request.headers.append(("Idempotency-Key", rec_key))
    m = Matcher(cassette, Config())
    assert {v.value for v in cassette.variables} == {rec_id, rec_key}
    new_id = str(uuid.uuid4())
    hit = m.match(
        live(
            "POST",
            "/v1/jobs",
            {"command": "run a.pdf", "external_id": new_id},
            [("Content-Type", "application/json"), ("Idempotency-Key", "k-" + new_id)],
        )
    )
    assert hit.number == 1
    assert m.bindings.live[rec_id] == new_id
    answer = m.bindings.substitute(cassette.interactions[0].response.body)
    assert json.loads(answer) == {"job_id": 7, "external_id": new_id}
    # the bound value must be the one used later; another fresh uuid is a miss
    assert m.match(live("GET", f"/v1/things/{uuid.uuid4()}")) is None
    assert m.match(live("GET", f"/v1/things/{new_id}")).number == 2


def test_upstream_minted_ids_are_not_variables() -> None:
    upstream_id = str(uuid.uuid4())
    cassette = Cassette(
        [
            exchange("POST", "/v1/jobs", 201, {"job_id": upstream_id}, {"command": "a"}),
            exchange("GET", f"/v1/jobs/{upstream_id}", body={"status": "RUNNING"}),
        ]
    )
    m = Matcher(cassette, Config())
    assert cassette.variables == []
    m.match(live("POST", "/v1/jobs", {"command": "a"}))
    assert m.match(live("GET", f"/v1/jobs/{uuid.uuid4()}")) is None
    assert m.match(live("GET", f"/v1/jobs/{upstream_id}")).number == 2


def test_configured_and_pinned_variables() -> None:
    fixed = "tok_" + "a1b2c3d4e5f6g7h8i9j0"
    cassette = Cassette(
        [
            exchange(
                "POST",
                "/v1/sessions/s-1/run",
                body={"ok": 1},
                request_body={"seq": 41, "tag": fixed},
            ),
        ]
    )
    config = Config(
        variables=VariablesConfig(
            body_fields=("seq",), path_regex=(r"/sessions/([^/]+)",), pin=(fixed,)
        )
    )
    m = Matcher(cassette, config)
    assert {v.value for v in cassette.variables} == {"41", "s-1"}
    assert m.match(live("POST", "/v1/sessions/s-9/run", {"seq": 99, "tag": fixed})).number == 1
    m2 = Matcher(cassette, config)
    assert (
        m2.match(
            live("POST", "/v1/sessions/s-9/run", {"seq": 99, "tag": "tok_other123456789abcdef"})
        )
        is None
    )


def test_identical_conversations_take_recorded_order_by_content() -> None:
    """Two jobs submitted in reverse order each get their own answers, chosen by the file name."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    cassette = Cassette(
        [
            exchange(
                "POST", "/v1/jobs", 201, {"job_id": 1, "ref": a}, {"ref": a, "command": "run a.pdf"}
            ),
            exchange(
                "POST", "/v1/jobs", 201, {"job_id": 2, "ref": b}, {"ref": b, "command": "run b.pdf"}
            ),
        ]
    )
    m = Matcher(cassette, Config())
    x, y = str(uuid.uuid4()), str(uuid.uuid4())
    assert m.match(live("POST", "/v1/jobs", {"ref": x, "command": "run b.pdf"})).number == 2
    assert m.match(live("POST", "/v1/jobs", {"ref": y, "command": "run a.pdf"})).number == 1
    assert m.bindings.live == {b: x, a: y}


def test_fast_forward_answers_a_poll_loop_with_its_final_state() -> None:
    m = Matcher(job_cassette(), Config(), fast_forward=True)
    m.match(
        live("POST", "/v1/jobs", {"engine_type": "MPI", "command": "python run.py invoice.pdf"})
    )
    first = m.match(live("GET", "/v1/jobs/6238"))
    assert (first.number, first.skipped, first.repeat) == (4, (2, 3), False)
    assert m.match(live("GET", "/v1/jobs/6238")).repeat


def test_redacted_query_and_body_fields_do_not_count() -> None:
    from replayproxy.config import RedactConfig

    cassette = Cassette(
        [
            exchange(
                "POST",
                "/v1/login?token=<redacted>&page=1",
                body={"ok": 1},
                request_body={"user": "a", "password": "<redacted>"},
            ),
        ]
    )
    config = Config(redact=RedactConfig(query=("token",), body_fields=("password",)))
    m = Matcher(cassette, config)
    assert (
        m.match(
            live("POST", "/v1/login?page=1&token=s3cret", {"user": "a", "password": "hunter2"})
        ).number
        == 1
    )
    assert (
        Matcher(cassette, config).match(
            live("POST", "/v1/login?page=1&token=s3cret", {"user": "b", "password": "x"})
        )
        is None
    )


def test_a_redacted_path_segment_is_read_as_matching_reads_the_path() -> None:
    """The redacted-path rule and the matcher read a recorded URI one way: "//v1/..." is a
    path (origin form), never a host named v1."""
    from dataclasses import replace

    for recorded, sent in (("/bot<redacted>/sendMessage", "/botT0KEN/sendMessage"),
                           ("//v1/bot<redacted>/x", "//v1/botT0KEN/x")):
        item = exchange("GET", "/")
        bare = replace(item, request=replace(item.request, uri=recorded))  # as vcrpy may save it
        m = Matcher(Cassette([bare]), Config())
        hit = m.match(live("GET", sent))
        assert hit is not None and hit.number == 1, recorded
