"""What the database itself lets each role do, probed with real connections.

- Inside a tenant database, the service (``_app``) role holds DML only, and less on the audit
  tables and ``alembic_version``: enumerated over every table, sequence, function and trigger
  of the database, so a new object cannot forget it — for a tenant provisioned now and for one
  upgraded in place by ``magistrate migrate`` from before the retention guard (t0012).
- On the server, every database is closed to PUBLIC (``close_databases_to_public``), and the
  admin role keeps CONNECT where it needs it.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy import func, select

from control_plane.migrations import ALEMBIC_ROOT, upgrade_tenant
from control_plane.models import Tenant
from control_plane.tenancy import database
from tenant_runtime import audit
from tenant_runtime.audit_retention import prune
from tenant_runtime.checkpoints import make_checkpoint
from tenant_runtime.context import Actor
from tenant_runtime.models import AuditEvent
from tests.conftest import drop_database, with_database
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
DML = {"SELECT", "INSERT", "UPDATE", "DELETE"}
EXPECTED_EXCEPTIONS = {  # tables where the service role holds less than DML
    "audit_events": {"SELECT", "INSERT"},
    "audit_checkpoints": {"SELECT", "INSERT"},
    "alembic_version": {"SELECT"},
}
AUDIT_TRIGGERS = {
    ("audit_events", "audit_events_append_only"),
    ("audit_events", "audit_events_retention_cut"),
    ("audit_events", "audit_events_no_truncate"),
    ("audit_checkpoints", "audit_checkpoints_append_only"),
    ("audit_checkpoints", "audit_checkpoints_no_truncate"),
}


@pytest.fixture
def tenant(services, db, database_url, primary_server, local_kek):
    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "roles")
    run_pending_jobs(services, database_url)
    with services.session_factory() as s:
        t = s.get(Tenant, tenant_id)
        ctx = services.tenant_connections.context(s, t, Actor("system"))
        return (tenant_id, ctx, services.tenant_connections.app_url(t),
                services.tenant_connections.owner_url(t), t.app_role)


def record_events(ctx, n: int) -> None:
    with ctx.session() as s, s.begin():
        for i in range(n):
            audit.record(s, "test.event", actor=Actor("system"), details={"i": i})


def checkpoint_now(ctx) -> int:
    with ctx.session() as s, s.begin():
        return make_checkpoint(s, ctx, force=True).seq


def event_count(ctx) -> int:
    with ctx.session() as s:
        return s.scalar(select(func.count()).select_from(AuditEvent))


def assert_service_role_confined(app_url: str) -> None:
    """Every object of the tenant database, seen from the service role."""
    with psycopg.connect(app_url) as conn:
        rows = conn.execute(
            "SELECT c.relname, p.priv FROM pg_class c JOIN pg_namespace n ON "
            "n.oid = c.relnamespace CROSS JOIN unnest(%s::text[]) AS p(priv) "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            "AND has_table_privilege(c.oid, p.priv)", (list(TABLE_PRIVILEGES),)).fetchall()
        tables = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')")]
        held: dict[str, set[str]] = {t: set() for t in tables}
        for table, privilege in rows:
            held[table].add(privilege)
        assert {"audit_events", "audit_checkpoints", "alembic_version"} <= set(held)
        for table, privileges in held.items():
            assert privileges == EXPECTED_EXCEPTIONS.get(table, DML), table
        sequences = conn.execute(
            "SELECT c.relname, has_sequence_privilege(c.oid, 'UPDATE') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'S'").fetchall()
        assert sequences and not [name for name, update in sequences if update]
        functions = conn.execute(
            "SELECT p.oid::regprocedure::text, p.prosecdef, "
            "has_function_privilege(p.oid, 'EXECUTE') FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
        ).fetchall()
        assert "prune_audit_events(bigint)" in [f[0] for f in functions]
        assert [f[0] for f in functions if f[1]] == []  # no SECURITY DEFINER anywhere
        assert [f[0] for f in functions if f[2]] == []  # and nothing it may call
        owns = conn.execute(
            "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid) + "
            "(SELECT count(*) FROM pg_proc WHERE proowner = r.oid) "
            "FROM pg_roles r WHERE r.rolname = current_user").fetchone()[0]
        assert owns == 0
        assert conn.execute(
            "SELECT has_schema_privilege('public', 'CREATE'), "
            "has_database_privilege(current_database(), 'CREATE'), "
            "has_database_privilege(current_database(), 'TEMPORARY')").fetchone() == (
                False, False, False)
        triggers = conn.execute(
            "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger "
            "WHERE tgrelid IN ('audit_events'::regclass, 'audit_checkpoints'::regclass) "
            "AND NOT tgisinternal").fetchall()
        assert {(t[0], t[1]) for t in triggers} == AUDIT_TRIGGERS
        assert {t[2] for t in triggers} == {"O"}  # every one enabled


def test_the_service_role_holds_dml_only_on_every_object_of_its_database(tenant):
    _, _, app_url, _, _ = tenant
    assert_service_role_confined(app_url)


def test_a_tenant_upgraded_in_place_gets_the_retention_guard(services, tenant):
    """A tenant at t0011 (as every tenant was before the fix): both probes of finding 10 work
    there, and the service role may rewrite alembic_version. ``magistrate migrate`` (its
    upgrade, as the owner) closes all three, and the database ends as a new tenant's does."""
    tenant_id, ctx, app_url, owner_url, app_role = tenant
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_ROOT / "tenant"))
    cfg.attributes["database_url"] = owner_url
    record_events(ctx, 4)  # seq 1-4, then the checkpoint key's creation at 5
    first = checkpoint_now(ctx)
    assert first == 5
    record_events(ctx, 3)  # 6-8
    command.downgrade(cfg, "t0011")
    with psycopg.connect(owner_url) as conn:  # what apply_privileges granted before the fix
        conn.execute(sql.SQL("GRANT INSERT, UPDATE, DELETE ON alembic_version TO {}").format(
            sql.Identifier(app_role)))
    with psycopg.connect(app_url) as conn:  # the reported probe: the app role prunes
        assert conn.execute("SELECT prune_audit_events(%s)", (first,)).fetchone()[0] == first
        conn.execute("UPDATE alembic_version SET version_num = version_num")
    assert event_count(ctx) == 3
    with psycopg.connect(owner_url) as conn:  # and the owner switches the trigger off
        conn.execute("SELECT set_config('magistrate.audit_retention', 'on', true)")
        assert conn.execute("DELETE FROM audit_events WHERE seq = 7").rowcount == 1
    upgrade_tenant(owner_url)

    assert_service_role_confined(app_url)
    with psycopg.connect(app_url) as conn:
        for statement in ("SELECT prune_audit_events(1)",
                          "UPDATE alembic_version SET version_num = version_num"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
    before = event_count(ctx)
    assert before == 2
    with psycopg.connect(owner_url) as conn:
        conn.execute("SELECT set_config('magistrate.audit_retention', 'on', true)")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM audit_events")
    assert event_count(ctx) == before
    # retention as the owner still works, up to the next checkpoint
    record_events(ctx, 2)  # 9-10
    second = checkpoint_now(ctx)
    assert second == 10
    with services.session_factory() as s, services.tenant_connections.owner_context(
            s, s.get(Tenant, tenant_id), Actor("system")) as octx, \
            octx.session() as ts, ts.begin():
        result = prune(ts, octx, now=datetime.now(UTC) + timedelta(days=400))
    assert (result.upto_seq, result.removed) == (second, 4)  # 6, 8, 9 and 10
    with ctx.session() as s:
        assert s.scalar(select(func.min(AuditEvent.seq))) == second + 1


# ------------------------------------------------------------------------------- the server


def public_grants(conn) -> dict[str, str]:
    """Databases whose ACL still grants CONNECT or TEMPORARY to PUBLIC."""
    return dict(conn.execute(
        "SELECT d.datname, string_agg(a.privilege_type, ',') FROM pg_database d, "
        "aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a "
        "WHERE a.grantee = 0 GROUP BY d.datname").fetchall())


def test_every_database_of_the_server_is_closed_to_public_and_the_admin_still_connects(
        pg_server_url, database_url):
    probe = f"magistrate_probe_{secrets.token_hex(4)}"
    control = database_url.rsplit("/", 1)[1].split("?")[0]
    try:
        # under the server's privileges lock, as close_databases_to_public takes it: other test
        # processes sweep the same server, and must not close these between setup and sweep
        with psycopg.connect(with_database(pg_server_url, "postgres"), autocommit=True) as conn, \
                database.privileges_lock(conn):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(probe)))
            # an installation from before the fix: its control database and `postgres` open
            for name in (control, "postgres", "template1"):
                conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO PUBLIC"
                                     ).format(sql.Identifier(name)))
            lockdown = database.close_to_public_under_lock(conn, pg_server_url)
        assert {probe, control, "postgres", "template1"} <= set(lockdown.closed)
        assert lockdown.left_open == () and lockdown.warning() is None
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            still_open = public_grants(conn)
            if still_open:  # created on this shared server since: a second run closes them
                database.close_databases_to_public(pg_server_url)
                still_open = {k: v for k, v in public_grants(conn).items() if k in still_open}
            assert still_open == {}
        for name in ("postgres", control, probe):  # the admin role still connects
            psycopg.connect(with_database(pg_server_url, name)).close()
        assert probe not in database.close_databases_to_public(pg_server_url).closed
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            drop_database(conn, probe)


def test_a_non_superuser_admin_keeps_connect_and_is_told_what_it_cannot_close(pg_server_url):
    """An admin role with CREATEDB and CREATEROLE only (a managed Postgres): it closes the
    databases it owns, keeps CONNECT on its own database by an explicit grant, and names the
    ones it may not close, with the SQL a superuser runs."""
    suffix = secrets.token_hex(4)
    role, own, foreign = (f"magistrate_probe_admin_{suffix}", f"magistrate_probe_ctl_{suffix}",
                          f"magistrate_probe_other_{suffix}")
    ident = sql.Identifier
    password = secrets.token_hex(16)  # the embedded server asks for one; trust ignores it
    parts = urlsplit(with_database(pg_server_url, own))
    admin = urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}"))
    try:
        # the setup and the sweep under the server's privileges lock (held by the superuser's
        # session): another test process's sweep would otherwise close `foreign` in between
        with psycopg.connect(with_database(pg_server_url, "postgres"), autocommit=True) as conn, \
                database.privileges_lock(conn):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE PASSWORD {}").format(
                ident(role), sql.Literal(password)))
            # `postgres` is closed on a managed server: the operator grants CONNECT on it
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE postgres TO {}").format(ident(role)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident(own), ident(role)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(ident(foreign)))
            with psycopg.connect(with_database(admin, "postgres"), autocommit=True) as mine:
                lockdown = database.close_to_public_under_lock(mine, admin)
        assert own in lockdown.closed and foreign in lockdown.left_open
        assert own not in lockdown.left_open
        warning = lockdown.warning()
        assert warning is not None and role in warning
        assert f'REVOKE CONNECT, TEMPORARY ON DATABASE "{foreign}" FROM PUBLIC;' in warning
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            acl = conn.execute("SELECT datacl::text FROM pg_database WHERE datname = %s",
                               (own,)).fetchone()[0]
            assert f"{role}=c/" in acl or f"{role}=CTc/" in acl
            assert own not in public_grants(conn)
        psycopg.connect(admin).close()  # its own database still opens for it
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            for name in (own, foreign):
                drop_database(conn, name)
            conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE postgres FROM {}").format(
                ident(role)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident(role)))
