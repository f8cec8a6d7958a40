"""Cassette text as a terminal may print it: a cassette may come from a stranger, and its bytes
must not drive the reviewer's terminal (erase lines, move the cursor, set the title, write the
clipboard with OSC 52). Used for everything `inspect`, `check` and `diff` print, on a TTY and in
a pipe alike (a pipe often ends in a terminal too: `| less -R`, CI logs)."""

from __future__ import annotations

import re

#: C0 controls but tab (and newline where lines are kept), DEL, C1 controls, and the Unicode
#: bidirectional overrides and isolates that reorder what is shown ("Trojan Source").
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_KEEP_NEWLINES = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` with every control character shown as an escape (`\\x1b`, `\\r`as `\\x0d`,
    `\\u202e`); with `keep_newlines`, line feeds stay line feeds (the text is several lines
    that we wrote, with cassette text inside)."""
    pattern = _UNSAFE_KEEP_NEWLINES if keep_newlines else _UNSAFE
    return pattern.sub(_escape, text)
