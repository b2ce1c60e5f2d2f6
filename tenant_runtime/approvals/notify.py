"""Delivering the approval outbox: e-mail to the approvers (SMTP), the tenant's HMAC-signed
notification webhook, and the signed ``action.execute`` webhook of an approved action.

Rows are written in the request's transaction (service.py); a periodic worker task calls
``deliver_outbox`` for every tenant. Rows are taken with ``FOR UPDATE SKIP LOCKED``, so two
workers never send the same row at once; a failure is recorded and retried with backoff
(30 s doubling, at most an hour apart) until the receiver takes it, so nothing is lost while
SMTP or a receiver is down. Links lead to the request's page, which needs sign-in; messages
carry the action's name and who asked, never the payload's values, comments or secrets. A
governed MCP tool call's request also names its tool and upstream (identifiers an approver
needs to triage), never its arguments: those leave the platform nowhere and are shown, opened,
on the request's page to its approvers only (arguments.py).
``action.execute`` carries ``Idempotency-Key: <request id>``: if a worker dies between the
receiver's 2xx and its commit, the one repeat is recognisable."""

from __future__ import annotations

import json
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.approvals import classes
from tenant_runtime.approvals.classes import ApprovalEvents
from tenant_runtime.approvals.models import (
    ActionClass,
    ApprovalDecision,
    ApprovalOutbox,
    ApprovalRequest,
)
from tenant_runtime.approvals.service import clock, display_state
from tenant_runtime.context import TenantContext
from tenant_runtime.webhooks import Poster, poster, send_signed

BATCH = 20
FIRST_RETRY_SECONDS = 30
MAX_RETRY_SECONDS = 3600
SMTP_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    sender: str
    tls: str = "starttls"  # starttls, ssl or none
    username: str | None = None
    password: str | None = None


class Mailer:
    """Sends one message over SMTP (smtplib), with STARTTLS or implicit TLS unless ``none``."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def send(self, recipients: list[str], subject: str, body: str) -> None:
        c = self.config
        message = EmailMessage()
        message["From"] = c.sender
        message["To"] = "undisclosed-recipients:;"  # approvers are in the envelope only
        message["Subject"] = subject
        message.set_content(body)
        context = ssl.create_default_context()
        smtp: smtplib.SMTP = (smtplib.SMTP_SSL(c.host, c.port, timeout=SMTP_TIMEOUT_SECONDS,
                                               context=context) if c.tls == "ssl"
                              else smtplib.SMTP(c.host, c.port, timeout=SMTP_TIMEOUT_SECONDS))
        with smtp:
            if c.tls == "starttls":
                smtp.starttls(context=context)
            if c.username and c.password:
                smtp.login(c.username, c.password)
            smtp.send_message(message, to_addrs=recipients)


# (the request) -> e-mail addresses of the members who may decide it, requester excluded
Recipients = Callable[[ApprovalRequest], list[str]]


@dataclass
class DeliveryResult:
    sent: int = 0
    failed: int = 0
    skipped: int = 0


def request_url(public_url: str, tenant_id: int, request_id: object) -> str:
    return f"{public_url.rstrip('/')}/tenants/{tenant_id}/approvals/{request_id}"


def tool_of(req: ApprovalRequest) -> tuple[str, str] | None:
    """(upstream, tool) of a governed MCP tool call's request, else None."""
    upstream, tool = req.payload.get("upstream"), req.payload.get("tool")
    if isinstance(upstream, str) and isinstance(tool, str):
        return upstream, tool
    return None


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def email_text(ctx: TenantContext, req: ApprovalRequest, description: str, url: str
               ) -> tuple[str, str]:
    subject = f"Approval requested: {req.action} ({ctx.slug})"
    who = req.requested_by_name or req.requested_by_type
    lines = [f"{who} asked to run \"{req.action}\" in the tenant {ctx.slug}."]
    if description:
        lines.append(description)
    found = tool_of(req)
    if found is not None:
        lines.append(f"The tool: {found[1]} of the MCP upstream {found[0]}; its arguments are "
                     "shown on the request's page.")
    lines += ["", f"It needs {req.approvals_needed} approval(s) from the {req.approver_role} "
              f"role (or the tenant's Owner) before {_iso(req.expires_at)}.", "",
              "Review it (you will be asked to sign in):", url, ""]
    return subject, "\n".join(lines)


def _notification_body(ctx: TenantContext, req: ApprovalRequest, url: str) -> bytes:
    document = {"type": "approval.requested", "tenant_id": ctx.tenant_id,
                "request_id": str(req.id), "action": req.action,
                "requested_by": req.requested_by_name, "approver_role": req.approver_role,
                "approvals_needed": req.approvals_needed, "created_at": _iso(req.created_at),
                "expires_at": _iso(req.expires_at), "url": url}
    found = tool_of(req)
    if found is not None:
        document["upstream"], document["tool"] = found
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _execute_body(s: Session, ctx: TenantContext, req: ApprovalRequest, url: str) -> bytes:
    approvers = [name for name, in s.execute(
        select(ApprovalDecision.approver_name).where(ApprovalDecision.request_id == req.id,
                                                     ApprovalDecision.approve)
        .order_by(ApprovalDecision.decided_at))]
    document: dict[str, Any] = {
        "type": "action.execute", "idempotency_key": str(req.id), "tenant_id": ctx.tenant_id,
        "request_id": str(req.id), "action": req.action, "payload": req.payload,
        "requested_by": req.requested_by_name, "approved_by": approvers,
        "approved_at": _iso(req.decided_at) if req.decided_at else None, "url": url}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _send(s: Session, ctx: TenantContext, row: ApprovalOutbox, req: ApprovalRequest, *,
          public_url: str, recipients: Recipients, mailer: Mailer | None, post: Poster,
          now: datetime) -> str | None:
    """Send one row. Returns None when sent; raises _Skip when there is nowhere to send it;
    returns a short reason when it failed (and is retried)."""
    url = request_url(public_url, ctx.tenant_id, req.id)
    headers = {"X-Magistrate-Tenant": str(ctx.tenant_id)}
    if row.kind == "execute":
        cls = s.get(ActionClass, req.action_class_id)
        if cls is None or not cls.execution_url or cls.execution_secret_sealed is None:
            raise _Skip("the class has no execution URL any more")
        secret = ctx.sealer.open_text(cls.execution_secret_sealed, table="action_classes",
                                      column="execution_secret_sealed", row_key=cls.id)
        return send_signed(post, cls.execution_url, secret, _execute_body(s, ctx, req, url),
                           {**headers, "X-Magistrate-Event": "action.execute",
                            "Idempotency-Key": str(req.id)})
    if display_state(req, now) != "pending":
        raise _Skip("the request is no longer pending")
    settings = classes.settings_row(s)
    if row.kind == "webhook":
        if not settings.webhook_url or settings.webhook_secret_sealed is None:
            raise _Skip("no notification webhook is configured")
        secret = ctx.sealer.open_text(settings.webhook_secret_sealed, table="approval_settings",
                                      column="webhook_secret_sealed", row_key=1)
        return send_signed(post, settings.webhook_url, secret,
                           _notification_body(ctx, req, url),
                           {**headers, "X-Magistrate-Event": "approval.requested",
                            "Idempotency-Key": f"{req.id}:requested"})
    if mailer is None:
        raise _Skip("e-mail is not configured (MAGISTRATE_SMTP_HOST)")
    if not settings.email_approvers:
        raise _Skip("e-mail to approvers is turned off")
    to = recipients(req)
    if not to:
        raise _Skip("no member may decide it")
    cls = s.get(ActionClass, req.action_class_id)
    subject, body = email_text(ctx, req, cls.description if cls else "", url)
    try:
        mailer.send(to, subject, body)
    except (OSError, smtplib.SMTPException) as exc:
        return type(exc).__name__
    row.recipients = len(to)
    return None


class _Skip(Exception):
    pass


def deliver_outbox(s: Session, ctx: TenantContext, *, public_url: str, recipients: Recipients,
                   mailer: Mailer | None, post: Poster | None = None,
                   now: datetime | None = None) -> DeliveryResult:
    """Send what is due (a batch per run), oldest first; each row sent at most once. ``post``
    defaults to ``poster(ctx.egress)`` (webhooks.py)."""
    now = now or clock()
    post = post or poster(ctx.egress)
    result = DeliveryResult()
    rows = list(s.scalars(
        select(ApprovalOutbox).where(ApprovalOutbox.status == "pending",
                                     ApprovalOutbox.next_attempt_at <= now)
        .order_by(ApprovalOutbox.id).limit(BATCH).with_for_update(skip_locked=True)))
    for row in rows:
        req = s.get(ApprovalRequest, row.request_id)
        if req is None:
            continue
        row.attempts += 1
        try:
            error = _send(s, ctx, row, req, public_url=public_url, recipients=recipients,
                          mailer=mailer, post=post, now=now)
        except _Skip as skip:
            row.status, row.sent_at, row.last_error = "skipped", now, str(skip)[:300]
            result.skipped += 1
            continue
        if error is None:
            row.status, row.sent_at, row.last_error = "sent", now, None
            result.sent += 1
            if row.kind == "execute":
                audit.record(s, ApprovalEvents.EXECUTION_SENT, actor=ctx.actor,
                             target_type="approval_request", target_id=str(req.id),
                             details={"action": req.action, "attempts": row.attempts})
        else:
            delay = min(FIRST_RETRY_SECONDS * 2 ** (row.attempts - 1), MAX_RETRY_SECONDS)
            row.next_attempt_at = now + timedelta(seconds=delay)
            row.last_error = error[:300]
            result.failed += 1
    s.flush()
    return result
