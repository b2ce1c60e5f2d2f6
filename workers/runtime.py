"""What a job needs to open its own unit of work: the database URL the worker was started with.

A job runs in RQ's forked work horse; it opens (and disposes) its own engine, so no connection
is ever shared across a fork."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import pool
from sqlalchemy.orm import Session

from control_plane.db import make_session_factory, sqlalchemy_url

_database_url: str | None = None


def configure(database_url: str) -> None:
    global _database_url
    _database_url = database_url


@contextmanager
def job_session() -> Iterator[Session]:
    if _database_url is None:
        raise RuntimeError("the worker runtime was not configured with a database URL")
    from sqlalchemy import create_engine

    engine = create_engine(sqlalchemy_url(_database_url), poolclass=pool.NullPool)
    try:
        with make_session_factory(engine)() as s:
            yield s
    finally:
        engine.dispose()
