"""Jinja2 templates (autoescaped) from the repository's ``templates/`` folder.

One endpoint per resource: a normal request gets the full page, an ``HX-Request`` gets the
``_``-prefixed partial."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATES_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
# templates are part of the release: compiled once per process, never checked for changes on
# disk (the check is a stat() per template and per include on every render)
templates.env.auto_reload = False
templates.env.globals["nav_areas"] = (
    # (label, path): the platform's pages, the global ones across the user's tenants
    # (control_plane/console/across.py); a tenant's own pages are its tabs
    # (control_plane/console/nav.py), reached through the Tenants page or the switcher
    ("Dashboard", "/"),
    ("Tenants", "/tenants"),
    ("Gateway", "/gateway"),
    ("Approvals", "/approvals"),  # with a live count (/approvals/nav)
    ("Audit", "/audit"),
    ("Jobs", "/jobs"),
)


def is_htmx(request: Request) -> bool:
    """An htmx request that wants a fragment. A boosted form (static/console.js) wants the
    whole page it is sent to, as a normal navigation would."""
    return (request.headers.get("hx-request") == "true"
            and request.headers.get("hx-boosted") != "true")


def page_sent_from(request: Request) -> str | None:
    """The page a boosted form was sent from (htmx's ``HX-Current-URL``), as a path on this
    site. A whole page rendered by a POST stands for that page: static/console.js puts it in
    the address bar, so a reload shows the page instead of sending the form again. Pages that
    stand for another address name it themselves (``page_url``)."""
    sent_from = request.headers.get("hx-current-url")
    if not sent_from or request.headers.get("hx-boosted") != "true":
        return None
    parts = urlsplit(sent_from)
    if not parts.path.startswith("/") or parts.path.startswith("//"):
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


def render(request: Request, template: str, context: dict[str, Any] | None = None, *,
           status_code: int = 200, partial: str | None = None,
           headers: dict[str, str] | None = None) -> HTMLResponse:
    """Render ``template`` (or ``partial`` for htmx requests) with the request's CSRF token and
    signed-in user available to every template."""
    name = partial if partial and is_htmx(request) else template
    ctx: dict[str, Any] = {
        "csrf_token": getattr(request.state, "csrf_token", ""),
        "current_user": getattr(request.state, "user", None),
        "request_id": getattr(request.state, "request_id", ""),
    }
    ctx.update(context or {})
    if name == template and request.method != "GET" and "page_url" not in ctx:
        ctx["page_url"] = page_sent_from(request)
    if name == template and "tenant_nav" not in ctx:
        from control_plane.console.nav import tenant_nav  # the console builds on this module

        ctx["tenant_nav"] = tenant_nav(request)
    return templates.TemplateResponse(request, name, ctx, status_code=status_code,
                                      headers=headers)
