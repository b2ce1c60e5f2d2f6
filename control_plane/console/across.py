"""The platform's global pages: Gateway, Approvals and Audit across the tenants the signed-in
user may see, each row naming its tenant and linking into the tenant's tab.

``visible_tenants`` is the one decision of which tenants a global page reads: the user's own
active memberships whose role holds the page's permission (as the tenant's own tab requires),
minus the tenants that require two-factor sign-in of a user without it (listed as locked,
with nothing read from them). A tenant database that cannot be read is named, not fatal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from control_plane.console.overview import CHART_DAYS, MICROS, daily_totals, month_start
from control_plane.db import utcnow
from control_plane.models import User
from control_plane.tenancy.service import list_tenants
from tenant_runtime import permissions
from tenant_runtime.approvals.models import ApprovalRequest
from tenant_runtime.approvals.service import clock, inbox
from tenant_runtime.exceptions import TenantError
from tenant_runtime.gateway.spend import month_totals
from tenant_runtime.models import AuditEvent, GatewaySettings

MAX_TENANTS = 50
ROWS = 50  # rows of a merged table (events, requests)

T = TypeVar("T")


@dataclass(frozen=True)
class Visible:
    id: int
    name: str
    role: str
    engine: Engine


@dataclass
class Across:
    """What a global page read: its rows, and the tenants it could not read (and why)."""
    tenants: list[Visible] = field(default_factory=list)
    locked: list[tuple[int, str]] = field(default_factory=list)  # require MFA the user lacks
    unreadable: list[tuple[int, str]] = field(default_factory=list)
    more_tenants: bool = False  # more than MAX_TENANTS: the first ones are read


def visible_tenants(s: Session, user: User, permission: str,
                    tenant_engine: Callable[[Any], Engine]) -> Across:
    found = Across()
    for tenant, role in list_tenants(s, user=user):
        if tenant.state != "active" or not permissions.allows(role, permission):
            continue
        if tenant.require_mfa and not user.mfa_enabled:
            found.locked.append((tenant.id, tenant.name))
            continue
        if len(found.tenants) == MAX_TENANTS:
            found.more_tenants = True
            break
        found.tenants.append(Visible(tenant.id, tenant.name, role, tenant_engine(tenant)))
    return found


def per_tenant(across: Across, read: Callable[[Session, Visible], T]) -> list[T]:
    """``read`` on each visible tenant's database, read-only; a tenant that cannot be read
    is named in ``across.unreadable``, so one tenant's outage does not hide the others."""
    out: list[T] = []
    for tenant in across.tenants:
        try:
            with Session(tenant.engine, expire_on_commit=False) as ts, ts.begin():
                out.append(read(ts, tenant))
        except (SQLAlchemyError, TenantError):
            across.unreadable.append((tenant.id, tenant.name))
    return out


# --- Gateway -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayRow:
    tenant: Visible
    spent_micros: int
    cap_micros: int
    calls: int
    errors: int
    cost_micros: int  # of the calls in the last CHART_DAYS days

    @property
    def cap_percent(self) -> int:
        return int(self.spent_micros * 100 / self.cap_micros) if self.cap_micros else 0


def gateway_rows(across: Across) -> list[GatewayRow]:
    now = utcnow()
    first_day = (now - timedelta(days=CHART_DAYS - 1)).date()
    since = datetime.combine(first_day, datetime.min.time(), tzinfo=now.tzinfo)

    def read(ts: Session, tenant: Visible) -> GatewayRow:
        settings = ts.scalars(select(GatewaySettings).limit(1)).first()
        spent, _ = month_totals(ts, month_start(now.date()))
        daily = daily_totals(ts, since)
        return GatewayRow(tenant, spent,
                          settings.monthly_cap_micros if settings else 100 * MICROS,
                          sum(n for _, n, _, _ in daily), sum(e for _, _, e, _ in daily),
                          sum(c for _, _, _, c in daily))

    return per_tenant(across, read)


# --- Approvals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitingRow:
    tenant: Visible
    request: ApprovalRequest


@dataclass(frozen=True)
class ApprovalsSummary:
    tenant: Visible
    waiting_for_you: int
    pending: int
    decided_today: int


def approvals_rows(across: Across, user_id: str) -> tuple[list[WaitingRow],
                                                          list[ApprovalsSummary]]:
    now = clock()
    today = datetime.combine(now.date(), datetime.min.time(), tzinfo=now.tzinfo)
    waiting: list[WaitingRow] = []

    def read(ts: Session, tenant: Visible) -> ApprovalsSummary:
        mine = inbox(ts, user_id=user_id, role=tenant.role, now=now, limit=ROWS)
        waiting.extend(WaitingRow(tenant, r) for r in mine)
        pending = int(ts.scalar(select(func.count()).select_from(ApprovalRequest).where(
            ApprovalRequest.state == "pending", ApprovalRequest.expires_at > now)) or 0)
        decided = int(ts.scalar(select(func.count()).select_from(ApprovalRequest).where(
            ApprovalRequest.decided_at >= today)) or 0)
        return ApprovalsSummary(tenant, len(mine), pending, decided)

    summaries = per_tenant(across, read)
    waiting.sort(key=lambda w: w.request.expires_at)
    return waiting[:ROWS], summaries


# --- Audit ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventRow:
    tenant: Visible
    seq: int
    occurred_at: datetime
    event_type: str
    actor: str
    target: str


def audit_rows(across: Across) -> list[EventRow]:
    """The newest ``ROWS`` events across the tenants (each tenant's newest ``ROWS``, merged)."""
    def read(ts: Session, tenant: Visible) -> list[EventRow]:
        query = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(ROWS)
        return [EventRow(tenant, e.seq, e.occurred_at, e.event_type,
                         e.actor_name or e.actor_type,
                         f"{e.target_type or ''} {e.target_id or ''}".strip())
                for e in ts.scalars(query)]

    rows = [row for rows in per_tenant(across, read) for row in rows]
    rows.sort(key=lambda r: r.occurred_at, reverse=True)
    return rows[:ROWS]
