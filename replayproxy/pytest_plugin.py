"""pytest plugin: `@pytest.mark.replayproxy("cassettes/x.yaml")` and the `replayproxy` fixture.

The fixture yields a running `SyncReplayProxy` (`.url`, `.report`), so plain synchronous tests
work. The cassette defaults to `cassettes/<module>/<test>.yaml` next to the test file; a relative
path in the marker is taken from the test file's folder too. Each pytest-xdist worker is its own
process and binds its own free port. When the test body is done the proxy stops (due webhooks
are drained first); a replay that diverged fails the test with the near-miss explanation.

Options: `--replayproxy-mode replay|record|new_episodes|all` (default replay; `record` records
cassettes that do not exist yet and replays the others), `--replayproxy-upstream URL`,
`--replayproxy-config FILE`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .config import load_config
from .errors import ReplayProxyError
from .replayer import near_miss_text
from .runner import open_proxy

PLUGIN_MODES = ("replay", "record", "new_episodes", "all")

_PROXY = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("replayproxy", "replayproxy: replay recorded Camber sessions")
    group.addoption(
        "--replayproxy-mode",
        choices=PLUGIN_MODES,
        default="replay",
        help="replay (default), record (cassettes that do not exist), new_episodes or all.",
    )
    group.addoption(
        "--replayproxy-upstream",
        default=None,
        metavar="URL",
        help="Where requests go when recording (default: config upstream).",
    )
    group.addoption(
        "--replayproxy-config",
        default=None,
        metavar="FILE",
        help="replayproxy config file (default: ./replayproxy.yaml when present).",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "replayproxy(cassette=None, **kwargs): run the test against a replayproxy serving "
        "cassette (default cassettes/<module>/<test>.yaml); kwargs go to ReplayProxy.",
    )


def cassette_path(item: pytest.Item, given: str | Path | None) -> Path:
    """The marker's path, or cassettes/<module>/<test>.yaml, relative to the test file's folder."""
    folder = Path(str(item.path)).parent
    if given is not None:
        path = Path(given)
        return path if path.is_absolute() else folder / path
    module = Path(str(item.path)).stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.name).strip("_")
    return folder / "cassettes" / module / f"{name}.yaml"


@pytest.fixture
def replayproxy(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A running SyncReplayProxy for this test: `.url` for the app, `.report` after the test."""
    item = request.node
    marker = item.get_closest_marker("replayproxy")
    args = marker.args if marker else ()
    kwargs = dict(marker.kwargs) if marker else {}
    given = args[0] if args else kwargs.pop("cassette", None)
    path = cassette_path(item, given)
    opts = request.config.option
    mode = opts.replayproxy_mode
    try:
        config = kwargs.pop("config", None) or load_config(opts.replayproxy_config)
        upstream = opts.replayproxy_upstream or config.upstream
        if mode != "replay" and not upstream:
            raise ReplayProxyError(
                f"--replayproxy-mode {mode} needs --replayproxy-upstream URL "
                "(or `upstream:` in the config)"
            )
        proxy = open_proxy(
            path,
            mode=mode,
            upstream=upstream if mode != "replay" else None,
            sync=True,
            config=config,
            **kwargs,
        )
        proxy.__enter__()
    except ReplayProxyError as exc:
        pytest.fail(f"replayproxy: {exc}", pytrace=False)
    item.stash[_PROXY] = proxy
    try:
        yield proxy
    finally:
        # Normally stopped right after the test body (see pytest_runtest_call); this is the
        # fallback when the body never ran.
        if item.stash.get(_PROXY, None) is not None:
            del item.stash[_PROXY]
            proxy.__exit__(None, None, None)


@pytest.fixture(autouse=True)
def _replayproxy_marker(request: pytest.FixtureRequest) -> None:
    """A test marked `replayproxy` gets the proxy even when it does not ask for the fixture."""
    if request.node.get_closest_marker("replayproxy") is not None:
        request.getfixturevalue("replayproxy")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Stop the proxy as part of the test, so that a diverged replay fails the test itself."""
    try:
        result = yield
    except BaseException:
        _stop(item, failing=True)
        raise
    _stop(item, failing=False)
    return result


def _stop(item: pytest.Item, failing: bool) -> None:
    proxy = item.stash.get(_PROXY, None)
    if proxy is None:
        return
    del item.stash[_PROXY]
    proxy.__exit__(None, None, None)
    report = proxy.report
    if not getattr(report, "diverged", False):
        return
    text = "replay diverged from " + str(proxy.proxy.path) + "\n" + near_miss_text(report)
    item.add_report_section("call", "replayproxy", text)
    if not failing:
        pytest.fail(text, pytrace=False)
