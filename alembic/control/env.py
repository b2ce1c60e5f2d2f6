"""Alembic environment for the control-plane tree. Run through ``magistrate migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from control_plane import models  # noqa: F401 - registers the tables on the metadata
from control_plane.db import Base, sqlalchemy_url

config = context.config
url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("no database URL given to the control-plane migrations")

connectable = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      compare_type=True, transaction_per_migration=True)
    with context.begin_transaction():
        # One migrator at a time, even when several `magistrate up` / `migrate` start together.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(74201)")
        context.run_migrations()
connectable.dispose()
