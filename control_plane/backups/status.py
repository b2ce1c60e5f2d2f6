"""What the dashboard shows of backups: per tenant, its last backup and its last drill, and
whether the drill is failing or missing (no passing drill in the last 35 days)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.models import Backup, Tenant

DRILL_FRESH = timedelta(days=35)  # a monthly drill, with a few days' slack


@dataclass(frozen=True)
class TenantBackupStatus:
    slug: str
    last_backup_at: datetime | None
    last_backup_id: str | None
    drill_at: datetime | None
    drill_ok: bool | None
    drill_detail: str | None

    @property
    def needs_attention(self) -> bool:
        """No backup, a failed last drill, or no passing drill recently."""
        if self.last_backup_at is None or self.drill_ok is False:
            return True
        return self.drill_at is None or datetime.now(UTC) - self.drill_at > DRILL_FRESH


def backup_status(s: Session) -> list[TenantBackupStatus]:
    tenants = list(s.execute(select(Tenant.id, Tenant.slug).where(
        Tenant.state.in_(("active", "suspended"))).order_by(Tenant.slug)))
    backups = list(s.scalars(select(Backup).where(Backup.tenant_id.is_not(None))
                             .order_by(Backup.created_at)))
    last = {b.tenant_id: b for b in backups}
    drilled = {b.tenant_id: b for b in sorted((b for b in backups if b.drill_at is not None),
                                              key=lambda b: b.drill_at or b.created_at)}
    rows = []
    for tenant_id, slug in tenants:
        b, d = last.get(tenant_id), drilled.get(tenant_id)
        rows.append(TenantBackupStatus(
            slug, b.created_at if b else None, b.id if b else None,
            d.drill_at if d else None, d.drill_ok if d else None, d.drill_detail if d else None))
    return rows
