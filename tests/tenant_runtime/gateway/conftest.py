"""A provisioned tenant and its context, for the gateway's database-backed tests (the tenancy
fixtures come from tests/tenant_runtime/conftest.py)."""

from __future__ import annotations

import pytest

from control_plane.models import Tenant
from tenant_runtime.context import Actor, TenantContext
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user

API_KEY_ACTOR = Actor("api_key", "41", "build bot")


@pytest.fixture
def tenant_id(services, db, database_url, primary_server, local_kek) -> int:
    owner = make_user(db)
    tid = create_tenant(services, owner.email, "gw")
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == ["succeeded"]
    return tid


@pytest.fixture
def ctx(services, tenant_id) -> TenantContext:
    with services.session_factory() as s:
        return services.tenant_connections.context(s, s.get(Tenant, tenant_id), API_KEY_ACTOR)
