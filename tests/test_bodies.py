"""Reading a body as JSON: one rule for every module, hostile bodies are ordinary non-JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import job_cassette
from hypothesis import given, settings
from hypothesis import strategies as st

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
        (b"[" * 1010 + b"]" * 1010, False, NOT_JSON),  # json's limit, though orjson's is 1024
        (b"[" * 450 + b"]" * 450, False, None),  # under both limits: the same nested lists
        (b"[" * 600 + b"]" * 600, False, None),
        (b'{"id": 123456789012345678901}', True, {"id": 123456789012345678901}),
        (b'{"id": -9223372036854775809}', True, {"id": -9223372036854775809}),
        (b"[NaN, Infinity, 1e400]", True, None),  # only json reads these (compared below)
        (b'\xef\xbb\xbf{"a": 1}', False, {"a": 1}),  # json skips a UTF-8 BOM in bytes
        (b'{"a": "\\ud800"}', True, {"a": "\ud800"}),  # a lone surrogate, escaped
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, (bytes, str)) else None,
)
def test_json_body(body: bytes | str, sniff: bool, expected: object) -> None:
    got = json_body(body, sniff=sniff)
    if expected is NOT_JSON:
        assert got is NOT_JSON
    else:
        assert _same(got, json.loads(body))  # the standard library's answer, exactly
        assert expected is None or _same(got, expected)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down: -0.0 is not 0, NaN is NaN, key order."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            if not ((math.isnan(x) and math.isnan(y)) or repr(x) == repr(y)):
                return False
        elif isinstance(x, dict):
            if list(x) != list(y):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif x != y:
            return False
    return True


_scalars = (
    st.none() | st.booleans() | st.text(max_size=12)
    | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(),
              max_size=4)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-(2**63) - 2, max_value=2**64 + 2)
    | st.floats(allow_nan=True, allow_infinity=True)
)
_documents = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_documents, st.booleans(), st.sampled_from([None, 1]), st.booleans())
def test_the_fast_path_answers_as_json_does(doc: Any, ascii_only: bool, indent: int | None,
                                             as_text: bool) -> None:
    """The oracle is json.loads: for any document (long integers, -0.0, NaN, lone surrogates,
    any text) written either way, json_body gives exactly its answer."""
    text = json.dumps(doc, ensure_ascii=ascii_only, indent=indent)
    body: bytes | str = text if as_text else text.encode("utf-8", "surrogatepass")
    assert _same(json_body(body, sniff=False), json.loads(body))


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
