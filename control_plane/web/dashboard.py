"""The dashboard home and the health endpoints."""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane.models import PlatformAuditEvent, Tenant, User
from control_plane.tenancy.service import list_tenants
from control_plane.web.deps import require_user
from control_plane.web.services import services
from control_plane.web.templating import render
from tenant_runtime.approvals.service import pending_count
from tenant_runtime.exceptions import TenantError

RECENT_EVENTS = 20
NAV_MAX_TENANTS = 50


def home(request: Request) -> Response:
    with services(request).session_factory() as s, s.begin():
        me = require_user(s, request)
        context = {
            "user_count": s.scalar(select(func.count()).select_from(User)
                                   .where(User.is_active)),
            "tenant_count": s.scalar(select(func.count()).select_from(Tenant)
                                     .where(Tenant.state != "deleted")),
            "events": list(s.scalars(select(PlatformAuditEvent)
                                     .order_by(PlatformAuditEvent.seq.desc())
                                     .limit(RECENT_EVENTS))) if me.user.is_owner else [],
        }
    return render(request, "dashboard/home.html", context)


def approvals_nav(request: Request) -> Response:
    """The navigation's live count (polled by htmx every 30 s): requests waiting for the
    signed-in member's decision, across their active tenants. It links to the first tenant's
    approvals page that has any (else to their first tenant's)."""
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me = require_user(s, request, allow_password_change=True)
        user_id = str(me.user.id)
        tenants = [(t.id, role, svc.tenant_connections.engine(t))
                   for t, role in list_tenants(s, user=me.user)
                   if t.state == "active"][:NAV_MAX_TENANTS]
        if me.user.must_change_password:
            tenants = []
    count, first_waiting = 0, None
    for tenant_id, role, engine in tenants:
        try:
            with Session(engine) as ts:
                waiting = pending_count(ts, user_id=user_id, role=role)
        except (SQLAlchemyError, TenantError):
            continue  # one unreachable tenant database does not hide the others' count
        count += waiting
        if waiting and first_waiting is None:
            first_waiting = tenant_id
    target = first_waiting or (tenants[0][0] if tenants else None)
    href = f"/tenants/{target}/approvals" if target is not None else None
    return render(request, "tenants/_approvals_nav.html", {"count": count, "href": href})


def healthz(request: Request) -> Response:
    """Alive: the process answers. Says nothing about dependencies."""
    return JSONResponse({"status": "ok"})


def readyz(request: Request) -> Response:
    """Ready: Postgres and Redis both answer; otherwise 503 naming what does not."""
    svc = services(request)
    checks: dict[str, str] = {}
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["postgres"] = "ok"
    except SQLAlchemyError:
        checks["postgres"] = "unreachable"
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
    except Exception:  # noqa: BLE001 - any failure means not ready
        checks["redis"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "unavailable", **checks},
                        status_code=200 if ready else 503)


routes = [
    Route("/", home, methods=["GET"]),
    Route("/approvals/nav", approvals_nav, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
