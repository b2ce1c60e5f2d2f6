"""Plain SQL straight on psycopg, for the gateway's hot path (CONVENTIONS.md, "The hot path").

A statement run through SQLAlchemy's execution layer (``exec_driver_sql``) costs more Python
than the statement itself costs Postgres, and an ORM ``Session`` around a transaction of two
statements costs more again; on the gateway's path every call pays for each of them. So the
hot statements (the spend reservation and settlement, the configuration's version check, the
audit append) run here, on the psycopg connection itself:

- ``run`` / ``one``: a statement on a session's connection, in the session's transaction (the
  session's other statements, before and after, see its effects), or on a psycopg connection;
- ``transaction``: a transaction of its own on a connection of an engine's pool, with no
  session at all; ``pipelined``: the same, its statements and its commit sent in one round
  trip (the settlement's group commit);
- ``autocommit``: a connection of an engine's pool on which each statement is a transaction of
  its own, with no ``BEGIN`` or ``COMMIT`` round trip (the spend reservation, which is one
  statement).

Errors are SQLAlchemy's, as through a session (``DBAPIError.instance``: an
``OperationalError``, an ``IntegrityError``, ...), so callers handle one kind; when the
connection itself broke, the error says so (``connection_invalidated``: a database that is
unreachable answers 503, ``control_plane/web/errors.py``) and ``transaction`` and
``autocommit`` drop the connection, and those pooled before it, as SQLAlchemy does on a
disconnect."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, cast

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

Connectable = Session | psycopg.Connection[Any]


def connection_of(on: Connectable) -> psycopg.Connection[Any]:
    """The psycopg connection of ``on``: a session's, in its transaction (begun if need be)."""
    if isinstance(on, Session):
        driver: Any = on.connection().connection.driver_connection
        return driver  # type: ignore[no-any-return]
    return on


def _error(connection: psycopg.Connection[Any], statement: str, params: Any,
           exc: psycopg.Error) -> DBAPIError:
    # a psycopg error is a DB-API one, so this is a DBAPIError
    return cast(DBAPIError, DBAPIError.instance(statement, params, exc, psycopg.Error,
                                                connection_invalidated=connection.broken))


def execute(cursor: psycopg.Cursor[Any], statement: str,
            params: dict[str, Any] | None = None) -> None:
    """Run a statement on a psycopg cursor, its errors as SQLAlchemy's."""
    try:
        cursor.execute(statement, params)
    except psycopg.Error as exc:
        raise _error(cursor.connection, statement, params, exc) from exc


def run(on: Connectable, statement: str, params: dict[str, Any] | None = None
        ) -> list[tuple[Any, ...]]:
    """Run a statement; the rows it returned (none for a statement without ``RETURNING``)."""
    with connection_of(on).cursor() as cursor:
        execute(cursor, statement, params)
        return cursor.fetchall() if cursor.description is not None else []


def one(on: Connectable, statement: str, params: dict[str, Any] | None = None
        ) -> tuple[Any, ...] | None:
    """Run a statement; its first row, or None."""
    with connection_of(on).cursor() as cursor:
        execute(cursor, statement, params)
        return cursor.fetchone() if cursor.description is not None else None


def engine_of(session_factory: sessionmaker[Session]) -> Engine:
    """The engine a tenant's session factory is bound to (one per tenant database)."""
    engine = session_factory.kw.get("bind")
    if not isinstance(engine, Engine):
        raise TypeError("A tenant's session factory is bound to its engine.")
    return engine


@contextmanager
def _pooled(engine: Engine, *, autocommit: bool) -> Iterator[psycopg.Connection[Any]]:
    pooled = engine.raw_connection()
    connection: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
    try:
        connection.autocommit = autocommit
        try:
            yield connection
            if not autocommit:
                try:
                    connection.commit()
                except psycopg.Error as exc:
                    raise _error(connection, "COMMIT", None, exc) from exc
        except BaseException:
            if not connection.broken:
                with suppress(psycopg.Error):
                    connection.rollback()  # ROLLBACK, when a transaction is open
            raise
    finally:
        if autocommit and not connection.broken and not connection.closed:
            try:
                connection.autocommit = False  # as the pool's other users expect it
            except psycopg.Error:
                pooled.invalidate()  # not as the pool's other users expect it: dropped
        if connection.broken or connection.closed:
            # as SQLAlchemy does on a disconnect: this connection is never handed out again,
            # and every connection pooled before it is replaced at its next checkout (the
            # server probably restarted: they are all dead)
            engine.pool._invalidate(pooled)  # noqa: SLF001
        pooled.close()


@contextmanager
def transaction(engine: Engine) -> Iterator[psycopg.Connection[Any]]:
    """A transaction on a connection of ``engine``'s pool, committed when the block ends
    (rolled back when it raises); no session."""
    with _pooled(engine, autocommit=False) as connection:
        yield connection


@contextmanager
def pipelined(engine: Engine) -> Iterator[psycopg.Connection[Any]]:
    """``transaction``, sent as one pipeline: the block's statements are sent without waiting
    for their answers, then ``COMMIT``, and all of it costs one round trip. Nothing sent in
    the block can be read until it ends (read a cursor's rows after the block); an error of any
    statement rolls the whole transaction back, raised when the block ends."""
    with _pooled(engine, autocommit=False) as connection:
        try:
            with connection.pipeline():
                yield connection
                connection.commit()  # queued behind the statements; waits for every answer
        except psycopg.Error as exc:
            raise _error(connection, "COMMIT", None, exc) from exc


@contextmanager
def autocommit(engine: Engine) -> Iterator[psycopg.Connection[Any]]:
    """A connection of ``engine``'s pool in autocommit while the block runs: each statement is
    a transaction of its own, with no ``BEGIN`` or ``COMMIT`` round trip (``connection.
    transaction()`` for a part that needs one); no session."""
    with _pooled(engine, autocommit=True) as connection:
        yield connection


def each_statement_alone(on: Connectable) -> bool:
    """Whether each statement on ``on`` is a transaction of its own: a psycopg connection in
    autocommit with no transaction open (``autocommit``), not a session's."""
    return (isinstance(on, psycopg.Connection) and on.autocommit
            and on.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
