"""Redaction: headers by name, configured query/body fields, secret env values anywhere."""

from __future__ import annotations

import json

from replayproxy.cassette import Interaction, Request, Response, Webhook
from replayproxy.config import Config, RedactConfig
from replayproxy.redact import MARKER, Redactor, secret_values


def test_secret_values_come_from_every_named_env_var() -> None:
    env = {
        "CAMBER_API_KEY": "sk_live_123456",
        "CAMBER_WEBHOOK_SECRET": "up-secret-1, up-secret-2",  # one secret, comma and all
        "WEBHOOK_SECRET": "local-secret",
        "OTHER": "not-a-secret",
    }
    values = secret_values(Config(), env)
    assert set(values) == {"sk_live_123456", "up-secret-1, up-secret-2", "local-secret"}


def test_headers_by_rule_and_request_ids_kept() -> None:
    r = Redactor(headers=["X-Custom"])
    headers = [
        ("Authorization", "Bearer abc"),
        ("Cookie", "a=b"),
        ("X-Auth-Token", "t"),
        ("X-Client-Secret", "s"),
        ("Api-Key", "k"),
        ("X-Custom", "c"),
        ("Idempotency-Key", "9b2c1f0e-1111-2222-3333-444455556666"),
        ("Accept", "application/json"),
    ]
    out = dict(r.header_list(headers))
    for name in ("Authorization", "X-Auth-Token", "X-Client-Secret", "Api-Key", "X-Custom"):
        assert out[name] == MARKER
    assert out["Cookie"] == f"a={MARKER}"
    assert out["Idempotency-Key"] == "9b2c1f0e-1111-2222-3333-444455556666"
    assert out["Accept"] == "application/json"


def test_a_redacted_cookie_keeps_its_name_and_attributes() -> None:
    """Only each cookie's value becomes the marker: a client's jar still holds `session`."""
    from http.cookies import SimpleCookie

    r = Redactor()
    headers = [
        ("Set-Cookie", "session=abc123; Path=/; HttpOnly"),
        ("Set-Cookie", 'theme="dark blue"; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Secure'),
        ("Set-Cookie", "flag"),  # no '=': not a name=value pair, the marker alone
        ("Cookie", "session=abc123;theme=dark; lang=en"),
        ("cookie", ""),
    ]
    out = r.header_list(headers)
    assert out == [
        ("Set-Cookie", f"session={MARKER}; Path=/; HttpOnly"),
        ("Set-Cookie", f"theme={MARKER}; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Secure"),
        ("Set-Cookie", MARKER),
        ("Cookie", f"session={MARKER}; theme={MARKER}; lang={MARKER}"),
        ("cookie", MARKER),
    ]
    assert r.header_list(out) == out  # redacting again changes nothing
    jar = SimpleCookie()
    jar.load(out[0][1])
    assert jar["session"].value == MARKER and jar["session"]["path"] == "/"
    assert jar["session"]["httponly"]


def test_query_body_fields_and_secrets_everywhere() -> None:
    secret = "s3cr3t/value+x"
    r = Redactor(query=["token"], body_fields=["auth.password", "pin"], secrets=[secret])
    body = b'{"auth": {"password": "hunter2", "user": "ann"}, "pin": 1234, "note": "' + \
        json.dumps(secret)[1:-1].encode() + b'"}'
    item = Interaction(
        Request("POST", f"https://x.example/v1/a?token=abc&q={secret}&page=2",
                [("X-Echo", f"v={secret}")], body),
        Response(200, "OK", [("Content-Length", "30")],
                 b'{"echo": "s3cr3t%2Fvalue%2Bx", "password": "hunter2"}'),
    )
    out = r.interaction(item)
    assert "token=%3Credacted%3E" in out.request.uri or f"token={MARKER}" in out.request.uri
    assert "abc" not in out.request.uri and secret not in out.request.uri
    assert "page=2" in out.request.uri
    data = json.loads(out.request.body)
    assert data == {"auth": {"password": MARKER, "user": "ann"}, "pin": MARKER, "note": MARKER}
    assert out.request.headers == [("X-Echo", f"v={MARKER}")]
    assert b"s3cr3t" not in out.response.body
    assert dict(out.response.headers)["Content-Length"] == str(len(out.response.body))


def test_string_body_fields_are_replaced_in_place() -> None:
    r = Redactor(body_fields=["password"])
    raw = b'{ "password" :  "hunter2",\n  "keep": [1, 2] }'
    assert r.body(raw) == b'{ "password" :  "<redacted>",\n  "keep": [1, 2] }'


def test_body_fields_after_leading_whitespace_and_the_times_kept() -> None:
    """JSON may open with whitespace (a pretty-printer's newline): its fields are fields too.
    A redacted copy keeps the exchange's times and metadata, on either path."""
    r = Redactor(body_fields=["password"])
    raw = b'\n  {"password": "hunter2", "user": "ann"}\n'
    assert r.body(raw) == b'\n  {"password": "<redacted>", "user": "ann"}\n'
    item = Interaction(
        Request("POST", "https://x.example/login", [], raw),
        Response(200, "OK", [], b"{}"),
        {"content_encoding": "gzip"},
        at=1.5,
        duration=0.25,
    )
    for redactor in (r, Redactor()):
        out = redactor.interaction(item)
        assert (out.at, out.duration, out.meta) == (1.5, 0.25, {"content_encoding": "gzip"})
    assert b"hunter2" not in r.interaction(item).request.body


def test_webhooks_keep_their_body_unless_a_secret_is_in_it() -> None:
    r = Redactor.from_config(
        Config(redact=RedactConfig(headers=["X-Trace"])), {"CAMBER_API_KEY": "sk_abcdef"}
    )
    hook = Webhook(body=b'{"job_id": 6230}', headers=[("X-Trace", "1"), ("X-A", "b")])
    assert r.webhook(hook).body == hook.body
    assert r.webhook(hook).headers == [("X-Trace", MARKER), ("X-A", "b")]
    leaked = Webhook(body=b'{"key": "sk_abcdef"}')
    assert r.webhook(leaked).body == b'{"key": "<redacted>"}'
