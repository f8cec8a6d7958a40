"""What a person watching a replay sees: one live line per job on a terminal, quiet lines in CI.

A *job* is a webhook's conversation (correlate.py): the exchanges that carry the ids its body
carries, i.e. the submit, its polls and downloads. On a TTY the lines are redrawn in place;
elsewhere a job prints one line when it is over, so CI logs stay short and ordered.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

from .cassette import Cassette, Interaction, Webhook
from .correlate import exchange_values, webhook_ids
from .inspect import event_type
from .matching import describe
from .report import Delivery


@dataclass
class Job:
    label: str
    interactions: list[int]
    webhooks: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


def jobs(cassette: Cassette) -> list[Job]:
    """One job per distinct cause; labelled by the upstream's id when the webhook carries one."""
    carriers: dict[str, list[int]] = {}  # value -> the interactions that carry it
    for number, item in enumerate(cassette.interactions, start=1):
        for value in exchange_values(item):
            carriers.setdefault(value, []).append(number)
    by_cause: dict[int, Job] = {}
    for number, hook in enumerate(cassette.webhooks, start=1):
        if not hook.cause:
            continue
        job = by_cause.get(hook.cause)
        if job is None:
            ids = webhook_ids(hook.body)
            members = sorted({n for i in ids for n in carriers.get(i, ())}) or [hook.cause]
            numeric = sorted(i for i in ids if i.isdigit())
            label = (
                f"job {numeric[0]}"
                if numeric
                else describe(cassette.interactions[hook.cause - 1].request)
            )
            job = by_cause[hook.cause] = Job(label[:28], members)
        job.webhooks.append(number)
        job.events.append(event_type(hook) or "webhook")
    return list(by_cause.values())


def line(job: Job, served: set[int], deliveries: Mapping[int, list[Delivery]]) -> tuple[str, bool]:
    """The job's line, and whether it is over (every webhook delivered, rejected or failed)."""
    done = sum(1 for n in job.interactions if n in served)
    states = []
    over = True
    for number, event in zip(job.webhooks, job.events, strict=True):
        mine = deliveries.get(number, [])
        outcome = mine[-1].outcome if mine else "waiting"
        if outcome in ("pending", "waiting"):
            over = False
        tries = sum(len(d.attempts) for d in mine)
        states.append(f"{event} {outcome}" + (f" ({tries} attempts)" if tries > 1 else ""))
    text = f"{job.label:<28} {done:>3}/{len(job.interactions):<3} exchanges  " + ", ".join(states)
    return text, over


def by_webhook(deliveries: list[Delivery]) -> dict[int, list[Delivery]]:
    out: dict[int, list[Delivery]] = {}
    for delivery in deliveries:
        out.setdefault(delivery.webhook, []).append(delivery)
    return out


class LiveView:
    """Redraws the job lines in place on a TTY; prints each finished job once otherwise."""

    def __init__(
        self,
        cassette: Cassette,
        state: Callable[[], tuple[set[int], list[Delivery]]],
        stream: TextIO | None = None,
    ):
        self.jobs = jobs(cassette)
        self.state = state
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.drawn = 0
        self.printed: set[int] = set()

    def update(self, final: bool = False) -> None:
        served, deliveries = self.state()
        index = by_webhook(deliveries)
        lines = [line(job, served, index) for job in self.jobs]
        if self.tty:
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            body = "".join(f"\x1b[2K{text}\n" for text, _ in lines)
            self.stream.write(up + body)
            self.drawn = len(lines)
        else:
            for n, (text, over) in enumerate(lines):
                if over and n not in self.printed:
                    self.printed.add(n)
                    self.stream.write(text + "\n")
        self.stream.flush()

    async def run(self, interval: float = 0.2) -> None:
        await refresh(self.update, interval)


class RecordView:
    """While recording, on a TTY: a line per webhook as it arrives (naming its job) under a
    status line of totals. Off a TTY it prints nothing: the closing summary is enough for logs."""

    def __init__(
        self,
        state: Callable[[], tuple[int, Interaction | None, list[Webhook]]],
        stream: TextIO | None = None,
    ):
        self.state = state
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown = 0

    def update(self, final: bool = False) -> None:
        if not self.tty:
            return
        recorded, item, webhooks = self.state()
        out = []
        for hook in webhooks[self.shown :]:
            ids = sorted(webhook_ids(hook.body), key=lambda i: (not i.isdigit(), i))
            job = f"job {ids[0]}" if ids else "no job id"
            out.append(f"\r\x1b[2K  webhook {event_type(hook) or hook.path}  {job}\n")
        self.shown = len(webhooks)
        last = "waiting for the app"
        if item is not None:
            last = f"last {describe(item.request)} -> {item.response.status}"
        status = f"recording: {recorded} exchanges, {len(webhooks)} webhooks; {last}"
        out.append(f"\r\x1b[2K{status}" + ("\n" if final else "\r"))
        self.stream.write("".join(out))
        self.stream.flush()

    async def run(self, interval: float = 0.2) -> None:
        await refresh(self.update, interval)


async def refresh(update: Callable[..., None], interval: float) -> None:
    """Call `update()` every `interval` seconds until cancelled, then `update(final=True)` so
    the last state stays on screen."""
    try:
        while True:
            update()
            await asyncio.sleep(interval)
    finally:
        update(final=True)
