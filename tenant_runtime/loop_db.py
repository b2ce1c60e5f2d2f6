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
  give it back): it polls, sleeping on the loop, until one is free or the pool's timeout; a new
  connection is made in a worker thread (connecting blocks, and SQLAlchemy's first-connect
  hooks hold a mutex while they query the new connection).

``engine_options()`` are what every engine of Magistrate is built with (control_plane/db.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
import sqlalchemy.exc
from psycopg import waiting
from sqlalchemy import Engine, event
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool
from sqlalchemy.util import queue as sqla_queue

from tenant_runtime import bridge

POLL_SECONDS = 0.002  # a checkout waiting on the loop for a connection looks this often


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
    def _do_get(self) -> ConnectionPoolEntry:
        if not bridge.active():
            return super()._do_get()
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return self._pool.get(False)
            except sqla_queue.Empty:
                pass
            if self._inc_overflow():
                try:  # in a worker thread: connecting blocks, and so may SQLAlchemy's
                    # first-connect hooks (a mutex held while they query the new connection)
                    return bridge.off_loop(self._create_connection)
                except BaseException:
                    self._dec_overflow()
                    raise
            if time.monotonic() >= deadline:
                raise sqlalchemy.exc.TimeoutError(
                    f"QueuePool limit of size {self.size()} overflow {self.overflow()} "
                    f"reached, connection timed out, timeout {self._timeout:0.2f}",
                    code="3o7r")
            bridge.sleep(POLL_SECONDS)


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
