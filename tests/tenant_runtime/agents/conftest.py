"""A provisioned tenant and an Operator's context for the drive layer's tests."""

from __future__ import annotations

import pytest

from control_plane.models import Tenant
from tenant_runtime.context import Actor, TenantContext
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user


@pytest.fixture
def ctx(services, db, database_url, primary_server, local_kek) -> TenantContext:
    owner = make_user(db)
    tid = create_tenant(services, owner.email, "drive")
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == ["succeeded"]
    with services.session_factory() as s:
        return services.tenant_connections.context(
            s, s.get(Tenant, tid), Actor("user", "9", "operator@example.com", "Operator"))
