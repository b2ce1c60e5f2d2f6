"""Verifying a tenant's audit chain inside the platform ("Verify now"): every link recomputed in
seq order (streamed in batches), every checkpoint's signature checked, by a key valid when it
was made, and matched against the chain. The result names the first bad row and why. The
offline verifier a compliance team runs (``ops/verify_audit_chain.py``) does the same on an
export, without our code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tenant_runtime.audit import GENESIS_HASH, canonical_content, chain_hash
from tenant_runtime.audit_lineage import lineage, signer_of
from tenant_runtime.checkpoints import verify_checkpoint
from tenant_runtime.models import AuditCheckpoint, AuditEvent, CheckpointKey

BATCH = 5000


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows: int
    head: str
    problem: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "rows": self.rows, "head": self.head, "problem": self.problem}


def verify_tenant_chain(s: Session, tenant_id: int,
                        progress: Callable[[int, int], None] | None = None) -> VerifyResult:
    total = int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0)
    hashes: dict[int, str] = {}
    checkpoints = list(s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)))
    wanted = {c.seq for c in checkpoints}
    prev, expected, rows, after = GENESIS_HASH, None, 0, 0
    first_prev = GENESIS_HASH
    while True:
        batch = list(s.scalars(select(AuditEvent).where(AuditEvent.seq > after)
                               .order_by(AuditEvent.seq).limit(BATCH)))
        if not batch:
            break
        for e in batch:
            rows += 1
            if expected is None:
                expected = e.seq  # pruned logs start after a checkpoint: anchored below
                prev = e.prev_hash if e.seq != 1 else GENESIS_HASH
                first_prev = e.prev_hash
            if e.seq != expected:
                return VerifyResult(False, rows, prev, f"seq {e.seq}: gap in seq (expected "
                                                       f"{expected})")
            content = canonical_content(
                seq=e.seq, occurred_at=e.occurred_at, actor_type=e.actor_type,
                actor_id=e.actor_id, actor_name=e.actor_name, event_type=e.event_type,
                target_type=e.target_type, target_id=e.target_id, details=e.details)
            if e.prev_hash != prev:
                return VerifyResult(False, rows, prev, f"seq {e.seq}: previous hash mismatch")
            if chain_hash(content, prev) != e.chain_hash:
                return VerifyResult(False, rows, prev, f"seq {e.seq}: content changed")
            if e.seq in wanted:
                hashes[e.seq] = e.chain_hash
            prev, expected = e.chain_hash, e.seq + 1
        after = batch[-1].seq
        if progress is not None:
            progress(rows, total)
    first_seq = None if expected is None else expected - rows
    if first_seq is not None and first_seq > 1:
        anchor = next((c for c in checkpoints if c.seq == first_seq - 1), None)
        if anchor is None:
            return VerifyResult(False, rows, prev, f"seq {first_seq}: the log starts without a "
                                                   "checkpoint anchoring it")
        if anchor.chain_hash != first_prev:
            return VerifyResult(False, rows, prev, f"seq {first_seq}: previous hash does not "
                                                   "match the anchoring checkpoint")
    keys = {k.key_id: k for k in s.scalars(select(CheckpointKey))}
    restorations = lineage(s)  # checkpoints a restored copy carries: signed for its source
    last_seq = (expected or 1) - 1
    for c in checkpoints:
        created = c.created_at
        key = keys.get(c.key_id)
        if key is None or not verify_checkpoint(
                key.public_key, signer_of(restorations, c.seq, tenant_id), c.seq,
                c.chain_hash, created, c.signature):
            return VerifyResult(False, rows, prev, f"checkpoint at seq {c.seq}: signature "
                                                   "invalid")
        if created < key.valid_from or (key.retired_at is not None
                                        and created >= key.retired_at):
            return VerifyResult(False, rows, prev, f"checkpoint at seq {c.seq}: signed by key "
                                                   f"{c.key_id} outside its validity")
        if c.seq > last_seq:
            return VerifyResult(False, rows, prev, f"log shorter than checkpoint at seq "
                                                   f"{c.seq}")
        if c.seq in hashes and hashes[c.seq] != c.chain_hash:
            return VerifyResult(False, rows, prev, f"checkpoint at seq {c.seq}: chain hash "
                                                   "does not match the log")
    return VerifyResult(True, rows, prev)
