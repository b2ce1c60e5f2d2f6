"""Signed checkpoints of the tenant's audit chain.

A checkpoint says "this tenant's chain had reached ``seq`` with ``chain_hash`` at
``created_at``", signed with the tenant's Ed25519 checkpoint key. A compliance team pins the
public key (dashboard, every export) and can then check offline that an exported chain is the
one the platform vouched for, not a consistent rewrite of it.

The encoding, fixed for the offline verifier (ops/):

- canonical bytes: UTF-8 JSON, sorted keys, separators ``(",", ":")``, ``ensure_ascii=False``,
  of ``{"tenant_id": int, "seq": int, "chain_hash": 64 lowercase hex,
  "created_at": "YYYY-MM-DDTHH:MM:SS.ffffffZ"}`` (UTC);
- signature: Ed25519 over those bytes, standard base64 with padding;
- public key: the raw 32-byte Ed25519 public key, standard base64;
  ``key_id`` = the first 16 hex characters of SHA-256 of the raw public key.

When: ``make_checkpoint`` writes one when the chain has events past the last checkpoint and
1,000 of them have accumulated, or 10 minutes have passed since the last checkpoint, or there
is no checkpoint yet. A worker calls it for every tenant each minute (workers/checkpoints.py).

The private half of the key is sealed under the tenant's data key (table ``checkpoint_keys``,
column ``private_key_sealed``, row key ``id``), so a revoked customer key stops signing too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import SealedValueRefused, TenantInvalidInput
from tenant_runtime.key_notices import queue_key_notices
from tenant_runtime.models import (
    AuditCheckpoint,
    AuditEvent,
    CheckpointKey,
    CheckpointKeyRotation,
)

EVENTS_PER_CHECKPOINT = 1_000
CHECKPOINT_INTERVAL = timedelta(minutes=10)
# transaction-scoped advisory lock: one checkpoint writer per tenant database at a time.
# Lock order: audit.CHAIN_LOCK (taken only to create a key) before CHECKPOINT_LOCK.
CHECKPOINT_LOCK = 74204
KEY_TABLE = "checkpoint_keys"
KEY_COLUMN = "private_key_sealed"
CHAIN_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Checkpoint:
    """A written checkpoint: the signed statement, with the key that signed it."""

    tenant_id: int
    seq: int
    chain_hash: str
    created_at: datetime
    signature: str
    key_id: str

    def canonical(self) -> bytes:
        return canonical_checkpoint(self.tenant_id, self.seq, self.chain_hash, self.created_at)


@dataclass(frozen=True)
class CheckpointPublicKey:
    """What the dashboard shows and a compliance team pins."""

    key_id: str
    public_key: str  # raw 32 bytes, standard base64
    created_at: datetime  # UTC


# ------------------------------------------------------------------------------- encoding


def canonical_checkpoint(tenant_id: int, seq: int, chain_hash: str,
                         created_at: datetime) -> bytes:
    """The bytes a checkpoint signature covers (module docstring)."""
    if created_at.tzinfo is None:
        raise ValueError("a checkpoint time must be timezone-aware")
    if not CHAIN_HASH.fullmatch(chain_hash):
        raise ValueError("a chain hash is 64 lowercase hex characters")
    document = {
        "tenant_id": int(tenant_id),
        "seq": int(seq),
        "chain_hash": chain_hash,
        "created_at": created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def key_id_of(public_key_b64: str) -> str:
    """The first 16 hex characters of SHA-256 of the raw public key."""
    raw = base64.b64decode(public_key_b64, validate=True)
    return hashlib.sha256(raw).hexdigest()[:16]


def verify_checkpoint(public_key_b64: str, tenant_id: int, seq: int, chain_hash: str,
                      created_at: datetime, signature: str) -> bool:
    """True when ``signature`` is the key's signature of exactly this checkpoint."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64,
                                                                  validate=True))
        key.verify(base64.b64decode(signature, validate=True),
                   canonical_checkpoint(tenant_id, seq, chain_hash, created_at))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


# ------------------------------------------------------------------------------- the key


def _active_key(s: Session) -> CheckpointKey | None:
    return s.scalars(select(CheckpointKey).where(CheckpointKey.retired_at.is_(None))
                     .order_by(CheckpointKey.id.desc()).limit(1)).first()


def active_public_key(s: Session) -> CheckpointPublicKey | None:
    """The public half of the active checkpoint key, or None before the first checkpoint."""
    key = _active_key(s)
    if key is None:
        return None
    return CheckpointPublicKey(key.key_id, key.public_key, key.created_at.astimezone(UTC))


def public_key(s: Session) -> str | None:
    """The active checkpoint public key (base64), or None before the first checkpoint."""
    key = active_public_key(s)
    return key.public_key if key else None


def _ensure_key(s: Session, ctx: TenantContext) -> CheckpointKey:
    key = _active_key(s)
    if key is not None:
        return key
    # serialize key creators on the chain head, which the audit event below needs anyway
    s.execute(text(f"SELECT pg_advisory_xact_lock({audit.CHAIN_LOCK})"))
    key = _active_key(s)
    if key is not None:
        return key
    key, _ = _new_key(s, ctx, datetime.now(UTC))
    s.flush()
    queue_key_notices(s, key.key_id)
    audit.record(s, audit.CheckpointEvents.KEY_CREATED, actor=ctx.actor,
                 target_type="checkpoint_key", target_id=key.key_id,
                 details={"key_id": key.key_id, "public_key": key.public_key})
    return key


def _new_key(s: Session, ctx: TenantContext,
             valid_from: datetime) -> tuple[CheckpointKey, Ed25519PrivateKey]:
    private = Ed25519PrivateKey.generate()
    raw_public = private.public_key().public_bytes_raw()
    # the row key of the sealed value is the id, so take it before the row exists
    row_id = int(s.execute(text(
        f"SELECT nextval(pg_get_serial_sequence('{KEY_TABLE}', 'id'))")).scalar_one())
    key = CheckpointKey(
        id=row_id, key_id=hashlib.sha256(raw_public).hexdigest()[:16],
        public_key=base64.b64encode(raw_public).decode("ascii"), valid_from=valid_from,
        private_key_sealed=ctx.sealer.seal(private.private_bytes_raw(), table=KEY_TABLE,
                                           column=KEY_COLUMN, row_key=row_id))
    s.add(key)
    return key, private


def ensure_checkpoint_key(s: Session, ctx: TenantContext) -> tuple[str, str]:
    """``(key_id, public_key_b64)`` of the active checkpoint key, created (and audited) in the
    caller's transaction when there is none. Creating one needs the tenant's data key."""
    key = _ensure_key(s, ctx)
    return key.key_id, key.public_key


def _signing_key(ctx: TenantContext, key: CheckpointKey) -> Ed25519PrivateKey:
    raw = ctx.sealer.open(key.private_key_sealed, table=KEY_TABLE, column=KEY_COLUMN,
                          row_key=key.id)
    try:
        private = Ed25519PrivateKey.from_private_bytes(raw)
    except ValueError:
        raise SealedValueRefused("The checkpoint key's private half is not an Ed25519 "
                                 "key; it was refused.") from None
    public_b64 = base64.b64encode(private.public_key().public_bytes_raw()).decode("ascii")
    if public_b64 != key.public_key:
        raise SealedValueRefused("The checkpoint key's private half does not match its "
                                 "public key; it was refused.")
    return private


# ------------------------------------------------------------------------------- checkpoints


def _is_due(new_events: int, last: AuditCheckpoint | None, now: datetime, force: bool) -> bool:
    if new_events <= 0:
        return False
    if force or last is None:
        return True
    return new_events >= EVENTS_PER_CHECKPOINT or now - last.created_at >= CHECKPOINT_INTERVAL


def make_checkpoint(s: Session, ctx: TenantContext, *, force: bool = False,
                    now: datetime | None = None) -> Checkpoint | None:
    """Sign and write a checkpoint of the chain head when one is due (module docstring), in the
    caller's transaction; None when nothing is due. ``force`` writes one whenever the chain has
    moved since the last checkpoint. ``now`` is the checkpoint's time (default: the clock).

    Raises TenantKeyUnavailable when the tenant's key cannot be used, SealedValueRefused when
    the sealed private key does not open for its row."""
    if s.scalar(select(func.max(AuditEvent.seq))) is None:
        return None  # an empty chain: nothing to vouch for, and no key made for it
    _ensure_key(s, ctx)
    s.execute(text(f"SELECT pg_advisory_xact_lock({CHECKPOINT_LOCK})"))
    # read after the lock: a writer that held it has committed, and its checkpoint is seen;
    # so is a rotation (which holds the lock too), and the key is the one active now
    key = _active_key(s)
    if key is None:
        raise SealedValueRefused("The tenant has no active checkpoint key.")
    head = s.execute(select(AuditEvent.seq, AuditEvent.chain_hash)
                     .order_by(AuditEvent.seq.desc()).limit(1)).one()
    last = s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc())
                     .limit(1)).first()
    created_at = now or datetime.now(UTC)
    if not _is_due(head.seq - (last.seq if last else 0), last, created_at, force):
        return None
    canonical = canonical_checkpoint(ctx.tenant_id, head.seq, head.chain_hash, created_at)
    signature = base64.b64encode(_signing_key(ctx, key).sign(canonical)).decode("ascii")
    s.add(AuditCheckpoint(seq=head.seq, chain_hash=head.chain_hash, created_at=created_at,
                          signature=signature, key_id=key.key_id))
    s.flush()
    return Checkpoint(ctx.tenant_id, head.seq, head.chain_hash, created_at, signature,
                      key.key_id)


# ------------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class StatementSigner:
    """The checkpoint key that signs an export statement: the one valid at ``moment``."""

    key_id: str
    private: Ed25519PrivateKey

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.private.sign(message)).decode("ascii")


def statement_signer(s: Session, ctx: TenantContext, moment: datetime) -> StatementSigner | None:
    """The signer of an export made at ``moment``, or None when the tenant has no key yet.
    Needs the tenant's data key (TenantKeyUnavailable otherwise)."""
    key = s.scalars(select(CheckpointKey).where(
        CheckpointKey.valid_from <= moment,
        (CheckpointKey.retired_at.is_(None)) | (CheckpointKey.retired_at > moment))
        .order_by(CheckpointKey.id.desc()).limit(1)).first()
    return None if key is None else StatementSigner(key.key_id, _signing_key(ctx, key))


# ------------------------------------------------------------------------------- rotation


def rotation_document(tenant_id: int, old_key_id: str, new_key_id: str, new_public_key: str,
                      rotated_at: datetime) -> dict[str, object]:
    """The key rotation line of an export without its two signatures, which cover exactly
    the canonical bytes of this document (ops/AUDIT_FORMAT.md, section 2)."""
    return {"type": "key_rotation", "tenant_id": tenant_id, "old_key_id": old_key_id,
            "new_key_id": new_key_id, "new_public_key": new_public_key,
            "rotated_at": rotated_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}


def canonical_bytes(document: dict[str, object]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def do_rotate_checkpoint_key(s: Session, ctx: TenantContext, *,
                             now: datetime | None = None) -> CheckpointKeyRotation:
    """Retire the active checkpoint key and make a new one, in the caller's transaction: the
    old key's ``retired_at`` and the new key's ``valid_from`` are the same moment, and a
    rotation statement naming the new key is signed by both (so a verifier pinned to either
    follows the chain to the other). The head is checkpointed with the old key first, so every
    event up to the rotation is vouched for by it. Audited as ``audit.checkpoint_key_rotated``
    (its details carry the new public key, which the fingerprint notice sends out).

    Raises TenantInvalidInput when the tenant has no key yet (nothing to rotate)."""
    s.execute(text(f"SELECT pg_advisory_xact_lock({audit.CHAIN_LOCK})"))  # the lock order
    old = _active_key(s)
    if old is None:
        raise TenantInvalidInput("This tenant has no checkpoint key yet; its first checkpoint "
                                 "makes one.")
    make_checkpoint(s, ctx, force=True)  # takes CHECKPOINT_LOCK, held until commit
    old_private = _signing_key(ctx, old)
    moment = now or datetime.now(UTC)
    old.retired_at = moment
    new, new_private = _new_key(s, ctx, moment)
    s.flush()
    signed = canonical_bytes(rotation_document(ctx.tenant_id, old.key_id, new.key_id,
                                               new.public_key, moment))
    rotation = CheckpointKeyRotation(
        old_key_id=old.key_id, new_key_id=new.key_id, new_public_key=new.public_key,
        rotated_at=moment, signature=base64.b64encode(old_private.sign(signed)).decode(),
        new_signature=base64.b64encode(new_private.sign(signed)).decode())
    s.add(rotation)
    s.flush()
    queue_key_notices(s, new.key_id)
    audit.record(s, audit.CheckpointEvents.KEY_ROTATED, actor=ctx.actor,
                 target_type="checkpoint_key", target_id=new.key_id,
                 details={"old_key_id": old.key_id, "key_id": new.key_id,
                          "public_key": new.public_key})
    return rotation
