"""The jobs page: what the outbox holds — queued, running (with the lease holder and how long its
lease has left), retried, failed with the reason — sorted by creation, duration, attempts or
state, with its CSV download, and a retry button for a failed job.

Installation Owners see every job; other members see the jobs of the tenants they hold
``tenant.lifecycle`` in (their tenants' Owners). Retrying is for the same people, and it is
audited in the platform chain. Another tenant's job answers 404, like a missing one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, true
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
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
from tenant_runtime import permissions, tables

PAGE_SIZE = 50
STATES = ("pending", "dispatched", "running", "succeeded", "failed")
SHOWN_STATES = ("queued", "retrying", "running", "failed", "succeeded")
FILTERS = ("queued", "running", "failed", "succeeded", *STATES[:2])
# newest and oldest by creation; the longest-running, the most attempted first; by shown state
SORTS = ("newest", "oldest", "duration", "attempts", "state")
CSV_HEADER = ("job", "kind", "tenant", "state", "created_utc", "finished_utc", "took_seconds",
              "attempts", "max_attempts", "lease_owner", "progress", "reason")


@dataclass(frozen=True)
class JobFilter(tables.TableFilter):
    state: str = ""
    sort: str = "newest"
    page: int = 1

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> JobFilter:
        return cls(tables.choice(query, "state", FILTERS),
                   tables.choice(query, "sort", SORTS, default="newest", what="The sort"),
                   tables.page_number(query))


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
    finished_at: datetime | None
    can_retry: bool

    @property
    def seconds(self) -> int:
        """From creation to the end (to the last change, for a job not finished)."""
        end = self.finished_at or self.updated_at
        return max(int((end - self.created_at).total_seconds()), 0)

    @property
    def elapsed(self) -> str:
        """``seconds`` as people read it: ``45 s``, ``3 min 20 s``, ``2 h 5 min``."""
        seconds = self.seconds
        if seconds < 60:
            return f"{seconds} s"
        if seconds < 3600:
            return f"{seconds // 60} min {seconds % 60} s"
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"


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
                  job.updated_at, job.finished_at, job.state == "failed")


def _visible(visible: list[int] | None) -> ColumnElement[bool]:
    """The jobs of ``visible`` tenants (all jobs for None)."""
    return true() if visible is None else Job.tenant_id.in_(visible)


# the state a job is shown in (queued and retrying are both pending or dispatched)
SHOWN = case((Job.state.in_(("pending", "dispatched")) & (Job.attempts > 0), "retrying"),
             (Job.state.in_(("pending", "dispatched")), "queued"), else_=Job.state)
ORDER: dict[str, list[ColumnElement[Any]]] = {
    "newest": [Job.id.desc()],
    "oldest": [Job.id.asc()],
    "duration": [(func.coalesce(Job.finished_at, Job.updated_at) - Job.created_at).desc(),
                 Job.id.desc()],
    "attempts": [Job.attempts.desc(), Job.id.desc()],
    "state": [case(*((SHOWN == name, i) for i, name in enumerate(SHOWN_STATES)),
                   else_=len(SHOWN_STATES)), Job.id.desc()],
}


def _jobs(s: Session, user: User, f: JobFilter, *, limit: int, offset: int) -> list[JobRow]:
    """The jobs ``user`` may see, filtered and sorted as ``f`` says."""
    query = (select(Job, Tenant.slug).outerjoin(Tenant, Tenant.id == Job.tenant_id)
             .where(_visible(_visible_tenants(s, user))))
    if f.state == "queued":
        query = query.where(Job.state.in_(("pending", "dispatched")))
    elif f.state:
        query = query.where(Job.state == f.state)
    now = utcnow()
    rows = s.execute(query.order_by(*ORDER[f.sort]).limit(limit).offset(offset)).all()
    return [_row(job, slug, now) for job, slug in rows]


def list_jobs(s: Session, user: User, f: JobFilter) -> tuple[list[JobRow], bool]:
    """A page of the jobs ``user`` may see, and whether there is a next."""
    rows = _jobs(s, user, f, limit=PAGE_SIZE + 1, offset=(f.page - 1) * PAGE_SIZE)
    return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE


def jobs_csv(s: Session, user: User, f: JobFilter) -> str:
    """The filtered, sorted view as CSV: every page, up to ``tables.CSV_MAX_ROWS`` rows."""
    rows = _jobs(s, user, f, limit=tables.CSV_MAX_ROWS, offset=0)
    return tables.csv_text(CSV_HEADER, ((
        r.id, r.kind, r.tenant, r.state, r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        r.finished_at.strftime("%Y-%m-%d %H:%M:%S") if r.finished_at else None, r.seconds,
        r.attempts, r.max_attempts, r.lease_owner, r.progress, r.last_error) for r in rows))


def job_counts(s: Session, user: User) -> dict[str, int]:
    """How many jobs ``user`` may see are in each shown state (all of them, not one page)."""
    query = (select(SHOWN, func.count()).where(_visible(_visible_tenants(s, user)))
             .group_by(SHOWN))
    return {state: int(n) for state, n in s.execute(query)}


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
    f = JobFilter.parse(request.query_params) if request.method == "GET" else JobFilter()
    with services(request).session_factory() as s, s.begin():
        me = require_user(s, request)
        jobs, has_next = list_jobs(s, me.user, f)
        counts = job_counts(s, me.user)
    context = {"jobs": jobs, "has_next": has_next, "counts": counts, "filter": f,
               "state": f.state, "shown_states": SHOWN_STATES, "sorts": SORTS, **extra}
    return render(request, "jobs/jobs.html", context, status_code=status_code,
                  partial="jobs/_jobs.html")


def jobs_page(request: Request) -> Response:
    return _page(request)


def jobs_download(request: Request) -> Response:
    """The CSV of the page's view: the same filter and sort, the same jobs (``list_jobs``'s
    rule of who sees which)."""
    f = JobFilter.parse(request.query_params)
    with services(request).session_factory() as s, s.begin():
        me = require_user(s, request)
        body = jobs_csv(s, me.user, f)
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers=tables.csv_headers("jobs.csv"))


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
    Route("/jobs.csv", jobs_download, methods=["GET"]),
    Route("/jobs/{job_id:int}/retry", retry_job, methods=["POST"]),
]
