"""pytest plugin: `@pytest.mark.replayproxy("cassettes/x.yaml")` and the `replayproxy` fixture.

The fixture yields a running `SyncReplayProxy` (`.url`, `.report` so far, `.wait_for_webhooks`),
so plain synchronous tests work. The cassette defaults to `cassettes/<module>/<test>.yaml` next to
the test file; a relative path in the marker is taken from the test file's folder too. Each
pytest-xdist worker is its own process and binds its own free port. When the test body is done
the proxy stops (due webhooks are drained first); a replay that diverged fails the test with the
report's sentences, or adds them beside the test's own failure.

Under `replayproxy run` (which sets REPLAYPROXY_RUN) no proxy is started: the fixture points at
the outer one, which does the checking. The config comes from the pytest root, never the current
folder: `--replayproxy-config FILE`, else the ini option `replayproxy_config` (relative to the ini
file), else `replayproxy.yaml` in the rootdir, else the defaults.

`vary=` in the marker ("webhooks", a glob, a list of names, or True for all) parametrizes the
test over the cassette's variants (variants/), the baseline `recorded` first; test ids carry
the variant's name, so `pytest -k webhook-1-early` reproduces one. A variant `vary.expect` says
the app may fail is marked xfail (not strict).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .config import DEFAULT_CONFIG_FILE, Config, RecordMode, load_config, record_mode
from .errors import ReplayProxyError
from .replayer import ReplayOptions
from .runner import RUN_ENV, URL_ENV, open_proxy
from .variants import RECORDED, expectation, select
from .vary import variant_named, variants_of

#: What --replayproxy-mode takes: `replay` (none) and `record` (once) stand for vcrpy's names.
PLUGIN_MODES = ("replay", "record", RecordMode.NEW_EPISODES.value, RecordMode.ALL.value)

_PROXY = pytest.StashKey[Any]()
_CONFIG = pytest.StashKey[Config]()


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
        help="replayproxy config file (default: ini replayproxy_config, else "
        "replayproxy.yaml in the rootdir).",
    )
    group.addoption(
        "--replayproxy-strict",
        action="store_true",
        default=False,
        help="Also fail a test that left an interaction unused or a webhook undelivered.",
    )
    parser.addini(
        "replayproxy_config",
        "replayproxy config file, relative to this ini file (default: replayproxy.yaml in the "
        "rootdir)",
        default=None,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "replayproxy(cassette=None, strict=False, **kwargs): run the test against a replayproxy "
        "serving cassette (default cassettes/<module>/<test>.yaml); kwargs go to ReplayProxy.",
    )


def config_path(config: pytest.Config) -> Path | None:
    """The config file this session uses: the option (from the invocation folder), the ini
    option (from the ini file's folder), or replayproxy.yaml in the rootdir; None for none."""
    given = config.option.replayproxy_config
    if given:
        return config.invocation_params.dir / given
    ini = config.getini("replayproxy_config")
    if ini:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        return base / str(ini)
    default = config.rootpath / DEFAULT_CONFIG_FILE
    return default if default.is_file() else None


def session_config(config: pytest.Config) -> Config:
    """Loaded once per session (every test shares it)."""
    loaded = config.stash.get(_CONFIG, None)
    if loaded is None:
        path = config_path(config)
        loaded = config.stash[_CONFIG] = load_config(path) if path is not None else Config()
    return loaded


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
    if marker is None or not vary or _records(metafunc.config):
        return
    given = marker.args[0] if marker.args else marker.kwargs.get("cassette")
    path = cassette_path(metafunc.definition, given)
    try:
        config = marker.kwargs.get("config") or session_config(metafunc.config)
        chosen = select(variants_of(path, config), vary)
    except ReplayProxyError as exc:
        raise pytest.UsageError(f"replayproxy: {metafunc.definition.nodeid}: {exc}") from None
    params = []
    may_fail = pytest.mark.xfail(reason="vary.expect: may fail", strict=False)
    for name in [RECORDED, *(v.name for v in chosen)]:
        allowed = expectation(name, config.vary.expect) == "may-fail"
        params.append(pytest.param(name, id=name, marks=[may_fail] if allowed else []))
    metafunc.parametrize("replayproxy_variant", params, indirect=True)


def _records(config: pytest.Config) -> bool:
    return record_mode(config.option.replayproxy_mode) is not RecordMode.NONE


@pytest.fixture
def replayproxy_variant(request: pytest.FixtureRequest) -> str | None:
    """The name of the variant this test runs under (`vary=` in the marker), else None."""
    return getattr(request, "param", None)


def _with_variant(path: Path, config: Config, kwargs: dict[str, Any], name: str | None) -> None:
    kwargs.pop("vary", None)
    variant = variant_named(path, config, name) if name is not None else None
    if variant is None:  # no variant asked for, or the recorded conversation itself
        return
    options = kwargs.get("options") or ReplayOptions()
    kwargs["options"] = dataclasses.replace(options, variant=variant)


@dataclass
class OuterProxy:
    """The proxy `replayproxy run` started around this pytest session: it serves its own
    cassette, checks the replay and reports when the command ends; nothing to do here."""

    url: str
    cassette: str
    report: None = None

    def wait_for_webhooks(self, timeout: float = 10.0) -> None:
        """The outer proxy delivers and checks webhooks; the test cannot see them settle."""
        return None


@pytest.fixture
def replayproxy(request: pytest.FixtureRequest, replayproxy_variant: str | None) -> Iterator[Any]:
    """A running SyncReplayProxy for this test: `.url` for the app, `.report` so far."""
    outer = os.environ.get(RUN_ENV)
    if outer and os.environ.get(URL_ENV):
        yield OuterProxy(os.environ[URL_ENV], outer)
        return
    item = request.node
    marker = item.get_closest_marker("replayproxy")
    args = marker.args if marker else ()
    kwargs = dict(marker.kwargs) if marker else {}
    given = args[0] if args else kwargs.pop("cassette", None)
    path = cassette_path(item, given)
    opts = request.config.option
    mode = opts.replayproxy_mode
    records = _records(request.config)
    kwargs["strict"] = bool(kwargs.get("strict") or opts.replayproxy_strict)
    try:
        config = kwargs.pop("config", None) or session_config(request.config)
        _with_variant(path, config, kwargs, replayproxy_variant)
        upstream = opts.replayproxy_upstream or config.upstream
        if records and not upstream:
            raise ReplayProxyError(
                f"--replayproxy-mode {mode} needs --replayproxy-upstream URL "
                "(or `upstream:` in the config)"
            )
        proxy = open_proxy(
            path,
            mode=mode,
            upstream=upstream if records else None,
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
    text = f"replayproxy: {proxy.proxy.path}: {report.summary()}"
    if not report.diverged:
        if report.unused or report.webhooks_never_due:  # reported (pytest -rP shows it)
            item.add_report_section("call", "replayproxy", text)
        return
    item.add_report_section("call", "replayproxy", text)
    if not failing:
        pytest.fail(text, pytrace=False)
