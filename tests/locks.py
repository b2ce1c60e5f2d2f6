"""Waiting, in a test, until another session is blocked on a lock we hold."""

from __future__ import annotations

import time

from sqlalchemy import text
from sqlalchemy.orm import Session

_WAITERS = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")


def wait_for_lock_waiter(s: Session, *, seconds: float = 60.0) -> None:
    """Return once some other session of this database waits on a lock; fail after
    ``seconds``. Postgres keeps one snapshot of pg_stat_activity per transaction, so each
    look clears it: without that, a first look taken before the other session blocked would
    be the answer for the rest of the transaction."""
    deadline = time.monotonic() + seconds
    while True:
        s.execute(text("SELECT pg_stat_clear_snapshot()"))
        if s.execute(_WAITERS).scalar_one():
            return
        assert time.monotonic() < deadline, "no session ever waited on the lock"
        time.sleep(0.01)
