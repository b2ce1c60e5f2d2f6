"""Tenancy fixtures: the test Postgres server registered as the primary database server, a
local KEK, and a clean slate of tenant databases and roles for each test."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from control_plane.embedded import EmbeddedPostgres
from control_plane.keys.local import LocalKeyProvider
from control_plane.tenancy.servers import ensure_primary_server
from tests.conftest import (
    OUR_SPARES,
    TENANT_ID_BASE,
    TENANT_ID_WINDOW,
    drop_database,
    free_port,
    make_settings,
)


def drop_tenant_leftovers(server_url: str) -> None:
    """Drop this run's tenant databases and roles (ids from TENANT_ID_BASE on), and its spares
    (another test process's spares on the shared server are left alone)."""
    def ours(name: str) -> bool:
        digits = name.removeprefix("magistrate_t_").split("_")[0]
        return digits.isdigit() and 0 <= int(digits) - TENANT_ID_BASE < TENANT_ID_WINDOW

    with psycopg.connect(server_url, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname ~ "
                                    "'^magistrate_(t_[0-9]+|spare_.*)$'").fetchall():
            if ours(name) or name.startswith(tuple(OUR_SPARES)):
                drop_database(conn, name)
        for (name,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname ~ "
                                    "'^magistrate_t_[0-9]+_(owner|app)$'").fetchall():
            if ours(name):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def settings(tmp_path):
    return make_settings(home=tmp_path / "home")


@pytest.fixture
def local_kek(settings) -> str:
    LocalKeyProvider(settings.home / "keys").create_key("test-kek")
    return "test-kek"


@pytest.fixture
def primary_server(services, pg_server_url):
    drop_tenant_leftovers(pg_server_url)
    with services.session_factory() as s, s.begin():
        server = ensure_primary_server(s, url=pg_server_url, sealer=services.sealer)
        server_id = server.id
    yield server_id
    services.tenant_connections.close()
    drop_tenant_leftovers(pg_server_url)


@pytest.fixture(scope="session")
def second_server():
    home = Path(tempfile.mkdtemp(prefix="magistrate-second-pg-"))
    server = EmbeddedPostgres(home, free_port())
    server.start()
    yield server.url("postgres")
    server.stop()
    shutil.rmtree(home, ignore_errors=True)
