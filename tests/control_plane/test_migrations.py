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
