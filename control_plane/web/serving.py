"""Serving the app with several processes (``magistrate web --workers N``)."""

from __future__ import annotations

import importlib.util
import socket

import uvicorn


def fast_server_options() -> dict[str, str]:
    """The event loop and HTTP parser uvicorn runs: uvloop and httptools (both dependencies,
    uvicorn's ``[standard]`` pieces) where they are installed, asyncio's loop and h11
    otherwise. Named here rather than left to uvicorn's ``auto`` so that what production runs
    is written down; ``ops/BENCHMARKS.md`` has what they save per call."""
    have = importlib.util.find_spec
    return {"loop": "uvloop" if have("uvloop") else "asyncio",
            "http": "httptools" if have("httptools") else "h11"}


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
