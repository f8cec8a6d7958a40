"""Content codings (gzip, deflate, br): undone when a body is recorded, redone when it is served.

A cassette keeps bodies readable and notes the coding the upstream used
(`replayproxy: {content_encoding: gzip}`); at replay the body goes out in that coding again when
the request accepts it, so the app's decompression path runs as it did against the upstream.
"""

from __future__ import annotations

import gzip
import zlib

import brotli

#: Codings replayproxy can undo and redo, by the name a Content-Encoding header gives them.
KNOWN = frozenset({"gzip", "x-gzip", "deflate", "br", "identity"})
_GZIP = {"gzip", "x-gzip"}


def codings(value: str | None) -> list[str]:
    """The codings a Content-Encoding value lists, in the order they were applied."""
    return [c.strip().lower() for c in (value or "").split(",") if c.strip()]


class TooLarge(Exception):
    """A body past its size limit: on the wire, or once decoded."""


def decode_body(
    body: bytes, encoding: str | None, limit: int | None = None, partial: bool = False
) -> tuple[bytes, str | None]:
    """(decoded bytes, the encoding that was removed) or (body, None) when it cannot be decoded.

    Decoding is streamed and stops past `limit` bytes with TooLarge: a 300-byte brotli answer
    can stand for gigabytes (a "bomb"), and max_body_size bounds what is recorded, not only
    what crossed the wire. With `partial` it gives the decoded prefix instead: the first `limit`
    bytes of a bomb, what a cut-off stream held (enough to read, never to write back)."""
    if not encoding:
        return body, None
    applied = codings(encoding)
    cap = limit if limit is not None else 1 << 62
    out = body
    try:
        for coding in reversed(applied):
            if coding in _GZIP:
                out = _inflate(out, 16 + zlib.MAX_WBITS, cap, partial)
            elif coding == "deflate":
                try:
                    out = _inflate(out, zlib.MAX_WBITS, cap, partial)
                except zlib.error:  # raw deflate, as some servers send
                    out = _inflate(out, -zlib.MAX_WBITS, cap, partial)
            elif coding == "br":
                out = _unbrotli(out, cap, partial)
            elif coding != "identity":
                return body, None
    except (OSError, EOFError, zlib.error, brotli.error):
        return body, None
    return out, ", ".join(applied)


_STEP = 1 << 16  # decoded bytes per step: the most held beyond the limit


def _inflate(data: bytes, wbits: int, cap: int, partial: bool) -> bytes:
    """zlib/gzip (every gzip member, as gzip.decompress reads them), at most `cap` bytes."""
    out = bytearray()
    while True:
        d = zlib.decompressobj(wbits)
        pending = data
        while not d.eof:
            chunk = d.decompress(pending, _STEP)
            out += chunk
            if len(out) > cap:
                return _cut(out, cap, partial)
            pending = d.unconsumed_tail
            if not pending and not chunk:
                break  # all input read, no output held back: truncated (checked below)
        if not d.eof:
            if partial:
                return bytes(out)
            raise zlib.error("truncated")
        data = d.unused_data.lstrip(b"\0")  # gzip allows zero padding after a member
        if not data or wbits != 16 + zlib.MAX_WBITS:
            return bytes(out)


def _unbrotli(data: bytes, cap: int, partial: bool) -> bytes:
    d = brotli.Decompressor()
    out = bytearray(d.process(data, output_buffer_limit=_STEP))
    while len(out) <= cap and not d.is_finished():
        more = d.process(b"", output_buffer_limit=_STEP)
        if not more and d.can_accept_more_data():
            break  # it wants input there is no more of: truncated (checked below)
        out += more
    if len(out) > cap:
        return _cut(out, cap, partial)
    if not d.is_finished():
        if partial:
            return bytes(out)
        raise brotli.error("truncated")
    return bytes(out)


def _cut(out: bytearray, cap: int, partial: bool) -> bytes:
    """Past the limit: its first `cap` bytes when a prefix will do, else TooLarge."""
    if partial:
        return bytes(out[:cap])
    raise TooLarge()


def encode_body(body: bytes, encoding: str) -> bytes:
    """`body` in the codings `encoding` lists (applied left to right). Deterministic: gzip's
    header carries no time, so the same cassette serves the same bytes every run."""
    out = body
    for coding in codings(encoding):
        if coding in ("gzip", "x-gzip"):
            out = gzip.compress(out, mtime=0)
        elif coding == "deflate":
            out = zlib.compress(out)  # the zlib format RFC 9110 names "deflate"
        elif coding == "br":
            out = brotli.compress(out, quality=5)  # 11, the default, takes 50x as long
        elif coding != "identity":
            raise ValueError(f"unknown content coding {coding!r}")
    return out


def accepts(accept_encoding: str | None, encoding: str) -> bool:
    """Whether a request's Accept-Encoding takes every coding in `encoding` (RFC 9110 12.5.3).

    A request without Accept-Encoding gets the identity body: a client that did not ask
    (curl without --compressed, a bare socket) would not decode it.
    """
    if not accept_encoding:
        return False
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[name] = q
    wanted = [c for c in codings(encoding) if c != "identity"]
    for coding in wanted:
        named = [q for n, q in weights.items() if n == coding or {n, coding} == _GZIP]
        if (max(named) if named else weights.get("*", 0.0)) <= 0:
            return False
    return bool(wanted)
