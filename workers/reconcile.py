"""Reconciliation: after a fault (a killed worker, a Redis or Postgres restart), count what
the job machinery promises never happens.

    jobs lost            an outbox job that is neither finished (succeeded, failed) nor waiting
                         (pending, dispatched) nor running under a live lease: nobody will run it
    side effects         more than one effect for one job or one key: a tenant provisioned twice,
    duplicated           a rotation's rewrap or re-encryption recorded twice for one job, an
                         export requested twice for one job or published as two files, a panel
                         model's vote recorded twice for one run, a job step's model call
                         answered and charged twice (one idempotency key, two ``ok`` calls)
    audit chains broken  the platform chain or a tenant's chain does not verify

``half_written`` lists what a crash may leave behind and a retry must clean up: an export's
partial file or an unfinished re-encryption with no job running to finish it. The chaos suite
(tests/chaos/) asserts every count is 0; ``magistrate reconcile`` prints them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from control_plane import audit
from control_plane.db import utcnow
from control_plane.jobs import JobKinds
from control_plane.models import Job, PlatformAuditEvent, Tenant, TenantKey
from control_plane.tenancy.connections import TenantConnections
from control_plane.tenancy.events import TenantEvents
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.models import AuditEvent, GatewayCall
from tenant_runtime.recommendations.models import PanelVote
from tenant_runtime.recommendations.service import RecommendationEvents

FINISHED = ("succeeded", "failed")
WAITING = ("pending", "dispatched")
CHECKED_STATES = ("active", "suspended")


@dataclass
class Reconciliation:
    lost_jobs: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    broken_chains: list[str] = field(default_factory=list)
    half_written: list[str] = field(default_factory=list)
    tenants_checked: int = 0
    jobs_checked: int = 0

    @property
    def clean(self) -> bool:
        return not (self.lost_jobs or self.duplicates or self.broken_chains
                    or self.half_written)

    def counts(self) -> dict[str, int]:
        return {"jobs_lost": len(self.lost_jobs),
                "side_effects_duplicated": len(self.duplicates),
                "audit_chains_broken": len(self.broken_chains),
                "half_written": len(self.half_written),
                "tenants_checked": self.tenants_checked,
                "jobs_checked": self.jobs_checked}

    def as_dict(self) -> dict[str, Any]:
        return {**self.counts(), "lost_jobs": self.lost_jobs, "duplicates": self.duplicates,
                "broken_chains": self.broken_chains, "half_written": self.half_written}


def reconcile(session_factory: sessionmaker[Session], connections: TenantConnections, *,
              exports_dir: Path | None = None) -> Reconciliation:
    """Count lost jobs, duplicated side effects and broken audit chains (read only)."""
    found = Reconciliation()
    with session_factory() as s:
        _lost_jobs(s, found)
        _platform_duplicates(s, found)
        _unfinished_rotations(s, found)
        problems = audit.verify_chain(s)
        if problems:
            found.broken_chains.append(f"platform chain: {problems[0]}")
        for tenant in s.scalars(select(Tenant).where(Tenant.state.in_(CHECKED_STATES))
                                .order_by(Tenant.id)).all():
            found.tenants_checked += 1
            with _tenant_session(connections, tenant) as ts:
                _tenant_duplicates(ts, tenant, found)
                result = verify_tenant_chain(ts, tenant.id)
                if not result.ok:
                    found.broken_chains.append(f"tenant {tenant.slug} (id {tenant.id}): "
                                               f"{result.problem}")
    if exports_dir is not None:
        with session_factory() as s:
            _export_files(s, exports_dir, found)
    return found


@contextmanager
def _tenant_session(connections: TenantConnections, tenant: Tenant) -> Iterator[Session]:
    """A read-only snapshot of the tenant's database, as its ``_app`` role."""
    with Session(connections.engine(tenant)) as ts, ts.begin():
        ts.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        yield ts


def _lost_jobs(s: Session, found: Reconciliation) -> None:
    now = utcnow()
    for job in s.scalars(select(Job).order_by(Job.id)):
        found.jobs_checked += 1
        if job.state in FINISHED or job.state in WAITING:
            continue
        if job.state == "running" and job.lease_expires_at is not None \
                and job.lease_expires_at > now:
            continue
        found.lost_jobs.append(f"job {job.id} ({job.kind}) is {job.state} without a live "
                               "lease")


def _count_by(s: Session, key: Any, *where: Any) -> list[tuple[Any, int]]:
    rows = s.execute(select(key, func.count()).select_from(PlatformAuditEvent)
                     .where(*where).group_by(key).having(func.count() > 1)).all()
    return [(row[0], int(row[1])) for row in rows]


def _platform_duplicates(s: Session, found: Reconciliation) -> None:
    events = PlatformAuditEvent
    job_id = events.details["job_id"].astext
    for tenant_id, n in _count_by(s, events.target_id,
                                  events.event_type == TenantEvents.PROVISIONED):
        found.duplicates.append(f"tenant {tenant_id} provisioned {n} times")
    for job, n in _count_by(s, job_id, events.event_type == TenantEvents.KEY_ROTATED,
                            job_id.is_not(None)):
        found.duplicates.append(f"job {job} rewrapped the data key {n} times")
    for phase in ("started", "finished"):
        for job, n in _count_by(s, job_id, events.event_type == TenantEvents.KEY_REENCRYPTED,
                                events.details["phase"].astext == phase, job_id.is_not(None)):
            found.duplicates.append(f"job {job} {phase} {n} re-encryptions")
    for job, n in _count_by(s, job_id, events.event_type == TenantEvents.EXPORT_REQUESTED):
        found.duplicates.append(f"export job {job} requested {n} times")
    for tenant_id, n in s.execute(
            select(TenantKey.tenant_id, func.count()).where(TenantKey.version == 1)
            .group_by(TenantKey.tenant_id).having(func.count() > 1)).all():
        found.duplicates.append(f"tenant {tenant_id} has {n} first data keys")


def _unfinished_rotations(s: Session, found: Reconciliation) -> None:
    """A tenant with several live data-key versions is mid re-encryption: fine while a rotation
    job runs or waits, half-written otherwise."""
    busy = set(s.scalars(select(Job.tenant_id).where(
        Job.kind == JobKinds.ROTATE_TENANT_KEY, Job.state.not_in(FINISHED))))
    for tenant_id, live in s.execute(
            select(TenantKey.tenant_id, func.count()).where(TenantKey.retired_at.is_(None))
            .group_by(TenantKey.tenant_id).having(func.count() > 1)).all():
        if tenant_id not in busy:
            found.half_written.append(f"tenant {tenant_id}: a re-encryption stopped with {live} "
                                      "live data-key versions and no job to finish it")


def _tenant_duplicates(ts: Session, tenant: Tenant, found: Reconciliation) -> None:
    model = AuditEvent.details["model"].astext
    for run_id, name, n in ts.execute(
            select(AuditEvent.target_id, model, func.count())
            .where(AuditEvent.event_type == RecommendationEvents.VOTE_RECORDED)
            .group_by(AuditEvent.target_id, model).having(func.count() > 1)).all():
        found.duplicates.append(f"tenant {tenant.slug}: run {run_id} recorded {n} votes of "
                                f"{name}")
    for run_id, name, n in ts.execute(
            select(PanelVote.run_id, PanelVote.model_name, func.count())
            .group_by(PanelVote.run_id, PanelVote.model_name)
            .having(func.count() > 1)).all():
        found.duplicates.append(f"tenant {tenant.slug}: run {run_id} holds {n} votes of {name}")
    for key, n in ts.execute(
            select(GatewayCall.idempotency_key, func.count())
            .where(GatewayCall.idempotency_key.is_not(None), GatewayCall.status == "ok")
            .group_by(GatewayCall.idempotency_key).having(func.count() > 1)).all():
        found.duplicates.append(f"tenant {tenant.slug}: the model call {key} was answered and "
                                f"charged {n} times")


def _export_files(s: Session, exports_dir: Path, found: Reconciliation) -> None:
    """One published file per export job; no partial file of a job that is not running."""
    if not exports_dir.is_dir():
        return
    running = {job_id for (job_id,) in s.execute(
        select(Job.id).where(Job.kind == JobKinds.EXPORT_TENANT, Job.state.not_in(FINISHED)))}
    published: dict[int, int] = {}
    for path in exports_dir.iterdir():
        job = _export_job_of(path.name)
        if job is None:
            continue
        if path.name.endswith(".partial"):
            if job not in running:
                found.half_written.append(f"export job {job} left the partial file "
                                          f"{path.name}")
        else:
            published[job] = published.get(job, 0) + 1
    for job, n in sorted(published.items()):
        if n > 1:
            found.duplicates.append(f"export job {job} published {n} files")


def _export_job_of(name: str) -> int | None:
    """The job id in an export file's name (``tenant-<slug>-<time>-job<id>.zip``, or its
    ``.<name>.<random>.partial``); None for a file not written by a job."""
    stem = name.lstrip(".").split(".zip", 1)[0]
    head, sep, digits = stem.rpartition("-job")
    if not sep or not head or not digits.isdigit():
        return None
    return int(digits)
