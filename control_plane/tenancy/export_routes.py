"""Tenant export pages: request an export, follow it, download it once.

Every route resolves the caller's membership first (another tenant's ids answer 404) and needs
the ``audit.export`` permission (a refusal is audited by ``audits_denials``). A download also
needs a signed link from the export's page."""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from control_plane.jobs import dispatch_pending
from control_plane.tenancy import export, service
from control_plane.tenancy.mfa_policy import check_mfa
from control_plane.tenancy.service import TenantAccess
from control_plane.web.access import audits_denials
from control_plane.web.deps import SignedIn, require_user
from control_plane.web.forms import Form, form_endpoint
from control_plane.web.services import Services, services
from control_plane.web.templating import render


class EmptyForm(Form):
    pass


def _access(request: Request, s: Session) -> tuple[SignedIn, TenantAccess]:
    me = require_user(s, request)
    access = service.access_tenant(s, int(request.path_params["tenant_id"]), user=me.user,
                                   permission="audit.export")
    check_mfa(access, me)
    request.state.tenant = access.tenant.id
    return me, access


def _links(svc: Services) -> export.DownloadLinks:
    return export.DownloadLinks(export.signing_key(svc.settings))


@form_endpoint(EmptyForm)
@audits_denials
def request_export(request: Request, form: EmptyForm) -> Response:
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me, access = _access(request, s)
        export.do_request_export(s, access, acting_user=me.user)
        tenant_id = access.tenant.id
    dispatch_pending(svc.session_factory, svc.redis)
    return RedirectResponse(f"/tenants/{tenant_id}", 303)


@audits_denials
def exports_page(request: Request) -> Response:
    """The recent exports (the tenant page loads the ``_export.html`` card from here)."""
    with services(request).session_factory() as s, s.begin():
        _, access = _access(request, s)
        exports = export.recent_exports(s, access)
    return render(request, "tenants/export_status.html",
                  {"tenant": access.tenant, "role": access.role, "exports": exports},
                  partial="tenants/_export.html")


@audits_denials
def export_status(request: Request) -> Response:
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        _, access = _access(request, s)
        view = export.access_export(s, access, int(request.path_params["job_id"]))
    download_url = (_links(svc).url(tenant_id=access.tenant.id, job_id=view.id)
                    if view.ready else None)
    return render(request, "tenants/export_status.html",
                  {"tenant": access.tenant, "role": access.role, "export": view,
                   "download_url": download_url},
                  partial="tenants/_export_status.html")


@audits_denials
def download_export(request: Request) -> Response:
    svc = services(request)
    job_id = int(request.path_params["job_id"])
    download: export.ExportDownload | None = None
    try:
        with svc.session_factory() as s, s.begin():
            me, access = _access(request, s)
            export.access_export(s, access, job_id)  # another tenant's job: 404 before the token
            nonce = _links(svc).check(request.query_params.get("token", ""),
                                      tenant_id=access.tenant.id, job_id=job_id)
            download = export.do_take_download(s, access, job_id, nonce=nonce,
                                               acting_user=me.user,
                                               out_dir=svc.settings.home / "exports")
    except BaseException:
        if download is not None:  # the commit failed: the export stays available
            download.handle.close()
        raise
    download.release()  # committed: from now on only the open handle reads the file
    return StreamingResponse(
        download.chunks(), media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{download.name}"',
                 "Content-Length": str(download.size), "Cache-Control": "no-store"},
        background=BackgroundTask(download.handle.close))  # also when the client goes away


routes = [
    Route("/tenants/{tenant_id:int}/exports", exports_page, methods=["GET"]),
    Route("/tenants/{tenant_id:int}/exports", request_export, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/exports/{job_id:int}", export_status, methods=["GET"]),
    Route("/tenants/{tenant_id:int}/exports/{job_id:int}/download", download_export,
          methods=["GET"]),
]
