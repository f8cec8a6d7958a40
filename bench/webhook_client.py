"""The client side of the webhook benchmark; prints one JSON line.

    python bench/webhook_client.py send CASSETTE URL --concurrency C
        The baseline: build every recorded webhook of CASSETTE as replayproxy would send it to URL
        (`replayproxy.webhooks.outgoing`, signed with WEBHOOK_SECRET), all before the clock starts,
        then send them with a plain aiohttp client (one session, as replayproxy's Deliverer has;
        C coroutines taking the next request from a shared iterator; C=1 is a plain loop) and
        read each answer. "start" is time.monotonic() just before the first send.
    python bench/webhook_client.py trigger BASE_URL N --concurrency C
        For the one-webhook-per-interaction case: GET BASE_URL/hook/<i> for i in 1..N, each once,
        C at a time, so replayproxy's webhooks fall due as fast as a client can cause them.
        "start" is time.monotonic() just before the first request.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def _pool(calls, concurrency: int) -> dict:
    """Run the calls, `concurrency` at a time (workers taking the next from one iterator);
    the monotonic clock just before the first and after the last, and the statuses."""
    statuses: collections.Counter[int] = collections.Counter()
    it = iter(calls)

    async def worker() -> None:
        for call in it:
            statuses[await call()] += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return {"start": start, "end": time.monotonic(), "statuses": dict(statuses)}


async def send(cassette_path: str, url: str, concurrency: int) -> dict:
    from replayproxy.cassette import load
    from replayproxy.config import SignatureConfig
    from replayproxy.variables import Bindings
    from replayproxy.webhooks import outgoing

    secrets = [os.environ["WEBHOOK_SECRET"]]
    cassette = load(cassette_path)
    bindings, signature = Bindings(), SignatureConfig()
    now = int(time.time())
    ready = [outgoing(h, url, bindings, secrets, signature, now=now) for h in cassette.webhooks]
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:

        def call(out):
            async def one() -> int:
                async with session.request(out.method, out.url, data=out.body,
                                           headers=out.headers) as resp:
                    await resp.read()
                    return resp.status
            return one

        timed = await _pool([call(o) for o in ready], concurrency)
    return {**timed, "sent": len(ready)}


async def trigger(base: str, n: int, concurrency: int) -> dict:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        def call(i: int):
            async def one() -> int:
                async with session.get(f"{base}/hook/{i}") as resp:
                    await resp.read()
                    return resp.status
            return one

        timed = await _pool([call(i) for i in range(1, n + 1)], concurrency)
    return {**timed, "sent": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("send")
    s.add_argument("cassette")
    s.add_argument("url")
    s.add_argument("--concurrency", type=int, default=1)
    t = sub.add_parser("trigger")
    t.add_argument("base")
    t.add_argument("n", type=int)
    t.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if args.what == "send":
        out = asyncio.run(send(args.cassette, args.url, args.concurrency))
    else:
        out = asyncio.run(trigger(args.base, args.n, args.concurrency))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
