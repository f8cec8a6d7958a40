"""A small origin server on 127.0.0.1 for recording cassettes with vcrpy: standard library only
(brotli when importable), so scripts/make_old_vcrpy_fixtures.py can run it under an old vcrpy.

Its answers cover what cassette formats differ on: JSON with non-ASCII text, bodies coded
gzip/deflate/br whatever the request accepts (as some servers do) and gzip only when accepted,
non-UTF-8 binary, 204, custom and empty reason phrases, a relative redirect, repeated headers
(Set-Cookie), a chunked answer, an echo of the request body, and S3-shaped object GET/PUT.
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

try:
    import brotli
except ImportError:  # pragma: no cover - the old-vcrpy venv may lack it
    brotli = None

TEXT = "caf\u00e9 \U0001f600 \u2603 and a quote \" and a backslash \\"
DOC = json.dumps({"id": 7, "name": TEXT, "tags": ["a", "b"]}, ensure_ascii=False).encode()
BINARY = bytes(range(256)) * 8 + b"\xff\xfe\x00\x80"  # 2 KiB that is not UTF-8


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def version_string(self) -> str:
        return "origin/1.0"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                chunk = self.rfile.read(size + 2)[:size]
                if not size:
                    break
                out += chunk
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return out
        return b""

    def _send(self, status, body=b"", headers=(), reason=None):
        self.server.hits += 1
        self.send_response(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        if status not in (204, 304) and self.command != "HEAD":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self.route()

    def do_POST(self) -> None:
        self.route()

    def do_PUT(self) -> None:
        self.route()

    def route(self) -> None:
        path = urlsplit(self.path).path
        body = self._body()
        accepted = (self.headers.get("Accept-Encoding") or "").lower()
        js = ("Content-Type", "application/json")
        if path == "/json":
            return self._send(200, DOC, [js, ("X-Request-Path", self.path)])
        if path == "/gzip":
            return self._send(200, gzip.compress(DOC, mtime=0), [js, ("Content-Encoding", "gzip")])
        if path == "/negotiated":
            if "gzip" in accepted:
                coded = gzip.compress(DOC, mtime=0)
                coding = [js, ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
                return self._send(200, coded, coding)
            return self._send(200, DOC, [js, ("Vary", "Accept-Encoding")])
        if path == "/deflate":
            return self._send(200, zlib.compress(DOC), [js, ("Content-Encoding", "deflate")])
        if path == "/br" and brotli is not None:
            return self._send(200, brotli.compress(DOC), [js, ("Content-Encoding", "br")])
        if path == "/binary":
            return self._send(200, BINARY, [("Content-Type", "application/octet-stream")])
        if path == "/text":
            return self._send(200, TEXT.encode(), [("Content-Type", "text/plain; charset=utf-8")])
        if path == "/nocontent":
            return self._send(204, b"", [("X-Deleted", "yes")])
        if path == "/teapot":
            return self._send(418, b'{"error":"tea"}', [js], reason="Short And Stout")
        if path == "/redirect":
            moved = [("Location", "/json?via=redirect"), ("Content-Type", "text/html")]
            return self._send(302, b"", moved)
        if path == "/cookies":
            return self._send(
                200,
                b"{}",
                [js, ("Set-Cookie", "session=abc123; Path=/; HttpOnly"),
                 ("Set-Cookie", "theme=dark; Path=/"),
                 ("X-Multi", "one"), ("X-Multi", "two"), ("x-lower-case", "kept")],
            )
        if path == "/chunked":
            self.server.hits += 1
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first line\n", b"second \xe2\x98\x83 line\n", b"end"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return None
        if path == "/echo":
            ctype = self.headers.get("Content-Type") or "application/octet-stream"
            return self._send(201, body, [("Content-Type", ctype)], reason="Created")
        if path.startswith("/bucket/"):  # S3 path-style objects, for boto3
            etag = ("ETag", f'"{zlib.crc32(body or BINARY[:1000])}"')
            if self.command == "PUT":
                return self._send(200, b"", [etag, ("x-amz-request-id", "R1")])
            return self._send(
                200,
                BINARY[:1000],
                [etag, ("Content-Type", "binary/octet-stream"), ("x-amz-request-id", "R2"),
                 ("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT"), ("Accept-Ranges", "bytes")],
            )
        return self._send(404, b"not here", [("Content-Type", "text/plain")], reason="Not Found")


class Origin:
    """`with Origin() as origin:` serves on 127.0.0.1:<free port>; `hits` counts answers."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.hits = 0
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def hits(self) -> int:
        return self.server.hits

    def __enter__(self) -> Origin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
