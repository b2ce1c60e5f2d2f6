from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs, tenant_state
from tests.factories import make_user


def test_provision(services, db, database_url, primary_server, local_kek):
    owner = make_user(db)
    tid = create_tenant(services, owner.email, "acme")
    results = run_pending_jobs(services, database_url)
    assert results[0]["outcome"] == "succeeded", results
    assert tenant_state(services, tid) == "active"
