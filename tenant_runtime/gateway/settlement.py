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

Failure isolation: when a statement of one call fails, the transaction is rolled back and run
again without that call, whose caller gets the error its own transaction would have raised;
the others still commit. A failed commit (the connection lost) fails the whole batch, as it
would have failed each caller's own transaction.

The transaction runs straight on a psycopg connection of the tenant's pool, with no session
(``driver.transaction``): SQLAlchemy's layers cost more Python than its statements.

Locks (spend.py's order, so no deadlock with another process's batch or the sweeper): a batch
of more than one first locks its calls' rows in id order (``settle_abandoned`` skips locked
rows, so it never waits for them), then shares their months' rows (``_SHARE_MONTHS``), then
settles on the shards in (month, shard) order, then takes the chain lock. A batch of one is
exactly the former transaction: its settlement takes the chain lock in the same statement."""

from __future__ import annotations

import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg
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


def _settle(s: psycopg.Connection[Any], item: Settlement, *, lock_chain: bool) -> bool:
    """``Gateway._finish``'s settlement of one call: True when it settled a reservation (and,
    with ``lock_chain``, took the chain lock in that statement)."""
    if spend.settle_call(s, call_id=item.call_id, month=item.month,
                         reserved_micros=item.reserved_micros, cost_micros=item.cost_micros,
                         values=item.values, lock_chain=lock_chain):
        return True
    # the sweeper charged it in full meanwhile: correct to the real cost
    charged = driver.one(s, "SELECT cost_micros, shard FROM gateway_calls WHERE id = %(id)s "
                            "FOR UPDATE", {"id": item.call_id})
    if charged is not None:
        cost_micros, shard = charged
        spend.settle(s, month=item.month, shard=shard, reserved_micros=0,
                     cost_micros=item.cost_micros - cost_micros)
        unknown = set(item.values) - _CALL_COLUMNS
        if unknown:
            raise ValueError(f"Not columns of gateway_calls: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = %({name})s" for name in item.values)
        driver.run(s, f"UPDATE gateway_calls SET {assignments} WHERE id = %(call_id)s",  # noqa: S608 - column names checked above
                   {**item.values, "call_id": item.call_id})
    return False


def _apply(s: psycopg.Connection[Any], items: list[Settlement]) -> None:
    """Settle every item and append every event in the connection's transaction; a failing
    item raises ``_ItemFailed`` with its index."""
    order = list(range(len(items)))
    if len(items) > 1:
        shards = {int(row[0]): int(row[1]) for row in driver.run(
            s, _LOCK_CALLS, {"ids": [item.call_id for item in items]})}
        driver.run(s, _SHARE_MONTHS, {"months": sorted({item.month for item in items})})
        order.sort(key=lambda k: (items[k].month, shards.get(items[k].call_id, -1),
                                  items[k].call_id))
    locked = False
    for position, k in enumerate(order):
        try:
            # the last settlement takes the chain lock: every shard is held before it
            locked = _settle(s, items[k], lock_chain=position == len(order) - 1)
        except Exception as exc:
            raise _ItemFailed(k, exc) from exc
    for k, item in enumerate(items):  # arrival order; times follow seq (audit.append)
        try:
            audit.append_on(s, item.event, chain_locked=locked)
        except Exception as exc:
            raise _ItemFailed(k, exc) from exc
        locked = True


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
        while pending:
            try:
                with driver.transaction(self._engine) as connection:
                    _apply(connection, pending)
            except _ItemFailed as failed:
                pending.pop(failed.index).error = failed.cause
                continue
            except Exception as exc:  # the commit, the connection: each would have failed
                for item in pending:
                    item.error = exc
                return
            for item in pending:
                item.committed = True
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
