from sqlalchemy import text
from control_plane.models import Tenant
from tenant_runtime.context import Actor
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user


def test_probe(services, db, database_url, primary_server, local_kek):
    owner = make_user(db)
    tid = create_tenant(services, owner.email, "acme")
    run_pending_jobs(services, database_url)
    with services.session_factory() as s:
        ctx = services.tenant_connections.context(s, s.get(Tenant, tid), Actor("system"))
    for _ in range(2):
        with ctx.session() as s, s.begin():
            s.connection(execution_options={"isolation_level": "REPEATABLE READ",
                                            "postgresql_readonly": True})
            print(s.execute(text("SHOW transaction_isolation")).scalar(),
                  s.execute(text("SHOW transaction_read_only")).scalar())
    with ctx.session() as s, s.begin():
        print("after:", s.execute(text("SHOW transaction_isolation")).scalar(),
              s.execute(text("SHOW transaction_read_only")).scalar())
