"""Hash-chained audit events, the one encoding for the platform chain and every tenant chain.

``chain_hash = sha256(canonical_content || prev_hash)``; canonical content is JSON with sorted
keys and no whitespace, UTF-8, timestamps as UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; the genesis
``prev_hash`` is 64 zeros. ``record()`` writes in the caller's transaction and serializes
writers on the chain head (``seq`` stays contiguous, the chain never forks)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from tenant_runtime.context import Actor
from tenant_runtime.models import AuditEvent

GENESIS_HASH = "0" * 64
CHAIN_LOCK = 74203  # transaction-scoped advisory lock id of the tenant chain head


class CheckpointEvents:
    KEY_CREATED = "audit.checkpoint_key_created"


class CredentialEvents:
    ADDED = "credential.added"
    DELETED = "credential.deleted"


def canonical_content(
    *, seq: int, occurred_at: datetime, actor_type: str, actor_id: str | None,
    actor_name: str | None, event_type: str, target_type: str | None, target_id: str | None,
    details: dict[str, Any],
) -> bytes:
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


def record(session: Session, event_type: str, *, actor: Actor, target_type: str | None = None,
           target_id: str | int | None = None,
           details: dict[str, Any] | None = None) -> AuditEvent:
    """Append an event to this tenant's chain, in the caller's transaction."""
    session.execute(text(f"SELECT pg_advisory_xact_lock({CHAIN_LOCK})"))
    head = session.execute(
        select(AuditEvent.seq, AuditEvent.chain_hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
    occurred_at = datetime.now(UTC)
    details = details or {}
    check_details(details)
    tid = None if target_id is None else str(target_id)
    content = canonical_content(seq=seq, occurred_at=occurred_at, actor_type=actor.type,
                                actor_id=actor.id, actor_name=actor.name,
                                event_type=event_type, target_type=target_type, target_id=tid,
                                details=details)
    event = AuditEvent(seq=seq, occurred_at=occurred_at, actor_type=actor.type,
                       actor_id=actor.id, actor_name=actor.name, event_type=event_type,
                       target_type=target_type, target_id=tid, details=details, prev_hash=prev,
                       chain_hash=chain_hash(content, prev))
    session.add(event)
    session.flush()
    return event
