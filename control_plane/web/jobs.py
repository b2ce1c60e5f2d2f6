"""The jobs page: what the outbox holds — queued, running (with the lease holder and how long its
lease has left), retried, failed with the reason — and a retry button for a failed job.

Installation Owners see every job; other members see the jobs of the tenants they hold
``tenant.lifecycle`` in (their tenants' Owners). Retrying is for the same people, and it is
audited in the platform chain. Another tenant's job answers 404, like a missing one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control_plane import audit
from control_plane.db import utcnow
from control_plane.exceptions import Conflict, NotFound
from control_plane.jobs import dispatch_pending, requeue_job
from control_plane.models import Job, Membership, Tenant, User
from control_plane.tenancy.service import actor_of
from control_plane.web.deps import require_user
from control_plane.web.forms import Form, form_endpoint
from control_plane.web.services import services
from control_plane.web.templating import render
from tenant_runtime import permissions

PAGE_SIZE = 200
STATES = ("pending", "dispatched", "running", "succeeded", "failed")


class JobEvents:
    RETRIED = "job.retried"


class EmptyForm(Form):
    pass


@dataclass(frozen=True)
class JobRow:
    id: int
    kind: str
    tenant: str | None
    state: str  # queued, running, retrying, failed, succeeded
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_in: int | None  # seconds; negative: the lease ran out (the reaper takes it)
    progress: str | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    can_retry: bool


def _visible_tenants(s: Session, user: User) -> list[int] | None:
    """Tenant ids whose jobs ``user`` may see; None for every job."""
    if user.is_owner:
        return None
    roles = permissions.roles_for("tenant.lifecycle")
    return list(s.scalars(select(Membership.tenant_id).where(
        Membership.user_id == user.id, Membership.role.in_(roles))))


def _shown_state(job: Job) -> str:
    if job.state in ("pending", "dispatched"):
        return "retrying" if job.attempts > 0 else "queued"
    return job.state


def _row(job: Job, slug: str | None, now: datetime) -> JobRow:
    expires_in = None
    if job.state == "running" and job.lease_expires_at is not None:
        expires_in = int((job.lease_expires_at - now).total_seconds())
    progress = (f"{job.progress} of {job.progress_total}" if job.progress_total else None)
    if job.progress_note:
        progress = f"{progress} · {job.progress_note}" if progress else job.progress_note
    return JobRow(job.id, job.kind, slug, _shown_state(job), job.attempts, job.max_attempts,
                  job.lease_owner, expires_in, progress, job.last_error, job.created_at,
                  job.updated_at, job.state == "failed")


def list_jobs(s: Session, user: User, *, state: str | None = None) -> list[JobRow]:
    query = select(Job, Tenant.slug).outerjoin(Tenant, Tenant.id == Job.tenant_id)
    visible = _visible_tenants(s, user)
    if visible is not None:
        query = query.where(Job.tenant_id.in_(visible))
    if state == "queued":
        query = query.where(Job.state.in_(("pending", "dispatched")))
    elif state in STATES:
        query = query.where(Job.state == state)
    now = utcnow()
    rows = s.execute(query.order_by(Job.id.desc()).limit(PAGE_SIZE)).all()
    return [_row(job, slug, now) for job, slug in rows]


def access_job(s: Session, user: User, job_id: int) -> Job:
    job = s.get(Job, job_id, with_for_update=True)
    visible = _visible_tenants(s, user)
    if job is None or (visible is not None and job.tenant_id not in visible):
        raise NotFound("No such job.")
    return job


def do_retry_job(s: Session, user: User, job_id: int) -> Job:
    job = access_job(s, user, job_id)
    if job.state != "failed":
        raise Conflict(f"Only a failed job can be retried; job {job.id} is {job.state}.")
    requeue_job(s, job)
    audit.record(s, JobEvents.RETRIED, actor=actor_of(user), target_type="job",
                 target_id=job.id, details={"kind": job.kind, "tenant_id": job.tenant_id})
    return job


def _page(request: Request, *, status_code: int = 200, **extra: object) -> Response:
    state = request.query_params.get("state") or None
    if state is not None and state not in (*STATES, "queued"):
        state = None
    with services(request).session_factory() as s, s.begin():
        me = require_user(s, request)
        jobs = list_jobs(s, me.user, state=state)
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.state] = counts.get(job.state, 0) + 1
    context = {"jobs": jobs, "counts": counts, "state": state or "", "page_size": PAGE_SIZE,
               **extra}
    return render(request, "jobs/jobs.html", context, status_code=status_code,
                  partial="jobs/_jobs.html")


def jobs_page(request: Request) -> Response:
    return _page(request)


@form_endpoint(EmptyForm)
def retry_job(request: Request, form: EmptyForm) -> Response:
    svc = services(request)
    try:
        with svc.session_factory() as s, s.begin():
            me = require_user(s, request)
            job = do_retry_job(s, me.user, int(request.path_params["job_id"]))
            job_id = job.id
    except Conflict as exc:
        return _page(request, status_code=409, error=exc.message)
    dispatch_pending(svc.session_factory, svc.redis)
    return _page(request, notice=f"Job {job_id} is queued again.")


routes = [
    Route("/jobs", jobs_page, methods=["GET"]),
    Route("/jobs/{job_id:int}/retry", retry_job, methods=["POST"]),
]
