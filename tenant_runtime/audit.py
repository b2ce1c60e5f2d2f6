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
