"""An ASGI app under uvicorn in a background thread on a loopback port, for tests whose client
must speak real HTTP (a browser, the official OpenAI, Anthropic and MCP SDKs): the real app
(``serve``) or any other (``serve_app``: an MCP upstream, an authorization server).

The port is held from the moment it is chosen: a ``Port`` binds it at once and uvicorn serves on
that very socket, so no other test process (pytest-xdist runs several) can take it in between,
as it could a port bound, released and bound again. The server thread is joined when the block
ends, on every path: a server still running after its test would answer (and log) into the
next one.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Literal

import uvicorn

from control_plane.gateway import api as gateway_api
from control_plane.web.app import build_app
from control_plane.web.services import Services
from tests.threads import Worker

# generous: a busy CI machine is slow to start a thread and an event loop, never this slow
SERVER_START_SECONDS = 60.0
# requests still running when the block ends are cancelled after this; then the thread ends
GRACEFUL_SHUTDOWN_SECONDS = 5
SERVER_STOP_SECONDS = 60.0


class Port:
    """A loopback port bound now, for a server that starts later: its number can go into
    settings (a public URL, an issuer) before the app is built. Nobody else can bind it (nor
    connect to it: nothing listens) until the server takes the socket over or ``close``."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.number = int(self.socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.number}"

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> Port:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def serve_app(app: Any, port: Port | None = None, *,
              lifespan: Literal["auto", "on", "off"] = "auto") -> Iterator[str]:
    """``app`` under uvicorn on ``port`` (a new one if None) for the block; yields its base
    URL. The port is closed afterwards."""
    port = port or Port()
    # log_config=None: uvicorn's records go to the root logger (the test's captured log), not
    # to a handler of its own bound to whatever standard error was when it started
    config = uvicorn.Config(app, lifespan=lifespan, ws="none", http="h11", log_config=None,
                            log_level="warning", access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    server = uvicorn.Server(config)
    worker = Worker(lambda: server.run(sockets=[port.socket]), name="uvicorn live server")
    try:
        worker.start()
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not server.started:
            if worker.finished:
                raise RuntimeError(f"uvicorn did not start on {port.url}: "
                                   f"{worker.outcome()!r}")
            assert time.monotonic() < deadline, f"uvicorn did not start within " \
                                                f"{SERVER_START_SECONDS} s on {port.url}"
            time.sleep(0.02)
        yield port.url
    finally:
        server.should_exit = True
        try:
            worker.join(SERVER_STOP_SECONDS)
        finally:
            port.close()


@contextmanager
def serve(services: Services, port: Port | None = None) -> Iterator[str]:
    """The real app; yields its base URL. Of the app's lifespan only the gateway's part runs
    (its calls on the server's event loop, as in production): the ``services`` fixture owns
    (and closes) the engine and Redis client."""
    app = build_app(services)
    app.router.lifespan_context = partial(
        gateway_api.calls_on_this_loop, enabled=services.settings.gateway_on_event_loop)
    with serve_app(app, port, lifespan="on") as url:
        yield url
