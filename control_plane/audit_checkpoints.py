"""Signed checkpoints and the offline export of the platform audit chain (sign-ins, users,
tenant lifecycle, key operations), in exactly the format of a tenant's export
(ops/AUDIT_FORMAT.md) with tenant id 0 and the name ``platform``, so the same verifier checks
it: ``magistrate audit export --platform --out FILE``.

- The platform checkpoint key is an Ed25519 key whose private half is sealed under the
  control-plane sealing key (control_plane/sealing.py, row key: its key_id). It is made with
  the first platform checkpoint, and its creation is an event of the platform chain
  (``audit.platform_checkpoint_key_created``, details ``{"key_id", "public_key"}``).
- ``make_platform_checkpoint`` signs the head when 1,000 events have accumulated or 10 minutes
  have passed (the tenant rule), or whenever asked (``force``: at every export). Writers are
  serialized on the chain's head row, which every platform event locks too.
- ``platform_export_lines`` streams the export: the head checkpointed first, then one
  snapshot of the chain, its checkpoints and key, closed by a statement signed by the key.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Table, select
from sqlalchemy.orm import Session, sessionmaker

from control_plane import audit
from control_plane.models import (
    PlatformAuditEvent,
    PlatformAuditHead,
    PlatformCheckpoint,
    PlatformCheckpointKey,
)
from control_plane.sealing import ControlSealer
from tenant_runtime.audit_export import ChainTables, ExportRange, export_lines
from tenant_runtime.checkpoints import (
    CHECKPOINT_INTERVAL,
    EVENTS_PER_CHECKPOINT,
    StatementSigner,
    canonical_checkpoint,
)

PLATFORM_TENANT_ID = 0
PLATFORM_NAME = "platform"
KEY_TABLE = "platform_checkpoint_keys"
KEY_COLUMN = "private_key_sealed"
PLATFORM_CHAIN = ChainTables(cast(Table, PlatformAuditEvent.__table__), "platform_checkpoints",
                             KEY_TABLE, "platform_checkpoint_key_rotations")


class PlatformCheckpointEvents:
    KEY_CREATED = "audit.platform_checkpoint_key_created"


def _active_key(s: Session) -> PlatformCheckpointKey | None:
    return s.scalars(select(PlatformCheckpointKey)
                     .where(PlatformCheckpointKey.retired_at.is_(None))
                     .order_by(PlatformCheckpointKey.id.desc()).limit(1)).first()


def _private(sealer: ControlSealer, key: PlatformCheckpointKey) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(sealer.open(
        key.private_key_sealed, table=KEY_TABLE, column=KEY_COLUMN, row_key=key.key_id))


def platform_public_key(s: Session) -> str | None:
    key = _active_key(s)
    return key.public_key if key else None


def make_platform_checkpoint(s: Session, sealer: ControlSealer, *, force: bool = False,
                             now: datetime | None = None) -> PlatformCheckpoint | None:
    """Sign and write a checkpoint of the platform chain's head when one is due, in the
    caller's transaction; None when nothing is due."""
    head = s.execute(select(PlatformAuditHead).where(PlatformAuditHead.id == 1)
                     .with_for_update()).scalar_one()  # the writers' lock, held to commit
    if head.seq == 0:
        return None
    key = _active_key(s)
    if key is None:
        private = Ed25519PrivateKey.generate()
        raw = private.public_key().public_bytes_raw()
        key = PlatformCheckpointKey(
            key_id=hashlib.sha256(raw).hexdigest()[:16],
            public_key=base64.b64encode(raw).decode("ascii"), valid_from=datetime.now(UTC))
        key.private_key_sealed = sealer.seal(private.private_bytes_raw(), table=KEY_TABLE,
                                             column=KEY_COLUMN, row_key=key.key_id)
        s.add(key)
        s.flush()
        audit.record(s, PlatformCheckpointEvents.KEY_CREATED, actor=audit.SYSTEM,
                     target_type="platform_checkpoint_key", target_id=key.key_id,
                     details={"key_id": key.key_id, "public_key": key.public_key})
    last = s.scalars(select(PlatformCheckpoint).order_by(PlatformCheckpoint.seq.desc())
                     .limit(1)).first()
    created_at = now or datetime.now(UTC)
    moved = head.seq - (last.seq if last else 0)
    if moved <= 0 or not (force or last is None or moved >= EVENTS_PER_CHECKPOINT
                          or created_at - last.created_at >= CHECKPOINT_INTERVAL):
        return None
    signature = _private(sealer, key).sign(canonical_checkpoint(
        PLATFORM_TENANT_ID, head.seq, head.chain_hash, created_at))
    checkpoint = PlatformCheckpoint(seq=head.seq, chain_hash=head.chain_hash,
                                    created_at=created_at, key_id=key.key_id,
                                    signature=base64.b64encode(signature).decode("ascii"))
    s.add(checkpoint)
    s.flush()
    return checkpoint


def platform_signer(s: Session, sealer: ControlSealer) -> tuple[StatementSigner, str] | None:
    """The active platform checkpoint key as a signer, with its public key (base64); None
    before the first platform checkpoint. Signs backup manifests (control_plane/backups/)."""
    key = _active_key(s)
    return None if key is None else (StatementSigner(key.key_id, _private(sealer, key)),
                                     key.public_key)


def platform_public_keys(s: Session) -> dict[str, str]:
    """Every platform checkpoint key, retired ones included: key id -> public key."""
    return {k.key_id: k.public_key for k in s.scalars(select(PlatformCheckpointKey))}


def platform_export_lines(session_factory: sessionmaker[Session], sealer: ControlSealer,
                          wanted: ExportRange) -> Iterator[bytes]:
    """The platform chain's export (module docstring)."""
    with session_factory() as s, s.begin():
        make_platform_checkpoint(s, sealer, force=True)

    def signer(session: Session, moment: datetime) -> StatementSigner | None:
        key = session.scalars(select(PlatformCheckpointKey).where(
            PlatformCheckpointKey.valid_from <= moment,
            PlatformCheckpointKey.retired_at.is_(None)
            | (PlatformCheckpointKey.retired_at > moment))
            .order_by(PlatformCheckpointKey.id.desc()).limit(1)).first()
        return None if key is None else StatementSigner(key.key_id, _private(sealer, key))

    with session_factory() as s:
        yield from export_lines(s, tenant_id=PLATFORM_TENANT_ID, slug=PLATFORM_NAME,
                                first_seq=wanted.first_seq, last_seq=wanted.last_seq,
                                since=wanted.since, until=wanted.until, signer=signer,
                                chain=PLATFORM_CHAIN)
