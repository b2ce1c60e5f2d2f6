"""Shared fixtures: real Postgres and real Redis, never mocks of our own code.

``MAGISTRATE_TEST_DATABASE_URL`` (a server URL whose role may create databases) and
``MAGISTRATE_TEST_REDIS_URL`` point the suite at running servers; without them it starts its own
embedded Postgres and Redis in a temporary folder. Each test run creates a fresh database,
migrated by the real Alembic tree, and every test starts from empty tables.
"""

from __future__ import annotations

import difflib
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from control_plane.embedded import EmbeddedPostgres, EmbeddedRedis
from control_plane.migrations import upgrade_control
from control_plane.settings import Secret, Settings
from control_plane.tenancy.database import SPARE_PREFIX, spare_namespace
from control_plane.web.app import build_app, build_services
from control_plane.web.services import Services

TEST_SECRET_KEY = "test-secret-key-" + "k" * 40
# Tenant ids (and so tenant database and role names) of this run start at a random base, so
# two suites sharing one Postgres server (two developers, a helper and CI, the processes of one
# pytest-xdist run) never collide. Each run owns the ids of its window and drops the leftovers
# in it (tests/control_plane/tenancy/conftest.py): the bases are whole windows apart, so two
# runs' windows are the same or disjoint, never overlapping (and below 2**31).
TENANT_ID_WINDOW = 10_000
TENANT_ID_BASE = (secrets.randbelow(210_000) + 10) * TENANT_ID_WINDOW
RESET_SQL = """
TRUNCATE users, backup_codes, tenants, memberships, web_sessions, api_keys, db_servers,
         identity_providers, external_identities, sso_authorizations, sso_policy,
         scim_tokens, scim_groups, scim_group_members, scim_users,
         tenant_keys, tenant_tombstones, jobs, backups, mcp_oauth_clients,
         platform_audit_events, platform_checkpoints, platform_checkpoint_keys
         RESTART IDENTITY CASCADE;
UPDATE platform_audit_head SET seq = 0, chain_hash = repeat('0', 64);
"""
RESTART_TENANT_IDS = f"ALTER TABLE tenants ALTER COLUMN id RESTART WITH {TENANT_ID_BASE}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def refused_port() -> Iterator[Callable[[], int]]:
    """Ports nothing listens on, for the test's length: each call binds one and keeps it bound,
    never listening, so a connection is refused and no other test process (pytest-xdist runs
    several) can start a server on it meanwhile, as it could on a port bound and released."""
    held: list[socket.socket] = []

    def take() -> int:
        sock = socket.socket()
        held.append(sock)
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

    yield take
    for sock in held:
        sock.close()


def worker_redis_url(url: str) -> str:
    """The Redis database of this test process: the suite flushes its database before each
    test, so each pytest-xdist worker (``gw0``, ``gw1``, ...) takes the given number plus its
    own index, modulo Redis's 16 databases."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    number = (base + int(worker[2:])) % 16
    return urlunsplit((parts.scheme, parts.netloc, f"/{number}", parts.query, ""))


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


@pytest.fixture(scope="session")
def embedded_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="magistrate-test-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url(embedded_home: Path) -> Iterator[str]:
    """A URL of a Postgres server (maintenance database) the suite may create databases on."""
    external = os.environ.get("MAGISTRATE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(embedded_home, free_port())
    server.start()
    yield server.url("postgres")
    server.stop()


@pytest.fixture(scope="session")
def redis_url(embedded_home: Path) -> Iterator[str]:
    external = os.environ.get("MAGISTRATE_TEST_REDIS_URL")
    if external:
        yield worker_redis_url(external)
        return
    server = EmbeddedRedis(embedded_home, free_port())
    server.start()
    yield server.url(0)
    server.stop()


def drop_database(conn: psycopg.Connection, name: str) -> None:
    """``DROP DATABASE`` on the shared test server, ``conn`` being on its ``postgres`` database:
    under the server's privileges lock, since another test process's sweep
    (``close_databases_to_public``) may be revoking PUBLIC's rights on this very database, and
    Postgres fails one of the two ("tuple concurrently updated")."""
    from control_plane.tenancy.database import privileges_lock

    with privileges_lock(conn):
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


# The spare databases of this process's control database(s) (``magistrate_spare_<namespace>``):
# other test processes share the server and keep spares of their own, which are not ours to drop.
OUR_SPARES: set[str] = set()


@pytest.fixture(scope="session")
def database_url(pg_server_url: str) -> Iterator[str]:
    """A fresh control-plane database for this run, migrated by the real migrations."""
    name = f"magistrate_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(pg_server_url, name)
    upgrade_control(url)
    spares_of_this_run = SPARE_PREFIX + spare_namespace(url)
    OUR_SPARES.add(spares_of_this_run)
    yield url
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        spares = [str(r[0]) for r in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
            (spares_of_this_run,))]
        for database in [name, *spares]:
            drop_database(conn, database)


def make_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "secret_key": Secret(TEST_SECRET_KEY),
        "public_url": "http://testserver",
        "allowed_hosts": ("testserver", "127.0.0.1", "localhost"),
        "login_max_per_ip": 50,
        "login_max_per_account": 5,
        "login_window_seconds": 60,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@contextmanager
def root_logger_kept() -> Iterator[None]:
    """The root logger (its handlers and level) as it was before the block. The CLI run
    in-process configures logging for its process: one handler on the standard error of that
    moment, which under ``capsys`` is the test's capture, closed when the test ends. Left in
    place, any later record (a thread still running, a fixture's teardown, the next test's
    setup) fails with "--- Logging error --- ValueError: I/O operation on closed file"."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def run_cli(argv: list[str]) -> int:
    """``magistrate ARGV`` in this process (its exit code); its logging set-up undone at once."""
    from control_plane.cli import main

    with root_logger_kept():
        return main(argv)


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """Whatever a test configures, the next one starts with the root logger it had."""
    with root_logger_kept():
        yield


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def services(settings: Settings, database_url: str, redis_url: str,
             redis_client: redis.Redis) -> Iterator[Services]:
    svc = build_services(settings, database_url=database_url, redis_url=redis_url,
                         secret_key=TEST_SECRET_KEY)
    with svc.engine.begin() as conn:
        conn.exec_driver_sql(RESET_SQL)
        conn.exec_driver_sql(RESTART_TENANT_IDS)
    yield svc
    svc.close()
    if svc.key_cache is not None:  # its listener thread ended too: none outlives the test
        assert svc.key_cache.close(wait=30), "the key cache's listener still runs"


@pytest.fixture
def db(services: Services) -> sessionmaker[Session]:
    """The session factory of the test's (emptied) control-plane database."""
    return services.session_factory


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(build_app(services), base_url="http://testserver",
                    raise_server_exceptions=False) as test_client:
        yield test_client


# ------------------------------------------------------------------------------- snapshots

UPDATE_SNAPSHOTS = "MAGISTRATE_UPDATE_SNAPSHOTS"
SNAPSHOT_DIFF_LINES = 60
REPOSITORY = Path(__file__).resolve().parents[1]


def assert_snapshot(path: Path, actual: str, *, rewrite: str) -> None:
    """``actual`` equals the committed file ``path``, so a change shows up as a reviewed diff.

    On a difference, fail with a short unified diff and ``rewrite``, the one command that
    rewrites the file; with ``MAGISTRATE_UPDATE_SNAPSHOTS=1`` write the file instead."""
    if os.environ.get(UPDATE_SNAPSHOTS) == "1":
        path.write_text(actual, encoding="utf-8")
        return
    expected = path.read_text(encoding="utf-8") if path.is_file() else ""
    if actual == expected:
        return
    name = (path.relative_to(REPOSITORY) if path.is_relative_to(REPOSITORY) else path).as_posix()
    diff = list(difflib.unified_diff(expected.splitlines(), actual.splitlines(),
                                     fromfile=f"{name} (committed)", tofile=f"{name} (live)",
                                     lineterm="", n=2))
    if len(diff) > SNAPSHOT_DIFF_LINES:
        diff = [*diff[:SNAPSHOT_DIFF_LINES], f"... ({len(diff) - SNAPSHOT_DIFF_LINES} more lines)"]
    pytest.fail(f"{name} differs from what the code produces. If the change is intended, "
                f"rewrite it with\n\n    {rewrite}\n\nand commit it with the change.\n\n"
                + "\n".join(diff), pytrace=False)
