"""Running the Alembic trees (``alembic/control`` now; ``alembic/tenant`` per tenant database)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from control_plane.db import sqlalchemy_url

ALEMBIC_ROOT = Path(__file__).resolve().parent.parent / "alembic"


def _config(tree: str, url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_ROOT / tree))
    cfg.attributes["database_url"] = url
    return cfg


def upgrade_control(url: str) -> str:
    """Upgrade the control-plane database to head; returns the revision it is at."""
    command.upgrade(_config("control", url), "head")
    return current_revision(url) or "base"


def head_revision(tree: str = "control") -> str | None:
    return ScriptDirectory.from_config(_config(tree, "")).get_current_head()


def current_revision(url: str) -> str | None:
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
