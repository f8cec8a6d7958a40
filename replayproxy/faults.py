"""Plays one `Variant` (variants/) during a replay: the faults Camber could have had.

One misbehaviour at one webhook or interaction, as `vary` and `run --variant` choose it; the
replay-wide faults of the webhook flags (--bad-signature, ...) are webhooks.Fault instead.

The Replayer consults it at four points, and nowhere else:
- `before(request, match)`: before an answer is built. It may answer in the recording's place
  (503 / 429 once, or reset the connection; the recorded answer stays unused, so the client's
  retry gets it), hold the answer (slow; timeout: until the client hangs up), or deliver a
  webhook, all its retries included, before its cause's answer is sent (early).
- `gate(due)`: which of the webhooks that fell due go out now: a lost one never does, an early
  one already went, a late one waits for the app's later calls of its job (or its hold), the
  reordered ones wait for each other and then go in the variant's order.
- `webhook(number)`: the variant's kind for that webhook, which `Replayer._job` maps onto the
  delivery options that exist (a second copy, a wrong key, a stale timestamp, a hang-up).
- `excused(pending)`: webhooks never due because the variant took them over are not a divergence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .variants import Variant
from .webhooks import Due

if TYPE_CHECKING:
    from .matching import Match
    from .replayer import Replayer

log = logging.getLogger("replayproxy")

#: Answers in the recording's place, once.
_REFUSALS = {"503-once", "429", "reset"}
_POLL = 0.02  # seconds between checks that a held client is still there


class Faults:
    def __init__(self, variant: Variant, replayer: Replayer):
        self.variant = variant
        self.replayer = replayer
        self.fired = False  # a once-fault has been played
        self.taken: set[int] = set()  # webhooks the variant sent itself or dropped
        self.held: dict[int, Due] = {}  # reordered: due and waiting for the rest
        self.late_ready = asyncio.Event()

    # -- answers ----------------------------------------------------------------------------

    async def before(
        self, request: web.BaseRequest, match: Match
    ) -> web.StreamResponse | None:
        """A response in place of the recorded one, or None to answer as recorded (perhaps
        after a hold, or after an early webhook)."""
        v = self.variant
        involved = (*match.skipped, match.number)
        if v.kind == "early" and v.interaction in involved and not self.fired:
            self.fired = True
            await self._early()
            return None
        if v.interaction not in involved or self.fired or v.webhook is not None:
            return None
        self.fired = True
        if v.kind in _REFUSALS:
            for number in involved:
                self.replayer.matcher.release(number)
            log.info("replayproxy: variant %s: %s", v.name, v.did)
            if v.kind == "reset":
                return _reset(request)
            headers = {"Retry-After": str(v.retry_after)} if v.retry_after else {}
            text = "service unavailable" if v.status == 503 else "too many requests"
            assert v.status is not None  # 503-once and 429 carry the status they answer
            return web.json_response(
                {"error": text, "replayproxy_variant": v.name}, status=v.status, headers=headers
            )
        if v.kind == "slow":
            await asyncio.sleep(v.hold)
        elif v.kind == "timeout":
            await _until_gone(request, v.hold)
        return None

    async def _early(self) -> None:
        number = self.variant.webhook
        assert number is not None
        self.taken.add(number)
        job = self.replayer._job(number, 0.0)
        if job is not None:
            await self.replayer.deliverer.deliver_now(job)

    # -- webhooks ---------------------------------------------------------------------------

    def webhook(self, number: int) -> str | None:
        return self.variant.faults_webhook(number)

    def gate(self, due: list[Due]) -> list[Due]:
        """The webhooks of `due` to send now; the others are dropped or held by the variant."""
        v = self.variant
        out = []
        for d in due:
            if d.number in self.taken:
                continue
            if v.webhook == d.number and v.kind == "lost":
                self.taken.add(d.number)
                log.info("replayproxy: variant %s: webhook %d not sent", v.name, d.number)
                continue
            if v.webhook == d.number and v.kind == "late":
                self.taken.add(d.number)
                self._spawn(self._late(d))
                continue
            if v.kind == "reordered" and d.number in v.order:
                if not self.held:
                    self._spawn(self._flush_after(v.hold))
                self.held[d.number] = d
                continue
            out.append(d)
        if v.kind == "late" and v.wait_for and set(v.wait_for) <= self.replayer.schedule.served:
            self.late_ready.set()
        if v.kind == "reordered" and self.held and set(self.held) >= set(v.order):
            self._flush()
        return out

    async def _late(self, due: Due) -> None:
        """The hold counts from when the webhook fell due and replaces its recorded delay."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.late_ready.wait(), max(self.variant.hold, due.delay))
        due.delay = 0.0
        self.replayer._send([due])

    async def _flush_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._flush()

    def _flush(self) -> None:
        held = [self.held.pop(n) for n in self.variant.order if n in self.held]
        if held:
            for d in held:
                d.delay = 0.0
            self.replayer._send(held, ordered=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A task the deliverer's drain waits for, as for any webhook still due."""
        tasks = self.replayer.deliverer.tasks
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def excused(self, pending: Sequence[int]) -> list[int]:
        return [n for n in pending if n not in self.taken]

    def close(self) -> None:
        """Shutting down: reordered webhooks still held go now (they are due)."""
        self._flush()


def _reset(request: web.BaseRequest) -> web.StreamResponse:
    """Close the connection with a TCP reset instead of answering."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    resp = web.Response(status=503)
    resp.force_close()
    return resp


async def _until_gone(request: web.BaseRequest, longest: float) -> None:
    """Wait until the client hangs up (it timed out), or `longest` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + longest
    while loop.time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(_POLL)

