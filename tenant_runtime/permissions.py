"""The permission matrix: the one place that decides which tenant role may do what.

Every route and action under a tenant names one permission from ``MATRIX``; the edge checks the
caller's membership role against it before anything else runs. A role without the permission
gets 403 with a sentence naming what it may not do, and the refusal is audited as a scope
denial; an id of another tenant stays 404, as if it did not exist. The table of
``docs/roles.md`` is this matrix, and a test keeps the two equal.

Roles: Owner (everything, including consent, keys and deletion), Admin (runs the tenant's
configuration), Operator (day-to-day work: tasks, agents, imports), Approver (answers approval
requests), Compliance (audit, exports, verification), Viewer (reads the dashboards)."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("Owner", "Admin", "Operator", "Approver", "Compliance", "Viewer")


class AccessEvents:
    """Audit events of the edge's decisions (written to the tenant's chain when it is active,
    else to the platform chain)."""

    SCOPE_DENIED = "access.scope_denied"  # details: permission, method, path (template), role


_ALL = ROLES
_MANAGERS = ("Owner", "Admin")
_OWNER = ("Owner",)
_WORKERS = ("Owner", "Admin", "Operator")
_READERS = ("Owner", "Admin", "Operator", "Compliance", "Viewer")
_AUDITORS = ("Owner", "Admin", "Compliance")


@dataclass(frozen=True)
class Permission:
    name: str
    roles: tuple[str, ...]
    means: str  # what holding it lets one do, for the README and refusal sentences


def _matrix(*entries: Permission) -> dict[str, Permission]:
    return {p.name: p for p in entries}


MATRIX: dict[str, Permission] = _matrix(
    # the tenant itself
    Permission("tenant.view", _ALL, "see the tenant's page and status"),
    Permission("tenant.lifecycle", _OWNER,
               "suspend, resume or delete the tenant, retry its provisioning"),
    Permission("members.manage", _MANAGERS, "add and remove members"),
    Permission("api_keys.manage", _MANAGERS, "create and revoke the tenant's API keys"),
    Permission("credentials.view", _ALL, "see provider credentials (names and hints only)"),
    Permission("credentials.manage", _MANAGERS, "add and delete provider credentials"),
    # audit
    Permission("audit.view", _AUDITORS, "read the audit timeline and verification status"),
    Permission("audit.verify", _AUDITORS, "start a verification of the audit chain"),
    Permission("audit.export", ("Owner", "Compliance"),
               "export the audit log and the tenant's data"),
    Permission("audit.settings", _OWNER, "change audit retention and the checkpoint webhook"),
    # gateway
    Permission("gateway.view", ("Owner", "Admin", "Operator", "Compliance"),
               "see the gateway's spend, routes and recent calls"),
    Permission("gateway.manage", _MANAGERS,
               "change routes, the allowlist, redaction and rate limits"),
    Permission("gateway.spend", _OWNER, "set the monthly spend cap and the price table"),
    Permission("gateway.call", _WORKERS, "call models through the gateway with an API key"),
    # approvals
    Permission("approvals.view", _ALL, "see approval requests and action classes"),
    Permission("approvals.request", _WORKERS, "ask for an approval of a restricted action"),
    Permission("approvals.decide", ("Owner", "Admin", "Operator", "Approver", "Compliance"),
               "approve or reject a request (as its class allows)"),
    Permission("approvals.manage", _MANAGERS, "change action classes and approval settings"),
    # recommendations and tasks
    # not Viewer: tasks carry the panel's reasoning; the tasks page has always refused Viewers
    Permission("tasks.view", ("Owner", "Admin", "Operator", "Compliance"),
               "see tasks and their recommendations"),
    Permission("tasks.work", _WORKERS, "add and import tasks, run the panel on a task"),
    Permission("recommendations.manage", _MANAGERS, "change the panel and its thresholds"),
    # the drive layer
    Permission("agents.view", ("Owner", "Admin", "Operator", "Approver", "Compliance"),
               "see agents and their shadow runs"),
    Permission("agents.work", _WORKERS,
               "create agents, set their tools, record runs, ask for promotion"),
    # governed MCP
    Permission("tools.view", ("Owner", "Admin", "Operator", "Compliance"),
               "see MCP upstreams, the tool catalogue and its quarantine"),
    Permission("tools.manage", _MANAGERS,
               "register MCP upstreams and allow, deny or restrict their tools"),
    # signals, observations and minimization
    Permission("signals.view", _READERS,
               "see sources, imports, signals and observations (within one's persona)"),
    Permission("signals.import", _WORKERS, "import signal files and cluster them into tasks"),
    Permission("sources.manage", _MANAGERS, "add and remove signal sources"),
    Permission("consent.manage", _OWNER,
               "switch stakeholder extraction on or off and grant or withdraw sources"),
    Permission("aggregates.view", ("Owner", "Admin", "Operator", "Compliance", "Viewer"),
               "see team aggregates (k-anonymous, within one's persona)"),
    Permission("personas.manage", _OWNER, "define personas and assign them to members"),
    Permission("minimization.manage", _OWNER, "change k-anonymity and retention"),
)


def allows(role: str | None, permission: str) -> bool:
    """Whether ``role`` holds ``permission``; an unknown permission is a programming error."""
    return role is not None and role in MATRIX[permission].roles


def held_by(role: str | None) -> frozenset[str]:
    """Every permission ``role`` holds."""
    return frozenset(p.name for p in MATRIX.values() if role is not None and role in p.roles)


def outranks(role: str, other: str | None) -> bool:
    """Whether ``role`` outranks ``other``: it holds a permission ``other`` lacks. Read from the
    matrix, so it cannot drift from it: the Owner outranks every role; Compliance outranks an
    Admin (it may export the audit log); nobody may remove, demote or make a member of a role
    that outranks their own (control_plane/tenancy/service.py)."""
    return not held_by(role) <= held_by(other)


def roles_for(permission: str) -> tuple[str, ...]:
    return MATRIX[permission].roles


def refusal(permission: str, role: str | None) -> str:
    """The sentence a refused member reads."""
    p = MATRIX[permission]
    who = " or ".join(p.roles) if len(p.roles) < 3 else ", ".join(p.roles[:-1]) + \
        f" or {p.roles[-1]}"
    return (f"Your role ({role or 'none'}) may not {p.means}; that needs {who}. Ask an "
            "Owner of this tenant if you need it.")


@dataclass(frozen=True)
class Page:
    label: str
    path: str  # under /tenants/{id}
    permission: str


# The tenant's pages, linked from the tenant page for the roles that may open them.
PAGES: tuple[Page, ...] = (
    Page("Provider credentials", "/credentials", "credentials.view"),
    Page("LLM gateway", "/gateway", "gateway.view"),
    Page("Audit log", "/audit", "audit.view"),
    Page("Tasks and recommendations", "/tasks", "tasks.view"),
    Page("Agents", "/agents", "agents.view"),
    Page("Tools (MCP)", "/mcp", "tools.view"),
    Page("Connected clients", "/connections", "tools.view"),
    Page("Approvals", "/approvals", "approvals.view"),
    Page("Signals", "/signals", "signals.view"),
    Page("Teams", "/teams", "aggregates.view"),
    Page("Personas", "/personas", "personas.manage"),
)


def pages_for(role: str | None) -> list[Page]:
    return [page for page in PAGES if allows(role, page.permission)]
