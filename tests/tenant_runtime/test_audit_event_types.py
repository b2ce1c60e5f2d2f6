"""The audit timeline's event-type choices (``audit_views.service.event_types``): every type
present, each once, in order, read in one statement however many types there are (the page
asks for them on every view, so a query per type made a tenant with a long history slow)."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from control_plane.models import Tenant
from tenant_runtime import audit
from tenant_runtime.audit_views import service
from tenant_runtime.context import Actor, TenantContext
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user


@pytest.fixture
def ctx(services, db, database_url, primary_server, local_kek) -> TenantContext:
    owner = make_user(db)
    tid = create_tenant(services, owner.email, "typed")
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == ["succeeded"]
    with services.session_factory() as s:
        return services.tenant_connections.context(s, s.get(Tenant, tid), Actor("system"))


def test_every_type_once_in_order_in_one_statement(ctx: TenantContext) -> None:
    with ctx.session() as s:
        before = service.event_types(s)  # what provisioning wrote
    kinds = [f"test.kind_{n:02d}" for n in range(30)]
    with ctx.session() as s, s.begin():
        for i in range(300):
            audit.record(s, kinds[(i * 7) % 30], actor=Actor("system"), details={"i": i})
    statements: list[str] = []
    with ctx.session() as s:
        connection = s.connection()

        def count(conn, cursor, statement, parameters, context, executemany) -> None:
            statements.append(statement)

        event.listen(connection, "before_cursor_execute", count)
        try:
            found = service.event_types(s)
        finally:
            event.remove(connection, "before_cursor_execute", count)
    assert found == sorted(set(before) | set(kinds))
    assert len(statements) == 1

