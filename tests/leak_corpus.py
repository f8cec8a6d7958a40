"""A labeled corpus for `check`: cassettes written by vcrpy and by the recorder, against local
servers, with secrets planted in every place one sits and realistic noise around them.

`record_corpus(folder, planted=True)` writes the cassettes and returns the planted secrets by
label; with `planted=False` the same traffic carries placeholders where the secrets were (the
"cleaned copy" a team commits), so `check` must report nothing on it. Used by
tests/test_check_corpus.py and bench/check_precision.py. Every server it starts it stops.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import random
import string
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

#: The names `check` is given as placeholders in the config of the cleaned copy.
CONFIG_PLACEHOLDERS = ("dev-key-not-a-secret",)

_rng = random.Random(20240501)
B62 = string.ascii_letters + string.digits


def _rand(n: int, alphabet: str = B62) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any]) -> str:
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64url(_rng.randbytes(32))}"


def _pem() -> str:
    lines = [base64.b64encode(_rng.randbytes(48)).decode() for _ in range(6)]
    body = "\n".join(lines)
    return f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"


#: label -> (secret, placeholder written in its place in the cleaned copy)
PLANTED: dict[str, tuple[str, str]] = {
    "request Authorization bearer": (_rand(40), "<redacted>"),
    "request X-Api-Key header": (_rand(32), "dev-key-not-a-secret"),
    "request cookie SID (32 hex)": (_rand(32, "0123456789abcdef"), "<redacted>"),
    "request X-Session-Id header (32 hex)": (_rand(32, "0123456789abcdef"), "{{session_id}}"),
    "query access_token (JWT)": (_jwt({"sub": "u_1", "exp": 1999999999}), "***"),
    "query key (Google API key)": ("AIza" + _rand(35, B62 + "-_"), "XXXXXXXXXXXXXXXXXXXX"),
    "form token (Slack bot token)": ("xoxb-1234567890-1234567890123-" + _rand(24),
                                     "xoxb-<redacted>"),
    "JSON client_secret": (_rand(40, B62 + "-_"), "<CLIENT_SECRET>"),
    "multipart api_token part": (_rand(36), "[FILTERED]"),
    "path Telegram bot token": ("1234567890:" + _rand(35, B62 + "_-"), "<redacted>"),
    "path session handle (32 hex)": (_rand(32, "0123456789abcdef"), "<redacted>"),
    "path ;jsessionid": (_rand(32, "0123456789ABCDEF"), "REDACTED"),
    "response Set-Cookie session": (_rand(48, B62 + "-_"), "<redacted>"),
    "response X-Auth-Token header (Notion)": ("ntn_" + _rand(46), "ntn_***"),
    "response JSON access_token (JWT)": (_jwt({"sub": "u_1", "scope": "read"}), "<redacted>"),
    "response JSON refresh_token": (_rand(64, B62 + "-_"), "***"),
    "response JSON nested Stripe key": ("sk_live_" + _rand(24), "sk_live_" + "X" * 24),
    "response JSON GitHub token": ("ghp_" + _rand(36), "ghp_****"),
    "response JSON DSN password": (_rand(20), "<redacted>"),
    "response JSON log Bearer token": (_rand(40, B62 + "-_."), "<redacted>"),
    "response JSON private key": (_pem(), "<redacted>"),
    "response JSON paging URL access_token": (_rand(60), "<redacted>"),
    "response XML SessionToken": (_rand(120, B62 + "/+") + "==", "REDACTED"),
    "response XML SecretAccessKey": (_rand(40, B62 + "/+"), "REDACTED"),
    "response HTML inline Google API key": ("AIza" + _rand(35, B62 + "-_"), "<redacted>"),
    "response gzip JSON password": ("pw-" + _rand(18), "<redacted>"),
    "response XML AccessKeyId (AWS)": ("ASIA" + _rand(16, string.ascii_uppercase + "234567"),
                                       "ASIA<redacted>"),
    "webhook body download_token": (_rand(40), "<redacted>"),
    "webhook header X-Delivery-Session": (_rand(32, "0123456789abcdef"), "<redacted>"),
    "webhook target query token": (_rand(32), "<redacted>"),
}

# ---------------------------------------------------------------------------------------------
# noise: what real answers carry that is not a secret

_HEX = "0123456789abcdef"


def _uuid() -> str:
    h = _rand(32, _HEX)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


NOISE_HEADERS = [
    ("x-amz-request-id", _rand(16, "0123456789ABCDEF")),
    ("x-amz-id-2", base64.b64encode(_rng.randbytes(57)).decode()),
    ("X-Amz-Cf-Id", _b64url(_rng.randbytes(42)) + "=="),
    ("X-Amz-Cf-Pop", "FRA56-P1"),
    ("x-amzn-RequestId", _uuid()),
    ("X-Amzn-Trace-Id", f"Root=1-65a1b2c3-{_rand(24, _HEX)}"),
    ("ETag", f'"{_rand(32, _HEX)}"'),
    ("x-ms-request-id", _uuid()),
    ("x-ms-client-request-id", _uuid()),
    ("x-ms-routing-request-id", f"WESTEUROPE:20240101T000000Z:{_uuid()}"),
    ("x-ms-ratelimit-remaining-subscription-reads", "11999"),
    ("x-azure-ref", "0" + _b64url(_rng.randbytes(60))),
    ("x-goog-hash", "crc32c=n03x6A==, md5=Ojk9c3dhfxgoKVVHYwFbHQ=="),
    ("X-GUploader-UploadID", "ADPycdv" + _rand(80, B62 + "-_")),
    ("X-Cloud-Trace-Context", f"{_rand(32, _HEX)}/1;o=1"),
    ("CF-RAY", f"{_rand(16, _HEX)}-FRA"),
    ("cf-cache-status", "DYNAMIC"),
    ("Report-To", json.dumps({"endpoints": [{"url": "https://a.nel.cloudflare.com/report/v4?s="
                                             + _rand(140, B62 + "%")}],
                              "group": "cf-nel", "max_age": 604800})),
    ("NEL", '{"success_fraction":0,"report_to":"cf-nel","max_age":604800}'),
    ("Set-Cookie", f"__cf_bm={_rand(43, B62 + '._')}-1700000000-1.0.1.1-{_rand(80, B62 + '._')}; "
                   "path=/; expires=Wed, 01-May-24 00:30:00 GMT; domain=.example.com; HttpOnly"),
    ("Set-Cookie", f"AWSALB={base64.b64encode(_rng.randbytes(96)).decode()}; Expires=Wed, "
                   "08 May 2024 00:00:00 GMT; Path=/"),
    ("Set-Cookie", "lang=en; Path=/; Max-Age=31536000"),
    ("x-ratelimit-remaining-tokens", "59"),
    ("x-ratelimit-limit-requests", "60"),
    ("x-ratelimit-reset-tokens", "6ms"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Api-Key"),
    ("Content-Security-Policy", f"script-src 'self' 'nonce-{_rand(24)}'"),
    ("WWW-Authenticate", 'Bearer realm="example", error="invalid_token"'),
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
    ("Link", '<https://api.example.com/repositories/1/issues?page=2&per_page=30>; rel="next"'),
    ("Request-Id", "req_" + _rand(14)),
    ("Via", f"1.1 {_rand(32, _HEX)}.cloudfront.net (CloudFront)"),
    ("traceparent", f"00-{_rand(32, _HEX)}-{_rand(16, _HEX)}-01"),
    ("Date", "Wed, 01 May 2024 00:00:00 GMT"),
    ("Sec-WebSocket-Accept", base64.b64encode(_rng.randbytes(20)).decode()),
    ("Vary", "Accept-Encoding, Authorization, Cookie"),
    ("X-Goog-Api-Client", "gl-python/3.11.7 grpc/1.62.0 gax/2.17.1"),
]

NOISE_JSON = {
    "id": "cus_NffrFeUfNV2Hib",
    "object_id": _rand(24, _HEX),
    "uuid": _uuid(),
    "sha": _rand(40, _HEX),
    "node_id": "MDQ6VXNlcjE=",
    "created_at": "2024-05-01T00:00:00Z",
    "avatar_url": "https://avatars.example.com/u/583231?v=4",
    "tiles": [f"https://tile.example.com/12/{2048 + i}/1361.png?style=streets&v=2"
              for i in range(3)],
    "_links": {"self": {"href": "/orders/123"},
               "next": {"href": "/orders?page=2&cursor=" + _b64url(b'{"id":123,"ts":1700000}')}},
    "next_cursor": "dXNlcjpVMDYxTkZUVDI=",
    "pageInfo": {"endCursor": "Y3Vyc29yOnYyOpK5" + _rand(40), "hasNextPage": True},
    "nextPageToken": _rand(43, B62 + "-_"),
    "nextLink": "https://management.azure.com/subscriptions/" + _uuid()
                + "/resourceGroups?api-version=2021-04-01&%24skiptoken=" + _rand(60),
    "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
    "max_tokens": 256,
    "token_type": "Bearer",
    "expires_in": 3600,
    "password_required": True,
    "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + _rand(43, B62 + "+/"),
    "keys": [{"kty": "RSA", "kid": _rand(20), "e": "AQAB", "n": _b64url(_rng.randbytes(256))}],
    "state": _rand(32, B62 + "-_"),
    "code_challenge": _b64url(hashlib.sha256(b"x").digest()),
    "blob": _rand(32),
    "image_url": f"https://cdn.example.com/img/{_rand(32, _HEX)}.png",
    "download_url": "https://bucket.s3.amazonaws.com/report.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                    "&X-Amz-Date=20240501T000000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host"
                    "&X-Amz-Signature=" + _rand(64, _HEX),
    "etag": f'"{_rand(32, _HEX)}"',
    "request_id": _uuid(),
    "Tags": [{"Key": "Name", "Value": "web-1"}, {"Key": "env", "Value": "prod"}],
    "key": "PROJ-123",
    "labels": {"password": "Password", "token": "API token",
               "session": "Your session has expired. Please sign in again."},
    "session": "active",
    "auth": "none",
    "auth_method": "oauth",
    "key_id": "kid-2024-05",
    "secret_name": "prod-db",
    "api_version": "2024-05-01",
    "token": None,
    "sid": "SM" + _rand(32, _HEX),
    "account_sid": "AC" + _rand(32, _HEX),
    "system_fingerprint": "fp_" + _rand(10, _HEX),
    "token_endpoint": "https://oauth2.example.com/token",
    "id_token_signing_alg_values_supported": ["RS256"],
    "secret_scanning": {"status": "disabled"},
}

NOISE_HTML = f"""<!doctype html><html><head>
<meta name="csrf-token" content="{_rand(86, B62 + '+/')}==">
<link rel="stylesheet" href="/assets/application-{_rand(64, _HEX)}.css">
</head><body>
<form action="/session" method="post">
<input type="hidden" name="authenticity_token" value="{_rand(86, B62 + '+/')}==">
</form>
<img src="https://cdn.example.com/img/{_rand(32, _HEX)}.png" alt="map">
<a href="https://maps.example.com/tiles/12/2048/1361.png?token_type=public&v=3">tile</a>
<script>window.__CONFIG__ = {{"build": "{_rand(40, _HEX)}", "release": "2024.05.01"}};</script>
"""

NOISE_XML = f"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Name>bucket</Name><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>
<NextContinuationToken>{_rand(60, B62 + '/+')}=</NextContinuationToken>
<Contents><Key>photos/2024/img_001.jpg</Key><ETag>&quot;{_rand(32, _HEX)}&quot;</ETag>
<Size>1024</Size><StorageClass>STANDARD</StorageClass></Contents>
<Owner><ID>{_rand(64, _HEX)}</ID></Owner>
</ListBucketResult>"""

PNG = b"\x89PNG\r\n\x1a\n" + bytes(_rng.randrange(256) for _ in range(2048))


# ---------------------------------------------------------------------------------------------
# the upstream: a real HTTP server on 127.0.0.1


def _values(planted: bool) -> dict[str, str]:
    return {label: pair[0] if planted else pair[1] for label, pair in PLANTED.items()}


class _Upstream(BaseHTTPRequestHandler):
    values: dict[str, str] = {}
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str, extra: list[tuple[str, str]] = (),
              noise: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in [*(NOISE_HEADERS if noise else []), *extra]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        v = self.values
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?")[0]
        if path.startswith("/tiles/"):
            self._send(200, PNG, "image/png")
        elif path == "/token":
            doc = {**NOISE_JSON,
                   "access_token": v["response JSON access_token (JWT)"],
                   "refresh_token": v["response JSON refresh_token"],
                   "data": {"account": {"billing": {"stripe_key":
                                                    v["response JSON nested Stripe key"]}}},
                   "deploy": {"token": v["response JSON GitHub token"]},
                   "database": {"dsn": f"postgres://app:{v['response JSON DSN password']}"
                                       "@db.internal:5432/app"},
                   "log": "retrying: curl -H 'Authorization: Bearer "
                          f"{v['response JSON log Bearer token']}' https://api.example.com/v1/me",
                   "private_key": v["response JSON private key"],
                   "paging": {"next": "https://graph.example.com/v19.0/me/feed?access_token="
                                      f"{v['response JSON paging URL access_token']}"
                                      "&after=QVFIUmx1WTBpMGpJWXprYzVYaVhabEN"}}
            self._send(200, json.dumps(doc).encode(), "application/json", [
                ("Set-Cookie", f"session={v['response Set-Cookie session']}; Path=/; HttpOnly"),
                ("X-Auth-Token", v["response X-Auth-Token header (Notion)"]),
            ])
        elif path == "/sts":
            xml = ("<AssumeRoleResponse><AssumeRoleResult><Credentials>"
                   f"<AccessKeyId>{v['response XML AccessKeyId (AWS)']}</AccessKeyId>"
                   f"<SecretAccessKey>{v['response XML SecretAccessKey']}</SecretAccessKey>"
                   f"<SessionToken>{v['response XML SessionToken']}</SessionToken>"
                   "<Expiration>2024-05-01T01:00:00Z</Expiration>"
                   "</Credentials></AssumeRoleResult></AssumeRoleResponse>")
            self._send(200, xml.encode(), "text/xml")
        elif path == "/archive":
            doc = {"user": "ada", "password": v["response gzip JSON password"], **NOISE_JSON}
            self._send(200, gzip.compress(json.dumps(doc).encode()), "application/json",
                       [("Content-Encoding", "gzip")])
        elif path == "/list":
            self._send(200, NOISE_XML.encode(), "application/xml")
        elif path == "/page":
            html = NOISE_HTML + ('<script>const maps = {apiKey: "'
                                 f'{v["response HTML inline Google API key"]}"}};</script>'
                                 "</body></html>")
            self._send(200, html.encode(), "text/html; charset=utf-8")
        else:
            self._send(200, json.dumps(NOISE_JSON).encode(), "application/json")

    do_POST = do_GET  # noqa: N815


class serve_upstream:  # noqa: N801 - used as a context manager, like a function
    """A ThreadingHTTPServer on 127.0.0.1:0 answering with `values`; stopped on exit."""

    def __init__(self, values: dict[str, str]):
        handler = type("Handler", (_Upstream,), {"values": values})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# ---------------------------------------------------------------------------------------------
# recording


def record_vcrpy(path: Path, planted: bool) -> None:
    """The app's calls through `requests`, written by vcrpy itself."""
    import requests
    import vcr

    v = _values(planted)
    path.unlink(missing_ok=True)  # vcrpy's "all" keeps what a file held
    with serve_upstream(v) as up, vcr.use_cassette(str(path), record_mode="all"):
        s = requests.Session()
        s.get(f"{up}/tiles/12/2048/1361.png")
        s.get(f"{up}/v1/me", headers={
            "Authorization": f"Bearer {v['request Authorization bearer']}",
            "X-Api-Key": v["request X-Api-Key header"],
            "Cookie": f"lang=en; SID={v['request cookie SID (32 hex)']}; "
                      "_ga=GA1.2.1234567890.1700000000",
            "X-Session-Id": v["request X-Session-Id header (32 hex)"],
            "Referer": "https://app.example.com/dashboard?tab=billing",
            "X-Request-Id": _uuid(),
        })
        s.get(f"{up}/v1/feed", params={"access_token": v["query access_token (JWT)"],
                                       "fields": "id,name", "limit": "25"})
        s.get(f"{up}/maps/api/geocode/json",
              params={"address": "1600 Amphitheatre Pkwy", "key": v["query key (Google API key)"]})
        s.post(f"{up}/api/chat.postMessage", data={
            "token": v["form token (Slack bot token)"], "channel": "C012AB3CD", "text": "hi"})
        s.post(f"{up}/oauth/token", json={
            "client_id": "public-client-123", "client_secret": v["JSON client_secret"],
            "grant_type": "client_credentials", "scope": "read write"})
        s.post(f"{up}/upload", data={"api_token": v["multipart api_token part"], "title": "map"},
               files={"file": ("tile.png", PNG, "image/png")})
        s.get(f"{up}/bot{v['path Telegram bot token']}/sendMessage",
              params={"chat_id": "123456", "text": "done"})
        s.get(f"{up}/download/sessions/{v['path session handle (32 hex)']}/report.csv")
        s.get(f"{up}/app/cart;jsessionid={v['path ;jsessionid']}")
        s.get(f"{up}/token")
        s.get(f"{up}/sts")
        s.get(f"{up}/list")
        s.get(f"{up}/page")
        # urllib: vcrpy stores its answers as they came, compressed (requests' decoded)
        with urllib.request.urlopen(f"{up}/archive") as answer:
            assert gzip.decompress(answer.read())
        s.get(f"{up}/v1/items", params={"page_token": _rand(40), "cursor": _rand(24),
                                        "sig": _rand(43, B62 + "+/")})


def record_webhooks(path: Path, planted: bool) -> None:
    """A job, its signed webhook and a gzip answer through the real recorder (replayproxy's
    own format: it stores the answer decoded and notes the coding)."""
    import os

    import aiohttp
    from aiohttp import web
    from helpers import serving

    from replayproxy.api import ReplayProxy
    from replayproxy.config import SignatureConfig
    from replayproxy.signing import sign

    v = _values(planted)
    upstream_secret = os.environ.get("CAMBER_WEBHOOK_SECRET", "")

    async def job(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"job_id": 6230, "status": "PENDING"}, status=201,
                                 headers=dict(NOISE_HEADERS[:12]))

    async def archive(request: web.Request) -> web.Response:
        doc = {"user": "ada", "password": v["response gzip JSON password"], **NOISE_JSON}
        return web.Response(body=gzip.compress(json.dumps(doc).encode()), headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip"})

    async def app_hook(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True}, status=202)

    async def session() -> None:
        app = web.Application()
        app.router.add_post("/webhooks/camber", app_hook)
        upstream = web.Application()
        upstream.router.add_post("/v1/jobs", job)
        upstream.router.add_get("/v1/jobs/6230/outputs/archive", archive)
        async with serving(app) as app_url, serving(upstream) as up:
            async with ReplayProxy(path, mode="all", upstream=up) as proxy, \
                    aiohttp.ClientSession() as s:
                callback = f"{app_url}/webhooks/camber?token={v['webhook target query token']}"
                async with s.post(f"{proxy.url}/v1/jobs",
                                  json={"command": "python run.py", "callback_url": callback}) as r:
                    assert r.status == 201, await r.text()
                body = json.dumps({
                    "event_id": "evt_1", "type": "job.completed", "job_id": 6230,
                    "result": {"download_token": v["webhook body download_token"],
                               "download_url": NOISE_JSON["download_url"],
                               "output_sha256": _rand(64, _HEX)},
                }).encode()
                headers = {"Content-Type": "application/json",
                           "X-Delivery-Session": v["webhook header X-Delivery-Session"],
                           "X-Request-Id": _uuid(),
                           **sign(body, [upstream_secret], SignatureConfig(),
                                  timestamp=int(time.time()))}
                async with s.post(f"{proxy.url}/__replayproxy/webhooks/1", data=body,
                                  headers=headers) as r:
                    assert r.status == 202, await r.text()
                async with s.get(f"{proxy.url}/v1/jobs/6230/outputs/archive",
                                 headers={"Accept-Encoding": "gzip"}) as r:
                    assert r.status == 200 and (await r.json())["user"] == "ada"

    asyncio.run(session())


def record_corpus(folder: Path, planted: bool = True) -> dict[str, str]:
    """Write corpus cassettes into `folder`; return label -> what was planted at that label."""
    folder.mkdir(parents=True, exist_ok=True)
    record_vcrpy(folder / "vcrpy.yaml", planted)
    record_webhooks(folder / "webhooks.yaml", planted)
    return _values(planted)
