"""The tenant audit chain under concurrency and failure: 16 writers never fork it, a rolled-back
action leaves no event, and the chain is append-only for every role."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from sqlalchemy import select

from control_plane.models import Tenant
from tenant_runtime import audit
from tenant_runtime.context import Actor
from tenant_runtime.models import AuditEvent
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user

WRITERS = 16
EVENTS_PER_WRITER = 500


@pytest.fixture
def tenant_ctx(services, db, database_url, primary_server, local_kek):
    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "chained")
    run_pending_jobs(services, database_url)
    with services.session_factory() as s:
        tenant = s.get(Tenant, tenant_id)
        ctx = services.tenant_connections.context(s, tenant, Actor("system"))
        owner_url = services.tenant_connections.owner_url(tenant)
    return ctx, owner_url


def verify(events: list[AuditEvent]) -> list[str]:
    problems, prev = [], audit.GENESIS_HASH
    for expected, e in enumerate(events, start=1):
        if e.seq != expected:
            problems.append(f"gap at {expected}")
        content = audit.canonical_content(
            seq=e.seq, occurred_at=e.occurred_at, actor_type=e.actor_type, actor_id=e.actor_id,
            actor_name=e.actor_name, event_type=e.event_type, target_type=e.target_type,
            target_id=e.target_id, details=e.details)
        if e.prev_hash != prev or audit.chain_hash(content, prev) != e.chain_hash:
            problems.append(f"bad link at {e.seq}")
        prev = e.chain_hash
    return problems


def test_sixteen_concurrent_writers_never_fork_the_chain(tenant_ctx):
    ctx, _ = tenant_ctx
    def writer(n: int) -> None:
        for i in range(EVENTS_PER_WRITER):
            with ctx.session() as s, s.begin():
                audit.record(s, "test.event", actor=Actor("system"), target_type="writer",
                             target_id=n, details={"i": i})

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        list(pool.map(writer, range(WRITERS)))
    with ctx.session() as s:
        events = list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    assert len(events) == WRITERS * EVENTS_PER_WRITER
    assert verify(events) == []


def test_an_action_that_fails_after_its_event_leaves_no_event(tenant_ctx):
    ctx, _ = tenant_ctx
    with pytest.raises(RuntimeError), ctx.session() as s, s.begin():
        audit.record(s, "test.event", actor=Actor("system"))
        raise RuntimeError("the action failed after writing its audit event")
    with ctx.session() as s, s.begin():
        audit.record(s, "test.after", actor=Actor("system"))
    with ctx.session() as s:
        events = list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    assert [e.event_type for e in events] == ["test.after"] and events[0].seq == 1


def test_no_role_can_change_or_remove_events(tenant_ctx, services):
    ctx, owner_url = tenant_ctx
    with ctx.session() as s, s.begin():
        audit.record(s, "test.event", actor=Actor("system"))
    with services.session_factory() as s:
        app_url = services.tenant_connections.app_url(s.get(Tenant, ctx.tenant_id))
    with psycopg.connect(app_url) as conn:
        for statement in ("UPDATE audit_events SET event_type = 'x'",
                          "DELETE FROM audit_events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
    with psycopg.connect(owner_url) as conn:
        for statement in ("UPDATE audit_events SET event_type = 'x'",
                          "DELETE FROM audit_events"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
            conn.rollback()
