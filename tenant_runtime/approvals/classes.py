"""Configuring the approval gate (tenant Owners and Admins): action classes and the
notification settings. Each change is validated, applied and audited in the caller's
transaction; audit details name fields and identifiers, never secrets."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.approvals.exceptions import UnknownAction
from tenant_runtime.approvals.models import ActionClass, ApprovalRequest, ApprovalSettings
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput, TenantNotFound
from tenant_runtime.models import single_row
from tenant_runtime.webhooks import check_webhook_url, set_webhook

APPROVER_ROLES = ("Approver", "Admin", "Operator", "Compliance", "Owner")
DEFAULT_APPROVER_ROLE = "Approver"
DEFAULT_EXPIRY_SECONDS = 24 * 3600
MIN_EXPIRY_SECONDS = 60
MAX_EXPIRY_SECONDS = 30 * 24 * 3600
MAX_APPROVALS = 10
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._:-]{0,99}")


class ApprovalEvents:
    CLASS_ADDED = "approval.class_added"
    CLASS_CHANGED = "approval.class_changed"
    CLASS_DELETED = "approval.class_deleted"
    SETTINGS_CHANGED = "approval.settings_changed"
    REQUESTED = "approval.requested"
    APPROVED = "approval.approved"  # one approver's decision (details: granted when enough)
    REJECTED = "approval.rejected"
    EXECUTED = "approval.executed"  # the approval consumed: the action ran (or was sent)
    EXECUTION_SENT = "approval.execution_sent"  # the action.execute webhook was delivered


def normal_name(raw: str) -> str:
    name = raw.strip().lower()
    if not NAME_RE.fullmatch(name):
        raise UnknownAction("An action name uses lower-case letters, digits and . _ : - "
                            "(at most 100 characters), such as 'agent.promote'.")
    return name


@dataclass(frozen=True)
class ClassInput:
    name: str
    description: str = ""
    restricted: bool = True
    approver_role: str = DEFAULT_APPROVER_ROLE
    expiry_seconds: int = DEFAULT_EXPIRY_SECONDS
    approvals_needed: int = 1
    execution_url: str | None = None


def _validated(data: ClassInput) -> dict[str, Any]:
    try:
        name = normal_name(data.name)
    except UnknownAction as exc:
        raise TenantInvalidInput(exc.message) from None
    description = data.description.strip()
    if len(description) > 500:
        raise TenantInvalidInput("The description is at most 500 characters.")
    if data.approver_role not in APPROVER_ROLES:
        raise TenantInvalidInput(f"The approving role must be one of "
                                 f"{', '.join(APPROVER_ROLES)}.")
    if not MIN_EXPIRY_SECONDS <= data.expiry_seconds <= MAX_EXPIRY_SECONDS:
        raise TenantInvalidInput("An approval expires after 1 minute to 30 days.")
    if not 1 <= data.approvals_needed <= MAX_APPROVALS:
        raise TenantInvalidInput(f"Approvals needed must be between 1 and {MAX_APPROVALS}.")
    url = check_webhook_url(data.execution_url) if data.execution_url else None
    return {"name": name, "description": description, "restricted": data.restricted,
            "approver_role": data.approver_role, "expiry_seconds": data.expiry_seconds,
            "approvals_needed": data.approvals_needed, "execution_url": url}


def _new_execution_secret(ctx: TenantContext, row: ActionClass) -> str:
    secret = secrets.token_urlsafe(32)
    row.execution_secret_sealed = ctx.sealer.seal(secret, table="action_classes",
                                                  column="execution_secret_sealed",
                                                  row_key=row.id)
    return secret


def do_add_action_class(s: Session, ctx: TenantContext, data: ClassInput
                        ) -> tuple[ActionClass, str | None]:
    """The new class, and its execution webhook's signing secret (shown once) if it has a URL."""
    values = _validated(data)
    row = ActionClass(**values)
    try:
        with s.begin_nested():
            s.add(row)
            s.flush()
    except IntegrityError:
        raise TenantInvalidInput(f"There is already an action class named "
                                 f"{values['name']!r}.") from None
    secret = _new_execution_secret(ctx, row) if row.execution_url else None
    audit.record(s, ApprovalEvents.CLASS_ADDED, actor=ctx.actor, target_type="action_class",
                 target_id=row.id, details=_details(row))
    return row, secret


def _details(row: ActionClass) -> dict[str, Any]:
    return {"name": row.name, "restricted": row.restricted, "approver_role": row.approver_role,
            "expiry_seconds": row.expiry_seconds, "approvals_needed": row.approvals_needed,
            "execution_webhook": row.execution_url is not None}


def access_action_class(s: Session, class_id: int) -> ActionClass:
    row = s.get(ActionClass, class_id)
    if row is None:
        raise TenantNotFound("There is no such action class.")
    return row


def do_change_action_class(s: Session, ctx: TenantContext, class_id: int, data: ClassInput
                           ) -> str | None:
    """Apply the change (the name stays); returns a new execution signing secret when the
    execution URL was set or changed. Requests in flight keep the rules they were made with."""
    row = access_action_class(s, class_id)
    values = _validated(data)
    changed = [field for field in ("description", "restricted", "approver_role",
                                   "expiry_seconds", "approvals_needed", "execution_url")
               if getattr(row, field) != values[field]]
    if not changed:
        return None
    for field in changed:
        setattr(row, field, values[field])
    secret = None
    if "execution_url" in changed:
        if row.execution_url is None:
            row.execution_secret_sealed = None
        else:
            secret = _new_execution_secret(ctx, row)
    row.updated_at = datetime.now(UTC)
    audit.record(s, ApprovalEvents.CLASS_CHANGED, actor=ctx.actor, target_type="action_class",
                 target_id=row.id, details={**_details(row), "changed": changed})
    return secret


def do_delete_action_class(s: Session, ctx: TenantContext, class_id: int) -> None:
    row = access_action_class(s, class_id)
    if s.scalar(select(exists().where(ApprovalRequest.action_class_id == row.id))):
        raise TenantInvalidInput(f"{row.name!r} has requests on record, which keep their "
                                 "history; mark it not restricted or change its rules "
                                 "instead.")
    s.delete(row)
    audit.record(s, ApprovalEvents.CLASS_DELETED, actor=ctx.actor, target_type="action_class",
                 target_id=class_id, details={"name": row.name})


def list_action_classes(s: Session) -> list[ActionClass]:
    return list(s.scalars(select(ActionClass).order_by(ActionClass.name)))


def class_by_name(s: Session, name: str) -> ActionClass | None:
    return s.scalars(select(ActionClass).where(ActionClass.name == name)).first()


def do_add_default_class(s: Session, ctx: TenantContext, name: str) -> ActionClass:
    """An internal action's class, made at its first request: restricted, the defaults."""
    row = ActionClass(name=name, description="Added at its first request (internal action).",
                      restricted=True, approver_role=DEFAULT_APPROVER_ROLE,
                      expiry_seconds=DEFAULT_EXPIRY_SECONDS, approvals_needed=1)
    s.add(row)
    s.flush()
    audit.record(s, ApprovalEvents.CLASS_ADDED, actor=ctx.actor, target_type="action_class",
                 target_id=row.id, details={**_details(row), "default": True})
    return row


# --- notification settings -------------------------------------------------------------------


def settings_row(s: Session) -> ApprovalSettings:
    return single_row(s, ApprovalSettings, email_approvers=True)


def do_configure_notifications(s: Session, ctx: TenantContext, *, webhook_url: str | None,
                               email_approvers: bool) -> str | None:
    """Save the settings; returns a new webhook signing secret (shown once) when the URL was
    set or changed, else None."""
    row = settings_row(s)
    changed, new_secret = set_webhook(ctx, row, webhook_url, table="approval_settings")
    if email_approvers != row.email_approvers:
        changed.append("email_approvers")
        row.email_approvers = email_approvers
    if changed:
        row.updated_at = datetime.now(UTC)
        audit.record(s, ApprovalEvents.SETTINGS_CHANGED, actor=ctx.actor,
                     target_type="approval_settings", target_id=1,
                     details={"changed": changed})
    return new_secret
