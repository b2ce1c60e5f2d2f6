"""The periodic approval-outbox task: in every active tenant, send the approval notifications
(e-mail to the members who may decide, the tenant's signed webhook) and the ``action.execute``
webhooks that are due, retrying failures with backoff (tenant_runtime/approvals/notify.py).

It runs in the periodic process of every worker; two workers on one tenant do not send a row
twice (rows are taken ``FOR UPDATE SKIP LOCKED``). Recipients are resolved here, at sending
time, from the control plane's memberships: the tenant database holds no e-mail addresses."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from control_plane.models import Membership, User
from control_plane.settings import Settings
from control_plane.tenancy.connections import TenantConnections
from tenant_runtime.approvals.models import ApprovalRequest
from tenant_runtime.approvals.notify import Mailer, Recipients, SmtpConfig, deliver_outbox
from tenant_runtime.context import TenantContext
from tenant_runtime.webhooks import Poster
from workers import runtime
from workers.checkpoints import _process_connections, for_each_tenant


def mailer_for(settings: Settings) -> Mailer | None:
    if not settings.smtp_host:
        return None
    return Mailer(SmtpConfig(
        host=settings.smtp_host, port=settings.smtp_port, sender=settings.smtp_from,
        tls=settings.smtp_tls, username=settings.smtp_username,
        password=settings.smtp_password.reveal() if settings.smtp_password else None))


def recipients_in(session_factory: sessionmaker[Session], tenant_id: int) -> Recipients:
    """E-mail addresses of the tenant's active members who may decide a request: its approving
    role or the Owner role, the requester excluded."""

    def recipients(req: ApprovalRequest) -> list[str]:
        with session_factory() as s:
            rows = s.execute(
                select(User.id, User.email).join(Membership, Membership.user_id == User.id)
                .where(Membership.tenant_id == tenant_id, User.is_active,
                       Membership.role.in_((req.approver_role, "Owner")))
                .order_by(User.id)).all()
        requester = req.requested_by_id if req.requested_by_type == "user" else None
        return [email for user_id, email in rows if str(user_id) != requester]

    return recipients


def deliver_all_tenants(session_factory: sessionmaker[Session],
                        connections: TenantConnections, settings: Settings, *,
                        post: Poster | None = None,
                        now: Callable[[], datetime] | None = None) -> dict[str, int]:
    """One delivery run over every active tenant; returns ``{"tenants", "sent", "failed"}``."""
    mailer = mailer_for(settings)

    def work(ts: Session, ctx: TenantContext) -> int:
        result = deliver_outbox(ts, ctx, public_url=settings.public_url,
                                recipients=recipients_in(session_factory, ctx.tenant_id),
                                mailer=mailer, post=post, now=now() if now else None)
        return result.sent

    counts = for_each_tenant(session_factory, connections, work, "approval notifications")
    return {"tenants": counts["tenants"], "sent": counts["done"], "failed": counts["failed"]}


def run_approval_outbox() -> dict[str, int]:
    """The periodic task's body, with this process's tenant engines."""
    return deliver_all_tenants(runtime.session_factory(), _process_connections(),
                               runtime.env().settings)
