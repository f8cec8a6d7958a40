"""The baseline: a minimal single-process aiohttp server answering from a dict.

`python bench/baseline_server.py CASSETTE [--listen HOST:PORT]` loads the cassette's answers into a
dict keyed by method + path_qs (the last recorded answer wins) and serves them until SIGTERM or
SIGINT. It does what any replayer must at the least: read the request, look it up, answer the
recorded status, headers and body bytes. Like `replayproxy replay`, its first stdout line names the
URL. It is the limit replayproxy is measured against, not a correct replayer (POSTs to one path
share one answer). With `--count` (the upstream of the record-mode benchmark) it also counts the
requests it answered, readable (and not counted) at `GET /__bench/count`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from urllib.parse import urlsplit

import yaml
from aiohttp import web
from serving import serve_until_signalled

_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def answers(path: str) -> dict[tuple[str, str], tuple[int, str, dict[str, str], bytes]]:
    with open(path, encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    out = {}
    for item in data["interactions"]:
        req, res = item["request"], item["response"]
        parts = urlsplit(req["uri"])
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        body = res["body"]["string"]
        body = body.encode() if isinstance(body, str) else body
        headers = {
            k: v[0] for k, v in (res.get("headers") or {}).items() if k.lower() not in _HOP
        }
        status = res["status"]
        out[(req["method"].upper(), target)] = (status["code"], status["message"], headers, body)
    return out


async def serve(path: str, host: str, port: int, count: bool = False) -> None:
    table = answers(path)
    served = 0

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        found = table.get((request.method, request.path_qs))
        if found is None:
            return web.Response(status=404)
        status, reason, headers, body = found
        return web.Response(status=status, reason=reason, headers=headers, body=body)

    async def counted(request: web.Request) -> web.Response:
        nonlocal served
        served += 1
        return await handle(request)

    async def get_count(request: web.Request) -> web.Response:
        return web.json_response({"served": served})

    app = web.Application()
    if count:
        app.router.add_get("/__bench/count", get_count)
    app.router.add_route("*", "/{tail:.*}", counted if count else handle)
    await serve_until_signalled(app, host, port, f"baseline serving {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cassette")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--count", action="store_true",
                        help="count the requests answered (GET /__bench/count)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    asyncio.run(serve(args.cassette, host, int(port), args.count))
    sys.exit(0)


if __name__ == "__main__":
    main()
