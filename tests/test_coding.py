"""What a client got while recording, coded or not, it gets in replay: the cassette keeps the
body readable and replay codes it again for a request that accepts the coding."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import raw_get
from vcr_origin import DOC, Origin

from replayproxy.api import SyncReplayProxy
from replayproxy.cassette import header, load
from replayproxy.coding import accepts, decode_body, encode_body


@pytest.mark.parametrize(
    ("asked", "coding", "taken"),
    [
        ("gzip, deflate, br", "gzip", True), ("GZIP", "gzip", True), ("x-gzip", "gzip", True),
        ("gzip;q=0", "gzip", False), ("gzip; q=0.5", "gzip", True), ("*", "br", True),
        ("br;q=0, *", "br", False), ("*;q=0", "gzip", False), ("identity", "gzip", False),
        (None, "gzip", False), ("", "gzip", False), ("gzip", "br, gzip", False),
        ("br, gzip", "gzip, br", True), ("gzip;q=bogus", "gzip", False), (" , ,", "br", False),
    ],
)
def test_accept_encoding(asked: str | None, coding: str, taken: bool) -> None:
    assert accepts(asked, coding) is taken


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "gzip, br", "identity"])
def test_coding_round_trips(coding: str) -> None:
    coded = encode_body(DOC, coding)
    assert decode_body(coded, coding) == (DOC, coding)
    assert encode_body(DOC, coding) == coded  # deterministic: the same replay, the same bytes



def test_recorded_coding_is_served_again(tmp_path: Path) -> None:
    """http.client decodes nothing: the comparison is of what crossed the wire."""
    path = tmp_path / "c.yaml"
    asks = {"/gzip": "gzip, deflate", "/deflate": "deflate", "/br": "br;q=1, gzip;q=0.5",
            "/negotiated": "gzip"}
    with Origin() as origin:
        with SyncReplayProxy(path, mode="all", upstream=origin.url) as proxy:
            recorded = {p: raw_get(proxy.url, p, asked) for p, asked in asks.items()}
    for item in load(path).interactions:
        assert item.response.body == DOC
        assert header(item.response.headers, "content-encoding") is None
    with SyncReplayProxy(path) as proxy:
        for p, asked in asks.items():
            headers, body = raw_get(proxy.url, p, asked)
            live_headers, live_body = recorded[p]
            coding = live_headers["content-encoding"]
            assert headers["content-encoding"] == coding
            assert decode_body(body, coding)[0] == decode_body(live_body, coding)[0] == DOC
            assert int(headers["content-length"]) == len(body)
            # the same answer to a client that does not take the coding: readable, unlabelled
            headers, body = raw_get(proxy.url, p, None)
            assert "content-encoding" not in headers and body == DOC
            assert int(headers["content-length"]) == len(DOC)
