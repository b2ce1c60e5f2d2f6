from tests.ops.test_verify_audit_chain import *  # noqa

def test_scratch(exports, tmp_path):
    print(exports["acme_small"].decode()[:3000])
    services = None

def test_floats(request, tmp_path):
    services = request.getfixturevalue("services")
    db = request.getfixturevalue("db")
    database_url = request.getfixturevalue("database_url")
    request.getfixturevalue("primary_server"); request.getfixturevalue("local_kek")
    owner = make_user(db)
    t = create_tenant(services, owner.email, "floaty")
    run_pending_jobs(services, database_url)
    with services.session_factory() as s:
        ctx = services.tenant_connections.context(s, s.get(Tenant, t), Actor("system"))
    for d in ({"x": 1e16}, {"x": -0.0}, {"x": 1.5e-7}, {"x": 0.1}, {"x": 2**70}, {"k\u2028": "\x7f"}):
        with ctx.session() as s, s.begin():
            audit.record(s, "t", actor=Actor("system"), details=d)
    data = export(ctx)
    p = tmp_path / "f.jsonl"; p.write_bytes(data)
    print(run_in_process(p))
    print(data.decode())
