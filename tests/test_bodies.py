"""Reading a body as JSON: one rule for every module, hostile bodies are ordinary non-JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import job_cassette

from cli import main
from replayproxy.bodies import NOT_JSON, json_body
from replayproxy.cassette import save
from replayproxy.correlate import exchange_values, webhook_ids
from replayproxy.inspect import event_type

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("body", "sniff", "expected"),
    [
        (b'{"a": [1, 2]}', True, {"a": [1, 2]}),
        (b'\r\n\t {"a": 1}\n', True, {"a": 1}),  # JSON's own whitespace first
        (b"[1]", True, [1]),
        ('{"a": "\u00e9"}', True, {"a": "\u00e9"}),  # text as well as bytes
        (b'"text"', True, NOT_JSON),  # sniffing tries only an object or an array
        (b'"text"', False, "text"),
        (b"null", False, None),  # null is a document; NOT_JSON is none
        (b"12345678901234567890123", False, 12345678901234567890123),  # exact past 64 bits
        (b"", False, NOT_JSON),
        (b"\x0c{}", True, NOT_JSON),  # form feed is not JSON whitespace
        (b'{"a": 1', True, NOT_JSON),
        (b'{"a": "\xff"}', True, NOT_JSON),  # not UTF-8
        ('{"a": 1}'.encode("utf-16"), False, {"a": 1}),  # json's own encoding detection
        (DEEP, True, NOT_JSON),  # nested past the parser: not JSON, never RecursionError
        (DEEP, False, NOT_JSON),
    ],
)
def test_json_body(body: bytes | str, sniff: bool, expected: object) -> None:
    got = json_body(body, sniff=sniff)
    assert got is expected if expected is NOT_JSON or expected is None else got == expected
    if expected is not NOT_JSON:
        assert got == json.loads(body)  # the standard library's answer, unchanged


def test_mapping_tries_only_an_object() -> None:
    assert json_body(b' {"type": "x"}', mapping=True) == {"type": "x"}
    assert json_body(b"[1, 2]", mapping=True) is NOT_JSON
    assert json_body(b'"x"', sniff=False, mapping=True) is NOT_JSON


def test_deep_bodies_are_no_traceback_in_diff_inspect_and_correlation(tmp_path: Path) -> None:
    """A cassette from a stranger: every body nested 100,000 deep. Each offline command still
    answers (these used to end in a RecursionError traceback)."""
    cassette = job_cassette()
    for item in cassette.interactions:
        item.request.body = item.response.body = DEEP
    cassette.webhooks[0].body = DEEP
    save(cassette, tmp_path / "a.yaml")
    other = job_cassette()
    other.webhooks[0].body = DEEP
    save(other, tmp_path / "b.yaml")
    assert webhook_ids(DEEP) == set()
    assert event_type(cassette.webhooks[0]) == ""
    assert exchange_values(cassette.interactions[1]) == {"v1", "jobs", "6238"}  # the path only
    runner = CliRunner()
    for args in (["diff", "a.yaml", "b.yaml"], ["inspect", "a.yaml"]):
        result = runner.invoke(main, [args[0], *(str(tmp_path / a) for a in args[1:])])
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            args, result.output, result.exception)
        assert "Traceback" not in result.output
    diffed = runner.invoke(main, ["diff", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")])
    assert diffed.exit_code == 1 and "interaction" in diffed.output  # the bodies differ
