"""Group commit of the gateway's settlements: a governed call's "tx 2" (its spend settled on
its shard, its ``gateway.call`` audit event appended, one commit), batched per tenant per
process.

The audit chain's lock is held from the append until the commit's WAL flush, so one tenant's
calls serialize on that flush. Here the calls of one tenant in this process that finish while
a settlement commit is in flight are written together: one transaction settles each of them
(as ``spend.settle_call`` does), takes the chain lock once, appends their events one after
the other and commits once; then every caller is woken. Each caller returns only once its own
event is durably committed, as before; N calls pay one flush and one lock wait.

Leader-follower, no thread: a caller that finds no settlement in flight for its tenant writes
its own at once (a lone call waits for nothing: no batching window); one that finds one in
flight queues and sleeps. When the writer (the *leader*) has committed, it hands the lead to
the oldest queued caller, which writes everything queued meanwhile (at most ``MAX_BATCH``)
while the old leader returns to its own request. A long-lived thread per tenant would cost a
hop between threads on every call and a thread for every tenant a process ever served.

One round trip: no statement of the transaction needs an earlier one's answer (the append
reads the head and the time in the database), so the whole transaction, its commit included,
is sent as one pipeline (``driver.pipelined``), straight on a psycopg connection of the
tenant's pool, with no session: SQLAlchemy's layers cost more Python than its statements.

Failure isolation: when a statement of one call fails, nothing was committed; the batch is run
again one statement at a time (``driver.transaction``), which finds the failing call, and then
without it: its caller gets the error its own transaction would have raised, the others still
commit. A failed commit (the connection lost) fails the whole batch, as it would have failed
each caller's own transaction.

Locks (spend.py's order, so no deadlock with another process's batch or the sweeper): a batch
of more than one first locks its calls' rows in id order (``settle_abandoned`` skips locked
rows, so it never waits for them), then shares their months' rows (``_SHARE_MONTHS``), then
settles on the shards in (month, shard) order, then takes the chain lock.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from tenant_runtime import audit, bridge, driver
from tenant_runtime.gateway import spend
from tenant_runtime.models import GatewayCall

MAX_BATCH = 64


@dataclass(eq=False)
class Settlement:
    """One call's settlement and its audit event (``audit.prepare``d)."""
    call_id: int
    month: date
    reserved_micros: int
    cost_micros: int
    values: dict[str, Any]
    event: audit.Pending
    shard: int = 0  # the shard it reserved on: a batch settles in (month, shard) order
    committed: bool = False
    error: BaseException | None = None
    lead: bool = False  # handed the lead by the writer before it
    # a caller on the event loop waits without blocking it (tenant_runtime/bridge.py)
    wake: bridge.Wake = field(default_factory=bridge.Wake, repr=False)


class _ItemFailed(Exception):
    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.index, self.cause = index, cause


_LOCK_CALLS = ("SELECT id, shard FROM gateway_calls WHERE id = ANY(%(ids)s) ORDER BY id "
               "FOR UPDATE")
# A shard row updated a second time in one transaction has its foreign key to the month's row
# checked again (Postgres re-checks a row this transaction wrote), which takes FOR KEY SHARE
# on the month's row: taken here first, before any shard, so it is never waited for while a
# shard is held (a refill holds the month's row and waits for shards: the deadlock the
# 100-concurrent-calls test showed without this).
_SHARE_MONTHS = ("SELECT 1 FROM gateway_spend_months WHERE month = ANY(%(months)s) "
                 "ORDER BY month FOR KEY SHARE")


# The columns a settlement may set on its call's row (``Settlement.values``' keys).
_CALL_COLUMNS = frozenset(GatewayCall.__table__.columns.keys())


def _send(s: psycopg.Connection[Any], items: list[Settlement], *, one_by_one: bool) -> None:
    """Settle every item and append every event in the connection's transaction. No statement
    waits for an earlier one's answer, so in a pipeline (``driver.pipelined``) they are all
    sent at once, and an error shows later than the statement that made it; ``one_by_one``
    (no pipeline): a failing statement raises ``_ItemFailed`` with its item's index."""
    order = list(range(len(items)))
    with s.cursor() as cursor:
        if len(items) > 1:
            driver.execute(cursor, _LOCK_CALLS, {"ids": [item.call_id for item in items]})
            driver.execute(cursor, _SHARE_MONTHS,
                           {"months": sorted({item.month for item in items})})
            order.sort(key=lambda k: (items[k].month, items[k].shard, items[k].call_id))
        for k in order:
            item = items[k]
            params = spend.settle_params(call_id=item.call_id,
                                         reserved_micros=item.reserved_micros,
                                         cost_micros=item.cost_micros, values=item.values)
            try:
                for statement in spend.SETTLE_STATEMENTS:
                    driver.execute(cursor, statement, params)
            except Exception as exc:
                if one_by_one:
                    raise _ItemFailed(k, exc) from exc
                raise
        # every shard is held: the chain's lock, then the appends in arrival order (times
        # follow seq)
        driver.execute(cursor, audit.LOCK)
        for k, item in enumerate(items):
            try:
                audit.send_append(cursor, item.event)
            except Exception as exc:
                if one_by_one:
                    raise _ItemFailed(k, exc) from exc
                raise


class TenantWriter:
    """The group commit of one tenant's settlements in this process."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._engine = driver.engine_of(session_factory)
        self._mutex = threading.Lock()
        self._queue: deque[Settlement] = deque()
        self._leading = False
        self.commits = 0  # transactions committed, and calls settled in them
        self.settled = 0

    def submit(self, item: Settlement) -> None:
        """Settle and append ``item``; return once it is committed, or raise the error its own
        transaction would have raised."""
        with self._mutex:
            self._queue.append(item)
            lead = not self._leading
            self._leading = True
        if not lead:
            item.wake.wait()
            lead = item.lead  # handed the lead; else a leader wrote this item
        if lead:
            with self._mutex:  # the queue's head is this item
                batch = [self._queue.popleft()
                         for _ in range(min(len(self._queue), MAX_BATCH))]
            try:
                self._write(batch)
            finally:
                self._hand_over(batch)
        if item.error is not None:
            raise item.error
        if not item.committed:
            raise RuntimeError("The settlement's writer stopped before committing this call.")

    def _write(self, batch: list[Settlement]) -> None:
        pending = list(batch)
        pipelined = True
        while pending:
            try:
                with (driver.pipelined if pipelined else driver.transaction)(
                        self._engine) as connection:
                    _send(connection, pending, one_by_one=not pipelined)
            except _ItemFailed as failed:
                pending.pop(failed.index).error = failed.cause
                continue
            except DBAPIError as exc:
                if pipelined and not exc.connection_invalidated:
                    # a statement failed, so nothing was committed: again, one statement at
                    # a time, to find the failing call and commit the others without it
                    pipelined = False
                    continue
                for item in pending:  # the commit, the connection: each would have failed
                    item.error = exc
                return
            except Exception as exc:
                for item in pending:
                    item.error = exc
                return
            for item in pending:
                item.committed = True
            audit.count_appends(len(pending))
            with self._mutex:
                self.commits += 1
                self.settled += len(pending)
            return

    def _hand_over(self, batch: list[Settlement]) -> None:
        """Wake the batch's callers; the lead goes to the oldest caller queued meanwhile."""
        with self._mutex:
            if self._queue:
                successor: Settlement | None = self._queue[0]
                self._queue[0].lead = True
            else:
                successor = None
                self._leading = False
        for item in batch:
            item.wake.set()
        if successor is not None:
            successor.wake.set()


_writers: weakref.WeakKeyDictionary[sessionmaker[Session], TenantWriter] = \
    weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


def writer_for(session_factory: sessionmaker[Session]) -> TenantWriter:
    """This process's writer for the tenant whose sessions ``session_factory`` makes (one per
    tenant: the connection manager keeps one factory per tenant engine)."""
    with _writers_lock:
        writer = _writers.get(session_factory)
        if writer is None:
            writer = _writers[session_factory] = TenantWriter(session_factory)
        return writer
