"""The HTTP clients vcrpy patches, each making the same calls and saying what it saw.

What a client saw is (status, reason, headers as that client lists them, body as the app reads
it), so a vcrpy playback and a replayproxy replay can be compared as the app would compare them.
Libraries are imported inside each driver: scripts/make_old_vcrpy_fixtures.py runs these under
an old vcrpy with only some of them installed.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

JSON_BODY = {"name": "caf\u00e9 \U0001f600", "n": 3, "nested": {"list": [1, 2.5, None, True]}}
RAW_BODY = b"raw \x00\xff bytes"


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: Any = None
    data: bytes | None = None


CALLS = (
    Call("GET", "/json?q=caf%C3%A9&n=1&n=2"),
    Call("GET", "/gzip"),
    Call("GET", "/negotiated"),
    Call("GET", "/deflate"),
    Call("GET", "/br"),
    Call("GET", "/binary"),
    Call("GET", "/text"),
    Call("GET", "/nocontent"),
    Call("GET", "/teapot"),
    Call("GET", "/redirect"),
    Call("GET", "/cookies"),
    Call("GET", "/chunked"),
    Call("POST", "/echo", json=JSON_BODY),
    Call("POST", "/echo", data=RAW_BODY),
)
S3_CALLS = (Call("PUT", "/bucket/key.bin", data=RAW_BODY), Call("GET", "/bucket/key.bin"))


#: Headers about one hop's framing: compared apart (the served Content-Length must be the body's).
FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass
class Seen:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


def _request_headers(call: Call) -> dict[str, str]:
    if call.data is not None:
        return {"Content-Type": "application/octet-stream"}
    if call.json is not None:
        return {"Content-Type": "application/json"}
    return {}


def _payload(call: Call) -> bytes | None:
    if call.json is not None:
        return json.dumps(call.json).encode()
    return call.data


def with_requests(base: str, calls) -> list[Seen]:
    import requests

    out = []
    with requests.Session() as s:
        for c in calls:
            r = s.request(c.method, base + c.path, json=c.json, data=c.data,
                          headers=_request_headers(c) if c.data is not None else None)
            out.append(Seen(r.status_code, r.reason, list(r.headers.items()), r.content))
    return out


def with_urllib3(base: str, calls) -> list[Seen]:
    import urllib3

    out = []
    pool = urllib3.PoolManager()
    try:
        for c in calls:
            r = pool.request(c.method, base + c.path, body=_payload(c), headers=_request_headers(c))
            out.append(Seen(r.status, r.reason, list(r.headers.items()), r.data))
    finally:
        pool.clear()
    return out


def with_httpx(base: str, calls) -> list[Seen]:
    import httpx

    out = []
    with httpx.Client() as client:
        for c in calls:
            r = client.request(c.method, base + c.path, json=c.json, content=c.data,
                               headers=_request_headers(c) if c.data is not None else None)
            headers = list(r.headers.multi_items())
            out.append(Seen(r.status_code, r.reason_phrase, headers, r.content))
    return out


def with_httpx_async(base: str, calls) -> list[Seen]:
    import httpx

    async def go() -> list[Seen]:
        out = []
        async with httpx.AsyncClient() as client:
            for c in calls:
                extra = _request_headers(c) if c.data is not None else None
                r = await client.request(c.method, base + c.path, json=c.json, content=c.data,
                                         headers=extra)
                out.append(Seen(r.status_code, r.reason_phrase, list(r.headers.multi_items()),
                                r.content))
        return out

    return asyncio.run(go())


def with_aiohttp(base: str, calls) -> list[Seen]:
    import aiohttp

    async def go() -> list[Seen]:
        out = []
        async with aiohttp.ClientSession() as session:
            for c in calls:
                kwargs: dict[str, Any] = {"json": c.json} if c.json is not None else {}
                if c.data is not None:
                    kwargs = {"data": c.data, "headers": _request_headers(c)}
                async with session.request(c.method, base + c.path, **kwargs) as r:
                    body = await r.read()
                    out.append(Seen(r.status, r.reason or "", list(r.headers.items()), body))
        return out

    return asyncio.run(go())


def with_tornado(base: str, calls) -> list[Seen]:
    from tornado.httpclient import AsyncHTTPClient

    async def go() -> list[Seen]:
        client = AsyncHTTPClient(force_instance=True)
        out = []
        try:
            for c in calls:
                r = await client.fetch(base + c.path, method=c.method, body=_payload(c),
                                       headers=_request_headers(c), raise_error=False)
                out.append(Seen(r.code, r.reason, list(r.headers.get_all()), r.body or b""))
        finally:
            client.close()
        return out

    return asyncio.run(go())


def with_urllib(base: str, calls) -> list[Seen]:
    import urllib.error
    import urllib.request

    out = []
    for c in calls:
        req = urllib.request.Request(base + c.path, data=_payload(c), method=c.method,
                                     headers=_request_headers(c))
        try:
            with urllib.request.urlopen(req) as r:
                out.append(Seen(r.status, r.reason, list(r.headers.items()), r.read()))
        except urllib.error.HTTPError as e:
            out.append(Seen(e.code, e.reason, list(e.headers.items()), e.read()))
    return out


def with_http_client(base: str, calls) -> list[Seen]:
    import http.client

    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    out = []
    try:
        for c in calls:
            conn.request(c.method, c.path, body=_payload(c), headers=_request_headers(c))
            r = conn.getresponse()
            out.append(Seen(r.status, r.reason, r.getheaders(), r.read()))
    finally:
        conn.close()
    return out


def with_httplib2(base: str, calls) -> list[Seen]:
    import httplib2

    h = httplib2.Http(timeout=10)
    out = []
    for c in calls:
        r, body = h.request(base + c.path, c.method, body=_payload(c), headers=_request_headers(c))
        headers = [(k, v) for k, v in r.items() if k not in ("status", "content-location")]
        out.append(Seen(r.status, r.reason, headers, body))
    return out


def with_boto3(base: str, calls) -> list[Seen]:
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=base,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="not-a-secret",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    out = []
    for c in calls:
        key = c.path.rsplit("/", 1)[1]
        if c.method == "PUT":
            r = s3.put_object(Bucket="bucket", Key=key, Body=c.data)
            body = b""
        else:
            r = s3.get_object(Bucket="bucket", Key=key)
            body = r["Body"].read()
        meta = r["ResponseMetadata"]
        out.append(Seen(meta["HTTPStatusCode"], "", sorted(meta["HTTPHeaders"].items()), body))
    return out


CLIENTS = {
    "requests": with_requests,
    "urllib3": with_urllib3,
    "httpx": with_httpx,
    "httpx-async": with_httpx_async,
    "aiohttp": with_aiohttp,
    "tornado": with_tornado,
    "urllib": with_urllib,
    "http.client": with_http_client,
    "httplib2": with_httplib2,
    "boto3": with_boto3,
}


def text_only(calls, items: list[dict]) -> list[Call]:
    """The calls whose exchanges (`items`, from a YAML cassette) vcrpy's JSON serializer can
    write: it refuses bytes. Each call made one exchange, a followed redirect two."""
    keep, i = [], 0
    for call in calls:
        n = 2 if i + 1 < len(items) and "via=redirect" in items[i + 1]["request"]["uri"] else 1
        values = [v for item in items[i : i + n] for v in _values(item)]
        i += n
        if all(v is None or isinstance(v, (str, int, dict, list)) for v in values):
            keep.append(call)
    assert i == len(items), "calls and recorded exchanges do not line up"
    return keep


def _values(item: dict) -> list:
    req, res = item["request"], item["response"]
    heads = [v for values in req["headers"].values() for v in values]
    body = res["body"].get("string") if "body" in res else res.get("content")  # old httpx
    return [req["body"], body, *heads]


def _view(seen: Seen, base: str) -> tuple:
    headers = sorted(
        ((k.lower(), v.replace(base, "BASE")) for k, v in seen.headers if k.lower() not in FRAMING),
        key=lambda kv: kv[0],
    )
    return seen.status, seen.reason, headers, seen.body


def unaccepted_codings(items: list[dict]) -> dict[str, str]:
    """Path -> coding, for answers stored decoded under a Content-Encoding the request did
    not accept: replayproxy serves those without the label (vcrpy keeps it)."""
    out = {}
    for item in items:
        res, req = item["response"], item["request"]
        coding = next((v for k, v in res["headers"] if k.lower() == "content-encoding"), None) \
            if isinstance(res["headers"], list) else next(
                (v for k, v in res["headers"].items() if k.lower() == "content-encoding"), None)
        if not coding:
            continue
        coding = coding[0] if isinstance(coding, list) else coding
        accepted = " ".join(
            " ".join(v) if isinstance(v, list) else str(v)
            for k, v in req["headers"].items()
            if k.lower() == "accept-encoding"
        )
        if coding not in accepted:
            out["/" + req["uri"].split("://", 1)[1].split("/", 1)[1]] = coding
    return out


def compare(calls, played: list[Seen], served: list[Seen], bases, unaccepted, where) -> None:
    """Each served answer as the player played it (see the module's tests for the rules)."""
    assert len(played) == len(served) == len(calls)
    for call, p, s in zip(calls, played, served, strict=True):
        assert same(call, p, s, bases, unaccepted), f"{where}: {call.method} {call.path}"
        length = dict((k.lower(), v) for k, v in s.headers).get("content-length")
        if length is not None and "content-encoding" not in {k.lower() for k, _ in s.headers}:
            assert int(length) == len(s.body), f"{where}: {call.path}: Content-Length is off"


def same(call: Call, played: Seen, served: Seen, bases, unaccepted) -> bool:
    """Status, reason, headers (but framing) and body alike; a coding the request did not
    accept is not expected on an answer the cassette holds decoded."""
    want, got = _view(played, bases[0]), _view(served, bases[1])
    if call.path in unaccepted and "content-encoding" not in dict(got[2]):
        want = (*want[:2], [h for h in want[2] if h[0] != "content-encoding"], want[3])
    return got == want
