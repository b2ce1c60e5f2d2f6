"""Alembic environment for the tenant tree: run once per tenant database, as that tenant's
``_owner`` role. The URL is handed in by the control plane's migration fan-out."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from control_plane.db import sqlalchemy_url

config = context.config
url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("no database URL given to the tenant migrations")

connectable = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=None,
                      transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
connectable.dispose()
