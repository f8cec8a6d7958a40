"""What a body holds: the one way a request, response or webhook body is read as JSON. Pure.

A body that is not JSON is ordinary, never an error: bad syntax, bytes that are not UTF-8 and
nesting deeper than the parser goes (a hostile `[[[[...`) all give `NOT_JSON`, which no JSON
document is (`null` is None).

The answer is always the standard library's `json.loads`; orjson, many times faster, gives it
where the two agree. They differ only on integers past 64 bits (orjson makes them floats, so two
different 20-digit ids would compare equal), on nesting near a thousand levels (orjson's limit
is 1024, json's the interpreter's recursion limit) and on what orjson refuses (NaN, a BOM,
UTF-16, lone surrogates): a body with a run of 19 digits or with hundreds of brackets goes to
json, and so does any body orjson refuses. tests/test_bodies.py checks the two side by side.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson


class _NotJson:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_JSON"


#: What `json_body` gives for a body that holds no JSON document.
NOT_JSON: Final = _NotJson()


def json_body(body: bytes | str, *, sniff: bool = True, mapping: bool = False) -> Any:
    """The JSON document `body` holds, or NOT_JSON.

    With `sniff` (the default) only an object or an array is tried, told by its first character
    after whitespace: all a caller that reads fields wants, and the cheap way past the many
    bodies that are not JSON. `sniff=False` tries any document (`"text"`, `3`, `null`), for a
    body whose Content-Type says it is JSON. `mapping` tries only an object: for a caller that
    reads fields by name, so an array, however large, is not parsed for nothing.
    """
    if not body:
        return NOT_JSON
    if (sniff or mapping) and not opens_json(body, mapping):
        return NOT_JSON
    try:
        return _loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return NOT_JSON


def opens_json(body: bytes | str, mapping: bool = False) -> bool:
    """Whether the first character after JSON's whitespace opens an object (or an array)."""
    if isinstance(body, bytes):
        first = body[:1]
        if first in b" \t\n\r":  # only a body that opens with whitespace is stripped (copied)
            first = body.lstrip(b" \t\n\r")[:1]
        return first == b"{" or (first == b"[" and not mapping)
    text = body[:1]
    if text in " \t\n\r":
        text = body.lstrip(" \t\n\r")[:1]
    return text == "{" or (text == "[" and not mapping)


#: Fewer brackets than this, and neither parser is near its nesting limit (json's counts
#: against the interpreter's recursion limit, 1000 by default, less the caller's own frames).
_SHALLOW = 500
# Every digit becomes "0", anything else a space: a run of 19 digits (near the end of the
# 64-bit range orjson reads exactly) is then one C substring search, where a regex would take
# longer than parsing the body. A string may hold such a run too; json then reads the body.
_DIGITS = bytes(ord("0") if chr(c) in "0123456789" else ord(" ") for c in range(256))
_LONG_NUMBER = b"0" * 19


def _loads(body: bytes | str) -> Any:
    """json.loads(body), from orjson when its answer is the same (bytes: what bodies are)."""
    if (
        isinstance(body, bytes)
        and body.count(b"[") + body.count(b"{") < _SHALLOW
        and _LONG_NUMBER not in body.translate(_DIGITS)
    ):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # NaN, a BOM, UTF-16, a lone surrogate...: json reads what it can
    return json.loads(body)
