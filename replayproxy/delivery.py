"""Sends webhooks to the app: one task per delivery, retried with backoff, every attempt reported.

Each attempt is built anew by the caller's `build(now)`, so it carries a fresh timestamp and
signature while the recorded event id stays the same across retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import aiohttp

from .report import Attempt, Delivery
from .webhooks import Outgoing


class Deliverer:
    def __init__(self, *, attempts: int = 5, backoff: float = 0.05, timeout: float = 10.0):
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.started = time.monotonic()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout, auto_decompress=False)
        return self._session

    def submit(
        self, deliveries: list[Delivery], build: Callable[[int], Outgoing], delay: float = 0.0
    ) -> None:
        """Deliver the copies in order (same event id), after `delay` seconds."""
        task = asyncio.get_running_loop().create_task(self._run(deliveries, build, delay))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(
        self, deliveries: list[Delivery], build: Callable[[int], Outgoing], delay: float
    ) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        for delivery in deliveries:
            await self._deliver(delivery, build)

    async def _deliver(self, delivery: Delivery, build: Callable[[int], Outgoing]) -> None:
        for attempt in range(self.attempts):
            out = build(int(time.time()))
            status, error, retry_after = await self._attempt(out)
            delivery.attempts.append(
                Attempt(status, error, round(time.monotonic() - self.started, 4))
            )
            if status is not None and 200 <= status < 300:
                delivery.outcome = "delivered"
                return
            if delivery.test is not None and status is not None and 400 <= status < 500:
                delivery.outcome = "failed"  # the app refused a deliberately bad webhook
                return
            if attempt + 1 < self.attempts:
                await asyncio.sleep(
                    retry_after if retry_after is not None else self.backoff * 2**attempt
                )
        delivery.outcome = "failed"

    async def _attempt(self, out: Outgoing) -> tuple[int | None, str | None, float | None]:
        try:
            async with self.session().request(
                out.method, out.url, data=out.body, headers=out.headers
            ) as resp:
                await resp.read()
                return resp.status, None, _retry_after(resp.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, None

    async def drain(self, timeout: float) -> bool:
        """Wait for deliveries in flight; True when none is left."""
        deadline = time.monotonic() + timeout
        while self.tasks:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.wait(set(self.tasks), timeout=left)
        return not self.tasks

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds or as an HTTP date, capped so a test never waits long."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), 60.0)
