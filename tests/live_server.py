"""The real app under uvicorn in a background thread on a loopback port, for tests whose client
must speak real HTTP (a browser, the official OpenAI and Anthropic SDKs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from control_plane.web.app import build_app
from control_plane.web.services import Services

SERVER_START_TIMEOUT = 10.0


@contextmanager
def serve(services: Services, port: int) -> Iterator[str]:
    """Yields the base URL. ``lifespan="off"``: the ``services`` fixture owns (and closes) the
    engine and Redis client."""
    config = uvicorn.Config(build_app(services), host="127.0.0.1", port=port,
                            lifespan="off", ws="none", http="h11", log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
