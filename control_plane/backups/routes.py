"""The tenant's Backups page: its backups with their drill results, and for each a "Restore…"
action for the tenant's Owners (``tenant.lifecycle``):

- *as a new tenant* (a new slug): checked now (the member is an Owner, the backup exists, the
  slug is free), then run by a job (``restore_tenant_as``) the jobs page follows;
- *replace this tenant*: opens the ``tenant.restore`` approval request as the member (another
  approver decides it); once approved, the same form with the request's id queues the job
  (``replace_tenant``) that restores, verifies and swaps (control_plane/backups/replace.py).

Every route resolves the caller's membership first (another tenant's id answers 404) and a
refusal inside the tenant is audited (``audits_denials``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from control_plane.backups.replace import check_approval, request_replace
from control_plane.backups.restore import find_backup
from control_plane.backups.restore_as import check_copy
from control_plane.console.notices import done_url, notice_from
from control_plane.exceptions import MagistrateError
from control_plane.jobs import JobKinds, dispatch_pending, enqueue_job
from control_plane.models import Backup, Job
from control_plane.tenancy import service
from control_plane.tenancy.mfa_policy import check_mfa
from control_plane.tenancy.service import TenantAccess
from control_plane.web.access import audits_denials
from control_plane.web.deps import SignedIn, require_user
from control_plane.web.forms import Form, form_endpoint
from control_plane.web.services import services
from control_plane.web.templating import render
from tenant_runtime.approvals.gates import ApprovalPending
from tenant_runtime.exceptions import TenantError

PERMISSION = "tenant.lifecycle"  # the tenant's Owners
SHOWN = 30


class RestoreAsForm(Form):
    backup_id: str = Field(max_length=64)
    new_slug: str = Field(max_length=63)


class ReplaceForm(Form):
    backup_id: str = Field(max_length=64)
    approval_id: str = Field(default="", max_length=64)


@dataclass(frozen=True)
class BackupRow:
    id: str
    created_at: datetime
    size_bytes: int
    drill: str


@dataclass(frozen=True)
class BackupsPage:
    tenant_id: int
    slug: str
    name: str
    backups: list[BackupRow]
    jobs: list[Job]  # the restore jobs of this tenant, newest first


def _access(request: Request, s: Session) -> tuple[SignedIn, TenantAccess]:
    me = require_user(s, request)
    access = service.access_tenant(s, int(request.path_params["tenant_id"]), user=me.user,
                                   permission=PERMISSION)
    check_mfa(access, me)
    request.state.tenant = access.tenant.id
    return me, access


def _page(s: Session, access: TenantAccess) -> BackupsPage:
    tenant = access.tenant
    rows = [BackupRow(b.id, b.created_at, b.size_bytes,
                      "never drilled" if b.drill_at is None else
                      f"drill {'passed' if b.drill_ok else 'failed'} {b.drill_at:%Y-%m-%d %H:%M}")
            for b in s.scalars(select(Backup).where(Backup.tenant_id == tenant.id,
                                                    Backup.wrapped_key.is_not(None))
                               .order_by(Backup.created_at.desc()).limit(SHOWN))]
    jobs = list(s.scalars(select(Job).where(
        Job.tenant_id == tenant.id,
        Job.kind.in_((JobKinds.RESTORE_TENANT_AS, JobKinds.REPLACE_TENANT)))
        .order_by(Job.id.desc()).limit(10)))
    return BackupsPage(tenant.id, tenant.slug, tenant.name, rows, jobs)


def _render(request: Request, *, status_code: int = 200, error: str | None = None,
            notice: str | None = None) -> Response:
    with services(request).session_factory() as s, s.begin():
        _, access = _access(request, s)
        page = _page(s, access)
    return render(request, "tenants/backups.html",
                  {"page": page, "tenant": access.tenant, "role": access.role, "error": error,
                   "notice": notice or notice_from(request.query_params),
                   "page_url": f"/tenants/{page.tenant_id}/backups"},
                  status_code=status_code)


@audits_denials
def backups_page(request: Request) -> Response:
    return _render(request)


def _queued(tenant_id: int, code: str, job_id: int) -> Response:
    return RedirectResponse(done_url(f"/tenants/{tenant_id}/backups", code, job=job_id), 303)


@form_endpoint(RestoreAsForm)
@audits_denials
def restore_as_route(request: Request, form: RestoreAsForm) -> Response:
    """Check what can be checked now, then queue the ``restore_tenant_as`` job."""
    svc = services(request)
    try:
        with svc.session_factory() as s, s.begin():
            me, access = _access(request, s)
            slug = check_copy(s, access.tenant.slug, form.backup_id, new_slug=form.new_slug,
                              requested_by=me.user.id)
            job = enqueue_job(s, JobKinds.RESTORE_TENANT_AS,
                              {"tenant_id": access.tenant.id, "backup_id": form.backup_id.strip(),
                               "new_slug": slug, "requested_by": me.user.id},
                              idempotency_key=f"restore-as:{access.tenant.id}:{slug}",
                              tenant_id=access.tenant.id, created_by=me.user.id,
                              progress_total=2)
            tenant_id, job_id = access.tenant.id, job.id
    except MagistrateError as exc:
        if exc.status_code == 404:  # not a member of this tenant: the edge's 404
            raise
        return _render(request, status_code=exc.status_code, error=exc.message)
    dispatch_pending(svc.session_factory, svc.redis)
    return _queued(tenant_id, "restore-as-queued", job_id)


@form_endpoint(ReplaceForm)
@audits_denials
def replace_route(request: Request, form: ReplaceForm) -> Response:
    """Without an approval: open the ``tenant.restore`` request as the member (202, its id
    shown). With the approved request's id, checked now (decided, fresh, unused, for this
    backup): queue the ``replace_tenant`` job."""
    svc = services(request)
    try:
        if not form.approval_id.strip():
            with svc.session_factory() as s, s.begin():
                me, access = _access(request, s)
                slug, user_id, actor = access.tenant.slug, me.user.id, service.actor_of(me.user)
            request_replace(svc.session_factory, svc.tenant_connections, slug, form.backup_id,
                            actor=actor, requested_by=user_id)
        with svc.session_factory() as s, s.begin():
            me, access = _access(request, s)
            _, backup = find_backup(s, access.tenant.slug, form.backup_id)
            approval_id = check_approval(svc.session_factory, svc.tenant_connections,
                                         access.tenant.slug, backup.id,
                                         approval_id=form.approval_id,
                                         actor=service.actor_of(me.user))
            job = enqueue_job(s, JobKinds.REPLACE_TENANT,
                              {"tenant_id": access.tenant.id, "backup_id": backup.id,
                               "approval_id": approval_id},
                              idempotency_key=f"replace:{approval_id}",
                              tenant_id=access.tenant.id, created_by=me.user.id,
                              progress_total=2)
            tenant_id, job_id = access.tenant.id, job.id
    except ApprovalPending as pending:
        return _render(request, status_code=202, notice=pending.message)
    except MagistrateError as exc:
        if exc.status_code == 404:  # not a member of this tenant: the edge's 404
            raise
        return _render(request, status_code=exc.status_code, error=exc.message)
    except TenantError as exc:  # the gate's refusal (e.g. the class marked not restricted)
        return _render(request, status_code=exc.status_code, error=exc.message)
    dispatch_pending(svc.session_factory, svc.redis)
    return _queued(tenant_id, "replace-queued", job_id)


routes = [
    Route("/tenants/{tenant_id:int}/backups", backups_page, methods=["GET"]),
    Route("/tenants/{tenant_id:int}/backups/restore-as", restore_as_route, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/backups/replace", replace_route, methods=["POST"]),
]
