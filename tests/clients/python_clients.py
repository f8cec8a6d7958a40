"""The Python clients of the client matrix: requests, httpx, aiohttp and urllib3, each running
every case the way an app using it would, and reporting what it saw (tests/test_clients.py
says what a view holds). Run in the test process: each is a function of the run's settings."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ssl
from collections.abc import Callable, Iterable
from typing import Any

CASES = (
    "json", "post_201", "gzip", "stream", "binary", "no_content", "etag", "not_modified",
    "redirect_followed", "redirect_not_followed", "head", "upload", "multipart", "query",
    "bare", "set_cookie",
)
UPLOAD_SIZE = 5 * 1024 * 1024
QUERY = "?tag=a&tag=b&%C3%BCber=%E2%9C%93&%E9%8D%B5=2"
TITLE = "Résumé"
NOTES = b"hello\n" * 100


@functools.cache
def upload_body() -> bytes:
    """5 MiB of CSV lines, built alike by every client."""
    lines = b"".join(b"%08d,widget,3,ok\n" % i for i in range(UPLOAD_SIZE // 21 + 1))
    return lines[:UPLOAD_SIZE]


def view(status: int, reason: str | None, headers: Iterable[tuple[str, str]], body: bytes,
         path: str | None = None, jar: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": status,
        "reason": reason,
        "headers": sorted([k.lower(), v] for k, v in headers),
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }
    if len(body) <= 4096:
        try:
            out["text"] = body.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if path is not None:
        out["path"] = path
    if jar is not None:
        out["jar"] = sorted(jar)
    return out


def _path(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(str(url))
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _context(cfg: dict[str, Any]) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=cfg["ca"]) if cfg.get("ca") else None


def run_requests(cfg: dict[str, Any]) -> dict[str, Any]:
    import requests

    base = cfg["base"] + cfg["prefix"]
    out: dict[str, Any] = {}
    with requests.Session() as s:
        s.trust_env = False
        if cfg.get("proxy"):
            s.proxies = {"http": cfg["proxy"], "https": cfg["proxy"]}
        s.verify = cfg.get("ca") or True

        def see(name: str, r: requests.Response, jar: bool = False) -> None:
            out[name] = view(r.status_code, r.reason, r.raw.headers.items(), r.content,
                             path=_path(r.url), jar=list(s.cookies.keys()) if jar else None)

        get = s.get
        see("json", get(base + "/json", headers={"Accept": "application/json"}))
        see("post_201", s.post(base + "/items", json={"name": "widget", "qty": 3}))
        see("gzip", get(base + "/gzip"))
        see("stream", get(base + "/stream", stream=True))
        see("binary", get(base + "/binary"))
        see("no_content", s.delete(base + "/items/7"))
        see("etag", get(base + "/etag"))
        see("not_modified", get(base + "/etag", headers={"If-None-Match": '"v1"'}))
        see("redirect_followed", get(base + "/redirect"))
        see("redirect_not_followed", get(base + "/redirect?n=2", allow_redirects=False))
        see("head", s.head(base + "/json"))
        see("upload", s.post(base + "/upload", data=upload_body(),
                             headers={"Expect": "100-continue",
                                      "Content-Type": "text/csv"}))
        see("multipart", s.post(base + "/multipart", data={"title": TITLE},
                                files={"doc": ("notes.txt", NOTES, "text/plain")}))
        see("query", get(base + "/query" + QUERY))
        see("bare", get(base + "/bare"))
        see("set_cookie", get(base + "/cookie"), jar=True)
    return out


def run_httpx(cfg: dict[str, Any]) -> dict[str, Any]:
    import httpx

    base = cfg["base"] + cfg["prefix"]
    out: dict[str, Any] = {}
    verify: Any = _context(cfg) or True
    with httpx.Client(proxy=cfg.get("proxy"), verify=verify, trust_env=False,
                      timeout=30) as c:

        def see(name: str, r: httpx.Response, jar: bool = False) -> None:
            out[name] = view(r.status_code, r.reason_phrase, r.headers.multi_items(), r.content,
                             path=_path(r.url), jar=list(c.cookies.keys()) if jar else None)

        see("json", c.get(base + "/json", headers={"Accept": "application/json"}))
        see("post_201", c.post(base + "/items", json={"name": "widget", "qty": 3}))
        see("gzip", c.get(base + "/gzip"))
        with c.stream("GET", base + "/stream") as r:
            r.read()
            see("stream", r)
        see("binary", c.get(base + "/binary"))
        see("no_content", c.delete(base + "/items/7"))
        see("etag", c.get(base + "/etag"))
        see("not_modified", c.get(base + "/etag", headers={"If-None-Match": '"v1"'}))
        see("redirect_followed", c.get(base + "/redirect", follow_redirects=True))
        see("redirect_not_followed", c.get(base + "/redirect?n=2"))
        see("head", c.head(base + "/json"))
        see("upload", c.post(base + "/upload", content=upload_body(),
                             headers={"Expect": "100-continue",
                                      "Content-Type": "text/csv"}))
        see("multipart", c.post(base + "/multipart", data={"title": TITLE},
                                files={"doc": ("notes.txt", NOTES, "text/plain")}))
        see("query", c.get(base + "/query" + QUERY))
        see("bare", c.get(base + "/bare"))
        see("set_cookie", c.get(base + "/cookie"), jar=True)
    return out


async def _aiohttp(cfg: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    base = cfg["base"] + cfg["prefix"]
    out: dict[str, Any] = {}
    context: Any = _context(cfg) or True
    proxy = cfg.get("proxy")
    # unsafe: keep cookies from IP-address hosts (the test's 127.0.0.1), as a local app must
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar, trust_env=False) as s:

        async def see(name: str, method: str, url: str, cookies: bool = False,
                      **kwargs: Any) -> None:
            async with s.request(method, url, proxy=proxy, ssl=context, **kwargs) as r:
                body = await r.read()
                names = [c.key for c in jar] if cookies else None
                out[name] = view(r.status, r.reason, r.headers.items(), body,
                                 path=_path(r.url), jar=names)

        form = aiohttp.FormData()
        form.add_field("title", TITLE)
        form.add_field("doc", NOTES, filename="notes.txt", content_type="text/plain")
        await see("json", "GET", base + "/json", headers={"Accept": "application/json"})
        await see("post_201", "POST", base + "/items", json={"name": "widget", "qty": 3})
        await see("gzip", "GET", base + "/gzip")
        await see("stream", "GET", base + "/stream")
        await see("binary", "GET", base + "/binary")
        await see("no_content", "DELETE", base + "/items/7")
        await see("etag", "GET", base + "/etag")
        await see("not_modified", "GET", base + "/etag", headers={"If-None-Match": '"v1"'})
        await see("redirect_followed", "GET", base + "/redirect")
        await see("redirect_not_followed", "GET", base + "/redirect?n=2",
                  allow_redirects=False)
        await see("head", "HEAD", base + "/json")
        await see("upload", "POST", base + "/upload", data=upload_body(), expect100=True,
                  headers={"Content-Type": "text/csv"})
        await see("multipart", "POST", base + "/multipart", data=form)
        from yarl import URL

        await see("query", "GET", URL(base + "/query" + QUERY, encoded=True))
        await see("bare", "GET", base + "/bare")
        await see("set_cookie", "GET", base + "/cookie", cookies=True)
    return out


def run_aiohttp(cfg: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_aiohttp(cfg))


def run_urllib3(cfg: dict[str, Any]) -> dict[str, Any]:
    import urllib3

    base = cfg["base"] + cfg["prefix"]
    out: dict[str, Any] = {}
    tls: dict[str, Any] = {"ca_certs": cfg["ca"]} if cfg.get("ca") else {}
    http: urllib3.PoolManager = (
        urllib3.ProxyManager(cfg["proxy"], **tls) if cfg.get("proxy")
        else urllib3.PoolManager(**tls)
    )
    with http:

        def see(name: str, method: str, url: str, **kwargs: Any) -> None:
            r = http.request(method, url, **kwargs)
            path = _path(r.geturl() or url)
            out[name] = view(r.status, r.reason, r.headers.items(), r.data, path=path)

        see("json", "GET", base + "/json", headers={"Accept": "application/json"})
        see("post_201", "POST", base + "/items", json={"name": "widget", "qty": 3})
        see("gzip", "GET", base + "/gzip", headers={"Accept-Encoding": "gzip"})
        see("stream", "GET", base + "/stream")
        see("binary", "GET", base + "/binary")
        see("no_content", "DELETE", base + "/items/7")
        see("etag", "GET", base + "/etag")
        see("not_modified", "GET", base + "/etag", headers={"If-None-Match": '"v1"'})
        see("redirect_followed", "GET", base + "/redirect")
        see("redirect_not_followed", "GET", base + "/redirect?n=2", redirect=False)
        see("head", "HEAD", base + "/json")
        see("upload", "POST", base + "/upload", body=upload_body(),
            headers={"Expect": "100-continue", "Content-Type": "text/csv"})
        see("multipart", "POST", base + "/multipart",
            fields={"title": TITLE, "doc": ("notes.txt", NOTES, "text/plain")})
        see("query", "GET", base + "/query" + QUERY)
        see("bare", "GET", base + "/bare")
        see("set_cookie", "GET", base + "/cookie")
    return out


CLIENTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "requests": run_requests,
    "httpx": run_httpx,
    "aiohttp": run_aiohttp,
    "urllib3": run_urllib3,
}
