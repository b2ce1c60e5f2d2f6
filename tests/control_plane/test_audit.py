"""The platform audit chain: contiguous, verifiable, never forked, append-only."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from control_plane import audit
from control_plane.audit import Actor
from control_plane.models import PlatformAuditEvent


def test_concurrent_writers_never_fork_the_chain(db):
    def write(i: int) -> None:
        with db() as s, s.begin():
            audit.record(s, audit.UserEvents.CREATED, actor=Actor("system"),
                         target_type="user", target_id=i, details={"n": i})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, range(80)))
    with db() as s:
        seqs = s.scalars(select(PlatformAuditEvent.seq).order_by(PlatformAuditEvent.seq)).all()
        assert seqs == list(range(1, 81))
        assert audit.verify_chain(s) == []


def test_a_rolled_back_action_leaves_no_event(db):
    with pytest.raises(RuntimeError), db() as s, s.begin():
        audit.record(s, audit.UserEvents.CREATED, actor=Actor("system"))
        raise RuntimeError("the action failed")
    with db() as s:
        assert s.scalars(select(PlatformAuditEvent)).all() == []


def test_rows_cannot_be_changed_or_deleted_and_tampering_is_detected(db):
    with db() as s, s.begin():
        for i in range(3):
            audit.record(s, audit.UserEvents.CREATED, actor=Actor("system"), details={"i": i})
    for statement in ("UPDATE platform_audit_events SET details = '{}' WHERE seq = 2",
                      "DELETE FROM platform_audit_events WHERE seq = 3"):
        with pytest.raises(DBAPIError, match="append-only"), db() as s, s.begin():
            s.execute(text(statement))
    # a superuser who drops the trigger can still change rows, but verification notices
    with db() as s, s.begin():
        s.execute(text("ALTER TABLE platform_audit_events DISABLE TRIGGER "
                       "platform_audit_append_only"))
        s.execute(text("""UPDATE platform_audit_events SET details = '{"i": 9}' WHERE seq = 2"""))
        s.execute(text("ALTER TABLE platform_audit_events ENABLE TRIGGER "
                       "platform_audit_append_only"))
    with db() as s:
        assert audit.verify_chain(s) == ["event 2 does not match its hash"]


@pytest.mark.parametrize("details", [{"x": 1e16}, {"n": [1, 2.5]}, {"a": {"b": -0.0}},
                                     {1: "x"}, {"when": object()}])
def test_details_that_would_not_hash_back_are_refused(db, details):
    with pytest.raises(ValueError, match="details"), db() as s, s.begin():
        audit.record(s, audit.UserEvents.CREATED, actor=Actor("system"), details=details)
    with db() as s:
        assert s.scalars(select(PlatformAuditEvent)).all() == []
