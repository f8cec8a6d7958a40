"""The `replayproxy` command: a thin click face over replayproxy's API."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import click

from replayproxy import __version__, eventloop
from replayproxy.api import ReplayProxy
from replayproxy.cassette import load
from replayproxy.config import Config, load_config
from replayproxy.errors import ReplayProxyError
from replayproxy.inspect import render_inspect
from replayproxy.matching import ensure_variables, normaliser
from replayproxy.progress import LiveView, RecordView
from replayproxy.replayer import ReplayOptions, near_miss_text
from replayproxy.signing import SCHEMES
from replayproxy.terminal import printable
from replayproxy.timeline import load_report, write_html
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

    return wrapper


def settings(config_path: str | None, **overrides: Any) -> Config:
    return load_config(config_path).replace(**overrides)


async def until_signalled(
    start: Callable[[], Awaitable[str]], stop: Callable[[], Awaitable[Any]], banner: str
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


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: ./replayproxy.yaml when present).",
)
listen_option = click.option("--listen", help="HOST:PORT to listen on (port 0 picks a free one).")


def with_options(options: list[Callable[..., Any]], func: Callable[..., Any]) -> Callable[..., Any]:
    """Apply a shared list of click options, in the order they are listed."""
    for option in reversed(options):
        func = option(func)
    return func


def https_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--forward, --hosts, --ca-dir, --tls: the options of commands that serve (issue 10)."""
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
            help="Exit 1 when a request went unmatched or a webhook failed or stayed pending.",
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
            type=float,
            default=5.0,
            show_default=True,
            help="Seconds to wait at shutdown for webhooks still due.",
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
        click.option(
            "--allow-remote",
            is_flag=True,
            help="Allow listening on a non-loopback address (prints a warning).",
        ),
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
    )
    shown = " (forward proxy)" if https["forward"] else ""
    start, stop = with_live_view(proxy)
    report = eventloop.run(
        until_signalled(start, stop, f"replayproxy replaying {cassette} on {{url}}{shown}")
    )
    if report.unmatched:
        click.echo(near_miss_text(report), err=True)
    summary = report.webhooks_summary()
    click.echo(
        f"served {report.served}, unmatched {len(report.unmatched)}, "
        f"unused {len(report.unused)} of {report.interactions_total}; webhooks delivered "
        f"{summary['delivered']}, rejected {summary['rejected']}, failed {summary['failed']}, "
        f"pending {summary['pending'] + len(summary['never_due'])}",
        err=True,
    )
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
    tape = load(cassette)
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

    from replayproxy.demo import record_and_replay

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
@click.option(
    "--env",
    "env_name",
    metavar="NAME",
    help="Also export the proxy URL as NAME (default: config export_env).",
)
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
    if record and not config.upstream and not https["forward"]:
        raise ReplayProxyError("--record needs --upstream URL (or `upstream:` in the config)")
    proxy = open_proxy(
        cassette,
        mode="all" if record else "replay",
        upstream=config.upstream if record else None,
        upstream_ca=upstream_ca,
        config=config,
        listen=listen or "127.0.0.1:0",
        options=build_options(kw),
        report_path=kw["report_path"],
        allow_remote=kw["allow_remote"],
        **https,
    )
    names = [n for n in (env_name or config.export_env,) if n]

    def started(url: str) -> None:
        shown = ", ".join(["REPLAYPROXY_URL", *names])
        verb = "recording" if record else "replaying"
        click.echo(f"replayproxy {verb} {cassette} on {url} ({shown})", err=True)

    returncode, report = eventloop.run(run_command(proxy, command, names, started))
    diverged = bool(getattr(report, "diverged", False))
    if diverged:
        if report.unmatched:
            click.echo(near_miss_text(report), err=True)
        summary = report.webhooks_summary()
        click.echo(
            f"replayproxy: replay diverged: served {report.served}, unmatched "
            f"{len(report.unmatched)}; webhooks delivered {summary['delivered']}, failed "
            f"{summary['failed']}, pending {summary['pending'] + len(summary['never_due'])}",
            err=True,
        )
    sys.exit(exit_status(returncode, diverged, divergence_exit_code))


@main.command("diff")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@friendly
def diff_command(a: str, b: str, config_path: str | None, as_json: bool) -> None:
    """What changed from recording A to recording B; exit 1 when they differ.

    Variables, timestamps, header order, redacted values and consistently renamed upstream ids
    are not differences.
    """
    import json

    from replayproxy.diff import diff

    result = diff(load(a), load(b), settings(config_path))
    shown = json.dumps(result.to_dict(), indent=2) if as_json else result.render()
    click.echo(printable(shown, keep_newlines=True))
    sys.exit(0 if result.equal else 1)


@main.command("check")
@click.argument("cassettes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@friendly
def check_command(cassettes: tuple[str, ...]) -> None:
    """Lint CASSETTES for CI: schema, secrets, uncaused webhooks, unused variables."""
    from replayproxy.check import check_paths

    findings = list(check_paths(list(cassettes)))
    for finding in findings:
        click.echo(printable(finding.render()))
    if findings:
        click.echo(f"{len(findings)} finding(s) in {len(cassettes)} cassette(s)", err=True)
        sys.exit(1)
    click.echo(f"ok: {len(cassettes)} cassette(s), no findings", err=True)


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

    The secret comes from the environment variable that webhooks.local_secret_env names
    (default WEBHOOK_SECRET). Prints the receiver's status and body for each; exits 1 when any
    answer is not 2xx.
    """
    import dataclasses

    from replayproxy.delivery import pick, send_recorded
    from replayproxy.replayer import local_secrets
    from replayproxy.signing import validate

    config = settings(config_path)
    signature = config.webhooks.signature
    if scheme:
        signature = dataclasses.replace(signature, scheme=scheme)
    validate(signature)
    tape = load(cassette)
    numbers = pick(tape, index, send_all)
    secrets = local_secrets(config, needed=True)
    results = eventloop.run(
        send_recorded(
            tape, numbers, url, secrets, signature, timeout=config.webhooks.timeout,
            methods=config.webhooks.allow_methods, keep=config.webhooks.keep_headers,
        )
    )
    for sent in results:
        answer = f"{sent.status} {sent.reason}".strip() if sent.status else f"error {sent.error}"
        click.echo(f"webhook {sent.number} ({sent.event_id or 'no event id'}) -> {url}: {answer}")
        if sent.body:
            click.echo(sent.body.decode("utf-8", "replace").rstrip())
    sys.exit(0 if all(sent.ok for sent in results) else 1)


@main.command()
@click.argument("cassette", type=click.Path(dir_okay=False))
@click.option("--upstream", help="The upstream API's base URL (else 'upstream' in the config).")
@listen_option
@config_option
@click.option(
    "--mode",
    type=click.Choice(["once", "new_episodes", "all", "none"]),
    default="once",
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
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow listening on a non-loopback address (prints a warning).",
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
    **kw: Any,
) -> None:
    """Forward to the upstream and record the traffic and its webhooks into CASSETTE.

    With --forward the app uses the proxy as HTTPS_PROXY/HTTP_PROXY instead, and --upstream is
    only needed for requests sent to the proxy directly.
    """
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
            click.echo(
                f"replayproxy: recovered {proxy.recovered.interactions} exchanges and "
                f"{proxy.recovered.webhooks} webhooks from {journal_path(cassette)} "
                f"(a session that ended without saving) into {cassette}",
                err=True,
            )
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
        for task in views:
            task.cancel()
        await asyncio.gather(*views, return_exceptions=True)
        return await proxy.stop()

    eventloop.run(until_signalled(start, stop, Banner()))  # type: ignore[arg-type]
    recorder = proxy.recorder
    if recorder is not None:
        click.echo(
            f"recorded {recorder.recorded} exchanges and {len(recorder.webhooks)} "
            f"webhooks into {cassette}; replayed {recorder.replayed}; upstream failures "
            f"{recorder.failed}; refused webhooks {recorder.refused_webhooks}",
            err=True,
        )
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
    type=float,
    default=0.5,
    show_default=True,
    help="Seconds between a job's statuses.",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow listening on a non-loopback address (prints a warning).",
)
@friendly
def sandbox(listen: str, step_seconds: float, allow_remote: bool) -> None:
    """A local Camber-like upstream (API key in CAMBER_API_KEY, webhook secret in
    CAMBER_WEBHOOK_SECRET), for the demo, the docs and tests."""
    from replayproxy import sandbox as sandbox_module

    sandbox_module.main(listen, allow_remote=allow_remote, step_seconds=step_seconds)


if __name__ == "__main__":  # pragma: no cover
    main()
