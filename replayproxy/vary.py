"""Run a command once per variant of a cassette, each against its own proxy, and tabulate.

The wiring behind `replayproxy vary`: every variant (variants/) gets a fresh ReplayProxy on a
free port in this process and one run of the command, with the proxy's URL in REPLAYPROXY_URL
and the variant's name in REPLAYPROXY_VARIANT; up to `jobs` run at once. The command's output is
kept (its tail goes into JUnit failures), not shown. The first row is always `recorded`, the
conversation unchanged: when that fails, no other row means much.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import html
import json
import os
import shutil
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import ReplayProxy
from .atomic import write_atomic
from .cassette import Cassette, load
from .config import Config
from .errors import ReplayProxyError
from .inspect import table
from .journal import open_cassette
from .replayer import ReplayOptions
from .report import Report
from .runner import command_env, spawn
from .signing import local_secrets
from .variants import BASELINE, Variant, derive, expectation, find, select

#: The variable a command run by `vary` (or `run --variant`) finds its variant's name in.
VARIANT_ENV = "REPLAYPROXY_VARIANT"
OUTPUT_TAIL = 4000  # characters of a command's output kept for the report


class _Preloaded(ReplayProxy):
    """A ReplayProxy that replays a copy of a cassette parsed once for the whole matrix, so a
    variant's proxy starts without reading and parsing the file again."""

    def __init__(self, tape: Cassette, path: str | Path, **kwargs: Any):
        super().__init__(path, **kwargs)
        self.tape = tape

    def _cassette(self) -> Cassette:
        return copy.deepcopy(self.tape)


def variants_of(cassette: str | Path, config: Config) -> list[Variant]:
    return derive(open_cassette(cassette), config.webhooks.signature)


def variant_named(cassette: str | Path, config: Config, name: str) -> Variant | None:
    """`run --variant NAME`: the variant, None for `recorded`; an error naming the known ones."""
    variant = find(variants_of(cassette, config), name)
    return None if variant is BASELINE else variant


@dataclass
class Cell:
    """One variant's run: the command's status and the replay's report."""

    variant: Variant
    expect: str | None  # 'survive', 'may-fail' or None
    returncode: int | None = None  # None: the command was stopped at the timeout
    report: Report = field(default_factory=Report)
    seconds: float = 0.0
    proxy_start: float = 0.0  # seconds from nothing to a proxy answering on its port
    output: str = ""
    error: str | None = None  # the proxy could not run this variant

    @property
    def diverged(self) -> bool:
        return self.error is not None or bool(getattr(self.report, "diverged", False))

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.diverged

    @property
    def broken(self) -> bool:
        """An expectation broken: the app had to survive this variant and did not."""
        return self.expect == "survive" and not self.passed

    def status(self) -> str:
        if self.error is not None:
            return "error"
        if self.returncode is None:
            return "timeout"
        return str(self.returncode)

    def divergence(self) -> str:
        """The replay's divergence in a few words; 'none' when it matched."""
        if self.error is not None:
            return self.error
        r = self.report
        parts = []
        if r.unmatched:
            parts.append(f"{len(r.unmatched)} unmatched")
        counts: dict[str, int] = {}
        for d in r.deliveries:
            if not d.as_expected:
                what = "accepted" if d.test is not None and d.outcome == "delivered" else d.outcome
                counts[what] = counts.get(what, 0) + 1
        parts += [f"{n} webhook{'s' * (n > 1)} {what}" for what, n in sorted(counts.items())]
        if r.webhooks_never_due:
            parts.append(f"never due {','.join(map(str, r.webhooks_never_due))}")
        return "; ".join(parts) or "none"

    def verdict(self) -> str:
        if self.passed:
            return "pass"
        if self.broken:
            return "FAIL (must survive)"
        return "fail (may fail)" if self.expect == "may-fail" else "fail"

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant.name,
            "did": self.variant.did,
            "models": self.variant.models,
            "expect": self.expect,
            "exit_status": self.returncode,
            "diverged": self.diverged,
            "divergence": self.divergence(),
            "passed": self.passed,
            "broken": self.broken,
            "seconds": round(self.seconds, 3),
            "proxy_start_seconds": round(self.proxy_start, 4),
            "report": self.report.to_dict() if self.error is None else None,
            "output_tail": self.output,
        }


@dataclass
class Matrix:
    cassette: str
    command: list[str]
    cells: list[Cell]
    seconds: float = 0.0
    jobs: int = 1

    @property
    def broken(self) -> list[Cell]:
        return [c for c in self.cells if c.broken]

    @property
    def exit_status(self) -> int:
        return 1 if self.broken else 0

    def text(self) -> str:
        rows = [
            (
                c.variant.name,
                c.variant.did,
                c.status(),
                c.divergence(),
                f"{c.seconds:.1f}s",
                c.verdict(),
            )
            for c in self.cells
        ]
        out = table(("variant", "what was done", "exit", "divergence", "time", "result"), rows)
        passed = sum(c.passed for c in self.cells)
        out += (
            f"\n\n{len(self.cells)} runs (recorded and {len(self.cells) - 1} "
            f"variant{'s' * (len(self.cells) != 2)}), "
            f"{passed} passed, {len(self.broken)} broke an expectation; "
            f"{self.seconds:.1f}s with -j {self.jobs}"
        )
        if self.broken:
            out += "\nexpected to survive, but failed: " + ", ".join(
                c.variant.name for c in self.broken
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "cassette": self.cassette,
            "command": self.command,
            "seconds": round(self.seconds, 3),
            "jobs": self.jobs,
            "exit_status": self.exit_status,
            "broken": [c.variant.name for c in self.broken],
            "variants": [c.to_dict() for c in self.cells],
        }

    def junit(self) -> bytes:
        """JUnit XML: one testcase per variant, a failure when the command failed or the
        replay diverged (the message says whether the variant was allowed to fail)."""
        failures = sum(not c.passed for c in self.cells)
        suite = ET.Element(
            "testsuite",
            name="replayproxy vary",
            tests=str(len(self.cells)),
            failures=str(failures),
            errors="0",
            time=f"{self.seconds:.3f}",
        )
        for c in self.cells:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"replayproxy.vary.{Path(self.cassette).stem}",
                name=c.variant.name,
                time=f"{c.seconds:.3f}",
            )
            props = ET.SubElement(case, "properties")
            for key, value in (("did", c.variant.did), ("expect", c.expect or "none")):
                ET.SubElement(props, "property", name=key, value=value)
            if not c.passed:
                allowed = {"survive": "must survive", "may-fail": "may fail"}.get(
                    c.expect or "", "no expectation"
                )
                failure = ET.SubElement(
                    case,
                    "failure",
                    message=f"exit {c.status()}; divergence: {c.divergence()} ({allowed})",
                    type="broken" if c.broken else "allowed",
                )
                failure.text = c.output
        return ET.tostring(suite, encoding="utf-8", xml_declaration=True)

    def write_html(self, folder: str | Path, cassette_path: str | Path) -> Path:
        """One timeline page per variant (as `inspect --html --report`) and an index."""
        from .timeline import write_html

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        links = []
        tape = load(cassette_path)
        for c in self.cells:
            name = f"{c.variant.name}.html"
            report = c.report if c.error is None else None
            title = f"replayproxy vary: {c.variant.name} - {c.variant.did}"
            write_html(tape, folder / name, report, title=title)
            links.append(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(v)}</td>"
                    for v in (c.status(), c.divergence(), f"{c.seconds:.1f}s", c.verdict())
                )
                + f"<td><a href='{html.escape(name)}'>{html.escape(c.variant.name)}</a></td>"
                + f"<td>{html.escape(c.variant.did)}</td></tr>"
            )
        page = (
            "<!doctype html><meta charset='utf-8'><title>replayproxy vary</title>"
            "<style>body{font:14px system-ui;margin:2em}td,th{padding:2px 8px;text-align:left}"
            "tr:nth-child(even){background:#f4f4f4}</style>"
            f"<h1>replayproxy vary {html.escape(str(self.cassette))}</h1>"
            f"<p><code>{html.escape(' '.join(self.command))}</code></p><table>"
            "<tr><th>exit</th><th>divergence</th><th>time</th><th>result</th><th>variant</th>"
            "<th>what was done</th></tr>" + "".join(links) + "</table>"
        )
        index = folder / "index.html"
        write_atomic(index, page.encode("utf-8"))
        return index


async def _run_cell(
    cell: Cell,
    cassette: str | Path,
    tape: Cassette,
    command: Sequence[str],
    config: Config,
    options: ReplayOptions,
    export: Sequence[str],
    timeout: float,
) -> None:
    variant = None if cell.variant is BASELINE else cell.variant
    proxy = _Preloaded(
        tape,
        cassette,
        config=config,
        listen="127.0.0.1:0",
        options=dataclasses.replace(options, variant=variant),
    )
    start = time.perf_counter()
    try:
        await proxy.start()
    except ReplayProxyError as exc:
        cell.error = str(exc)
        return
    cell.proxy_start = time.perf_counter() - start
    try:
        env = command_env(proxy.url, export, {VARIANT_ENV: cell.variant.name})
        proc = await spawn(
            command,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout stops all of it
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
            cell.returncode = proc.returncode
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = await proc.communicate()
            out += f"\n[replayproxy vary: stopped after {timeout:g} s]\n".encode()
        cell.output = out.decode("utf-8", "replace")[-OUTPUT_TAIL:]
    finally:
        cell.report = await proxy.stop()
        cell.seconds = time.perf_counter() - start


async def run_matrix(
    cassette: str | Path,
    command: Sequence[str],
    *,
    config: Config,
    only: str | Sequence[str] | None = None,
    jobs: int | None = None,
    options: ReplayOptions | None = None,
    export: Sequence[str] = (),
    timeout: float = 300.0,
    on_cell: Callable[[Cell], None] | None = None,
) -> Matrix:
    """Run `command` under the recorded conversation and under every selected variant."""
    if not command:
        raise ReplayProxyError("no command to run: put it after `--`")
    if shutil.which(command[0]) is None:
        raise ReplayProxyError(f"command not found: {command[0]}")
    tape = open_cassette(cassette)
    local_secrets(config, needed=bool(tape.webhooks))  # once, not once per variant
    chosen = select(derive(copy.deepcopy(tape), config.webhooks.signature), only)
    expect = config.vary.expect
    cells = [Cell(v, expectation(v.name, expect)) for v in (BASELINE, *chosen)]
    jobs = max(1, jobs or os.cpu_count() or 1)
    gate = asyncio.Semaphore(jobs)
    base = options or ReplayOptions()

    async def one(cell: Cell) -> None:
        async with gate:
            await _run_cell(cell, cassette, tape, command, config, base, export, timeout)
        if on_cell is not None:
            on_cell(cell)

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in cells))
    return Matrix(str(cassette), list(command), cells, time.perf_counter() - start, jobs)


def write_json(matrix: Matrix, path: str | Path) -> None:
    write_atomic(Path(path), json.dumps(matrix.to_dict(), indent=2).encode("utf-8") + b"\n")
