"""`replayproxy check CASSETTE...` from the outside: findings name cassette, number and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import exchange, job_cassette, webhook

from cli import main
from replayproxy.cassette import Cassette, Variable, load, save
from replayproxy.check import check_cassette
from replayproxy.leaks import entropy, looks_random


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_a_clean_cassette_passes(tmp_path: Path) -> None:
    cassette = job_cassette()
    cassette.interactions[0].request.headers += [
        ("Authorization", "<redacted>"),
        ("Idempotency-Key", "k8Jq2mZx7Lp4Rt9Vw3Ny6Hb1"),  # minted, not a secret
    ]
    cassette.interactions[1].response.body = (
        b'{"job_id": 6238, "uuid": "3f0c1a2b-1111-2222-3333-444455556666", '
        b'"sha": "9fceb02d0ae598e95dc970b74767f19372d61af8a", "note": "all good"}'
    )
    save(cassette, tmp_path / "ok.yaml")
    code, out = cli("check", str(tmp_path / "ok.yaml"))
    assert code == 0, out
    assert "no findings" in out


def test_every_kind_of_finding_is_named(tmp_path: Path) -> None:
    cassette = job_cassette()
    cassette.interactions[0].request.headers.append(("Authorization", "Bearer abc"))
    cassette.interactions[0].request.uri += "?api_key=live123"
    cassette.interactions[1].response.headers.append(("X-Upstream-Token", "t0ken"))
    cassette.interactions[1].response.body = (
        b'{"job_id": 6238, "client_secret": "hunter2", '
        b'"log": "used key sk_live_4eC39HqLyjWDarjtT1zdp7dc to submit"}'
    )
    cassette.interactions[2].response.body = b'{"blob": "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lm"}'
    cassette.interactions[2].response.headers.append(("Set-Cookie", "sessionid=k2Jd9; Path=/"))
    cassette.webhooks.append(webhook({"type": "orphan"}, cause=None))
    cassette.variables = [
        Variable("uuid_1", "3f0c1a2b-1111-2222-3333-444455556666", "uuid", ["1:body.external_id"]),
        Variable("token_1", "nowhere", "token", []),
    ]
    save(cassette, tmp_path / "leaky.yaml")
    save(job_cassette(), tmp_path / "fine.yaml")
    code, out = cli("check", str(tmp_path / "fine.yaml"), str(tmp_path / "leaky.yaml"))
    assert code == 1
    name = str(tmp_path / "leaky.yaml")
    lines = [line for line in out.splitlines() if line.startswith(name)]
    expected = [
        "interaction 1: request.query.api_key: secret-named query parameter not redacted",
        "interaction 1: request.headers.Authorization: Bearer credentials not redacted",
        "interaction 2: response.headers.X-Upstream-Token: secret-named header not redacted",
        "interaction 2: response.body.client_secret: secret-named field not redacted",
        "interaction 2: response.body.log: Stripe Access Key (sk_l...)",
        "interaction 3: response.headers.Set-Cookie.sessionid: session cookie not redacted",
        "webhook 2: cause: no cause",
        "variable uuid_1: replayproxy.variables[0].positions: unused",
        "variable token_1: replayproxy.variables[1].positions: unused: it has no positions",
    ]
    for text in expected:
        assert any(f"{name}: {text}" in line for line in lines), (text, out)
    assert len(lines) == len(expected), out
    assert str(tmp_path / "fine.yaml") + ":" not in out
    assert "hunter2" not in out and "4eC39HqLyjWDarjtT1zdp7dc" not in out  # never echoed whole
    # an id, not a secret: random, but under no secret name, in no known format
    assert "response.body.blob" not in out


def test_schema_errors_are_findings_with_number_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "version: 1\ninteractions:\n- request: {method: GET, uri: /x}\n"
        "  response:\n    status: {code: abc}\n    body: {string: ''}\n"
    )
    code, out = cli("check", str(tmp_path / "bad.yaml"), str(tmp_path / "missing.yaml"))
    assert code == 1
    assert (
        f"{tmp_path / 'bad.yaml'}: interaction 1 (line 5): response.status.code: "
        "schema: must be an integer" in out
    )
    assert f"{tmp_path / 'missing.yaml'}: cassette: no such cassette" in out


def test_vcrpy_style_cassette_without_variables_is_not_flagged_for_minted_tokens(
    tmp_path: Path,
) -> None:
    item = exchange("POST", "/v1/jobs", 201, {"job_id": 1},
                    {"command": "go", "client_ref": "q7W2e9R4t6Y1u3I8o5P0aZ"})
    cassette = job_cassette()
    cassette.interactions = [item]
    cassette.webhooks = []
    save(cassette, tmp_path / "v.yaml")
    code, out = cli("check", str(tmp_path / "v.yaml"))
    assert code == 0, out
    item.request.body = b'{"command": "go", "api_key": "q7W2e9R4t6Y1u3I8o5P0aZ"}'
    save(cassette, tmp_path / "v.yaml")
    code, out = cli("check", str(tmp_path / "v.yaml"))
    assert code == 1 and "interaction 1: request.body.api_key: secret-named field" in out


def test_entropy_heuristics() -> None:
    assert entropy("aaaa") == 0.0
    assert looks_random("Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lm")
    assert not looks_random("9fceb02d0ae598e95dc970b74767f19372d61af8a")  # hex: a hash
    assert not looks_random("the_quick_brown_fox_jumps_over")  # words
    assert not looks_random("01HZX3Y4Z5A6B7C8D9E0F1G2H3")  # a ULID


# ---------------------------------------------------------------------------------------------
# what is never a finding, and what always is (the lists in docs/check.md)

NEVER = [
    ("Authorization", "Bearer <redacted>"),
    ("Authorization", "Basic REDACTED"),
    ("Cookie", "SID=<redacted>; lang=en; theme=dark"),
    ("Set-Cookie", "lang=en; Path=/"),
    ("X-Notion-Token", "ntn_***"),
    ("X-Api-Key", "XXXXXXXXXXXXXXXX"),
    ("X-Auth-Token", "{{auth_token}}"),
    ("Access-Control-Allow-Credentials", "true"),
    ("x-ratelimit-remaining-tokens", "59"),
    ("X-Amz-Cf-Id", "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LmZx9Qw8Er7Ty6Ui5Op4As3D=="),
    ("x-ms-request-id", "3f0c1a2b-1111-2222-3333-444455556666"),
    ("ETag", '"9fceb02d0ae598e95dc970b74767f193"'),
    ("Report-To", '{"endpoints":[{"url":"https://a.nel.cloudflare.com/report/v4?s=Zx9Qw8Er7Ty6'
                  'Ui5Op4As3Df2Gh1Jk0Lm"}],"group":"cf-nel","max_age":604800}'),
    ("NEL", '{"success_fraction":0,"report_to":"cf-nel","max_age":604800}'),
    ("Location", "https://cdn.example.com/tiles/12/2048/1361.png?v=Zx9Qw8Er7Ty6Ui5Op4As3Df2"),
    ("X-Session-Expires", "2024-05-01T00:00:00Z"),
    ("X-Secret-Rotation", "/v1/keys/rotate"),
    ("WWW-Authenticate", 'Bearer realm="api", error="invalid_token"'),
    ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
]
ALWAYS = [
    ("Authorization", "Bearer k8Jq2mZx7Lp4Rt9Vw3Ny6Hb1"),
    ("Cookie", "lang=en; PHPSESSID=9f86d081884c7d659a2feaa0c55ad015"),
    ("X-Api-Key", "live-3kd9Fq2LmZ"),
    ("X-Session", "9f86d081884c7d659a2feaa0c55ad015"),  # a 32-hex session handle
    ("X-Deploy", "deploying with ghp_" + "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lm1234"),
    ("X-Upstream", "Bearer k8Jq2mZx7Lp4Rt9Vw3Ny6Hb1"),  # a token after Bearer, whatever the name
]


def _cassette_with(headers: list[tuple[str, str]]) -> Cassette:
    cassette = job_cassette()
    cassette.interactions[0].response.headers += headers
    return cassette


@pytest.mark.parametrize(("name", "value"), NEVER, ids=[n for n, _ in NEVER])
def test_never_a_finding(name: str, value: str) -> None:
    assert check_cassette(_cassette_with([(name, value)]), "x") == []


@pytest.mark.parametrize(("name", "value"), ALWAYS, ids=[n for n, _ in ALWAYS])
def test_always_a_finding(name: str, value: str) -> None:
    (finding,) = check_cassette(_cassette_with([(name, value)]), "x")
    assert finding.field.startswith(f"response.headers.{name}")
    assert finding.secret in value and len(finding.secret) >= 10


def test_a_placeholder_the_config_names_is_not_a_finding(tmp_path: Path) -> None:
    save(_cassette_with([("X-Api-Key", "dev-key-not-a-secret")]), tmp_path / "c.yaml")
    code, _ = cli("check", str(tmp_path / "c.yaml"))
    assert code == 1
    (tmp_path / "cfg.yaml").write_text("check:\n  placeholders: [dev-key-not-a-secret]\n")
    code, out = cli("check", "--config", str(tmp_path / "cfg.yaml"), str(tmp_path / "c.yaml"))
    assert code == 0, out


def test_formats_come_from_detect_secrets_through_re2() -> None:
    from replayproxy import formats

    names = set(formats.names())
    assert {"Stripe Access Key", "GitHub Token", "GitLab Token", "Slack Token",
            "JSON Web Token", "Telegram Bot Token", "AWS Access Key", "Private Key",
            "OpenAI Token", "Basic Auth Credentials"} <= names
    crafted = "eyJ-" * 50_000 + "sk-a" * 50_000  # quadratic for the library's own patterns
    assert list(formats.find(crafted)) == []


def test_hostile_bodies_are_no_traceback(tmp_path: Path) -> None:
    import gzip

    cassette = job_cassette()
    bodies = [
        (b"\x1f\x8b\x08not gzip at all", [("Content-Encoding", "gzip")]),
        (gzip.compress(b"\xff\xfe" * 1000), [("Content-Encoding", "gzip")]),
        (b"x" * 100, [("Content-Encoding", "br, zstd")]),
        (b"[" * 100_000 + b"]" * 100_000, [("Content-Type", "application/json")]),
        (b"--b\r\nno headers--b--", [("Content-Type", "multipart/form-data; boundary=")]),
        (b"a=%zz&token=%ff%fe", [("Content-Type", "application/x-www-form-urlencoded")]),
        (bytes(range(256)) * 64, [("Content-Type", "application/octet-stream")]),
    ]
    for item, (body, headers) in zip(cassette.interactions, bodies[:5], strict=False):
        item.response.body, item.response.headers = body, headers
    cassette.interactions[0].request.body, cassette.interactions[0].request.headers = bodies[5]
    cassette.interactions[1].request.body, cassette.interactions[1].request.headers = bodies[6]
    cassette.interactions[2].request.uri = "http://[::1/%zz?token=%ff"
    save(cassette, tmp_path / "hostile.yaml")
    result = CliRunner().invoke(main, ["check", str(tmp_path / "hostile.yaml")])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output


def test_the_config_redact_names_are_secret_names_whole(tmp_path: Path) -> None:
    cassette = _cassette_with(
        [("X-Camber-Client", "c4mb3r-2024-prod"), ("X-Amz-Cf-Pop", "FRA56-P1")]
    )
    save(cassette, tmp_path / "c.yaml")
    code, out = cli("check", str(tmp_path / "c.yaml"))
    assert code == 0, out  # no secret word in the name, no known format
    (tmp_path / "cfg.yaml").write_text("redact:\n  headers: [X-Camber-Client]\n")
    code, out = cli("check", "--config", str(tmp_path / "cfg.yaml"), str(tmp_path / "c.yaml"))
    assert code == 1 and "X-Camber-Client" in out and "X-Amz-Cf-Pop" not in out, out


def test_fix_with_json_keeps_stdout_json(tmp_path: Path) -> None:
    cassette = _cassette_with([("X-Api-Key", "live-3kd9Fq2LmZ")])
    save(cassette, tmp_path / "c.yaml")
    result = CliRunner().invoke(main, ["check", "--fix", "--json", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["findings"] == []
    assert "fixed: " in result.stderr and "live-3kd9Fq2LmZ" not in (tmp_path / "c.yaml").read_text()


def test_a_secret_in_a_second_gzip_member_is_found_and_fixed_keeping_both(
    tmp_path: Path
) -> None:
    """gzip allows several members, each read on (as gzip.decompress does): the scanner reads
    them all, and --fix writes every member's text back, with its secrets replaced."""
    import gzip

    cassette = job_cassette()
    response = cassette.interactions[1].response
    response.headers = [("Content-Type", "application/json"), ("Content-Encoding", "gzip")]
    response.body = gzip.compress(b'{"password": "Zq8xLm3Pw7Rt", ') + gzip.compress(
        b'"client_secret": "Hn4Kd8Vb2Jw6", "user": "ada"}')
    path = tmp_path / "members.yaml"
    save(cassette, path)
    code, out = cli("check", str(path))
    assert code == 1
    assert "interaction 2: response.body.password" in out, out
    assert "interaction 2: response.body.client_secret" in out, out
    code, out = cli("check", "--fix", str(path))
    assert code == 0 and "not fixed" not in out, out
    body = load(path).interactions[1].response.body
    assert json.loads(gzip.decompress(body)) == {
        "password": "<redacted>", "client_secret": "<redacted>", "user": "ada"}


def test_multipart_nested_1500_deep_is_one_finding_and_no_traceback(tmp_path: Path) -> None:
    """Each nested multipart part was one more recursion: 1500 levels (219 KB) were a
    RecursionError. Parts deeper than a few levels are read as text, where the key still is."""
    from proc import cli as run_cli

    depth = 1500
    body = b"sk_live_4eC39HqLyjWDarjtT1zdp7dc"
    for n in reversed(range(1, depth)):
        body = (
            f'--b{n}z\r\nContent-Disposition: form-data; name="f"; filename="x"\r\n'
            f"Content-Type: multipart/mixed; boundary=b{n + 1}z\r\n\r\n".encode()
            + body + f"\r\n--b{n}z--\r\n".encode()
        )
    cassette = job_cassette()
    cassette.interactions[1].response.headers = [
        ("Content-Type", "multipart/mixed; boundary=b1z")]
    cassette.interactions[1].response.body = body
    path = tmp_path / "nested.yaml"
    save(cassette, path)
    done = run_cli("check", str(path))
    assert done.returncode == 1, done.stderr
    assert done.stderr == "1 finding(s) in 1 cassette(s)\n", done.stderr  # no traceback
    (line,) = done.stdout.splitlines()
    assert line.startswith(f"{path}: interaction 2: response.body.f.f") and (
        "Stripe Access Key (sk_l...)" in line), line


def test_accept_appends_only_new_fingerprints_to_the_allow_list_as_it_is(tmp_path: Path) -> None:
    from replayproxy.check import Finding, accept, read_allow

    found = [Finding("c.yaml", f"interaction {n}", "response.body.token", "secret (abcd...)",
                     "secret", digest=f"{n:064x}") for n in (1, 2)]
    allow = tmp_path / "check.allow"
    assert accept(allow, found[:1]) == 1  # a new file
    allow.write_text(allow.read_text().rstrip("\n") + "  # kept, without its newline")
    assert accept(allow, found) == 1  # the one already there is not added again
    lines = allow.read_text().splitlines()
    assert lines[0].endswith("# kept, without its newline") and len(lines) == 2
    assert read_allow(allow) == {f.fingerprint for f in found}
