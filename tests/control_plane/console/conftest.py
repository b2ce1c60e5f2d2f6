"""Console tests run on real tenant databases, provisioned through the tenancy fixtures."""

import pytest

from control_plane.models import User
from control_plane.tenancy import service
from tests.control_plane.tenancy.conftest import (  # noqa: F401
    local_kek,
    primary_server,
    settings,
)
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user


@pytest.fixture
def two_tenants(services, db, database_url, primary_server, local_kek):  # noqa: F811
    owner = make_user(db)
    a = create_tenant(services, owner.email, "alpha")
    b = create_tenant(services, owner.email, "bravo")
    run_pending_jobs(services, database_url)
    return owner, a, b


def others_tenant(services, db, database_url, slug: str, *, member: str,
                  role: str) -> tuple[int, int]:
    """A tenant created by another user (other@example.com), where ``member`` has ``role``:
    (the tenant's id, the other user's id)."""
    other = make_user(db, "other@example.com")  # may create tenants
    tenant_id = create_tenant(services, other.email, slug)
    run_pending_jobs(services, database_url)
    with services.session_factory() as s, s.begin():
        me = s.get(User, other.id)
        service.do_add_member(s, service.access_tenant(s, tenant_id, user=me), email=member,
                              role=role, acting_user=me)
    return tenant_id, other.id
