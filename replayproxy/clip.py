"""Cut a value shown to a person to a bounded length, saying how long it really was. Pure.

Near misses, failed webhooks' answers and diff lines quote recorded and live values; a recorded
5 MiB upload must not make a 5 MB error body, log line or report entry.
"""

from __future__ import annotations

#: The longest value quoted in a near miss, a log line or a report entry.
LIMIT = 300


def clip(text: str, limit: int = LIMIT) -> str:
    """`text` when short; else its start, then `... (N chars)` with the full size."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} chars)"


def clip_bytes(raw: bytes, limit: int = LIMIT) -> str:
    """The start of a body as text (undecodable bytes replaced), with the full size in bytes."""
    head = raw[: limit * 4].decode("utf-8", "replace")
    if len(raw) <= limit:
        return head
    return f"{head[:limit]}... ({len(raw):,} bytes)"
