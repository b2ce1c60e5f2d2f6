"""Serving the app with several processes (``magistrate web --workers N``)."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import socket

import uvicorn

from tenant_runtime.observability import metrics

LOOP_LAG_INTERVAL = 0.05  # a timer every 50 ms: 20 wake-ups a second, some microseconds each


def fast_server_options() -> dict[str, str]:
    """The event loop and HTTP parser uvicorn runs: uvloop and httptools (both dependencies,
    uvicorn's ``[standard]`` pieces) where they are installed, asyncio's loop and h11
    otherwise. Named here rather than left to uvicorn's ``auto`` so that what production runs
    is written down; ``ops/BENCHMARKS.md`` has what they save per call."""
    have = importlib.util.find_spec
    return {"loop": "uvloop" if have("uvloop") else "asyncio",
            "http": "httptools" if have("httptools") else "h11"}


def freeze_startup_heap() -> None:
    """Take what the process built before serving (its modules, the app and its services,
    templates, SQL metadata: some 420,000 objects) out of the garbage collector's view
    (``gc.freeze``), as it starts to serve. They live as long as the process, so collecting
    them never frees anything; but a full collection walks every object it tracks, and the
    collector runs one whenever enough new objects have outlived two younger collections: on
    the benchmark's machine that walk took 350 ms, during which the event loop, and every call
    on it, stood still (ops/BENCHMARKS.md). Frozen, a full collection walks only what came
    after."""
    gc.collect()
    gc.freeze()


async def watch_loop_lag(loop_name: str, interval: float = LOOP_LAG_INTERVAL) -> None:
    """Until cancelled: sleep ``interval`` on the running loop and record how much later than
    that the loop woke this task (``magistrate_event_loop_lag_seconds``). The gateway's calls
    run on the web process's loop; each of their waits (Redis, Postgres, the provider, the
    settlement's commit) ends in the loop's queue behind the work ready before it, so this lag
    is what a call's overhead grows by, per wait, under load (ops/BENCHMARKS.md)."""
    lag = metrics.EVENT_LOOP_LAG.labels(metrics.closed(loop_name, metrics.LOOPS))
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        lag.observe(max(loop.time() - due, 0.0))


class TcpConfig(uvicorn.Config):
    """uvicorn's shared listening socket for ``--workers``, marked as TCP: asyncio turns Nagle's
    algorithm off (TCP_NODELAY) only on connections accepted from a socket made with
    IPPROTO_TCP, and with it on, a response written in two parts waits for the client's delayed
    ACK (about 40 ms a request)."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP,
                                 fileno=sock.detach())
        return sock


def serve_processes(workers: int, **options: object) -> None:
    from uvicorn.supervisors import Multiprocess

    config = TcpConfig("control_plane.web.app:app_from_environment", factory=True,
                       workers=workers, **options)  # type: ignore[arg-type]
    Multiprocess(config, sockets=[config.bind_socket()]).run()
