"""The approvals area's tenant tables (TenantBase.metadata lists them through
tenant_runtime/models.py).

- ``action_classes``: what may be requested, whether it needs approval, by which role, how many
  approvers, how long an approval stays fresh, and where an approved external action is sent.
- ``approval_requests``: one request, its state (``pending → approved → executed``, or
  ``rejected``; ``expired`` is read from ``expires_at``), and the approval's single use
  (``executed_at``).
- ``approval_decisions``: one row per approver and request (unique), the comment or reason
  sealed as ``pii``.
- ``approval_outbox``: notifications and ``action.execute`` webhooks, written in the request's
  transaction and delivered, with retries, by a periodic worker task.
- ``approval_settings``: one row, the tenant's notification webhook.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenant_runtime.models import NOW, PII, PLAIN, SECRET, TenantBase

REQUEST_STATES = ("pending", "approved", "rejected", "executed")
OUTBOX_KINDS = ("email", "webhook", "execute")


class ActionClass(TenantBase):
    """A kind of action the tenant governs. ``restricted`` ones need ``approvals_needed``
    approvals by distinct members with ``approver_role`` (or the Owner), never the requester.
    ``execution_url``: an approved request is POSTed there once, signed with the sealed
    ``execution_secret_sealed`` (row key ``id``)."""

    __tablename__ = "action_classes"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    name: Mapped[str] = mapped_column(String(100), unique=True, info=PLAIN)
    description: Mapped[str] = mapped_column(String(500), server_default="", info=PLAIN)
    restricted: Mapped[bool] = mapped_column(Boolean, server_default=text("true"), info=PLAIN)
    approver_role: Mapped[str] = mapped_column(String(20), server_default="Approver",
                                               info=PLAIN)
    expiry_seconds: Mapped[int] = mapped_column(Integer, server_default=text("86400"),
                                                info=PLAIN)
    approvals_needed: Mapped[int] = mapped_column(Integer, server_default=text("1"),
                                                  info=PLAIN)
    execution_url: Mapped[str | None] = mapped_column(String(500), info=PLAIN)
    execution_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=SECRET)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)

    __table_args__ = (
        CheckConstraint("approvals_needed BETWEEN 1 AND 10", name="approvals_needed"),
        CheckConstraint("expiry_seconds BETWEEN 60 AND 2592000", name="expiry_seconds"),
    )


class ApprovalRequest(TenantBase):
    """A request to run an action. The class's rules are copied in when it is made, so a later
    change of the class does not move the goalposts of requests in flight. The payload holds
    identifiers and counts, never secrets (checked like audit details). ``arguments_sealed``:
    what a governed MCP tool call would send (arguments.py), sealed as ``pii`` (row key
    ``id``), shown to the request's approvers only."""

    __tablename__ = "approval_requests"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, info=PLAIN)
    action_class_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("action_classes.id", ondelete="RESTRICT"), info=PLAIN)
    action: Mapped[str] = mapped_column(String(100), info=PLAIN)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"),
                                                    info=PLAIN)
    via: Mapped[str] = mapped_column(String(20), info=PLAIN)  # dashboard, api, internal
    state: Mapped[str] = mapped_column(String(20), info=PLAIN)
    restricted: Mapped[bool] = mapped_column(Boolean, info=PLAIN)
    approver_role: Mapped[str] = mapped_column(String(20), info=PLAIN)
    approvals_needed: Mapped[int] = mapped_column(Integer, info=PLAIN)
    expiry_seconds: Mapped[int] = mapped_column(Integer, info=PLAIN)
    requested_by_type: Mapped[str] = mapped_column(String(20), info=PLAIN)
    requested_by_id: Mapped[str | None] = mapped_column(String(64), info=PLAIN)
    requested_by_name: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), info=PLAIN)
    # undecided: created_at + expiry; approved: the approval's own freshness window
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), info=PLAIN)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), info=PLAIN)
    executed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), info=PLAIN)
    executed_via: Mapped[str | None] = mapped_column(String(20), info=PLAIN)
    executed_by: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    arguments_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=PII)

    __table_args__ = (
        CheckConstraint("state IN ('pending', 'approved', 'rejected', 'executed')",
                        name="state"),
        CheckConstraint("(state = 'executed') = (executed_at IS NOT NULL)", name="executed"),
        Index("ix_approval_requests_state_expires_at", "state", "expires_at"),
        Index("ix_approval_requests_created_at", "created_at"),
    )


class ApprovalDecision(TenantBase):
    """One approver's answer; at most one per approver and request. The comment (approval) or
    reason (rejection) is free text, so it is sealed (row key ``id``)."""

    __tablename__ = "approval_decisions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    request_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("approval_requests.id", ondelete="CASCADE"), info=PLAIN)
    approver_id: Mapped[str] = mapped_column(String(64), info=PLAIN)
    approver_name: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    approver_role: Mapped[str | None] = mapped_column(String(20), info=PLAIN)
    approve: Mapped[bool] = mapped_column(Boolean, info=PLAIN)
    comment_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=PII)
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), info=PLAIN)

    __table_args__ = (
        UniqueConstraint("request_id", "approver_id", name="uq_approval_decisions_approver"),
    )


class ApprovalOutbox(TenantBase):
    """Something to send about a request: ``email`` and ``webhook`` notifications of a new
    request, ``execute`` (the approved action, to the class's execution URL). Written in the
    request's transaction, one of each kind per request at most; retried with backoff until
    sent (``skipped`` when there is nowhere to send it)."""

    __tablename__ = "approval_outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    request_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("approval_requests.id", ondelete="CASCADE"), info=PLAIN)
    kind: Mapped[str] = mapped_column(String(20), info=PLAIN)
    status: Mapped[str] = mapped_column(String(20), server_default="pending", info=PLAIN)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"), info=PLAIN)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True),
                                                      server_default=NOW, info=PLAIN)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), info=PLAIN)
    recipients: Mapped[int] = mapped_column(Integer, server_default=text("0"), info=PLAIN)
    last_error: Mapped[str | None] = mapped_column(String(300), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)

    __table_args__ = (
        UniqueConstraint("request_id", "kind", name="uq_approval_outbox_request_kind"),
        CheckConstraint("status IN ('pending', 'sent', 'skipped')", name="status"),
        Index("ix_approval_outbox_due", "next_attempt_at",
              postgresql_where=text("status = 'pending'")),
    )


class ApprovalSettings(TenantBase):
    """One row: the tenant's approval-notification webhook (its signing secret sealed, row key
    ``1``) and whether approvers are e-mailed."""

    __tablename__ = "approval_settings"

    id: Mapped[int] = mapped_column(primary_key=True, info=PLAIN)
    webhook_url: Mapped[str | None] = mapped_column(String(500), info=PLAIN)
    webhook_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=SECRET)
    email_approvers: Mapped[bool] = mapped_column(Boolean, server_default=text("true"),
                                                  info=PLAIN)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)
