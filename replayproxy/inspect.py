"""Readable tables of a cassette: interactions, webhooks, variables. Numbers start at 1."""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import urlsplit

from .cassette import Cassette, Webhook


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Aligned columns; numbers right-aligned, text left-aligned."""
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(widths))
    ]
    lines = []
    for row in cells:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True


def event_type(hook: Webhook) -> str:
    try:
        data = json.loads(hook.body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if isinstance(data, dict):
        for key in ("type", "event", "event_type", "eventType"):
            if isinstance(data.get(key), str):
                return data[key]
    return ""


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


def _at(value: object) -> str:
    return f"{value:.3f}s" if isinstance(value, (int, float)) else ""


def render_inspect(cassette: Cassette) -> str:
    out = [f"interactions ({len(cassette.interactions)})"]
    rows = []
    for n, item in enumerate(cassette.interactions, start=1):
        parts = urlsplit(item.request.uri)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        rows.append(
            (
                n,
                item.request.method,
                target,
                item.response.status,
                _size(len(item.response.body)),
                _at(item.meta.get("at")),
            )
        )
    out.append(table(("#", "method", "path", "status", "body", "time"), rows))
    out.append("")
    out.append(f"webhooks ({len(cassette.webhooks)})")
    rows = [
        (
            n,
            _at(h.at),
            h.cause or "-",
            h.after or "-",
            f"{h.delay:.3f}s",
            event_type(h),
            _size(len(h.body)),
        )
        for n, h in enumerate(cassette.webhooks, start=1)
    ]
    out.append(table(("#", "time", "cause", "after", "delay", "event", "body"), rows))
    out.append("")
    out.append(f"variables ({len(cassette.variables)})")
    rows = [
        (
            v.name,
            v.shape,
            v.value if len(v.value) <= 60 else v.value[:57] + "...",
            ", ".join(v.positions[:4]) + (" ..." if len(v.positions) > 4 else ""),
        )
        for v in cassette.variables
    ]
    out.append(table(("name", "shape", "recorded value", "positions"), rows))
    return "\n".join(out)
