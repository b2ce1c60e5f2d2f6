"""Tenants end to end: provisioning (idempotent), isolation by storage, placement over two
servers, lifecycle, sealed columns, deletion, and the JSON API."""

from __future__ import annotations

import re
import secrets

import psycopg
import pytest
from sqlalchemy import select, text

from control_plane.models import Job, Membership, Tenant, TenantKey, TenantTombstone
from control_plane.tenancy import database
from control_plane.tenancy.provisioning import provision
from control_plane.tenancy.servers import do_add_db_server
from tenant_runtime.context import Actor
from tenant_runtime.credentials import service as credentials
from tenant_runtime.exceptions import SealedValueRefused
from tenant_runtime.models import CLASSIFICATIONS, TenantBase
from tests.conftest import drop_database
from tests.control_plane.tenancy.helpers import (
    create_tenant,
    run_pending_jobs,
    tenant_state,
)
from tests.factories import csrf_token, make_user, post_form, sign_in

SECRET = "sk-live-very-secret-provider-key-4242"
EMAIL = "billing.owner@customer.example"


def app_url(services, tenant_id: int) -> str:
    with services.session_factory() as s:
        return services.tenant_connections.app_url(s.get(Tenant, tenant_id))


def owner_url(services, tenant_id: int) -> str:
    with services.session_factory() as s:
        return services.tenant_connections.owner_url(s.get(Tenant, tenant_id))


def tenant_ctx(services, tenant_id: int, name: str = "tester"):
    with services.session_factory() as s:
        return services.tenant_connections.context(s, s.get(Tenant, tenant_id),
                                                   Actor("user", "1", name, "Owner"))


@pytest.fixture
def two_tenants(services, db, database_url, primary_server, local_kek):
    owner = make_user(db)
    a = create_tenant(services, owner.email, "alpha")
    b = create_tenant(services, owner.email, "bravo")
    run_pending_jobs(services, database_url)
    assert tenant_state(services, a) == tenant_state(services, b) == "active"
    return owner, a, b


def test_every_tenant_column_is_classified():
    for table in TenantBase.metadata.sorted_tables:
        for column in table.columns:
            assert column.info.get("classification") in CLASSIFICATIONS, \
                f"{table.name}.{column.name} is not classified plain, pii or secret"


def test_create_over_http_and_provision(client, services, db, database_url, primary_server,
                                        local_kek):
    owner = make_user(db)
    sign_in(client, owner.email)
    response = post_form(client, "/tenants", {"slug": "acme", "name": "Acme",
                                              "key_provider": "local", "key_ref": local_kek},
                         page="/tenants")
    assert response.status_code == 303
    tenant_id = int(response.headers["location"].rsplit("/", 1)[1])
    page = client.get(f"/tenants/{tenant_id}")
    assert 'data-testid="tenant-state">provisioning' in page.text
    assert 'hx-trigger="every 1s"' in page.text  # the progress display polls
    with db() as s:
        job = s.scalars(select(Job).where(Job.tenant_id == tenant_id)).one()
        assert job.state == "dispatched"  # sent to RQ after commit
    assert run_pending_jobs(services, database_url)[0]["outcome"] == "succeeded"
    partial = client.get(f"/tenants/{tenant_id}", headers={"HX-Request": "true"})
    assert 'data-testid="tenant-state">active' in partial.text and "<html" not in partial.text
    with db() as s:
        tenant = s.get(Tenant, tenant_id)
        keys = s.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant_id)).all()
        assert len(keys) == 1 and len(keys[0].wrapped_dek) > 32
        assert s.scalars(select(Membership.role).where(Membership.tenant_id == tenant_id)
                         ).all() == ["Owner"]
        names = (tenant.db_name, tenant.owner_role, tenant.app_role)
        assert tenant.owner_password_sealed and b"magistrate" not in tenant.owner_password_sealed
    with psycopg.connect(services_admin(services), autocommit=True) as conn:
        acl = conn.execute("SELECT datacl::text FROM pg_database WHERE datname = %s",
                           (names[0],)).fetchone()[0]
        assert "=c" not in acl.split(",")[0] and not re.search(r"(^|[{,])=", acl)


def services_admin(services) -> str:
    from control_plane.models import DbServer
    from control_plane.tenancy.servers import admin_url

    with services.session_factory() as s:
        server = s.scalars(select(DbServer).order_by(DbServer.id)).first()
        return database.url_for(admin_url(services.sealer, server), database="postgres")


def databases_that_open(url: str, names: list[str]) -> list[str]:
    """Which of ``names`` the role of ``url`` can connect to."""
    base, _, query = url.partition("?")
    opened = []
    for name in names:
        try:
            psycopg.connect(base.rsplit("/", 1)[0] + f"/{name}"
                            + (f"?{query}" if query else ""), connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            # (an "invalid" database is what an interrupted DROP DATABASE of another process
            # on the shared server leaves: nobody can connect to it)
            assert re.search(r"permission denied for database|not currently accepting "
                             r"connections|does not exist|cannot connect to invalid database",
                             str(exc)), (name, str(exc))
            continue
        opened.append(name)
    return opened


def test_roles_are_confined_to_their_own_database(services, two_tenants, database_url):
    _, a, b = two_tenants
    with psycopg.connect(app_url(services, a)) as conn:
        conn.execute("INSERT INTO audit_events (seq, occurred_at, actor_type, event_type, "
                     "details, prev_hash, chain_hash) VALUES (1, now(), 'system', 't', '{}', "
                     "'0', '0')")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM audit_events").fetchone()[0] == 1
        for statement in ("UPDATE audit_events SET event_type = 'x'",
                          "DELETE FROM audit_events", "TRUNCATE audit_events",
                          "CREATE TABLE sneaky (id int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
    # tenant A's roles open their own database and no other database of the server: tenant
    # B's, the control database, `postgres`, template1, the tenant template, a spare, and
    # whatever else is there (other runs' databases on a shared test server included)
    with services.session_factory() as s:
        ta, tb = s.get(Tenant, a), s.get(Tenant, b)
    admin = services_admin(services)
    database.refill_spares(admin, namespace=database.spare_namespace(database_url), want=1)
    with psycopg.connect(admin) as conn:
        names = [str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")]
    control = database_url.rsplit("/", 1)[1].split("?")[0]
    assert {control, tb.db_name, ta.db_name, "postgres", "template1", database.template_name()} \
        <= set(names)
    assert [n for n in names if n.startswith(database.SPARE_PREFIX)]
    for url in (app_url(services, a), owner_url(services, a)):
        opened = databases_that_open(url, names)
        if set(opened) - {ta.db_name}:  # created on the shared server since the lockdown ran
            database.close_databases_to_public(admin)
            opened = databases_that_open(url, opened)
        assert opened == [ta.db_name]
    # even the owner cannot rewrite the audit chain: the trigger refuses
    with psycopg.connect(owner_url(services, a)) as conn, pytest.raises(
            psycopg.errors.RaiseException, match="append-only"):
        conn.execute("DELETE FROM audit_events")


def test_a_crash_midway_then_a_retry_finishes_without_duplicates(services, db, database_url,
                                                                   primary_server, local_kek):
    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "crashy")
    for stop_after in (2, 3, 5):  # crash after roles, after the database, after the data key
        state = provision(services.session_factory, tenant_id, sealer=services.sealer,
                          providers=services.key_providers, progress=lambda *a: None,
                          stop_after=stop_after)
        assert state == "provisioning"
    assert run_pending_jobs(services, database_url)[0]["outcome"] == "succeeded"
    assert tenant_state(services, tenant_id) == "active"
    with db() as s:
        assert len(s.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant_id)).all()) \
            == 1
        tenant = s.get(Tenant, tenant_id)
    with psycopg.connect(services_admin(services)) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                            (tenant.db_name + "%",)).fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE %s",
                            (f"magistrate_t_{tenant_id}_%",)).fetchone()[0] == 2
    # running the finished job's steps again changes nothing
    assert provision(services.session_factory, tenant_id, sealer=services.sealer,
                     providers=services.key_providers, progress=lambda *a: None) == "active"


def test_placement_spreads_tenants_over_two_servers(services, db, database_url, primary_server,
                                                    local_kek, second_server):
    from tests.control_plane.tenancy.conftest import drop_tenant_leftovers

    drop_tenant_leftovers(second_server)
    with db() as s, s.begin():
        do_add_db_server(s, name="second", url=second_server, sealer=services.sealer,
                         actor=Actor("system"))
    owner = make_user(db)
    ids = [create_tenant(services, owner.email, f"spread-{i}") for i in range(4)]
    results = run_pending_jobs(services, database_url)
    assert [r["outcome"] for r in results] == ["succeeded"] * 4
    with db() as s:
        servers = [s.get(Tenant, i).db_server.name for i in ids]
    assert sorted(servers) == ["primary", "primary", "second", "second"]
    on_second = ids[servers.index("second")]
    with psycopg.connect(second_server) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (f"magistrate_t_{on_second}",)).fetchone()
    # the tenant on the second server works through its context like any other
    ctx = tenant_ctx(services, on_second)
    with ctx.session() as s, s.begin():
        credentials.do_add_credential(s, ctx, name="k", provider="openai", secret=SECRET,
                                      contact_email=None)
    services.tenant_connections.close()
    drop_tenant_leftovers(second_server)


def test_sealed_columns_hold_no_plaintext_and_do_not_move(services, client, two_tenants):
    owner, a, b = two_tenants
    sign_in(client, owner.email)
    page = f"/tenants/{a}/credentials"
    added = post_form(client, page, {"name": "openai-main", "provider": "openai",
                                     "secret": SECRET, "contact_email": EMAIL}, page=page)
    assert added.status_code == 201
    assert SECRET not in added.text and "••••4242" in added.text and EMAIL in added.text
    post_form(client, page, {"name": "second", "provider": "anthropic",
                             "secret": "sk-ant-other-secret-9999", "contact_email": ""},
              page=page)
    with psycopg.connect(owner_url(services, a)) as conn:
        rows = conn.execute("SELECT id, secret_sealed, contact_email_sealed FROM "
                            "provider_credentials ORDER BY id").fetchall()
        dump = b"".join(bytes(r[1]) + bytes(r[2] or b"") for r in rows)
        assert SECRET.encode() not in dump and EMAIL.encode() not in dump
        assert b"4242" not in bytes(rows[0][1])
        # copy row 1's ciphertext onto row 2
        conn.execute("UPDATE provider_credentials SET secret_sealed = %s WHERE id = %s",
                     (rows[0][1], rows[1][0]))
        conn.commit()
    ctx_a = tenant_ctx(services, a)
    with ctx_a.session() as s:
        assert credentials.reveal_secret(s, ctx_a, rows[0][0]) == SECRET
        with pytest.raises(SealedValueRefused):
            credentials.reveal_secret(s, ctx_a, rows[1][0])
    # and onto a row of tenant B with the same id
    ctx_b = tenant_ctx(services, b)
    with ctx_b.session() as s, s.begin():
        credentials.do_add_credential(s, ctx_b, name="b-key", provider="openai",
                                      secret="sk-bravo-secret-0000", contact_email=None)
    with psycopg.connect(owner_url(services, b)) as conn:
        conn.execute("UPDATE provider_credentials SET secret_sealed = %s WHERE id = %s",
                     (rows[0][1], rows[0][0]))
        conn.commit()
    with ctx_b.session() as s, pytest.raises(SealedValueRefused):
        credentials.reveal_secret(s, ctx_b, rows[0][0])


def test_the_same_row_id_in_two_tenants_returns_only_the_callers_row(services, two_tenants):
    _, a, b = two_tenants
    for tenant_id, name in ((a, "alpha-key"), (b, "bravo-key")):
        ctx = tenant_ctx(services, tenant_id)
        with ctx.session() as s, s.begin():
            credentials.do_add_credential(s, ctx, name=name, provider="openai",
                                          secret=f"sk-{name}-secret", contact_email=None)
    for tenant_id, name in ((a, "alpha-key"), (b, "bravo-key")):
        ctx = tenant_ctx(services, tenant_id)
        with ctx.session() as s:
            assert [c.name for c in credentials.list_credentials(s, ctx)] == [name]
            assert credentials.reveal_secret(s, ctx, 1) == f"sk-{name}-secret"


def test_suspended_tenant_refuses_its_pages_until_resumed(client, services, two_tenants):
    owner, a, _ = two_tenants
    sign_in(client, owner.email)
    assert client.get(f"/tenants/{a}/credentials").status_code == 200
    suspended = post_form(client, f"/tenants/{a}/suspend", {"reason": "billing"},
                          page=f"/tenants/{a}", follow=True)  # Post/Redirect/Get
    assert suspended.history[0].status_code == 303
    assert suspended.status_code == 200 and "suspended" in suspended.text
    refused = client.get(f"/tenants/{a}/credentials")
    assert refused.status_code == 403 and "This tenant is suspended" in refused.text
    assert post_form(client, f"/tenants/{a}/resume", page=f"/tenants/{a}",
                     follow=True).status_code == 200
    assert client.get(f"/tenants/{a}/credentials").status_code == 200


def test_delete_means_gone(client, services, db, database_url, two_tenants):
    owner, a, b = two_tenants
    sign_in(client, owner.email)
    with db() as s:
        tenant = s.get(Tenant, a)
        names = (tenant.db_name, tenant.owner_role, tenant.app_role)
    wrong = post_form(client, f"/tenants/{a}/delete", {"confirm_slug": "bravo",
                                                       "reason": "closing"},
                      page=f"/tenants/{a}")
    assert wrong.status_code == 422 and "Type the tenant" in wrong.text
    done = post_form(client, f"/tenants/{a}/delete", {"confirm_slug": "alpha",
                                                      "reason": "customer left"},
                     page=f"/tenants/{a}", follow=True)
    assert done.status_code == 200 and "being deleted" in done.text
    assert client.get(f"/tenants/{a}").status_code == 404
    assert run_pending_jobs(services, database_url)[0]["outcome"] == "succeeded"
    with db() as s:
        assert s.get(Tenant, a) is None
        assert s.scalars(select(TenantKey).where(TenantKey.tenant_id == a)).all() == []
        stone = s.scalars(select(TenantTombstone).where(TenantTombstone.tenant_id == a)).one()
        assert (stone.slug, stone.deleted_by_email, stone.reason) == (
            "alpha", owner.email, "customer left")
        events = s.execute(text("SELECT event_type FROM platform_audit_events ORDER BY seq")
                           ).scalars().all()
        assert events[-2:] == ["tenant.deletion_requested", "tenant.deleted"]
    found = database.tenant_exists(services_admin(services), database=names[0],
                                   roles=names[1:])
    assert found == {names[0]: False, names[1]: False, names[2]: False}
    assert tenant_state(services, b) == "active"  # the other tenant is untouched


def test_json_api_creates_and_reads_tenants(client, services, db, database_url, primary_server,
                                            local_kek):
    owner = make_user(db)
    sign_in(client, owner.email)
    token = csrf_token(client, "/tenants")
    created = client.post("/api/tenants", json={"slug": "api-made", "key_provider": "local",
                                                "key_ref": local_kek},
                          headers={"X-CSRF-Token": token})
    assert created.status_code == 202, created.text
    body = created.json()
    assert body["state"] == "provisioning" and body["provisioning"]["total"] == 6
    run_pending_jobs(services, database_url)
    got = client.get(created.headers["location"]).json()
    assert got["state"] == "active" and got["provisioning"]["done"] == 6
    for bad, status, words in (
        ({"slug": "x", "key_provider": "local", "key_ref": local_kek}, 422, "slug"),
        ({"slug": "ok-slug", "key_provider": "vault9", "key_ref": "k"}, 422, "not available"),
        ({"slug": "api-made", "key_provider": "local", "key_ref": local_kek}, 409, "exists"),
        ({"slug": "ok2", "key_provider": "local", "key_ref": "k", "extra": 1}, 422, "extra"),
    ):
        response = client.post("/api/tenants", json=bad, headers={"X-CSRF-Token": token})
        assert response.status_code == status and words in response.json()["error"], bad
    wrong_type = client.post("/api/tenants", content=b"slug=x",
                             headers={"X-CSRF-Token": token,
                                      "Content-Type": "application/x-www-form-urlencoded"})
    assert wrong_type.status_code == 415


def test_key_test_button(client, db, services, local_kek):
    owner = make_user(db)
    sign_in(client, owner.email)
    token = csrf_token(client, "/tenants")
    ok = client.post("/tenants/test-key", data={"key_provider": "local", "key_ref": local_kek},
                     headers={"X-CSRF-Token": token, "HX-Request": "true"})
    assert ok.status_code == 200 and "Wrap and unwrap worked" in ok.text
    missing = client.post("/tenants/test-key", data={"key_provider": "local",
                                                     "key_ref": "no-such-key"},
                          headers={"X-CSRF-Token": token, "HX-Request": "true"})
    assert missing.status_code == 200 and "tenant key unavailable" in missing.text
    assert 'class="error"' in missing.text


def test_api_keys_are_shown_once_and_refused_when_suspended_or_revoked(client, services, db,
                                                                        two_tenants):
    from starlette.testclient import TestClient

    from control_plane.models import ApiKey

    owner, a, _ = two_tenants
    sign_in(client, owner.email)
    created = post_form(client, f"/tenants/{a}/api-keys", {"name": "ci-agent",
                                                           "scopes": "read"},
                        page=f"/tenants/{a}")
    assert created.status_code == 201
    key = re.search(r'data-testid="new-api-key">([^<]+)<', created.text).group(1)
    assert key.startswith("mg_") and key not in client.get(f"/tenants/{a}").text
    with db() as s:
        row = s.scalars(select(ApiKey)).one()
        assert key not in (row.secret_hash, row.prefix) and len(row.secret_hash) == 64
    with TestClient(client.app, base_url="http://testserver") as program:
        auth = {"Authorization": f"Bearer {key}"}
        me = program.get("/api/whoami", headers=auth)
        assert me.status_code == 200 and me.json()["tenant"]["slug"] == "alpha"
        assert program.get("/api/whoami", headers={"Authorization": "Bearer mg_x_y"}
                           ).status_code == 401
        post_form(client, f"/tenants/{a}/suspend", {"reason": "unpaid"}, page=f"/tenants/{a}")
        refused = program.get("/api/whoami", headers=auth)
        assert refused.status_code == 403 and "suspended" in refused.json()["error"]
        post_form(client, f"/tenants/{a}/resume", page=f"/tenants/{a}")
        assert program.get("/api/whoami", headers=auth).status_code == 200
        post_form(client, f"/tenants/{a}/api-keys/{row.id}/revoke", page=f"/tenants/{a}")
        revoked = program.get("/api/whoami", headers=auth)
        assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]


def test_provisioning_takes_a_ready_spare_and_the_worker_refills(services, db, database_url,
                                                                  primary_server, local_kek,
                                                                  pg_server_url):
    from control_plane.tenancy.database import SPARE_PREFIX, refill_spares, spare_namespace
    from workers.worker import refill_all_servers

    namespace = spare_namespace(database_url)

    def spares(prefix: str = SPARE_PREFIX + namespace) -> list[str]:
        with psycopg.connect(pg_server_url) as conn:
            return [r[0] for r in conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                (prefix,)).fetchall()]

    # another installation on the same server (here: another test's control database) keeps
    # its own spares, which this installation neither claims nor drops
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        foreign = f"{SPARE_PREFIX}{'0' * 8}_{'f' * 16}_{secrets.token_hex(4)}"
        conn.execute(f'CREATE DATABASE "{foreign}"')
    try:
        assert refill_spares(services_admin(services), namespace=namespace, want=1) == 1
        (spare,) = spares()
        owner = make_user(db)
        tenant_id = create_tenant(services, owner.email, "quick")
        assert run_pending_jobs(services, database_url)[0]["outcome"] == "succeeded"
        assert spares() == []  # renamed into place
        ctx = tenant_ctx(services, tenant_id)
        with ctx.session() as s, s.begin():  # a working tenant database, owned by its roles
            credentials.do_add_credential(s, ctx, name="k", provider="openai", secret=SECRET,
                                          contact_email=None)
        with psycopg.connect(services_admin(services)) as conn:
            owner_of = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE "
                                    "datname = %s", (f"magistrate_t_{tenant_id}",)).fetchone()[0]
            assert owner_of == f"magistrate_t_{tenant_id}_owner"
            acl = conn.execute("SELECT datacl::text FROM pg_database WHERE datname = %s",
                               (f"magistrate_t_{tenant_id}",)).fetchone()[0]
            assert not re.search(r"(^|[{,])=", acl)
        assert refill_all_servers() >= 2 and len(spares()) == 2  # the worker's periodic refill
        assert spare not in spares()
        assert spares(foreign) == [foreign]
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            for name in [foreign, *spares()]:
                drop_database(conn, name)
