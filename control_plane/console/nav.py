"""The tenant switcher and a tenant's tabs, shown above every page under ``/tenants/{id}``.

Built for the signed-in member only, from their own memberships: an id of a tenant they are
not a member of gets no bar at all, so the bar never names a tenant the page would not show."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from control_plane.tenancy.service import list_tenants
from control_plane.web.services import services
from tenant_runtime import permissions

# Short tab labels for the tenant's pages (tenant_runtime/permissions.py PAGES), in tab order;
# a page missing here still gets a tab, with its own label, after these.
TAB_LABELS: dict[str, str] = {
    "/gateway": "Gateway",
    "/credentials": "Credentials",
    "/approvals": "Approvals",
    "/agents": "Agents",
    "/tasks": "Tasks",
    "/signals": "Signals",
    "/teams": "Teams",
    "/personas": "Personas",
    "/audit": "Audit",
}
SETTINGS_PATH = "/settings"


@dataclass(frozen=True)
class Tab:
    label: str
    href: str
    current: bool


@dataclass(frozen=True)
class TenantNav:
    tenant_id: int
    name: str
    slug: str
    state: str
    role: str
    tabs: list[Tab]
    others: list[tuple[int, str]]  # the member's other tenants: (id, name)
    current: str  # the current tab's path under /tenants/{id} ("" for Overview)

    def can(self, permission: str) -> bool:
        """Whether the member's role here holds ``permission`` (to hide buttons it refuses)."""
        return permissions.allows(self.role, permission)


def tab_paths(role: str | None, state: str) -> list[tuple[str, str]]:
    """(label, path under /tenants/{id}) of the tabs ``role`` may open, Overview first and
    Settings last; a tenant that is not active has only those two."""
    pages: list[tuple[str, str]] = []
    if state == "active":
        allowed = {page.path: page.label for page in permissions.pages_for(role)}
        pages = [(label, path) for path, label in TAB_LABELS.items() if path in allowed]
        pages += [(label, path) for path, label in allowed.items() if path not in TAB_LABELS]
    return [("Overview", ""), *pages, ("Settings", SETTINGS_PATH)]


def current_tab(path: str, tenant_id: int, tabs: list[tuple[str, str]]) -> str:
    """The tab a request path belongs to: the longest tab path it starts with."""
    rest = path.removeprefix(f"/tenants/{tenant_id}")
    best = ""
    for _, tab in tabs:
        if tab and (rest == tab or rest.startswith(tab + "/")) and len(tab) > len(best):
            best = tab
    return best


def tenant_nav(request: Request) -> TenantNav | None:
    user = getattr(request.state, "user", None)
    raw = request.path_params.get("tenant_id") if "path_params" in request.scope else None
    if user is None or raw is None:
        return None
    try:
        tenant_id = int(raw)
        with services(request).session_factory() as s, s.begin():
            from control_plane.models import User

            row = s.get(User, user.id)
            mine = list_tenants(s, user=row) if row is not None else []
            listed = [(t.id, t.name, t.slug, t.state, role) for t, role in mine]
    except (SQLAlchemyError, ValueError):
        return None  # the page itself says what went wrong; the bar is a convenience
    found = next((entry for entry in listed if entry[0] == tenant_id), None)
    if found is None:
        return None
    _, name, slug, state, role = found
    paths = tab_paths(role, state)
    current = current_tab(request.url.path, tenant_id, paths)
    tabs = [Tab(label, f"/tenants/{tenant_id}{path}", path == current) for label, path in paths]
    others = [(tid, tname) for tid, tname, _, tstate, _ in listed
              if tid != tenant_id and tstate != "deleted"]
    return TenantNav(tenant_id, name, slug, state, role, tabs, others, current)
