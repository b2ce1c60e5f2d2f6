"""Running the Alembic trees (``alembic/control`` now; ``alembic/tenant`` per tenant database)."""

from __future__ import annotations

from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, pool

from control_plane.db import sqlalchemy_url

ALEMBIC_ROOT = Path(__file__).resolve().parent.parent / "alembic"


def _config(tree: str, url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_ROOT / tree))
    cfg.attributes["database_url"] = url
    return cfg


def run_online(metadata: MetaData | None, *, advisory_lock: int | None = None) -> None:
    """The body of each tree's ``env.py``: migrate the database whose URL the caller handed in
    ``config.attributes["database_url"]``, one migrator at a time when a lock id is given."""
    config = context.config
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL was given to the migrations")
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=metadata,
                              compare_type=True, transaction_per_migration=True)
            with context.begin_transaction():
                if advisory_lock is not None:
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({advisory_lock})")
                context.run_migrations()
    finally:
        engine.dispose()


def upgrade_tenant(url: str) -> str:
    """Upgrade one tenant (or template) database to the tenant tree's head."""
    command.upgrade(_config("tenant", url), "head")
    return current_revision(url) or "base"


def upgrade_control(url: str) -> str:
    """Upgrade the control-plane database to head; returns the revision it is at."""
    command.upgrade(_config("control", url), "head")
    return current_revision(url) or "base"


def head_revision(tree: str = "control") -> str | None:
    return ScriptDirectory.from_config(_config(tree, "")).get_current_head()


def known_revisions(tree: str = "control") -> set[str]:
    """Every revision of the tree, head and history."""
    return {r.revision for r in ScriptDirectory.from_config(_config(tree, "")).walk_revisions()}


def current_revision(url: str) -> str | None:
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
