"""`magistrate migrate`'s fan-out over tenant databases: already-current tenants are skipped, an
outdated one is upgraded as its owner, a failing one is reported and stops no other, a rerun
resumes, and the command shows progress, a result per tenant and its exit code."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg import sql

from control_plane.migrations import ALEMBIC_ROOT, head_revision
from control_plane.models import Tenant
from control_plane.tenancy import database
from control_plane.tenancy.fanout import ensure_templates, migrate_tenants, one_line
from control_plane.tenancy.provisioning import tenant_secrets
from tests.conftest import TEST_SECRET_KEY
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs, tenant_state
from tests.factories import make_user

HEAD = head_revision("tenant")


@pytest.fixture
def tenants(services, db, database_url, primary_server, local_kek) -> dict[str, int]:
    owner = make_user(db)
    ids = {slug: create_tenant(services, owner.email, slug) for slug in ("alpha", "bravo",
                                                                         "charlie")}
    run_pending_jobs(services, database_url)
    assert {tenant_state(services, i) for i in ids.values()} == {"active"}
    return ids


def owner_url(services, tenant_id: int) -> str:
    with services.session_factory() as s:
        return services.tenant_connections.owner_url(s.get(Tenant, tenant_id))


def admin_conn(services, tenant_id: int) -> psycopg.Connection:
    with services.session_factory() as s:
        secrets = tenant_secrets(services.sealer, s.get(Tenant, tenant_id))
    return psycopg.connect(database.url_for(secrets.admin_url, database="postgres"),
                           autocommit=True)


def make_outdated(services, tenant_id: int) -> None:
    """A tenant left behind at base: its owner runs the tree's downgrade all the way."""
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_ROOT / "tenant"))
    cfg.attributes["database_url"] = owner_url(services, tenant_id)
    command.downgrade(cfg, "base")
    with psycopg.connect(owner_url(services, tenant_id)) as conn:
        assert conn.execute("SELECT to_regclass('audit_events')").fetchone() == (None,)


def set_owner_password(services, tenant_id: int, password: str | None) -> None:
    """Lock the owner role out (``None``: let it in again with its sealed password). NOLOGIN
    refuses the connection whatever the server's authentication method (a server with trust
    authentication ignores passwords)."""
    with services.session_factory() as s:
        tenant = s.get(Tenant, tenant_id)
        role, sealed = tenant.owner_role, tenant_secrets(services.sealer, tenant).owner_password
    with admin_conn(services, tenant_id) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} " + ("LOGIN" if password is None else "NOLOGIN")
                             + " PASSWORD {}").format(sql.Identifier(role), sql.Literal(sealed)))


def assert_tables_owned_by_owner(services, tenant_id: int) -> None:
    with services.session_factory() as s:
        tenant = s.get(Tenant, tenant_id)
        owner_role, app = tenant.owner_role, services.tenant_connections.app_url(tenant)
    with psycopg.connect(owner_url(services, tenant_id)) as conn:
        owners = dict(conn.execute(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall())
    assert {"audit_events", "provider_credentials", "alembic_version"} <= owners.keys()
    assert set(owners.values()) == {owner_role}
    with psycopg.connect(app) as conn:  # the service role can use the recreated tables
        assert conn.execute("SELECT count(*) FROM audit_events").fetchone() == (0,)


def by_slug(results) -> dict:
    return {r.slug: r for r in results}


def test_provisioned_tenants_are_already_current_and_provisioning_ones_are_skipped(
        services, db, tenants):
    create_tenant(services, "owner@example.com", "delta")  # still provisioning: not touched
    seen = []
    results = migrate_tenants(db, services.sealer, concurrency=2,
                              progress=lambda done, total, r: seen.append((done, total, r.slug)))
    assert [r.slug for r in results] == ["alpha", "bravo", "charlie"]
    for r in results:
        assert (r.status, r.before, r.after, r.error) == ("already-current", HEAD, HEAD, None)
        assert r.server == "primary" and r.seconds >= 0
    assert [(d, t) for d, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert sorted(slug for _, _, slug in seen) == ["alpha", "bravo", "charlie"]
    [template] = ensure_templates(db, services.sealer)
    assert (template.server, template.template, template.error) == (
        "primary", database.template_name(), None)


def test_an_outdated_tenant_is_upgraded_a_failing_one_stops_no_other_and_a_rerun_resumes(
        services, db, tenants):
    make_outdated(services, tenants["alpha"])
    make_outdated(services, tenants["bravo"])
    set_owner_password(services, tenants["bravo"], "not-the-sealed-password")

    first = by_slug(migrate_tenants(db, services.sealer, concurrency=3))
    assert (first["alpha"].status, first["alpha"].before, first["alpha"].after) == (
        "ok", None, HEAD)
    assert first["charlie"].status == "already-current"
    bravo = first["bravo"]
    assert (bravo.status, bravo.before, bravo.after) == ("failed", None, None)
    assert "not permitted to log in" in bravo.error
    assert bravo.error.startswith("connection failed") and "\n" not in bravo.error
    assert_tables_owned_by_owner(services, tenants["alpha"])

    set_owner_password(services, tenants["bravo"], None)
    second = by_slug(migrate_tenants(db, services.sealer, concurrency=3))
    assert {slug: r.status for slug, r in second.items()} == {
        "alpha": "already-current", "bravo": "ok", "charlie": "already-current"}
    assert (second["bravo"].before, second["bravo"].after) == (None, HEAD)
    assert_tables_owned_by_owner(services, tenants["bravo"])


def run_migrate(database_url: str, home, *args: str, stderr=subprocess.PIPE):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(MAGISTRATE_DATABASE_URL=database_url, MAGISTRATE_SECRET_KEY=TEST_SECRET_KEY,
               MAGISTRATE_ENV="test", MAGISTRATE_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "control_plane", "migrate", *args], env=env,
                          stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=180)


def test_migrate_command_reports_each_tenant_and_fails_when_one_does(
        services, db, database_url, tenants, tmp_path):
    make_outdated(services, tenants["alpha"])
    make_outdated(services, tenants["charlie"])
    set_owner_password(services, tenants["bravo"], "not-the-sealed-password")

    result = run_migrate(database_url, tmp_path, "--concurrency", "3")
    assert result.returncode == 1, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("control plane migrated to revision")
    assert f"template on primary: {database.template_name()} ready" in out
    rows = {line.split()[1]: line.split() for line in out if line.split()[:1] in (
        [str(i)] for i in tenants.values())}
    assert rows["alpha"][3:6] == ["ok", "base", HEAD]
    assert rows["charlie"][3:6] == ["ok", "base", HEAD]
    assert rows["bravo"][3] == "failed" and "not permitted to log in" in " ".join(
        rows["bravo"])
    assert out[-1] == "tenants: 2 ok, 1 failed (2 upgraded, 0 already current)"
    # not a terminal: one progress line per tenant on stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert sorted(line.split("]")[0] for line in progress) == ["[1/3", "[2/3", "[3/3"]
    assert any("bravo" in line and ": failed" in line for line in progress)
    assert "Traceback" not in result.stderr
    # the two upgraded concurrently, each in its own database, as its own owner
    assert_tables_owned_by_owner(services, tenants["alpha"])
    assert_tables_owned_by_owner(services, tenants["charlie"])

    set_owner_password(services, tenants["bravo"], None)
    primary, replica = pty.openpty()  # stderr on a terminal: a redrawn bar
    try:
        again = run_migrate(database_url, tmp_path, stderr=replica)
        os.close(replica)
        replica = -1
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
        if replica != -1:
            os.close(replica)
    assert again.returncode == 0, shown.decode()
    assert again.stdout.splitlines()[-1] == (
        "tenants: 3 ok, 0 failed (0 upgraded, 3 already current)")
    bar = shown.decode()
    assert "\r[" in bar and bar.rstrip().endswith("] 3/3") and "alpha" not in bar


def test_migrate_refuses_a_concurrency_below_one(tmp_path):
    result = run_migrate("postgresql://x@127.0.0.1:1/nothing", tmp_path, "--concurrency", "0")
    assert result.returncode == 1
    assert "magistrate: --concurrency must be at least 1" in result.stderr


def test_an_error_line_never_carries_the_password():
    secret = "s3cr:et/pass"
    error = RuntimeError(f"(psycopg.OperationalError) bad dsn postgresql://o:{secret}@h/db "
                         f"and s3cr%3Aet%2Fpass\n(Background on this error at: x)")
    line = one_line(error, [secret])
    assert line == "bad dsn postgresql://o:**********@h/db and **********"
