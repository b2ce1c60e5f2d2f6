"""The migrations build exactly the tables the models describe, in both trees: a model changed
without a migration (or the reverse) fails here, not in a customer's upgrade."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, create_engine

from control_plane import models as _control_models  # noqa: F401 - registers the tables
from control_plane.db import Base, sqlalchemy_url
from control_plane.migrations import upgrade_tenant
from tenant_runtime.models import TenantBase
from tests.conftest import with_database


def differences(url: str, metadata: MetaData) -> list[object]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


@pytest.fixture
def scratch_url(pg_server_url: str) -> Iterator[str]:
    name = f"magistrate_drift_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_control_tree_matches_the_control_models(database_url: str) -> None:
    assert differences(database_url, Base.metadata) == []


def test_the_tenant_tree_matches_the_tenant_models(scratch_url: str) -> None:
    upgrade_tenant(scratch_url)
    assert differences(scratch_url, TenantBase.metadata) == []


def test_keys_made_before_scopes_hold_only_the_gateway_scope(scratch_url: str) -> None:
    """0004_api_key_scopes: an existing key keeps 'gateway' and nothing more
    (docs/upgrade-notes.md); a row written without scopes afterwards holds none."""
    from alembic import command

    from control_plane.migrations import _config, upgrade_control

    command.upgrade(_config("control", scratch_url), "0003")
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (slug, name) VALUES ('old-co', 'Old') ")
        conn.execute("INSERT INTO api_keys (tenant_id, name, prefix, secret_hash) SELECT id, "
                     "'old bot', 'abc123', repeat('0', 64) FROM tenants")
    upgrade_control(scratch_url)
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute("INSERT INTO api_keys (tenant_id, name, prefix, secret_hash) SELECT id, "
                     "'new row', 'def456', repeat('0', 64) FROM tenants")
        rows = conn.execute("SELECT prefix, scopes FROM api_keys ORDER BY id").fetchall()
    assert rows == [("abc123", ["gateway"]), ("def456", [])]
