"""A web process's tenant engines: concurrent first requests for one tenant share one engine,
so no engine — and none of its pooled connections — is left behind unclosed."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from control_plane.models import Tenant
from control_plane.tenancy.connections import TenantConnections
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user

RACERS = 16


def test_concurrent_first_requests_share_one_engine(services, db, database_url, primary_server,
                                                     local_kek):
    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "acme")
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == ["succeeded"]
    connections = TenantConnections(sealer=services.sealer, providers=services.key_providers,
                                    dek_cache=services.dek_cache)
    start = threading.Barrier(RACERS)

    def first_request(_: int) -> int:
        with services.session_factory() as s:  # as each request reads its tenant
            tenant = s.get(Tenant, tenant_id)
            start.wait()
            factory = connections.session_factory(tenant)
        with factory() as s:
            assert s.execute(text("SELECT 1")).scalar() == 1
        return id(factory.kw["bind"])

    try:
        with ThreadPoolExecutor(max_workers=RACERS) as pool:
            engines = set(pool.map(first_request, range(RACERS)))
        assert len(engines) == 1
        assert len(connections._engines) == 1
    finally:
        connections.close()
