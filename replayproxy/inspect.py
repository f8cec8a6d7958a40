"""Readable tables of a cassette: interactions, webhooks, variables. Numbers start at 1."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from .bodies import json_body
from .cassette import Cassette, Webhook
from .matching import origin_of
from .terminal import printable

Style = Callable[[int, int, str], str]


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], style: Style | None = None
) -> str:
    """Aligned columns; numbers right-aligned, text left-aligned.

    `style(row, column, padded_cell)` (rows of `rows` from 0) may wrap a cell in colour codes:
    it gets the cell already padded, so escape codes never count toward the widths. Cells are
    cassette text: their control characters are shown escaped (`printable`)."""
    cells = [[str(c) for c in headers]] + [
        ["" if c is None else printable(str(c)) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(widths))
    ]
    lines: list[str] = []
    for row in cells:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        if style is not None and lines:
            # the last cell unpadded first, so a styled line never ends in trailing spaces
            parts[-1] = parts[-1].rstrip()
            parts = [style(len(lines) - 1, i, p) for i, p in enumerate(parts)]
            lines.append("  ".join(parts).rstrip(" "))
            continue
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True


def event_type(hook: Webhook) -> str:
    data = json_body(hook.body, mapping=True)
    if isinstance(data, dict):
        for key in ("type", "event", "event_type", "eventType"):
            if isinstance(data.get(key), str):
                return data[key]
    return ""


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


def _at(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}s"


def _red(text: str) -> str:
    """ANSI red around the text, leaving its padding outside the colour."""
    core = text.strip(" ")
    if not core:
        return text
    start = text.index(core)
    return f"{text[:start]}\x1b[31m{core}\x1b[0m{text[start + len(core):]}"


def status_style(status_column: int, statuses: Sequence[int]) -> Style:
    """Red for a status >= 400 in `status_column`."""

    def style(row: int, column: int, cell: str) -> str:
        return _red(cell) if column == status_column and statuses[row] >= 400 else cell

    return style


def render_inspect(cassette: Cassette, color: bool = False) -> str:
    """The tables; `color` (only on a TTY) shows error statuses in red. A cassette with
    several hosts gets a host column and a line saying how each mode tells them apart."""
    out = [f"interactions ({len(cassette.interactions)})"]
    origins = [origin_of(item.request.uri) for item in cassette.interactions]
    hosts = sorted({o for o in origins if o is not None})
    several = len(hosts) > 1
    rows = []
    for n, item in enumerate(cassette.interactions, start=1):
        parts = urlsplit(item.request.uri)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        row: tuple[object, ...] = (n, item.request.method, target)
        if several:
            row = (*row, origins[n - 1] or "-")
        rows.append(
            (
                *row,
                item.response.status,
                _size(len(item.response.body)),
                _at(item.at),
            )
        )
    statuses = [item.response.status for item in cassette.interactions]
    columns = ("#", "method", "path", *(("host",) if several else ()), "status", "body", "time")
    style = status_style(columns.index("status"), statuses) if color else None
    out.append(table(columns, rows, style))
    if several:
        out.append(
            f"several hosts ({len(hosts)}): {', '.join(hosts)}. Forward mode matches each "
            "request's host too; reverse mode answers requests for the same path in recorded "
            "order, whatever host they were recorded for."
        )
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
