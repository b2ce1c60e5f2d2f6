"""Hash-chained audit events, the one encoding for the platform chain and every tenant chain.

``chain_hash = sha256(canonical_content || prev_hash)``; canonical content is JSON with sorted
keys and no whitespace, UTF-8, timestamps as UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; the genesis
``prev_hash`` is 64 zeros. ``record()`` writes in the caller's transaction and serializes
writers on the chain head (``seq`` stays contiguous, the chain never forks)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy.orm import Session, make_transient_to_detached

from tenant_runtime import driver
from tenant_runtime.context import Actor
from tenant_runtime.models import AuditEvent
from tenant_runtime.observability import metrics

GENESIS_HASH = "0" * 64
ACTOR_TYPES = ("user", "api_key", "system")
CHAIN_LOCK = 74203  # transaction-scoped advisory lock id of the tenant chain head


class CheckpointEvents:
    KEY_CREATED = "audit.checkpoint_key_created"
    KEY_ROTATED = "audit.checkpoint_key_rotated"


class CredentialEvents:
    ADDED = "credential.added"
    DELETED = "credential.deleted"


def canonical_content(
    *, seq: int, occurred_at: datetime, actor_type: str, actor_id: str | None,
    actor_name: str | None, event_type: str, target_type: str | None, target_id: str | None,
    details: dict[str, Any],
) -> bytes:
    if actor_type not in ACTOR_TYPES or not event_type:  # the format's domains (AUDIT_FORMAT.md)
        raise ValueError(f"an audit event's actor_type is one of {', '.join(ACTOR_TYPES)} and "
                         "its event_type is not empty")
    document = {
        "seq": seq,
        "occurred_at": occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor_type": actor_type,
        "actor_id": actor_id,
        "actor_name": actor_name,
        "event_type": event_type,
        "target_type": target_type,
        "target_id": target_id,
        "details": details,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def chain_hash(content: bytes, prev_hash: str) -> str:
    return hashlib.sha256(content + prev_hash.encode("ascii")).hexdigest()


def check_details(value: Any, path: str = "details") -> None:
    """Details hold counts and identifiers: strings, whole numbers, booleans, null, lists and
    objects with string keys. A float is refused: Postgres' JSONB may give it back written
    differently (1e16 comes back as 10000000000000000), and the row would no longer match its
    hash."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return
    if isinstance(value, float):
        raise ValueError(f"{path} holds a non-integer number; audit details hold counts and "
                         "identifiers only")
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_details(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path} has a non-string key")
            check_details(item, f"{path}.{key}")
        return
    raise ValueError(f"{path} holds a {type(value).__name__}, which JSON cannot carry")


# The append, one statement run once the chain lock is held: it reads the head, takes the next
# seq and the time (the database's clock, read under the lock: times follow seq) and computes
# ``chain_hash(canonical_content, prev_hash)`` in the database, from the content's bytes before
# the time and after the seq (``_content_around``) and the time and seq between them, written
# as ``canonical_content`` writes them (``TIME_FORMAT``). It needs nothing the head decides
# from the caller, so it can be sent without waiting for an earlier statement's answer (the
# gateway's settlement sends the lock and its appends in one pipeline).
_TIME_TEXT = "to_char(next.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
_APPEND = f"""
WITH head AS (SELECT seq, chain_hash FROM audit_events ORDER BY seq DESC LIMIT 1),
     next AS (SELECT coalesce((SELECT seq FROM head), 0) + 1 AS seq,
                     coalesce((SELECT chain_hash FROM head), %(genesis)s) AS prev,
                     clock_timestamp() AS at)
INSERT INTO audit_events (seq, occurred_at, actor_type, actor_id, actor_name, event_type,
                          target_type, target_id, details, prev_hash, chain_hash)
SELECT next.seq, next.at, %(actor_type)s, %(actor_id)s, %(actor_name)s,
       %(event_type)s, %(target_type)s, %(target_id)s, %(details)s, next.prev,
       encode(sha256(%(before_time)s
                     || convert_to({_TIME_TEXT} || '","seq":' || next.seq::text, 'UTF8')
                     || %(after_seq)s || convert_to(next.prev, 'UTF8')), 'hex')
FROM next
RETURNING seq, occurred_at, prev_hash, chain_hash
"""  # noqa: S608 - constants only: the values are bound parameters
LOCK = f"SELECT pg_advisory_xact_lock({CHAIN_LOCK})"  # the chain lock, a statement of its own
_PLACEHOLDER_TIME = datetime(2000, 1, 1, tzinfo=UTC)
_PLACEHOLDER = b'"occurred_at":"2000-01-01T00:00:00.000000Z","seq":0,'


def _content_around(event: AuditEvent) -> tuple[bytes, bytes]:
    """``canonical_content`` of ``event`` cut around its time and seq, which the keys' order
    puts side by side: the bytes up to ``"occurred_at":"`` and those from ``,"target_id":`` on.
    Its time and seq are placeholders, found at the last match: ``details`` comes before them,
    and after them come only strings, whose quotes are escaped."""
    content = canonical_content(
        seq=0, occurred_at=_PLACEHOLDER_TIME, actor_type=event.actor_type,
        actor_id=event.actor_id, actor_name=event.actor_name, event_type=event.event_type,
        target_type=event.target_type, target_id=event.target_id, details=event.details)
    at = content.rindex(_PLACEHOLDER)
    return content[:at] + b'"occurred_at":"', content[at + len(_PLACEHOLDER) - 1:]


@dataclass
class Pending:
    """An event prepared for its append: all that does not depend on the chain's head."""
    event: AuditEvent
    params: dict[str, Any]


def prepare(event_type: str, *, actor: Actor, target_type: str | None = None,
            target_id: str | int | None = None,
            details: dict[str, Any] | None = None) -> Pending:
    """The event's row and statement parameters, checked, before any lock is taken."""
    details = details or {}
    check_details(details)
    event = AuditEvent(actor_type=actor.type, actor_id=actor.id, actor_name=actor.name,
                       event_type=event_type, target_type=target_type,
                       target_id=None if target_id is None else str(target_id), details=details)
    before_time, after_seq = _content_around(event)
    return Pending(event, {
        "genesis": GENESIS_HASH, "before_time": before_time, "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "actor_name": event.actor_name, "event_type": event.event_type,
        "target_type": event.target_type, "target_id": event.target_id,
        "details": Jsonb(details), "after_seq": after_seq})


def append(session: Session, pending: Pending, *, chain_locked: bool = False) -> AuditEvent:
    """Append a prepared event in the session's transaction (``record``, whose rules hold)."""
    session.flush()  # the caller's pending changes first, as autoflush did
    event = append_on(session, pending, chain_locked=chain_locked)
    make_transient_to_detached(event)  # the row exists: the session holds it as loaded
    session.add(event)
    return event


def append_on(on: driver.Connectable, pending: Pending, *,
              chain_locked: bool = False) -> AuditEvent:
    """``append`` on the psycopg connection of ``on`` (a session's, or one in a transaction of
    its own: ``driver.transaction``), with no ORM bookkeeping; the event returned is in no
    session."""
    with driver.connection_of(on).cursor() as cursor:
        if not chain_locked:
            driver.execute(cursor, LOCK)
        send_append(cursor, pending)
        row = cursor.fetchone()
    if row is None:
        raise RuntimeError("The audit append returned no row.")
    return appended(pending, row)


def send_append(cursor: psycopg.Cursor[Any], pending: Pending) -> None:
    """Run the append of ``pending`` on ``cursor``, whose transaction holds the chain lock,
    without reading its answer (in a pipeline, nothing is waited for): ``appended`` reads it,
    or, once committed, ``count_appends`` counts it."""
    driver.execute(cursor, _APPEND, pending.params)


def appended(pending: Pending, row: tuple[Any, ...]) -> AuditEvent:
    """The event of ``pending`` as its append's row (seq, time, hashes) wrote it."""
    event = pending.event
    event.seq, event.occurred_at, event.prev_hash, event.chain_hash = row
    count_appends(1)
    return event


def count_appends(appends: int) -> None:
    metrics.AUDIT_APPENDS.labels("tenant").inc(appends)


def record(session: Session, event_type: str, *, actor: Actor, target_type: str | None = None,
           target_id: str | int | None = None,
           details: dict[str, Any] | None = None, chain_locked: bool = False) -> AuditEvent:
    """Append an event to this tenant's chain, in the caller's transaction.

    Writers are serialized by a transaction-scoped advisory lock, held until the caller commits,
    so what runs under it bounds the chain's appends per second (ops/BENCHMARKS.md, "Audit").
    Everything that does not depend on the head is prepared before the lock (``prepare``);
    under it run one statement, ``_APPEND``, and the commit. The lock is a statement of its
    own: a statement reads with the snapshot taken when it starts, so one that waited for the
    lock would read a stale head. Both go straight to the session's psycopg connection:
    SQLAlchemy's execution layer and ORM flush cost more than the statements, and under the
    lock every waiting writer pays for them. The event returned is in the session, as a
    flushed one would be. ``chain_locked``: the caller's transaction already holds the chain
    lock, taken by an earlier statement, so only the append runs here (the gateway's group
    commit, ``gateway/settlement.py``, takes it once for a batch of appends)."""
    return append(session, prepare(event_type, actor=actor, target_type=target_type,
                                   target_id=target_id, details=details),
                  chain_locked=chain_locked)
