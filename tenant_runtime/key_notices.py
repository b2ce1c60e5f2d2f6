"""Key notices: a checkpoint key's public half sent, when the key is made or rotated in, to
channels the customer controls, so a compliance team can pin it without trusting the
dashboard (ops/AUDIT_FORMAT.md, section 2, "Pinning the key without trusting the dashboard").

- ``queue_key_notices`` writes a ``webhook`` and an ``email`` notice in the transaction that
  makes the key.
- ``deliver_key_notices`` (the checkpoint worker, every minute) sends what is pending: the
  webhook to the tenant's notification webhook (the approval one, HMAC-signed with its
  secret), the e-mail to the tenant's compliance contacts, which the caller resolves (the
  tenant database holds no e-mail addresses). A failure is recorded and retried next run; a
  notice with nowhere to go (no webhook, no contacts, no SMTP) is ``skipped`` and says why.
"""

from __future__ import annotations

import json
import smtplib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenant_runtime.approvals.models import ApprovalSettings
from tenant_runtime.context import TenantContext
from tenant_runtime.models import CheckpointKey, CheckpointKeyRotation, KeyNotice
from tenant_runtime.webhooks import Poster, poster, send_signed

KINDS = ("webhook", "email")
BATCH = 20


class Sender(Protocol):
    """Sends one e-mail (tenant_runtime.approvals.notify.Mailer)."""

    def send(self, recipients: list[str], subject: str, body: str) -> None: ...


@dataclass
class NoticeResult:
    sent: int = 0
    skipped: int = 0
    failed: int = 0


def queue_key_notices(s: Session, key_id: str) -> None:
    """One notice of each kind for the key ``key_id``, in the caller's transaction."""
    for kind in KINDS:
        s.add(KeyNotice(key_id=key_id, kind=kind, status="pending", attempts=0))


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def notice_document(s: Session, tenant_id: int, key: CheckpointKey) -> dict[str, Any]:
    """The webhook body: the key, and the rotation statement that brought it in (if any)."""
    rotation = s.scalars(select(CheckpointKeyRotation).where(
        CheckpointKeyRotation.new_key_id == key.key_id)).first()
    return {"type": "checkpoint_key", "tenant_id": tenant_id, "key_id": key.key_id,
            "public_key": key.public_key, "valid_from": _timestamp(key.valid_from),
            "rotation": None if rotation is None else {
                "type": "key_rotation", "tenant_id": tenant_id,
                "old_key_id": rotation.old_key_id, "new_key_id": rotation.new_key_id,
                "new_public_key": rotation.new_public_key,
                "rotated_at": _timestamp(rotation.rotated_at),
                "signature": rotation.signature, "new_signature": rotation.new_signature}}


def email_text(ctx: TenantContext, document: dict[str, Any]) -> tuple[str, str]:
    rotation = document["rotation"]
    why = (f"It replaces key {rotation['old_key_id']} from {rotation['rotated_at']}; the "
           "rotation statement, signed by both keys, is in every export."
           if rotation else "It is the tenant's first checkpoint key.")
    subject = f"Audit checkpoint key {document['key_id']} for tenant {ctx.slug}"
    body = (f"A new checkpoint key signs the audit log of tenant {ctx.slug} "
            f"(id {ctx.tenant_id}) from {document['valid_from']}. {why}\n\n"
            f"key_id (fingerprint): {document['key_id']}\n"
            f"public key (base64):  {document['public_key']}\n\n"
            "Keep this message. Verify exports with\n"
            f"  python3 verify_audit_chain.py EXPORT --pin-key {document['public_key']}\n"
            "and trust a key shown elsewhere (the dashboard, an export) only if it matches.\n")
    return subject, body


def deliver_key_notices(s: Session, ctx: TenantContext, *,
                        recipients: Callable[[], list[str]], mailer: Sender | None,
                        post: Poster | None = None) -> NoticeResult:
    """Send the pending notices, oldest first (a batch per run), in the caller's
    transaction. ``post`` defaults to ``poster(ctx.egress)`` (the egress policy, no
    redirects)."""
    post = post or poster(ctx.egress)
    result = NoticeResult()
    pending = list(s.scalars(select(KeyNotice).where(KeyNotice.status == "pending")
                             .order_by(KeyNotice.id).limit(BATCH).with_for_update(
                                 skip_locked=True)))
    for notice in pending:
        key = s.scalars(select(CheckpointKey).where(
            CheckpointKey.key_id == notice.key_id)).one()
        document = notice_document(s, ctx.tenant_id, key)
        notice.attempts += 1
        try:
            error, skipped = _send(s, ctx, notice.kind, document, recipients, mailer, post)
        except (OSError, smtplib.SMTPException) as exc:
            error, skipped = type(exc).__name__, False
        if error is None:
            notice.status, notice.sent_at, notice.last_error = "sent", datetime.now(UTC), None
            result.sent += 1
        elif skipped:
            notice.status, notice.last_error = "skipped", error[:300]
            result.skipped += 1
        else:
            notice.last_error = error[:300]
            result.failed += 1
    s.flush()
    return result


def _send(s: Session, ctx: TenantContext, kind: str, document: dict[str, Any],
          recipients: Callable[[], list[str]], mailer: Sender | None,
          post: Poster) -> tuple[str | None, bool]:
    """(None, False) when sent; (why, True) when there is nowhere to send; (why, False) when
    sending failed and will be retried."""
    if kind == "webhook":
        settings = s.get(ApprovalSettings, 1)
        if settings is None or not settings.webhook_url \
                or settings.webhook_secret_sealed is None:
            return "no notification webhook is configured", True
        secret = ctx.sealer.open_text(settings.webhook_secret_sealed, table="approval_settings",
                                      column="webhook_secret_sealed", row_key=1)
        body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        return send_signed(post, settings.webhook_url, secret, body,
                           {"X-Magistrate-Tenant": str(ctx.tenant_id),
                            "X-Magistrate-Event": "checkpoint_key"}), False
    to = recipients()
    if mailer is None:
        return "no SMTP server is configured", True
    if not to:
        return "the tenant has no compliance contact", True
    subject, text = email_text(ctx, document)
    mailer.send(to, subject, text)
    return None, False
