"""The dashboard home and the health endpoints."""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane.backups.status import backup_status
from control_plane.console import across
from control_plane.console.home import platform_home
from control_plane.models import PlatformAuditEvent, Tenant, User
from control_plane.tenancy.service import list_tenants
from control_plane.web.deps import require_user
from control_plane.web.services import services
from control_plane.web.templating import render
from tenant_runtime.approvals.service import pending_count

RECENT_EVENTS = 20


def home(request: Request) -> Response:
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me = require_user(s, request)
        context = {
            "user_count": s.scalar(select(func.count()).select_from(User)
                                   .where(User.is_active)),
            "tenant_count": s.scalar(select(func.count()).select_from(Tenant)
                                     .where(Tenant.state != "deleted")),
            # the platform overview: the member's tenants, each linking to its Overview
            "my_tenants": list_tenants(s, user=me.user),
            "events": list(s.scalars(select(PlatformAuditEvent)
                                     .order_by(PlatformAuditEvent.seq.desc())
                                     .limit(RECENT_EVENTS))) if me.user.is_owner else [],
            "backups": backup_status(s) if me.user.is_owner else [],
            # checklists, spend and requests waiting, under each tab's own rule
            "home": platform_home(s, me.user, svc.tenant_connections.engine,
                                  base_url=svc.settings.public_url),
        }
    return render(request, "dashboard/home.html", context)


def approvals_nav(request: Request) -> Response:
    """The navigation's live count (polled by htmx every 30 s): requests waiting for the
    signed-in member's decision, across the tenants the Approvals page reads. It links to that
    page, which lists them with their tenants."""
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me = require_user(s, request, allow_password_change=True)
        user_id = str(me.user.id)
        found = across.visible_tenants(s, me.user, "approvals.view",
                                       svc.tenant_connections.engine)
        if me.user.must_change_password:
            found.tenants = []
    count = sum(across.per_tenant(found, lambda ts, t: pending_count(
        ts, user_id=user_id, role=t.role)))
    return render(request, "tenants/_approvals_nav.html", {"count": count})


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
