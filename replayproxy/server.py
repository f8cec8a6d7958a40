"""Running an aiohttp application on a host and port, and stopping it cleanly."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import sys

from aiohttp import web

from .errors import ReplayProxyError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """An aiohttp app bound to one address; `url` is known once started (port 0 picks one)."""

    def __init__(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        allow_remote: bool = False,
    ):
        if not is_loopback(host) and not allow_remote:
            raise ReplayProxyError(
                f"refusing to listen on {host}: only loopback by default "
                "(pass --allow-remote to listen on another address; anyone who can reach it "
                "can use the proxy)"
            )
        self.app = app
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.url = ""

    async def start(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, self.host, self.port, ssl_context=self.ssl_context, reuse_address=True
        )
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise ReplayProxyError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        host, port = sock.getsockname()[:2]
        self.port = port
        scheme = "https" if self.ssl_context else "http"
        shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
        self.url = f"{scheme}://{shown}:{port}"
        if not is_loopback(self.host):
            print(
                f"warning: listening on {self.host}, reachable from other machines", file=sys.stderr
            )
        return self.url

    async def stop(self) -> None:
        await self.runner.cleanup()
