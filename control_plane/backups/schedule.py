"""When the worker backs up and drills: every active or suspended tenant gets a daily backup at
its own moment of the UTC day (staggered by tenant id, so a thousand tenants do not all dump
at midnight), and a monthly drill of its latest backup, at the same moment of the 1st of each
month once that day's backup exists; the control plane is backed up daily at 00:30 UTC.

Each is an outbox job (control_plane/jobs.py) under an idempotency key naming the day or the
month, so the periodic task that calls ``schedule_due`` from every worker records each job
once, and a job killed mid-way (its lease expires, the reaper returns it) runs again: a killed
backup never published anything (control_plane/backups/destinations.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_plane.jobs import JobKinds, enqueue_job
from control_plane.models import Backup, Job, Tenant

DAY = 86_400
CONTROL_SLOT = 1_800  # 00:30 UTC


def slot_of(tenant_id: int) -> timedelta:
    """The tenant's moment of the day: a multiplicative hash of its id, spread over 24 h."""
    return timedelta(seconds=(tenant_id * 2_654_435_761) % DAY)


def schedule_due(session_factory: sessionmaker[Session], now: datetime | None = None) -> int:
    """Record the backup and drill jobs that are due now; returns how many were new."""
    now = now or datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    day = midnight.strftime("%Y-%m-%d")
    month = midnight.strftime("%Y-%m")
    new = 0
    with session_factory() as s, s.begin():
        before = _count(s)
        drill_due = _drill_due(s, midnight.replace(day=1))
        for tenant_id in s.scalars(select(Tenant.id).where(
                Tenant.state.in_(("active", "suspended")))):
            if now < midnight + slot_of(tenant_id):
                continue
            enqueue_job(s, JobKinds.BACKUP_TENANT,
                        {"tenant_id": tenant_id, "monthly": midnight.day == 1},
                        idempotency_key=f"backup:{tenant_id}:{day}", tenant_id=tenant_id,
                        progress_total=3)
            if tenant_id in drill_due:
                enqueue_job(s, JobKinds.BACKUP_DRILL, {"tenant_id": tenant_id},
                            idempotency_key=f"drill:{tenant_id}:{month}", tenant_id=tenant_id,
                            progress_total=1)
        if now >= midnight + timedelta(seconds=CONTROL_SLOT):
            enqueue_job(s, JobKinds.BACKUP_CONTROL, {}, idempotency_key=f"backup:control:{day}",
                        progress_total=2)
        new = _count(s) - before
    return new


def _drill_due(s: Session, month_start: datetime) -> set[int]:
    """The tenants whose drill of this month is due: none recorded yet, and this month's
    backup either exists or failed (the drill then restores the latest good backup, and a
    tenant with none fails its drill, audited, instead of going a month undrilled)."""
    month = month_start.strftime("%Y-%m")
    drilled = set(s.scalars(select(Job.tenant_id).where(
        Job.kind == JobKinds.BACKUP_DRILL, Job.idempotency_key.like(f"drill:%:{month}"))))
    backed_up = set(s.scalars(select(Backup.tenant_id).where(
        Backup.tenant_id.is_not(None), Backup.created_at >= month_start)))
    failed = set(s.scalars(select(Job.tenant_id).where(
        Job.kind == JobKinds.BACKUP_TENANT, Job.state == "failed",
        Job.idempotency_key.like(f"backup:%:{month}-%"))))
    return {t for t in backed_up | failed if t is not None} - drilled


def _count(s: Session) -> int:
    return int(s.scalar(select(func.count()).select_from(Job).where(Job.kind.in_((
        JobKinds.BACKUP_TENANT, JobKinds.BACKUP_DRILL, JobKinds.BACKUP_CONTROL)))) or 0)
