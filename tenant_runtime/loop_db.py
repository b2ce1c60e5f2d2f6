"""Postgres connections that wait on the event loop when the call path runs there
(``tenant_runtime/bridge.py``), and block their thread as usual everywhere else.

- ``LoopAwareConnection``: psycopg's sync connection, whose every wait for its socket (a
  statement, a fetch, a commit) awaits on the loop under ``bridge.run``
  (``psycopg.waiting.wait_async``, what psycopg's own async connection uses); a new connection
  is opened in a worker thread there (psycopg's connect waits with its own loop). A wait
  interrupted by a cancellation leaves the protocol half-way: the connection is closed, so the
  pool drops it (the server rolls back what it had open).
- ``LoopAwarePool``: SQLAlchemy's ``QueuePool``, whose checkout on the loop never waits on a
  thread condition for a connection another call on the same loop holds (that call could never
  give it back): it waits on the loop to be woken by the next connection given back. It opens
  connections up to the pool's size, and past it (overflow) only after a wait of
  ``OVERFLOW_AFTER_SECONDS``: calls on one loop hold a connection only for their statements, so
  one comes back within a millisecond, while an overflow connection, closed when given back,
  would be opened again by the next call (a new Postgres connection costs milliseconds of CPU).
  A new connection is made in a worker thread (connecting blocks, and SQLAlchemy's
  first-connect hooks hold a mutex while they query the new connection).

``engine_options()`` are what every engine of Magistrate is built with (control_plane/db.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from typing import Any

import psycopg
import sqlalchemy.exc
from psycopg import waiting
from sqlalchemy import Engine, event
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool
from sqlalchemy.util import queue as sqla_queue

from tenant_runtime import bridge

POLL_SECONDS = 0.002
# a checkout on the loop waits this long for a connection given back before it opens one past
# the pool's size (an overflow connection is closed when given back: one per call, under load)
OVERFLOW_AFTER_SECONDS = 0.05


class LoopAwareConnection(psycopg.Connection[Any]):
    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        if not bridge.active():
            return super().wait(gen, interval, timeout)
        try:
            return bridge.wait(waiting.wait_async(gen, self.pgconn.socket, interval=interval,
                                                  timeout=timeout))
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled half-way: unusable
                self.pgconn.finish()
            raise

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> LoopAwareConnection:
        connect = super().connect
        return bridge.off_loop(lambda: connect(conninfo, **kwargs))


class LoopAwarePool(QueuePool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self._waiters_lock = threading.Lock()

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        super()._do_return_conn(record)
        with self._waiters_lock:
            waiter = self._waiters.popleft() if self._waiters else None
        if waiter is not None:  # a checkout on a loop waits for one given back
            loop, future = waiter
            loop.call_soon_threadsafe(_resolve, future)

    def _do_get(self) -> ConnectionPoolEntry:
        if not bridge.active():
            return super()._do_get()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        while True:
            future: asyncio.Future[None] = loop.create_future()
            with self._waiters_lock:  # before looking: a connection given back meanwhile wakes it
                self._waiters.append((loop, future))
            try:
                try:
                    return self._pool.get(False)
                except sqla_queue.Empty:
                    pass
                waited = time.monotonic() - started
                # the pool's own size first; beyond it (overflow) only when none came back for a
                # while: a connection opened per call costs far more than a wait for one
                if (self._overflow < 0 or waited >= OVERFLOW_AFTER_SECONDS) \
                        and self._inc_overflow():
                    try:  # in a worker thread: connecting blocks, and so may SQLAlchemy's
                        # first-connect hooks (a mutex held while they query the new connection)
                        return bridge.off_loop(self._create_connection)
                    except BaseException:
                        self._dec_overflow()
                        raise
                if waited >= self._timeout:
                    raise sqlalchemy.exc.TimeoutError(
                        f"QueuePool limit of size {self.size()} overflow {self.overflow()} "
                        f"reached, connection timed out, timeout {self._timeout:0.2f}",
                        code="3o7r")
                with contextlib.suppress(TimeoutError):
                    bridge.wait(asyncio.wait_for(asyncio.shield(future), POLL_SECONDS * 25))
            finally:
                with self._waiters_lock, contextlib.suppress(ValueError):
                    self._waiters.remove((loop, future))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# SQLAlchemy keeps its own pools' loggers at WARNING (its "sqlalchemy" logger) unless told
# otherwise; a pool class of ours logs under this module's name ("Pool recreating", ...): as quiet
logging.getLogger(f"{__name__}.{LoopAwarePool.__name__}").setLevel(logging.WARNING)


def engine_options() -> dict[str, Any]:
    """``create_engine`` options: the pool class (the connection class is set by
    ``use_loop_aware_connections``, once the engine exists)."""
    return {"poolclass": LoopAwarePool}


def use_loop_aware_connections(engine: Engine) -> Engine:
    """Make ``engine`` open ``LoopAwareConnection``s (the psycopg dialect's connect, with our
    class)."""

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        return LoopAwareConnection.connect(*cargs, **cparams)

    return engine
