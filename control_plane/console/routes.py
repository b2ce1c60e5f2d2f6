"""The console's own pages: a tenant's recent gateway calls (``/gateway/calls``, with its CSV
download; membership and ``gateway.view`` first, as for every tenant page), the Owner's
two-factor requirement on the Settings tab, and the global pages ``/gateway``, ``/approvals``
and ``/audit`` across the tenants the user may see (``across.visible_tenants``)."""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from control_plane.console import across
from control_plane.console.calls import SORTS, STATUSES, CallFilter, calls_csv, recent_calls
from control_plane.console.notices import done_url
from control_plane.exceptions import Conflict
from control_plane.models import User
from control_plane.tenancy.areas import with_tenant
from control_plane.tenancy.mfa_policy import do_set_mfa_requirement
from control_plane.web.access import audits_denials
from control_plane.web.deps import require_user
from control_plane.web.forms import Form, form_endpoint
from control_plane.web.services import services
from control_plane.web.templating import render


def _tenant_db(request: Request) -> tuple[int, Session]:
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        _, access = with_tenant(request, s, permission="gateway.view")
        if access.tenant.state != "active":
            raise Conflict("This tenant is not active; its calls cannot be listed.")
        engine = svc.tenant_connections.engine(access.tenant)
        tenant_id = access.tenant.id
    return tenant_id, Session(engine)


@audits_denials
def calls_page(request: Request) -> Response:
    f = CallFilter.parse(request.query_params)
    tenant_id, ts = _tenant_db(request)
    with ts, ts.begin():
        page = recent_calls(ts, f)
    return render(request, "console/calls.html",
                  {"page": page, "tid": tenant_id, "statuses": STATUSES, "sorts": list(SORTS)},
                  partial="console/_calls.html")


@audits_denials
def calls_download(request: Request) -> Response:
    f = CallFilter.parse(request.query_params)
    tenant_id, ts = _tenant_db(request)
    with ts, ts.begin():
        body = calls_csv(ts, f)
    return Response(body, media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="tenant-{tenant_id}-calls.csv"'})


class MfaForm(Form):
    required: bool = False  # the checkbox: "true" when ticked, absent otherwise


@form_endpoint(MfaForm)
@audits_denials
def set_mfa_requirement(request: Request, form: MfaForm) -> Response:
    with services(request).session_factory() as s, s.begin():
        me, access = with_tenant(request, s, permission="tenant.lifecycle")
        do_set_mfa_requirement(s, access, required=form.required, acting_user=me.user)
        tenant_id = access.tenant.id
    code = "mfa-enforced" if form.required else "mfa-optional"
    return RedirectResponse(done_url(f"/tenants/{tenant_id}/settings", code), 303)


def _across(request: Request, permission: str) -> tuple[User, across.Across]:
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me = require_user(s, request)
        found = across.visible_tenants(s, me.user, permission, svc.tenant_connections.engine)
        return me.user, found


def gateway_across(request: Request) -> Response:
    _, found = _across(request, "gateway.view")
    rows = across.gateway_rows(found)
    return render(request, "console/across_gateway.html", {"found": found, "rows": rows})


def approvals_across(request: Request) -> Response:
    user, found = _across(request, "approvals.view")
    waiting, summaries = across.approvals_rows(found, str(user.id))
    return render(request, "console/across_approvals.html",
                  {"found": found, "waiting": waiting, "summaries": summaries})


def audit_across(request: Request) -> Response:
    _, found = _across(request, "audit.view")
    rows = across.audit_rows(found)
    return render(request, "console/across_audit.html", {"found": found, "rows": rows})


routes = [
    Route("/gateway", gateway_across, methods=["GET"]),
    Route("/approvals", approvals_across, methods=["GET"]),
    Route("/audit", audit_across, methods=["GET"]),
    Route("/tenants/{tenant_id:int}/security/mfa", set_mfa_requirement, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/gateway/calls", calls_page, methods=["GET"]),
    Route("/tenants/{tenant_id:int}/gateway/calls.csv", calls_download, methods=["GET"]),
]
