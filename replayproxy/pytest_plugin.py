"""pytest plugin: `@pytest.mark.replayproxy("cassettes/x.yaml")` and the `replayproxy` fixture.

The fixture yields a running `SyncReplayProxy` (`.url`, `.report`), so plain synchronous tests
work. The cassette defaults to `cassettes/<module>/<test>.yaml` next to the test file; a relative
path in the marker is taken from the test file's folder too. Each pytest-xdist worker is its own
process and binds its own free port. When the test body is done the proxy stops (due webhooks
are drained first); a replay that diverged fails the test with the near-miss explanation.

`vary=` in the marker ("webhooks", a glob, a list of names, or True for all) parametrizes the
test over the cassette's variants (variants.py), the baseline `recorded` first; test ids carry
the variant's name, so `pytest -k webhook-1-early` reproduces one. A variant `vary.expect` says
the app may fail is marked xfail (not strict).

Options: `--replayproxy-mode replay|record|new_episodes|all` (default replay; `record` records
cassettes that do not exist yet and replays the others), `--replayproxy-upstream URL`,
`--replayproxy-config FILE`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cassette import load
from .config import load_config
from .errors import ReplayProxyError
from .replayer import ReplayOptions, near_miss_text
from .runner import open_proxy
from .variants import RECORDED, derive, expectation, find, select

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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`vary=` in the marker: one test per variant, named after it."""
    marker = metafunc.definition.get_closest_marker("replayproxy")
    vary = marker.kwargs.get("vary") if marker else None
    if not vary or metafunc.config.option.replayproxy_mode != "replay":
        return
    given = marker.args[0] if marker.args else marker.kwargs.get("cassette")
    path = cassette_path(metafunc.definition, given)
    try:
        config = marker.kwargs.get("config") or load_config(
            metafunc.config.option.replayproxy_config
        )
        chosen = select(derive(load(path), config.webhooks.signature), vary)
    except ReplayProxyError as exc:
        raise pytest.UsageError(f"replayproxy: {metafunc.definition.nodeid}: {exc}") from None
    params = []
    may_fail = pytest.mark.xfail(reason="vary.expect: may fail", strict=False)
    for name in [RECORDED, *(v.name for v in chosen)]:
        allowed = expectation(name, config.vary.expect) == "may-fail"
        params.append(pytest.param(name, id=name, marks=[may_fail] if allowed else []))
    metafunc.parametrize("replayproxy_variant", params, indirect=True)


@pytest.fixture
def replayproxy_variant(request: pytest.FixtureRequest) -> str | None:
    """The name of the variant this test runs under (`vary=` in the marker), else None."""
    return getattr(request, "param", None)


def _with_variant(path: Path, config: Any, kwargs: dict[str, Any], name: str | None) -> None:
    kwargs.pop("vary", None)
    if name is None or name == RECORDED:
        return
    variant = find(derive(load(path), config.webhooks.signature), name)
    options = kwargs.get("options") or ReplayOptions()
    kwargs["options"] = dataclasses.replace(options, variant=variant)


@pytest.fixture
def replayproxy(request: pytest.FixtureRequest, replayproxy_variant: str | None) -> Iterator[Any]:
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
        _with_variant(path, config, kwargs, replayproxy_variant)
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
def _replayproxy_marker(request: pytest.FixtureRequest, replayproxy_variant: str | None) -> None:
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
