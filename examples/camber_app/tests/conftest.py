"""Fixtures: the app served for real by uvicorn on 127.0.0.1 (a free port), on a thread.

The app talks to `replayproxy.url` as its Camber (CAMBER_API_URL) and tells Camber its own URL
(PUBLIC_URL), so the webhooks replayproxy replays reach its real `/webhooks/camber` route.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from main import create_app  # noqa: E402

#: The app's webhook secret. replayproxy reads the same variable to sign what it replays.
WEBHOOK_SECRET = os.environ.setdefault("WEBHOOK_SECRET", "example-local-webhook-secret")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "replay_only: skipped when recording (it would re-record)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--replayproxy-mode") == "replay":
        return
    skip = pytest.mark.skip(reason="replay only: recording is done by the plain tests")
    for item in items:
        if item.get_closest_marker("replay_only"):
            item.add_marker(skip)


@dataclass
class LiveApp:
    url: str
    app: FastAPI

    @property
    def store(self):
        return self.app.state.store


@pytest.fixture
def app_server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LiveApp]:
    """The app under uvicorn; its Camber is the test's replayproxy (nothing for unmarked tests)."""
    if request.node.get_closest_marker("replayproxy"):
        camber_url = request.getfixturevalue("replayproxy").url
    else:
        camber_url = "http://127.0.0.1:9"  # nothing listens: such tests must not call Camber
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("CAMBER_API_URL", camber_url)
    monkeypatch.setenv("PUBLIC_URL", url)
    monkeypatch.setenv("EXECUTION_BACKEND", "camber")
    if not os.environ.get("CAMBER_API_KEY"):  # recording needs the real one; replay any
        monkeypatch.setenv("CAMBER_API_KEY", "offline-not-a-key")
    app = create_app()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield LiveApp(url, app)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
