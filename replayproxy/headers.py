"""HTTP header hygiene: which headers belong to one hop and never cross the proxy.

The one hop-by-hop table and the rules built on it, for every place a message crosses the
proxy: a request forwarded upstream (record, forward mode), an upstream answer passed back to
the app, a webhook recorded or sent to the app, a recorded answer replayed. Pure: headers are
(name, value) pairs, or a request's multidict (`items()`, `getall()`); no sockets, no aiohttp.

The sets differ on purpose, and each difference is behaviour:

- `HOP_BY_HOP` (RFC 9110 7.6.1, plus the body framing of one hop) is dropped from what the
  proxy forwards, records and sends, together with any name the Connection header lists.
- `REWRITTEN` (Host, Content-Length) are written anew by whoever sends a request: dropped from
  requests and webhooks on top of `HOP_BY_HOP` (`REQUEST_HOP`); an upstream answer drops
  Content-Length too (`ANSWER_HOP`) but for HEAD.
- `FRAMING` is all a replayed answer drops from the cassette (with Content-Length, served as
  recorded only for HEAD): aiohttp frames the answer itself, and the rest of `HOP_BY_HOP` was
  already stripped when the answer was recorded, so a hand-written or imported cassette's
  Upgrade or Trailer header is served as written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: How one hop's connection and body are framed: every sender writes its own.
FRAMING = frozenset({"connection", "keep-alive", "transfer-encoding"})

#: Hop-by-hop headers (RFC 9110 7.6.1) and those that describe one hop's body framing.
HOP_BY_HOP = FRAMING | frozenset(
    {
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "upgrade",
    }
)

#: Request headers the sender writes anew for each request it sends.
REWRITTEN = frozenset({"host", "content-length"})

#: What never crosses the proxy with a request or a webhook, Connection-listed names aside.
REQUEST_HOP = HOP_BY_HOP | REWRITTEN

#: What never crosses the proxy with an upstream answer but for HEAD, Connection-listed names
#: aside: the server writes Content-Length anew.
ANSWER_HOP = HOP_BY_HOP | {"content-length"}

#: What a replayed answer drops from the cassette (see the module docstring).
REPLAY_DROPPED = FRAMING | {"content-length"}


def _and_listed(fixed: frozenset[str], connection: Iterable[str]) -> frozenset[str]:
    """`fixed` and every name the Connection header values `connection` list."""
    if not connection:
        return fixed
    named = set(fixed)
    for value in connection:
        named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(named)


def request_headers(headers: Any) -> list[tuple[str, str]]:
    """A request's headers as they go on (upstream, or into a recorded webhook): no hop-by-hop
    ones; the sender writes Host and Content-Length anew."""
    skip = _and_listed(REQUEST_HOP, headers.getall("Connection", ()))
    return [(str(k), v) for k, v in headers.items() if k.lower() not in skip]


def answer_headers(
    pairs: Iterable[tuple[str, str]], connection: Iterable[str], head: bool = False
) -> list[tuple[str, str]]:
    """An upstream answer's headers as the app gets them: no hop-by-hop ones (`connection`: the
    values of its Connection headers); the server writes Content-Length anew, except for a HEAD
    answer (no body to count), whose own is kept."""
    skip = _and_listed(HOP_BY_HOP if head else ANSWER_HOP, connection)
    return [(k, v) for k, v in pairs if k.lower() not in skip]


def replayed_headers(
    headers: Iterable[tuple[str, str]], head: bool = False
) -> list[tuple[str, str]]:
    """A recorded answer's headers as replay serves them: no framing; a HEAD answer keeps a
    numeric Content-Length, which counts a body never sent."""
    return [
        (k, v)
        for k, v in headers
        if k.lower() not in REPLAY_DROPPED
        or (head and k.lower() == "content-length" and v.isdigit())
    ]


def storable(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header text a cassette can hold. Bytes that are not UTF-8 (kept by aiohttp and httptools
    as lone surrogates) are read as Latin-1, HTTP's historical charset, so `filename="r\xe9sum\xe9"`
    is stored, answered and replayed as "résumé" rather than making the cassette unwritable."""
    if all(k.isascii() and v.isascii() for k, v in headers):
        return headers
    return [(_text(k), _text(v)) for k, v in headers]


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("latin-1")
