"""Console tests run on real tenant databases, provisioned through the tenancy fixtures."""

import pytest

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
