"""The control-plane database: engine, sessions and the declarative base.

Handlers and jobs own the unit of work: ``with session_factory() as s, s.begin(): ...``.
Service functions take a session and never commit.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine, MetaData, create_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from tenant_runtime.loop_db import engine_options, use_loop_aware_connections

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


SessionFactory = Callable[[], Session]


def utcnow() -> datetime:
    return datetime.now(UTC)


def sqlalchemy_url(url: str) -> str:
    """``postgresql://…`` as SQLAlchemy's psycopg 3 dialect spells it."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError("the database URL must start with postgresql://")


def make_engine(url: str, *, pool_size: int = 10, pre_ping: bool = True) -> Engine:
    """An engine whose connections wait on the event loop when the gateway's call path runs
    there (tenant_runtime/loop_db.py), and block their thread everywhere else."""
    return use_loop_aware_connections(create_engine(
        sqlalchemy_url(url),
        **engine_options(),
        pool_size=pool_size,
        max_overflow=10,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5, "application_name": "magistrate"},
    ))


def make_hot_path_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for the gateway's key lookup: autocommit (a lone SELECT is its own
    transaction, so no BEGIN and COMMIT round trips) and no ``pool_pre_ping`` (no empty
    statement before each checkout). A connection that died since its last use fails the
    statement with ``connection_invalidated`` set, the pool drops it (and the connections
    older than it), and the caller runs its read once more on a fresh connection
    (``control_plane.gateway.api._tenant``); only a database that is really unreachable answers
    503."""
    return use_loop_aware_connections(create_engine(
        sqlalchemy_url(url),
        **engine_options(),
        pool_size=pool_size,
        max_overflow=10,
        pool_pre_ping=False,
        pool_recycle=1800,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5, "application_name": "magistrate"},
    ))


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
