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
from tests.conftest import drop_database, with_database


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
        drop_database(conn, name)


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


def test_a_months_spend_moves_to_its_first_shard_and_back(scratch_url: str) -> None:
    """t0016_spend_shards: a month's spend and reservations so far land on shard 0, allotted
    exactly what they hold (so the cap's invariants hold from the first call after the
    upgrade), and a call in flight settles there; the downgrade sums the shards back."""
    from alembic import command

    from control_plane.migrations import _config

    command.upgrade(_config("tenant", scratch_url), "t0015_mcp_calls")
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute("INSERT INTO gateway_spend_months (month, spent_micros, reserved_micros) "
                     "VALUES ('2026-11-01', 700, 50), ('2026-12-01', 0, 0)")
        conn.execute("INSERT INTO gateway_calls (month, model_name, endpoint_kind, stream, "
                      "status, reserved_micros) VALUES ('2026-11-01', 'm', 'openai', false, "
                      "'reserved', 50)")
    upgrade_tenant(scratch_url)
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        assert conn.execute("SELECT month::text, allotted_micros FROM gateway_spend_months "
                            "ORDER BY month").fetchall() == [("2026-11-01", 750),
                                                              ("2026-12-01", 0)]
        assert conn.execute("SELECT month::text, shard, allotted_micros, reserved_micros, "
                            "spent_micros FROM gateway_spend_shards ORDER BY month").fetchall() \
            == [("2026-11-01", 0, 750, 50, 700), ("2026-12-01", 0, 0, 0, 0)]
        assert conn.execute("SELECT shard FROM gateway_calls").fetchall() == [(0,)]
    command.downgrade(_config("tenant", scratch_url), "t0015_mcp_calls")
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        assert conn.execute("SELECT month::text, spent_micros, reserved_micros FROM "
                            "gateway_spend_months ORDER BY month").fetchall() == [
            ("2026-11-01", 700, 50), ("2026-12-01", 0, 0)]
