"""`magistrate tenant create` and `magistrate tenant list` as processes."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import psycopg
from sqlalchemy import select

from tests.conftest import TEST_SECRET_KEY, drop_database
from tests.control_plane.tenancy.helpers import tenant_state
from tests.factories import make_user


def run(*args: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "control_plane", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_create_and_list(services, db, database_url, redis_url, primary_server, local_kek,
                         settings):
    owner = make_user(db)
    env = {"MAGISTRATE_DATABASE_URL": database_url, "MAGISTRATE_REDIS_URL": redis_url,
           "MAGISTRATE_SECRET_KEY": TEST_SECRET_KEY, "MAGISTRATE_HOME": str(settings.home)}
    created = run("tenant", "create", "--slug", "cli-co", "--name", "CLI Co",
                  "--key-provider", "local", "--key-ref", local_kek, "--owner-email",
                  owner.email, env_extra=env)
    assert created.returncode == 0, created.stderr
    assert "tenant cli-co is active" in created.stdout
    tenant_id = int(created.stdout.split("(id ")[1].split(")")[0])
    assert tenant_state(services, tenant_id) == "active"
    listed = run("tenant", "list", env_extra=env)
    assert listed.returncode == 0 and "cli-co" in listed.stdout and "active" in listed.stdout
    for args, message in (
        (["--slug", "cli-co"], "already exists"),
        (["--slug", "bad slug"], "The slug must be"),
        (["--slug", "nokey", "--key-ref", "missing-kek"], "did not finish"),
    ):
        base = ["tenant", "create", "--key-provider", "local", "--key-ref", local_kek,
                "--owner-email", owner.email]
        merged = base + args if "--key-ref" not in args else [
            a for a in base if a not in ("--key-ref", local_kek)] + args
        failed = run(*merged, env_extra=env)
        assert failed.returncode == 1, (args, failed.stdout)
        assert message in failed.stderr and "Traceback" not in failed.stderr


def test_server_add_and_list(services, db, database_url, redis_url, primary_server, settings,
                             pg_server_url):
    env = {"MAGISTRATE_DATABASE_URL": database_url, "MAGISTRATE_REDIS_URL": redis_url,
           "MAGISTRATE_SECRET_KEY": TEST_SECRET_KEY, "MAGISTRATE_HOME": str(settings.home)}

    def run_stdin(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
        full = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
        full.update(env)
        return subprocess.run([sys.executable, "-m", "control_plane", *args], env=full,
                              input=stdin, capture_output=True, text=True, timeout=60)

    probe = f"magistrate_probe_{secrets.token_hex(4)}"  # a database open to PUBLIC there
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{probe}"')
    try:
        added = run_stdin("server", "add", "--name", "replica-two", "--url-stdin",
                          stdin=pg_server_url + "\n")
        assert added.returncode == 0, added.stderr
        with psycopg.connect(pg_server_url) as conn:  # closed by `server add`
            assert conn.execute(
                "SELECT count(*) FROM pg_database d, aclexplode(coalesce(d.datacl, "
                "acldefault('d', d.datdba))) a WHERE d.datname = %s AND a.grantee = 0",
                (probe,)).fetchone()[0] == 0
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            drop_database(conn, probe)
    assert "database server replica-two" in added.stdout
    listed = run("server", "list", env_extra=env)
    assert "primary" in listed.stdout and "replica-two" in listed.stdout
    refused = run_stdin("server", "add", "--name", "nowhere", "--url-stdin",
                        stdin="postgresql://x@127.0.0.1:1/postgres\n")
    assert refused.returncode == 1 and "cannot connect to that server" in refused.stderr
    with db() as s:
        from control_plane.models import DbServer

        sealed = s.scalars(select(DbServer.admin_url_sealed)).all()
        assert all(pg_server_url.encode() not in blob for blob in sealed)
