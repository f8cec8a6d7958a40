"""What a body holds: the one way a request, response or webhook body is read as JSON. Pure.

A body that is not JSON is ordinary, never an error: bad syntax, bytes that are not UTF-8 and
nesting deeper than the parser goes (a hostile `[[[[...`) all give `NOT_JSON`, which no JSON
document is (`null` is None). The parser is the standard library's: orjson, faster, reads
integers past 64 bits as floats, so two different 20-digit ids would read as the same value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final


class _NotJson:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_JSON"


#: What `json_body` gives for a body that holds no JSON document.
NOT_JSON: Final = _NotJson()

# JSON's own whitespace, then the start of an object or an array: a match, not a strip, so a
# large body is not copied to look at its first byte.
_OPENS: dict[tuple[type, bool], Callable[[Any], Any]] = {
    (bytes, False): re.compile(rb"[ \t\n\r]*[{\[]").match,
    (bytes, True): re.compile(rb"[ \t\n\r]*\{").match,
    (str, False): re.compile(r"[ \t\n\r]*[{\[]").match,
    (str, True): re.compile(r"[ \t\n\r]*\{").match,
}


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
    if sniff or mapping:
        opens = _OPENS[str if isinstance(body, str) else bytes, mapping]
        if not opens(body):
            return NOT_JSON
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return NOT_JSON
