"""The `replayproxy` command: a thin click face over replayproxy's API."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import math
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, Protocol

import click

from replayproxy import __version__, eventloop
from replayproxy.api import ReplayProxy
from replayproxy.cassette import load
from replayproxy.config import Config, RecordMode, load_config
from replayproxy.errors import ReplayProxyError
from replayproxy.inspect import render_inspect
from replayproxy.journal import open_cassette
from replayproxy.matching import ensure_variables, normaliser
from replayproxy.progress import LiveView, RecordView
from replayproxy.replayer import ReplayOptions
from replayproxy.report import load_report
from replayproxy.signing import SCHEMES
from replayproxy.terminal import printable
from replayproxy.timeline import write_html
from replayproxy.webhooks import TIMINGS


def friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """User mistakes become one line on stderr and exit status 2, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ReplayProxyError as exc:
            click.echo(f"replayproxy: {printable(str(exc))}", err=True)
            sys.exit(2)
        except OSError as exc:  # a path the user named: a folder that is a file, no permission
            click.echo(f"replayproxy: {printable(str(exc))}", err=True)
            sys.exit(2)

    return wrapper


def settings(config_path: str | None, **overrides: Any) -> Config:
    return load_config(config_path).replace(**overrides)


class BannerFormat(Protocol):
    """A `str.format` template with `{url}`, or an object that words the line once started."""

    def format(self, *, url: str) -> str: ...


async def until_signalled(
    start: Callable[[], Awaitable[str]], stop: Callable[[], Awaitable[Any]], banner: BannerFormat
) -> Any:
    """Start, print the banner with the URL as the first stdout line, wait for SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    url = await start()
    gc.collect()
    gc.freeze()  # the loaded cassette lives as long as the process: never scan it again
    click.echo(banner.format(url=url))
    sys.stdout.flush()
    try:
        await stopping.wait()
    finally:
        result = await stop()
    return result


def with_live_view(proxy: ReplayProxy) -> tuple[Callable[[], Awaitable[str]], Any]:
    """Wrap start/stop so a replay shows one line per job on stderr while it runs."""
    tasks: list[asyncio.Task[None]] = []

    async def start() -> str:
        url = await proxy.start()
        replayer = proxy.replayer
        if replayer is not None and replayer.cassette.webhooks:
            view = LiveView(
                replayer.cassette, lambda: (replayer.schedule.served, replayer.report.deliveries)
            )
            tasks.append(asyncio.get_running_loop().create_task(view.run()))
        return url

    async def stop() -> Any:
        report = await proxy.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return report

    return start, stop


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="replayproxy")
@click.option("-v", "--verbose", is_flag=True, help="Log every request and webhook attempt.")
def main(verbose: bool) -> None:
    """Record an app's Camber API traffic and webhooks; replay them offline."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(message)s", stream=sys.stderr
    )


class Seconds(click.ParamType):
    """A finite number of seconds, 0 or more: nan, infinity and negatives are one line."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a finite number of seconds, 0 or more", param, ctx)
        return seconds


SECONDS = Seconds()

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: ./replayproxy.yaml when present).",
)
listen_option = click.option("--listen", help="HOST:PORT to listen on (port 0 picks a free one).")
allow_remote_option = click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow listening on a non-loopback address (prints a warning).",
)
env_option = click.option(
    "--env",
    "env_name",
    metavar="NAME",
    help="Also export the proxy URL as NAME (default: config export_env).",
)


def with_options(options: list[Callable[..., Any]], func: Callable[..., Any]) -> Callable[..., Any]:
    """Apply a shared list of click options, in the order they are listed."""
    for option in reversed(options):
        func = option(func)
    return func


def https_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--forward, --hosts, --ca-dir, --tls: the options of commands that serve."""
    options = [
        click.option(
            "--forward",
            is_flag=True,
            help="Be a forward proxy (HTTPS_PROXY/HTTP_PROXY): CONNECT is intercepted with "
            "certificates from the local CA.",
        ),
        click.option(
            "--hosts",
            metavar="A,B",
            help="With --forward: intercept only these hosts; other CONNECTs are tunnelled "
            "untouched while recording and refused while replaying.",
        ),
        click.option(
            "--ca-dir",
            type=click.Path(file_okay=False),
            help="The local CA's folder (default: the user's config folder; see `replayproxy ca`).",
        ),
        click.option(
            "--tls",
            is_flag=True,
            help="Serve the proxy itself over HTTPS with a local-CA certificate for localhost.",
        ),
    ]
    return with_options(options, func)


def https_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """Pop the https_options from a command's keywords, as ReplayProxy takes them."""
    if kw.get("hosts") and not kw.get("forward"):
        raise ReplayProxyError("--hosts needs --forward")
    return {name: kw.pop(name) for name in ("forward", "hosts", "ca_dir", "tls")}


def replay_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that replays takes (replay, run)."""
    options = [
        click.option(
            "--strict",
            is_flag=True,
            help="Also require every interaction used and every webhook delivered "
            "(replay: and exit 1 when the replay diverged).",
        ),
        click.option(
            "--report",
            "report_path",
            type=click.Path(dir_okay=False),
            help="Write a JSON report here on exit.",
        ),
        click.option(
            "--timing",
            type=click.Choice(TIMINGS),
            default="sequence",
            show_default=True,
            help="When recorded webhooks are sent.",
        ),
        click.option(
            "--speed",
            type=float,
            default=1.0,
            show_default=True,
            help="Divide recorded delays by this (with --timing recorded).",
        ),
        click.option(
            "--webhook-url",
            help="Where webhooks go when the app sent no callback URL "
            "and webhooks.forward_to is not set.",
        ),
        click.option(
            "--allow-webhook-host",
            "allow_webhook_hosts",
            multiple=True,
            metavar="HOST",
            help="Also deliver webhooks whose recorded target is on HOST (repeatable).",
        ),
        click.option(
            "--duplicate-webhooks",
            type=click.IntRange(1, 100),
            default=1,
            help="Deliver each webhook N times with the same event id.",
        ),
        click.option(
            "--shuffle-webhooks",
            type=int,
            metavar="SEED",
            help="Deliver webhooks due together in a deterministic shuffled order.",
        ),
        click.option(
            "--bad-signature",
            is_flag=True,
            help="Sign with a wrong key: a correct app rejects them.",
        ),
        click.option(
            "--stale-timestamp",
            is_flag=True,
            help="Sign with a timestamp an hour old: a correct app rejects them.",
        ),
        click.option(
            "--drain-timeout",
            type=SECONDS,
            default=5.0,
            show_default=True,
            help="Seconds to wait at shutdown for webhooks still due (with run --record: "
            "still owed, default 30).",
        ),
        click.option(
            "--fast-forward",
            is_flag=True,
            help="Answer a polling loop with its final recorded state at once.",
        ),
        click.option(
            "--shift-time",
            is_flag=True,
            help="Move recorded timestamps in answers and webhooks to the present.",
        ),
        allow_remote_option,
    ]
    return with_options(options, func)


def build_options(kw: dict[str, Any]) -> ReplayOptions:
    return ReplayOptions(
        timing=kw["timing"],
        speed=kw["speed"],
        webhook_url=kw["webhook_url"],
        duplicate_webhooks=kw["duplicate_webhooks"],
        shuffle_webhooks=kw["shuffle_webhooks"],
        bad_signature=kw["bad_signature"],
        stale_timestamp=kw["stale_timestamp"],
        drain_timeout=kw["drain_timeout"],
        shift_time=kw["shift_time"],
        fast_forward=kw["fast_forward"],
        allow_webhook_hosts=tuple(kw["allow_webhook_hosts"]),
    )


@main.command()
@click.argument("cassette", type=click.Path(dir_okay=False))
@listen_option
@config_option
@replay_options
@https_options
@friendly
def replay(cassette: str, listen: str | None, config_path: str | None, **kw: Any) -> None:
    """Serve CASSETTE offline and deliver its webhooks, until SIGINT/SIGTERM."""
    config = settings(config_path, listen=listen)
    https = https_kwargs(kw)
    proxy = ReplayProxy(
        cassette,
        **https,
        config=config,
        listen=config.listen,
        options=build_options(kw),
        report_path=kw["report_path"],
        allow_remote=kw["allow_remote"],
        strict=kw["strict"],
    )
    shown = " (forward proxy)" if https["forward"] else ""
    start, stop = with_live_view(proxy)
    report = eventloop.run(
        until_signalled(start, stop, f"replayproxy replaying {cassette} on {{url}}{shown}")
    )
    click.echo(report.summary(), err=True)
    sys.exit(1 if kw["strict"] and report.diverged else 0)


@main.command()
@click.argument("cassette", type=click.Path(dir_okay=False))
@config_option
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    help="Also write the conversation as one self-contained HTML page here.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="A replay report (replay --report) to overlay: misses, retries, failed deliveries.",
)
@friendly
def inspect(
    cassette: str, config_path: str | None, html_path: str | None, report_path: str | None
) -> None:
    """Show CASSETTE's interactions, webhooks and variables as tables."""
    tape = open_cassette(cassette)
    report = load_report(report_path) if report_path else None
    ensure_variables(tape, normaliser(tape, settings(config_path)))
    click.echo(render_inspect(tape, color=sys.stdout.isatty()))
    if html_path:
        write_html(tape, html_path, report, title=f"replayproxy: {cassette}")
        click.echo(f"wrote {html_path}", err=True)


@main.command()
@click.option("--keep", type=click.Path(file_okay=False), help="Leave the cassette in this folder.")
@friendly
def demo(keep: str | None) -> None:
    """Record three Camber jobs on the built-in sandbox, then replay them offline."""
    import tempfile
    from pathlib import Path

    from replayproxy.demo.roundtrip import record_and_replay

    with tempfile.TemporaryDirectory(prefix="replayproxy-demo-") as tmp:
        workdir = Path(keep) if keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = eventloop.run(record_and_replay(workdir, say=click.echo))
        click.echo("")
        click.echo(render_inspect(load(result.cassette)))
        summary = result.report.webhooks_summary()
        click.echo("")
        click.echo(
            f"replay: served {result.report.served} requests, unmatched "
            f"{len(result.report.unmatched)}, webhooks delivered {summary['delivered']}, "
            f"failed {summary['failed']}"
        )
        verdict = "the same states as" if result.same else "DIFFERENT states from"
        click.echo(f"offline, the app ended in {verdict} the recorded session")
        if keep:
            click.echo(f"cassette kept: {result.cassette}")
            click.echo(f"try: replayproxy inspect {result.cassette}")
    sys.exit(0 if result.same and not result.report.diverged else 1)


@main.command(short_help="Run a command against the proxy; exit with its status.")
@click.argument("cassette", type=click.Path(dir_okay=False))
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@listen_option
@config_option
@env_option
@click.option("--record", is_flag=True, help="Record through --upstream instead of replaying.")
@click.option("--upstream", help="With --record: where requests go (default: config upstream).")
@click.option(
    "--upstream-ca",
    type=click.Path(dir_okay=False),
    help="With --record: CA bundle that verifies the upstream's TLS certificate.",
)
@click.option(
    "--divergence-exit-code",
    type=click.IntRange(0, 255),
    default=1,
    show_default=True,
    help="Exit status when the command passed but the replay diverged (125: git bisect skip).",
)
@click.option(
    "--variant",
    metavar="NAME",
    help="Play one misbehaviour of Camber (a name `replayproxy vary` shows).",
)
@replay_options
@https_options
@friendly
def run(
    cassette: str,
    command: tuple[str, ...],
    listen: str | None,
    config_path: str | None,
    env_name: str | None,
    record: bool,
    upstream: str | None,
    upstream_ca: str | None,
    divergence_exit_code: int,
    variant: str | None,
    **kw: Any,
) -> None:
    """Start the proxy on a free port, run COMMAND with its URL, stop, exit with its status.

    The URL is exported as REPLAYPROXY_URL (and as --env NAME / config export_env). Put the
    command after `--`: replayproxy run cassettes/x.yaml -- pytest tests/e2e

    With --forward the command gets HTTPS_PROXY/HTTP_PROXY and the CA variables
    (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS, CURL_CA_BUNDLE); with --tls the
    CA variables.
    """
    from replayproxy.runner import exit_status, open_proxy, run_command

    config = settings(config_path, upstream=upstream)
    https = https_kwargs(kw)
    source = click.get_current_context().get_parameter_source("drain_timeout")
    if record and source == click.core.ParameterSource.DEFAULT:
        kw["drain_timeout"] = 30.0  # recording: webhooks owed by staging take longer
    if record and not config.upstream and not https["forward"]:
        raise ReplayProxyError("--record needs --upstream URL (or `upstream:` in the config)")
    options = build_options(kw)
    extra_env = {}
    if variant is not None:
        if record:
            raise ReplayProxyError("--variant replays; it does not go with --record")
        from replayproxy.vary import VARIANT_ENV, variant_named

        options = dataclasses.replace(options, variant=variant_named(cassette, config, variant))
        source = click.get_current_context().get_parameter_source("timing")
        if source is click.core.ParameterSource.DEFAULT:  # as `vary` runs it
            options = dataclasses.replace(options, timing="recorded")
        extra_env[VARIANT_ENV] = variant
    proxy = open_proxy(
        cassette,
        mode=RecordMode.ALL if record else RecordMode.NONE,
        upstream=config.upstream if record else None,
        upstream_ca=upstream_ca,
        config=config,
        listen=listen or "127.0.0.1:0",
        options=options,
        report_path=kw["report_path"],
        allow_remote=kw["allow_remote"],
        strict=kw["strict"],
        **https,
    )
    names = [n for n in (env_name or config.export_env,) if n]

    def started(url: str) -> None:
        shown = ", ".join(["REPLAYPROXY_URL", *names])
        verb = "recording" if record else "replaying"
        click.echo(f"replayproxy {verb} {cassette} on {url} ({shown})", err=True)

    returncode, report = eventloop.run(run_command(proxy, command, names, started, extra_env))
    for line in proxy.recorder.warnings() if proxy.recorder is not None else ():
        click.echo(f"replayproxy: {line}", err=True)
    diverged = bool(getattr(report, "diverged", False))
    click.echo(f"replayproxy: {report.summary()}", err=True)
    sys.exit(exit_status(returncode, diverged, divergence_exit_code))


@main.command(short_help="Run a command once per misbehaviour of Camber; print the matrix.")
@click.argument("cassette", type=click.Path(dir_okay=False))
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@config_option
@click.option(
    "--only",
    multiple=True,
    metavar="GLOB",
    help="Only these variants: names, globs (interaction-7-*), or webhooks / interactions; "
    "comma-separated or repeated.",
)
@click.option(
    "-j", "--jobs", type=click.IntRange(1, 256), help="Variants run at once (default: cores)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the matrix as JSON.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Write JUnit XML.")
@click.option(
    "--html",
    "html_dir",
    type=click.Path(file_okay=False),
    help="Write one timeline page per variant and an index.html into this folder.",
)
@click.option(
    "--timeout",
    type=SECONDS,
    default=300.0,
    show_default=True,
    help="Seconds one run of the command may take before it is stopped.",
)
@env_option
@click.option(
    "--timing",
    type=click.Choice(TIMINGS),
    default="recorded",
    show_default=True,
    help="When recorded webhooks are sent (default: as recorded, so a variant changes one thing).",
)
@click.option("--fast-forward", is_flag=True, help="Answer polling loops with their final state.")
@click.option(
    "--webhook-url",
    help="Where webhooks go when the app sent no callback URL and webhooks.forward_to is unset.",
)
@friendly
def vary(
    cassette: str,
    command: tuple[str, ...],
    config_path: str | None,
    only: tuple[str, ...],
    jobs: int | None,
    as_json: bool,
    junit_path: str | None,
    html_dir: str | None,
    timeout: float,
    env_name: str | None,
    timing: str,
    fast_forward: bool,
    webhook_url: str | None,
) -> None:
    """Run COMMAND once per variant of CASSETTE (a webhook lost, late, early, twice; a 503, a
    429, a timeout, a reset, a slow answer...), each against its own proxy; print the matrix.

    Exit 1 when a variant the app must survive (config vary.expect) failed.
    """
    import json

    from replayproxy.vary import run_matrix

    config = settings(config_path)
    options = ReplayOptions(timing=timing, fast_forward=fast_forward, webhook_url=webhook_url)
    names = [n for n in (env_name or config.export_env,) if n]
    tty = sys.stderr.isatty()

    def done(cell: Any) -> None:
        if tty:
            click.echo(f"  {cell.variant.name}: {cell.verdict()}", err=True)

    matrix = eventloop.run(
        run_matrix(
            cassette,
            command,
            config=config,
            only=list(only) or None,
            jobs=jobs,
            options=options,
            export=names,
            timeout=timeout,
            on_cell=done,
        )
    )
    if junit_path:
        from pathlib import Path

        from replayproxy.atomic import write_atomic

        write_atomic(Path(junit_path), matrix.junit())
    if html_dir:
        index = matrix.write_html(html_dir, cassette)
        click.echo(f"wrote {index}", err=True)
    click.echo(json.dumps(matrix.to_dict(), indent=2) if as_json else matrix.text())
    sys.exit(matrix.exit_status)


@main.command("diff")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@click.option(
    "--ignore",
    "ignore",
    multiple=True,
    metavar="PATH",
    help="Drop this field (as printed, e.g. response.body.created_at; * for one segment). "
    "Repeatable; adds to config diff.ignore.",
)
@friendly
def diff_command(
    a: str, b: str, config_path: str | None, as_json: bool, ignore: tuple[str, ...]
) -> None:
    """What changed from recording A to recording B; exit 1 when they differ.

    Interactions pair by conversation (the job they belong to), not by position. Variables,
    timestamps, header order, redacted values and consistently renamed upstream ids are not
    differences.
    """
    import json

    from replayproxy.diff import diff

    result = diff(open_cassette(a), open_cassette(b), settings(config_path), ignore=ignore)
    shown = json.dumps(result.to_dict(), indent=2) if as_json else result.render()
    click.echo(printable(shown, keep_newlines=True))
    sys.exit(0 if result.equal else 1)


@main.command("check")
@click.argument("cassettes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option(
    "--allow",
    "allow_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A file of accepted fingerprints, one a line (with config check.allow).",
)
@click.option(
    "--accept",
    "accept_file",
    type=click.Path(dir_okay=False),
    help="Add the fingerprint of every finding to FILE (an allow-list) and exit 0.",
)
@click.option("--fix", is_flag=True, help="Replace each flagged secret by <redacted>, in place.")
@friendly
def check_command(
    cassettes: tuple[str, ...],
    config_path: str | None,
    as_json: bool,
    allow_files: tuple[str, ...],
    accept_file: str | None,
    fix: bool,
) -> None:
    """Lint CASSETTES for CI: schema, secrets left, uncaused webhooks, unused variables."""
    import json

    from replayproxy.cassette import save
    from replayproxy.check import Context, accept, check_paths, read_allow

    config = settings(config_path)
    allowed = set(config.check.allow)
    for path in allow_files:
        allowed |= read_allow(path)
    loaded: dict = {}
    found = list(check_paths(list(cassettes), Context(config), loaded if fix else None))
    findings = [f for f in found if f.fingerprint not in allowed]
    accepted = len(found) - len(findings)
    if accept_file:
        added = accept(accept_file, findings)
        click.echo(f"accepted {added} finding(s) into {accept_file}", err=True)
        return
    if fix:
        from replayproxy.scrub import fix as apply_fix

        for name, cassette in loaded.items():
            results = apply_fix(cassette, [f for f in findings if f.cassette == name])
            for finding, changed in results:
                state = "fixed" if changed else "not fixed (not found as written)"
                click.echo(printable(f"{state}: {finding.render()}"), err=as_json)  # stdout: JSON
            if any(changed for _, changed in results):
                save(cassette, name)
        # what is left, read back from the files as written
        found = list(check_paths(list(cassettes), Context(config)))
        findings = [f for f in found if f.fingerprint not in allowed]
        accepted = len(found) - len(findings)
    if as_json:
        click.echo(json.dumps({
            "findings": [f.to_dict() for f in findings],
            "cassettes": len(cassettes),
            "accepted": accepted,
        }, indent=2))
    else:
        for finding in findings:
            click.echo(printable(finding.render()))
    tail = f" ({accepted} accepted)" if accepted else ""
    if findings:
        click.echo(f"{len(findings)} finding(s) in {len(cassettes)} cassette(s){tail}", err=True)
        sys.exit(1)
    click.echo(f"ok: {len(cassettes)} cassette(s), no findings{tail}", err=True)


@main.command("recover")
@click.argument("cassette", type=click.Path(dir_okay=False))
@config_option
@friendly
def recover_command(cassette: str, config_path: str | None) -> None:
    """Save the session a recorder that died left in CASSETTE.journal.

    Into CASSETTE when it is still the file that session started from; after a re-record
    (`--mode all`, `run --record`) or when CASSETTE changed since, into CASSETTE's name with
    `.recovered` before the suffix, leaving CASSETTE as it is.
    """
    from pathlib import Path

    from replayproxy.journal import journal_path, recover

    done = recover(cassette, settings(config_path))
    if done is None:
        click.echo(f"replayproxy: nothing to recover: {journal_path(cassette)} does not exist",
                   err=True)
        return
    click.echo(f"replayproxy: {done.describe(journal_path(cassette), Path(cassette))}", err=True)


@main.command("send-webhook")
@click.argument("cassette", type=click.Path(dir_okay=False))
@click.option("--index", type=int, metavar="N", help="Send webhook N (as `inspect` numbers it).")
@click.option("--all", "send_all", is_flag=True, help="Send every webhook, in recorded order.")
@click.option("--to", "url", required=True, help="The URL that receives them (the app's route).")
@config_option
@click.option(
    "--scheme",
    type=click.Choice(SCHEMES),
    help="Signature scheme (default: config webhooks.signature.scheme).",
)
@friendly
def send_webhook(
    cassette: str,
    index: int | None,
    send_all: bool,
    url: str,
    config_path: str | None,
    scheme: str | None,
) -> None:
    """Send recorded webhooks from CASSETTE to --to, re-signed now with the local secret.

    The secrets come from the environment variables webhooks.local_secret_env lists (default
    WEBHOOK_SECRET), each exactly as set. Prints the receiver's status and body for each; exits
    1 when any answer is not 2xx.
    """

    from replayproxy.delivery import pick, send_recorded
    from replayproxy.signing import local_secrets, validate

    config = settings(config_path)
    signature = config.webhooks.signature
    if scheme:
        signature = dataclasses.replace(signature, scheme=scheme)
    validate(signature)
    tape = open_cassette(cassette)
    numbers = pick(tape, index, send_all)
    secrets = local_secrets(config, needed=True)
    results = eventloop.run(
        send_recorded(
            tape, numbers, url, secrets, signature, timeout=config.webhooks.timeout,
            methods=config.webhooks.allow_methods, keep=config.webhooks.keep_headers,
        )
    )
    from replayproxy.clip import clip_bytes
    from replayproxy.report import signature_hint
    from replayproxy.signing import signed_with

    used = dataclasses.replace(
        config, webhooks=dataclasses.replace(config.webhooks, signature=signature)
    )
    for sent in results:
        answer = f"{sent.status} {sent.reason}".strip() if sent.status else f"error {sent.error}"
        click.echo(f"webhook {sent.number} ({sent.event_id or 'no event id'}) -> {url}: {answer}")
        if sent.body:
            click.echo(clip_bytes(sent.body).rstrip())
    hint = signature_hint([sent.status for sent in results], signed_with(used))
    if hint:
        click.echo(hint, err=True)
    sys.exit(0 if all(sent.ok for sent in results) else 1)


@main.command()
@click.argument("cassette", type=click.Path(dir_okay=False))
@click.option("--upstream", help="The upstream API's base URL (else 'upstream' in the config).")
@listen_option
@config_option
@click.option(
    "--mode",
    type=click.Choice([m.value for m in RecordMode]),
    default=RecordMode.ONCE.value,
    show_default=True,
    help="As in vcrpy: once records only when CASSETTE does not exist; new_episodes records "
    "what it lacks; all re-records; none only replays.",
)
@click.option(
    "--public-url",
    help="The URL the upstream reaches this proxy at (a tunnel), for callback URLs.",
)
@click.option(
    "--upstream-ca",
    type=click.Path(dir_okay=False, exists=True),
    help="CA bundle (PEM) to verify the upstream's TLS certificate with.",
)
@allow_remote_option
@click.option(
    "--drain-timeout",
    type=SECONDS,
    default=30.0,
    show_default=True,
    help="On Ctrl-C, seconds to wait for webhooks still owed (a second Ctrl-C stops at once).",
)
@https_options
@friendly
def record(
    cassette: str,
    upstream: str | None,
    listen: str | None,
    config_path: str | None,
    mode: str,
    public_url: str | None,
    upstream_ca: str | None,
    allow_remote: bool,
    drain_timeout: float,
    **kw: Any,
) -> None:
    """Forward to the upstream and record the traffic and its webhooks into CASSETTE.

    With --forward the app uses the proxy as HTTPS_PROXY/HTTP_PROXY instead, and --upstream is
    only needed for requests sent to the proxy directly.
    """
    from pathlib import Path

    from replayproxy.journal import journal_path

    config = settings(config_path, listen=listen, upstream=upstream)
    https = https_kwargs(kw)
    proxy = ReplayProxy(
        cassette,
        **https,
        config=config,
        listen=config.listen,
        mode=mode,
        upstream=config.upstream,
        upstream_ca=upstream_ca,
        public_url=public_url,
        allow_remote=allow_remote,
    )

    views: list[asyncio.Task[None]] = []

    async def start() -> str:
        url = await proxy.start()
        recorder = proxy.recorder
        if recorder is not None:
            view = RecordView(lambda: (recorder.recorded, recorder.last, recorder.webhooks))
            views.append(asyncio.get_running_loop().create_task(view.run()))
        if proxy.recovered is not None:
            line = proxy.recovered.describe(journal_path(cassette), Path(cassette))
            click.echo(f"replayproxy: {line}", err=True)
        return url

    class Banner:
        """Formatted after start: only then is it known whether this run records."""

        def format(self, url: str) -> str:
            if proxy.recording and https["forward"]:
                hosts = https["hosts"] or "every host"
                return f"replayproxy recording {cassette} on {url} (forward proxy for {hosts})"
            if proxy.recording:
                return f"replayproxy recording {cassette} on {url} -> {config.upstream}"
            return f"replayproxy replaying {cassette} on {url} (mode {mode}: not recording)"

    async def stop() -> Any:
        if proxy.recorder is not None:
            from replayproxy.runner import drain_owed

            await drain_owed(proxy.recorder, drain_timeout, lambda line: click.echo(line, err=True))
        for task in views:
            task.cancel()
        await asyncio.gather(*views, return_exceptions=True)
        return await proxy.stop()

    eventloop.run(until_signalled(start, stop, Banner()))
    recorder = proxy.recorder
    if recorder is not None:
        click.echo(
            f"recorded {recorder.recorded} exchanges and {len(recorder.webhooks)} "
            f"webhooks into {cassette}; replayed {recorder.replayed}; upstream failures "
            f"{recorder.failed}; webhooks refused for a bad upstream signature "
            f"{recorder.refused_webhooks}, refused by the app {len(recorder.app_refused)}",
            err=True,
        )
        for line in recorder.warnings():
            click.echo(f"replayproxy: {line}", err=True)
    else:
        report = proxy.report
        click.echo(
            f"served {report.served}, unmatched {len(report.unmatched)} (mode {mode}: "
            "nothing recorded)",
            err=True,
        )


@main.command("ca")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help="Where the CA lives (default: ~/.config/replayproxy/ca, or under $XDG_CONFIG_HOME).",
)
@friendly
def ca_command(directory: str | None) -> None:
    """Create the local CA (once) that --forward and --tls use, and print how to trust it.

    Never put it inside a cassette folder: cassettes get committed, its private key must not.
    """
    from pathlib import Path

    from replayproxy.ca import CertificateAuthority, trust_instructions

    ca, created = CertificateAuthority.load_or_create(Path(directory) if directory else None)
    verb = "created" if created else "using the existing"
    click.echo(
        f"replayproxy: {verb} local CA {ca.cert_path} (private key {ca.key_path}, readable by "
        "you only); pass --ca-dir to the commands when it is not the default folder",
        err=True,
    )
    click.echo(trust_instructions(ca), nl=False)


@main.command()
@click.option("--listen", default="127.0.0.1:8090", show_default=True, help="HOST:PORT.")
@click.option(
    "--step-seconds",
    type=SECONDS,
    default=0.5,
    show_default=True,
    help="Seconds between a job's statuses.",
)
@config_option
@click.option(
    "--scheme",
    type=click.Choice(SCHEMES),
    help="Signature scheme of its webhooks (default: config webhooks.upstream_signature, "
    "else webhooks.signature).",
)
@allow_remote_option
@friendly
def sandbox(
    listen: str, step_seconds: float, config_path: str | None, scheme: str | None,
    allow_remote: bool,
) -> None:
    """A local Camber-like upstream (API key in CAMBER_API_KEY, webhook secret in the variables
    webhooks.upstream_secret_env names, default CAMBER_WEBHOOK_SECRET), for the demo, the docs
    and tests."""
    from replayproxy.demo import sandbox as sandbox_module

    sandbox_module.main(
        listen,
        allow_remote=allow_remote,
        config=settings(config_path),
        scheme=scheme,
        step_seconds=step_seconds,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
