"""Sends webhooks to the app: retried with backoff, every attempt reported; and `send-webhook`.

Webhooks that fall due together go out one after the other in one task (so their order is the
one chosen, deterministic for a shuffle seed); each waits for its own due time. Each attempt is
built anew by the caller's `build(now)`, so it carries a fresh timestamp and signature while the
recorded event id stays the same across retries and copies.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp

from .cassette import Cassette
from .clip import clip_bytes
from .config import SignatureConfig
from .errors import ReplayProxyError, exception_text
from .headers import REWRITTEN
from .report import Attempt, Delivery
from .variables import Bindings
from .webhooks import Outgoing, event_id, outgoing

Build = Callable[[int], Outgoing]

log = logging.getLogger("replayproxy")


@dataclass(slots=True)
class Job:
    """One recorded webhook to deliver: its copies (same event id), how to build an attempt,
    and how long after it fell due to send the first one."""

    deliveries: list[Delivery]
    build: Build
    delay: float = 0.0
    hang_up_first: bool = False  # a sender that times out: hang up unread once, then retry


class Deliverer:
    def __init__(
        self,
        *,
        attempts: int = 5,
        backoff: float = 0.05,
        timeout: float = 10.0,
        scrub: Callable[[str], str] = str,
    ):
        self.attempts = max(1, attempts)
        self.scrub = scrub  # the app's answers are quoted in the report and logs: no secrets
        self.backoff = backoff
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.started = time.monotonic()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout, auto_decompress=False)
        return self._session

    def submit(self, jobs: Sequence[Job]) -> None:
        """Deliver `jobs` in this order, one after the other, each no sooner than its delay
        (counted from now) and each copy after the one before it has succeeded or given up."""
        task = asyncio.get_running_loop().create_task(self._run(list(jobs)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, jobs: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for job in jobs:
            wait = start + job.delay - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            for delivery in job.deliveries:
                if job.hang_up_first and delivery is job.deliveries[0]:
                    await self._hang_up(delivery, job.build)
                await self._deliver(delivery, job.build)

    async def deliver_now(self, job: Job) -> None:
        """Deliver `job` (every copy, every retry) before returning: for a webhook that must
        arrive before the answer the caller is holding."""
        await self._run([job])

    async def _hang_up(self, delivery: Delivery, build: Build) -> None:
        """Send one attempt and close the connection as soon as the answer starts, unread: what
        the app sees when the sender's timeout expires just as it answers."""
        out = build(int(time.time()))
        error = "hung up before reading the answer (sender timed out), then retried"
        try:
            async with asyncio.timeout(self.timeout.total):
                reader, writer = await _connect(out.url)
                writer.write(_raw_request(out))
                await writer.drain()
                await reader.read(1)
                writer.close()
        except (TimeoutError, OSError, ValueError) as exc:
            error = exception_text(exc)
        delivery.attempts.append(Attempt(None, error, round(time.monotonic() - self.started, 4)))
        await asyncio.sleep(self.backoff)

    async def _deliver(self, delivery: Delivery, build: Build) -> None:
        for attempt in range(self.attempts):
            try:
                out = build(int(time.time()))
            except Exception as exc:  # a bug or bad key must not vanish with the task
                delivery.attempts.append(Attempt(None, f"cannot build the webhook: {exc}", 0.0))
                delivery.outcome = "failed"
                return
            sent = time.monotonic()
            status, error, retry_after, answer = await self._attempt(out)
            done = time.monotonic()
            at = round(done - self.started, 4)
            delivery.attempts.append(Attempt(status, error, at, self.scrub(answer) or None))
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "webhook %d attempt %d -> %s: %s at %.3fs (%.1f ms)",
                    delivery.webhook,
                    attempt + 1,
                    out.url,
                    status if status is not None else f"no answer ({error})",
                    at,
                    (done - sent) * 1000,
                )
            if status is not None and 200 <= status < 300:
                delivery.outcome = "delivered"
                return
            if delivery.test is not None and status is not None and 400 <= status < 500:
                delivery.outcome = "rejected"  # the app refused a deliberately bad webhook
                return
            if attempt + 1 < self.attempts:
                await asyncio.sleep(
                    retry_after if retry_after is not None else self.backoff * 2**attempt
                )
        delivery.outcome = "failed"

    async def _attempt(
        self, out: Outgoing
    ) -> tuple[int | None, str | None, float | None, str]:
        """One POST: the status (None: no answer), the error, Retry-After, the answer's start."""
        try:
            async with self.session().request(
                out.method, out.url, data=out.body, headers=out.headers
            ) as resp:
                body = await resp.read()
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                return resp.status, None, retry_after, clip_bytes(body)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error = exception_text(exc)
            return None, error, None, ""

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


@dataclass(slots=True)
class Sent:
    """What the receiver answered to one webhook sent by `send-webhook`."""

    number: int
    event_id: str | None
    url: str
    status: int | None
    reason: str
    body: bytes
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def pick(cassette: Cassette, index: int | None, every: bool) -> list[int]:
    """The webhook numbers (1-based, as `inspect` shows them) that `--index N` / `--all` name."""
    total = len(cassette.webhooks)
    if every == (index is not None):
        raise ReplayProxyError("give exactly one of --index N or --all")
    if total == 0:
        raise ReplayProxyError("the cassette has no webhooks")
    if every:
        return list(range(1, total + 1))
    if index is None or not 1 <= index <= total:
        raise ReplayProxyError(f"no webhook {index}: the cassette has webhooks 1 to {total}")
    return [index]


async def send_recorded(
    cassette: Cassette,
    numbers: Sequence[int],
    url: str,
    secrets: Sequence[str],
    signature: SignatureConfig,
    *,
    timeout: float = 10.0,
    methods: Sequence[str] = ("POST",),
    keep: Sequence[str] = (),
) -> list[Sent]:
    """Send the recorded webhooks `numbers` to `url`, one attempt each, in order, re-signed now
    with `secrets` (recorded values as they are: there is no live conversation to bind to);
    `keep`: lowercased header names to send again, as `webhooks.keep_headers` holds them."""
    results = []
    bindings = Bindings()
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout), auto_decompress=True
    ) as session:
        for number in numbers:
            hook = cassette.webhooks[number - 1]
            out = outgoing(
                hook, url, bindings, secrets, signature, now=int(time.time()),
                methods=methods, keep=keep,
            )
            sent = Sent(number, event_id(hook, signature), url, None, "", b"")
            try:
                async with session.request(
                    out.method, out.url, data=out.body, headers=out.headers
                ) as resp:
                    sent.status, sent.reason, sent.body = resp.status, resp.reason or "", (
                        await resp.read()
                    )
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                sent.error = exception_text(exc)
            results.append(sent)
    return results


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    context = ssl.create_default_context() if secure else None
    return await asyncio.open_connection(parts.hostname, port, ssl=context)


def _raw_request(out: Outgoing) -> bytes:
    """The attempt as HTTP/1.1 bytes, for a connection the sender will drop."""
    parts = urlsplit(out.url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{out.method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in out.headers if k.lower() not in REWRITTEN]
    lines += [f"Content-Length: {len(out.body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + out.body


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
