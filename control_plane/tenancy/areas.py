"""The tenant's areas (credentials, gateway, audit, approvals, tasks, agents, signals, teams,
personas), mounted under ``/tenants/{id}``: each handler runs after membership, the route's
permission (tenant_runtime/permissions.py), the tenant's state and the form are settled, with
a TenantContext."""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control_plane.exceptions import (
    Conflict,
    Forbidden,
    InvalidInput,
    MagistrateError,
    UnsupportedMediaType,
)
from control_plane.tenancy import service
from control_plane.tenancy.mfa_policy import check_mfa
from control_plane.tenancy.service import TenantAccess
from control_plane.web.access import audits_denials
from control_plane.web.deps import SignedIn, require_user
from control_plane.web.forms import read_form
from control_plane.web.services import services
from tenant_runtime.agents import routes as agent_routes
from tenant_runtime.approvals import routes as approval_routes
from tenant_runtime.audit_views import routes as audit_view_routes
from tenant_runtime.context import Actor
from tenant_runtime.credentials import routes as credential_routes
from tenant_runtime.gateway import routes as gateway_routes
from tenant_runtime.mcp import routes as mcp_routes
from tenant_runtime.minimization import routes as minimization_routes
from tenant_runtime.personas import routes as persona_routes
from tenant_runtime.recommendations import routes as recommendation_routes
from tenant_runtime.routing import TenantRoute
from tenant_runtime.signals import clustering_routes
from tenant_runtime.signals import routes as signal_routes

TENANT_AREAS: list[TenantRoute] = [*credential_routes.routes, *audit_view_routes.routes,
                                   *gateway_routes.routes, *approval_routes.routes,
                                   *recommendation_routes.routes, *agent_routes.routes,
                                   *clustering_routes.routes, *persona_routes.routes,
                                   *minimization_routes.routes, *signal_routes.routes,
                                   *mcp_routes.routes]


def with_tenant(request: Request, s: Session, *, permission: str
                 ) -> tuple[SignedIn, TenantAccess]:
    """The signed-in member and their tenant, if their role holds ``permission`` (a name in
    tenant_runtime/permissions.py). The handler calling this is wrapped in ``audits_denials``."""
    me = require_user(s, request)
    access = service.access_tenant(s, int(request.path_params["tenant_id"]), user=me.user,
                                   permission=permission)
    check_mfa(access, me)  # the tenant may require two-factor sign-in of its members
    request.state.tenant = access.tenant.id
    return me, access


def mount_area(route: TenantRoute) -> Route:
    """Wrap a tenant area's handler: membership and the route's permission first (a refused
    role gets its 403 whatever the form holds), then the tenant's state, the form's validity
    and the TenantContext."""

    @audits_denials
    def run(request: Request, form_error: MagistrateError | None) -> Response:
        svc = services(request)
        with svc.session_factory() as s, s.begin():
            me, access = with_tenant(request, s, permission=route.permission)
            if access.tenant.state == "suspended":
                raise Forbidden("This tenant is suspended; an Owner can resume it on the "
                                "tenant's page.")
            if access.tenant.state != "active":
                raise Conflict("This tenant is not active yet.")
            actor = Actor("user", str(me.user.id), me.user.email, access.role)
            ctx = svc.tenant_connections.context(s, access.tenant, actor)
        if form_error is not None:
            raise form_error
        return route.handler(request, ctx)

    async def endpoint(request: Request) -> Response:
        form_error: MagistrateError | None = None
        if route.form is not None:
            try:
                request.state.form = await read_form(request, route.form)
            except (InvalidInput, UnsupportedMediaType) as exc:
                form_error = exc  # answered once the caller's access is settled
        try:
            return await run_in_threadpool(run, request, form_error)
        finally:
            await request.close()  # uploaded files a handler streamed (web/forms.py)

    endpoint.form_model = route.form  # type: ignore[attr-defined]  # for route-walking tests
    endpoint.permission = route.permission  # type: ignore[attr-defined]  # web/access.py
    return Route("/tenants/{tenant_id:int}" + route.path, endpoint, methods=[route.method],
                 name=f"tenant:{route.handler.__name__}")
