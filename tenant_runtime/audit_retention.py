"""Audit settings, the checkpoint webhook and retention.

- Checkpoints are sent out as they are made: an HMAC-SHA256-signed POST of the checkpoint's
  export line to a URL the tenant configures, so a copy exists that the platform does not hold.
  Deliveries are recorded and retried until the receiver answers 2xx.
- Retention prunes events older than the tenant's retention, and only up to a signed
  checkpoint. It runs on a connection as the tenant's owner role (the worker opens it): the
  service role has no DELETE on ``audit_events`` and may not call ``prune_audit_events``. The
  database refuses any cut that is not a prefix ending at a checkpoint matching the chain
  (t0012's trigger, for every role); this module also checks the checkpoint's Ed25519
  signature with its key before cutting, which SQL cannot. What remains verifies from that
  checkpoint as its anchor; sequence numbers keep counting up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from tenant_runtime import audit, audit_lineage
from tenant_runtime.audit_lineage import carried, lineage, signer_of
from tenant_runtime.checkpoints import verify_checkpoint
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.models import (
    AuditCheckpoint,
    AuditEvent,
    AuditSettings,
    CheckpointDelivery,
    CheckpointKey,
    single_row,
)
from tenant_runtime.webhooks import (  # noqa: F401 - signature, SIGNATURE_HEADER: re-exported
    SIGNATURE_HEADER,
    Poster,
    check_webhook_url,
    poster,
    send_signed,
    set_webhook,
    signature,
)

DEFAULT_RETENTION_DAYS = 396  # 13 months
MIN_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 3650
DELIVERY_BATCH = 20


class AuditEvents:
    SETTINGS_CHANGED = "audit.settings_changed"
    PRUNED = audit_lineage.PRUNED  # carries the lineage of what it removes
    PRUNE_REFUSED = "audit.prune_refused"


def settings_row(s: Session) -> AuditSettings:
    return single_row(s, AuditSettings, retention_days=DEFAULT_RETENTION_DAYS)


def do_configure_audit(s: Session, ctx: TenantContext, *, webhook_url: str | None,
                       retention_days: int) -> str | None:
    """Save the settings; returns a new webhook signing secret (shown once) when the URL was
    set or changed, else None."""
    if not MIN_RETENTION_DAYS <= retention_days <= MAX_RETENTION_DAYS:
        raise TenantInvalidInput(f"Retention must be between {MIN_RETENTION_DAYS} and "
                                 f"{MAX_RETENTION_DAYS} days.")
    row = settings_row(s)
    changed, new_secret = set_webhook(ctx, row, webhook_url, table="audit_settings")
    if retention_days != row.retention_days:
        changed.append("retention_days")
        row.retention_days = retention_days
    if changed:
        row.updated_at = datetime.now(UTC)
        audit.record(s, AuditEvents.SETTINGS_CHANGED, actor=ctx.actor,
                     target_type="audit_settings", details={"changed": changed})
    return new_secret


def checkpoint_line(tenant_id: int, c: AuditCheckpoint) -> bytes:
    document = {"type": "checkpoint", "tenant_id": tenant_id, "seq": c.seq,
                "chain_hash": c.chain_hash,
                "created_at": c.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "signature": c.signature, "key_id": c.key_id}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class DeliveryResult:
    sent: int = 0
    failed: int = 0


def deliver_checkpoints(s: Session, ctx: TenantContext, post: Poster | None = None
                        ) -> DeliveryResult:
    """Send every checkpoint not yet delivered (oldest first, a batch per run); ``post``
    defaults to ``poster(ctx.egress)``."""
    post = post or poster(ctx.egress)
    result = DeliveryResult()
    row = s.get(AuditSettings, 1)
    if row is None or not row.webhook_url or row.webhook_secret_sealed is None:
        return result
    secret = ctx.sealer.open_text(row.webhook_secret_sealed, table="audit_settings",
                                  column="webhook_secret_sealed", row_key=1)
    delivered = select(CheckpointDelivery.seq).where(CheckpointDelivery.delivered_at
                                                     .is_not(None))
    pending = list(s.scalars(select(AuditCheckpoint).where(AuditCheckpoint.seq.not_in(delivered))
                             .order_by(AuditCheckpoint.seq).limit(DELIVERY_BATCH)))
    for checkpoint in pending:
        body = checkpoint_line(ctx.tenant_id, checkpoint)
        delivery = s.get(CheckpointDelivery, checkpoint.seq) or CheckpointDelivery(
            seq=checkpoint.seq, attempts=0)
        s.add(delivery)
        delivery.attempts += 1
        error = send_signed(post, row.webhook_url, secret, body,
                            {"X-Magistrate-Tenant": str(ctx.tenant_id)})
        if error is None:
            delivery.delivered_at = datetime.now(UTC)
            delivery.last_error = None
            result.sent += 1
        else:
            delivery.last_error = error[:300]
            result.failed += 1
            break  # in order: the next run starts with this one again
    s.flush()
    return result


@dataclass
class PruneResult:
    removed: int
    upto_seq: int | None
    reason: str | None = None


def prune(s: Session, ctx: TenantContext, *, now: datetime | None = None) -> PruneResult:
    """Remove events older than the retention, up to the newest signed checkpoint that the
    cut-off reaches. Without such a checkpoint nothing is removed (and the refusal is audited)."""
    now = now or datetime.now(UTC)
    row = settings_row(s)
    cutoff_time = now - timedelta(days=row.retention_days)
    cutoff_seq = s.scalar(select(func.max(AuditEvent.seq))
                          .where(AuditEvent.occurred_at < cutoff_time))
    if cutoff_seq is None:
        return PruneResult(0, None, "nothing is older than the retention")
    checkpoint = s.scalars(select(AuditCheckpoint).where(AuditCheckpoint.seq <= cutoff_seq)
                           .order_by(AuditCheckpoint.seq.desc()).limit(1)).first()
    first = s.scalar(select(func.min(AuditEvent.seq)))
    if checkpoint is None or first is None or checkpoint.seq < first:
        audit.record(s, AuditEvents.PRUNE_REFUSED, actor=ctx.actor,
                     details={"cutoff_seq": cutoff_seq, "reason": "no checkpoint"})
        return PruneResult(0, None, "no signed checkpoint covers the old events")
    if not _signed_by_its_key(s, ctx, checkpoint):
        audit.record(s, AuditEvents.PRUNE_REFUSED, actor=ctx.actor,
                     details={"cutoff_seq": cutoff_seq, "checkpoint_seq": checkpoint.seq,
                              "reason": "bad signature"})
        return PruneResult(0, None, "the checkpoint's signature does not verify")
    upto = checkpoint.seq
    # recorded first: the event becomes the chain's head, so a cut at a checkpoint that was the
    # head leaves one event for the next append to continue from (the database insists)
    expected = int(s.scalar(select(func.count()).select_from(AuditEvent)
                            .where(AuditEvent.seq <= upto)) or 0)
    audit.record(s, AuditEvents.PRUNED, actor=ctx.actor,
                 details={"upto_seq": upto, "removed": expected,
                          "retention_days": row.retention_days,
                          **({"lineage": kept} if (kept := carried(lineage(s), upto)) else {})})
    removed = int(s.scalar(text("SELECT prune_audit_events(:upto)"), {"upto": upto}) or 0)
    if removed != expected:  # only appends run beside us, above the cut: never expected
        raise RuntimeError(f"retention removed {removed} events, not {expected}")
    return PruneResult(removed, upto)


def _signed_by_its_key(s: Session, ctx: TenantContext, checkpoint: AuditCheckpoint) -> bool:
    """The checkpoint's signature verifies with the tenant's checkpoint key it names."""
    public = s.scalar(select(CheckpointKey.public_key)
                      .where(CheckpointKey.key_id == checkpoint.key_id))
    return public is not None and verify_checkpoint(
        public, signer_of(lineage(s), checkpoint.seq, ctx.tenant_id), checkpoint.seq,
        checkpoint.chain_hash, checkpoint.created_at, checkpoint.signature)
