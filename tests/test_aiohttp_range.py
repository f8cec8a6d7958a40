"""The aiohttp internals server.py builds on: present in the installed aiohttp, which lies in the
range pyproject.toml pins, and named in one clear error when a version lacks them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from replayproxy.errors import ReplayProxyError
from replayproxy.server import Server, aiohttp_range, check_aiohttp, missing_internals

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_aiohttp_is_in_the_pinned_range_and_has_every_internal() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [Requirement(d) for d in project["dependencies"] if d.startswith("aiohttp")]
    assert len(pins) == 1
    assert aiohttp_range() == ">=3.14,<3.15"
    assert pins[0].specifier == SpecifierSet(aiohttp_range())  # one range, one truth
    assert pins[0].specifier.contains(aiohttp.__version__), (aiohttp.__version__, pins[0])
    assert any(s.operator == "<" for s in pins[0].specifier), "no upper bound"
    assert missing_internals() == []
    check_aiohttp()  # no error


def test_an_aiohttp_without_the_internals_is_named_not_served() -> None:
    class Bare(RequestHandler):  # a subclass keeps what it inherits
        __slots__ = ()

    class Stranger:  # a protocol with none of RequestHandler's state or methods
        __slots__ = ("_loop",)

    class Plain(web.StreamResponse):
        _prepare_headers = None  # type: ignore[assignment]

    assert missing_internals(Bare) == []
    missing = missing_internals(Stranger, Plain)
    assert missing == [
        "Stranger._keepalive_handle",
        "Stranger._next_keepalive_close_time",
        "Stranger._request_in_progress",
        "Stranger._messages",
        "Stranger._force_close",
        "Stranger._process_keepalive()",
        "Stranger.handle_error()",
        "Stranger.connection_made()",
        "Stranger.data_received()",
        "Plain._prepare_headers()",
    ]


def test_a_server_on_an_aiohttp_lacking_them_fails_at_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import replayproxy.server as server

    def lacking() -> list[str]:  # what 3.9 lacks (checked there by hand: these two)
        return ["RequestHandler._next_keepalive_close_time", "RequestHandler._request_in_progress"]

    monkeypatch.setattr(server, "missing_internals", lacking)
    monkeypatch.setattr(server, "_checked", False)
    with pytest.raises(ReplayProxyError) as caught:
        Server(lambda request: None)  # type: ignore[arg-type, return-value]
    text = str(caught.value)
    assert "\n" not in text
    assert text == (
        f"aiohttp {aiohttp.__version__} lacks what replayproxy's server needs "
        "(RequestHandler._next_keepalive_close_time, RequestHandler._request_in_progress): "
        "install 'aiohttp>=3.14,<3.15'"
    )


def test_an_aiohttp_outside_the_tested_range_fails_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import replayproxy.server as server

    monkeypatch.setattr(server, "aiohttp_version", "3.13.5")  # has the names, not the behaviour
    monkeypatch.setattr(server, "_checked", False)
    with pytest.raises(ReplayProxyError) as caught:
        Server(lambda request: None)  # type: ignore[arg-type, return-value]
    assert str(caught.value) == (
        "aiohttp 3.13.5 is outside the range replayproxy's server is tested with, which relies "
        "on aiohttp internals: install 'aiohttp>=3.14,<3.15'"
    )
