"""`--shift-time`: move recorded timestamps by (now - recording time), keeping their format.

ISO 8601 times anywhere in a body, and Unix times (10 or 13 digits) that are JSON number values.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_ISO = re.compile(
    rb"(?<![0-9])(\d{4}-\d{2}-\d{2})([T ])(\d{2}:\d{2}:\d{2})(\.\d{1,9})?"
    rb"(Z|[+-]\d{2}:?\d{2})?(?![0-9])"
)
_UNIX = re.compile(rb'(":\s*)(\d{10}(?:\.\d+)?|\d{13})(?=\s*[,}\]])')


def shift(data: bytes, delta: float) -> bytes:
    if not delta or not data:
        return data
    data = _ISO.sub(lambda m: _shift_iso(m, delta), data)
    return _UNIX.sub(lambda m: _shift_unix(m, delta), data)


def _shift_iso(m: re.Match[bytes], delta: float) -> bytes:
    date, sep, clock, frac, zone = (g.decode() if g else "" for g in m.groups())
    try:
        when = datetime.fromisoformat(f"{date}T{clock}{frac[:7]}")
    except ValueError:
        return m.group(0)
    when += timedelta(seconds=delta)
    out = when.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if frac:
        digits = len(frac) - 1
        micro = f"{when.microsecond:06d}"
        out += "." + (micro + "0" * digits)[:digits]
    return (out + zone).encode()


def _shift_unix(m: re.Match[bytes], delta: float) -> bytes:
    prefix, number = m.group(1), m.group(2).decode()
    value = float(number)
    if len(number) == 13 and "." not in number:
        if not 1e12 <= value < 4e12:
            return m.group(0)
        return prefix + str(int(value + delta * 1000)).encode()
    if not 1e9 <= value < 4e9:
        return m.group(0)
    if "." in number:
        places = len(number.split(".")[1])
        return prefix + f"{value + delta:.{places}f}".encode()
    return prefix + str(int(value + delta)).encode()


def recording_delta(recorded_at: str | None, now: datetime) -> float:
    """Seconds from the recording to now; the cassette's `replayproxy.recorded_at` is ISO 8601."""
    if not recorded_at:
        return 0.0
    then = datetime.fromisoformat(str(recorded_at))
    if then.tzinfo is None:
        now = now.replace(tzinfo=None)
    return (now - then).total_seconds()
