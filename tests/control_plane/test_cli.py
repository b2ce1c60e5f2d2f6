"""The `magistrate` command: help everywhere, clear failures, user creation, migrations."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from control_plane.models import User
from tests.conftest import TEST_SECRET_KEY


def run(*args: str, env_extra: dict[str, str] | None = None, stdin: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "control_plane", *args], env=env,
                          input=stdin, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [[], ["up"], ["web"], ["worker"], ["migrate"], ["user"],
                                  ["user", "create"], ["user", "reset-password"], ["doctor"]])
def test_every_command_has_help(args):
    result = run(*args, "--help")
    assert result.returncode == 0
    assert "usage: magistrate" in result.stdout


def test_unknown_command_fails_clearly():
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.fixture
def cli_env(database_url, redis_url, services):
    return {"MAGISTRATE_DATABASE_URL": database_url, "MAGISTRATE_REDIS_URL": redis_url,
            "MAGISTRATE_SECRET_KEY": TEST_SECRET_KEY, "MAGISTRATE_ENV": "test"}


def test_user_create_prints_a_one_time_password_once(cli_env, db):
    result = run("user", "create", "--email", "Ops@Example.com", "--name", "Ops",
                 env_extra=cli_env)
    assert result.returncode == 0, result.stderr
    assert "created user ops@example.com" in result.stdout
    assert "one-time password (shown once):" in result.stdout
    with db() as s:
        user = s.scalars(select(User).where(User.email == "ops@example.com")).one()
        assert user.must_change_password and not user.is_owner
        password = result.stdout.rsplit(":", 1)[1].strip()
        assert password not in user.password_hash and user.password_hash.startswith("$argon2id$")


def test_user_create_with_password_from_stdin_and_duplicate(cli_env, db):
    ok = run("user", "create", "--email", "o@example.com", "--owner", "--password-stdin",
             env_extra=cli_env, stdin="a-strong-password-123\n")
    assert ok.returncode == 0, ok.stderr
    assert "one-time password" not in ok.stdout
    again = run("user", "create", "--email", "o@example.com", env_extra=cli_env)
    assert again.returncode == 1
    assert "magistrate: An account with the e-mail o@example.com already exists." in again.stderr
    weak = run("user", "create", "--email", "w@example.com", "--password-stdin",
               env_extra=cli_env, stdin="short\n")
    assert weak.returncode == 1 and "at least 12 characters" in weak.stderr


def test_migrate_reports_the_revision(cli_env):
    result = run("migrate", env_extra=cli_env)
    assert result.returncode == 0, result.stderr
    from control_plane.migrations import head_revision

    assert f"control plane migrated to revision {head_revision()}" in result.stdout


def public_privileges(conn, name: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT a.privilege_type FROM pg_database d, "
        "aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a "
        "WHERE d.datname = %s AND a.grantee = 0", (name,))]


def test_migrate_closes_the_control_database_and_postgres_to_public(cli_env, pg_server_url):
    """An installation from before the fix: Postgres's defaults let every role of the server
    (tenants' roles included) open the control database and `postgres`. `magistrate migrate`
    takes CONNECT and TEMP from PUBLIC there, and connects again afterwards."""
    import psycopg

    control = cli_env["MAGISTRATE_DATABASE_URL"].rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        for name in (control, "postgres"):
            conn.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{name}" TO PUBLIC')
            assert sorted(public_privileges(conn, name)) == ["CONNECT", "TEMPORARY"]
    for _ in range(2):  # and again: nothing left to do, same result
        result = run("migrate", env_extra=cli_env)
        assert result.returncode == 0, result.stderr
        assert "warning" not in result.stderr
        with psycopg.connect(pg_server_url) as conn:
            assert public_privileges(conn, control) == public_privileges(conn, "postgres") == []


def test_unreachable_database_is_a_clear_failure(tmp_path, refused_port):
    result = run("migrate", env_extra={
        "MAGISTRATE_DATABASE_URL": f"postgresql://x@127.0.0.1:{refused_port()}/nothing",
        "MAGISTRATE_HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "magistrate: cannot reach the control-plane database" in result.stderr
    assert "Traceback" not in result.stderr


def test_user_reset_password_prints_a_new_one_time_password_and_signs_the_user_out(
        cli_env, db, client):
    from control_plane.models import PlatformAuditEvent, WebSession
    from tests.factories import make_user, sign_in

    made = make_user(db, "lost@example.com")
    assert sign_in(client, made.email, made.password).status_code == 303
    assert client.get("/account").status_code == 200
    result = run("user", "reset-password", "Lost@Example.com", env_extra=cli_env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "password of lost@example.com reset; every session of it was signed out"
    prefix = "one-time password (shown once, change it at first sign-in): "
    assert lines[1].startswith(prefix) and len(lines) == 2
    one_time = lines[1][len(prefix):]
    # the session held before the reset is gone; the old password no longer signs in
    assert client.get("/account", follow_redirects=False).status_code in (302, 303)
    assert sign_in(client, made.email, made.password).status_code == 401
    answer = sign_in(client, made.email, one_time)
    assert answer.status_code == 303 and answer.headers["location"] == "/account"
    with db() as s:
        user = s.scalars(select(User).where(User.email == "lost@example.com")).one()
        assert user.must_change_password
        assert one_time not in user.password_hash
        assert s.scalars(select(WebSession).where(WebSession.user_id == user.id,
                                                  WebSession.revoked_at.is_(None))).all()
        event = s.scalars(select(PlatformAuditEvent)
                          .where(PlatformAuditEvent.event_type == "user.password_reset")).one()
        assert event.target_id == str(user.id) and event.details["sessions_revoked"] == 1
        assert event.actor_type == "system"


def test_user_reset_password_of_an_unknown_account_is_one_sentence(cli_env, db):
    result = run("user", "reset-password", "nobody@example.com", env_extra=cli_env)
    assert result.returncode == 1
    # off a terminal the JSON log lines share standard error; the user's part is one sentence
    said = [line for line in result.stderr.splitlines() if not line.startswith('{"ts":')]
    assert said == ["magistrate: No account has the e-mail nobody@example.com."]
