"""Who may call what: one decision for every route of the app, and the audit of refusals.

Every route has exactly one decision, and ``decision_of`` finds it:

- a tenant area's route (``tenant_runtime/*/routes.py``) names its ``permission`` in its
  ``TenantRoute``; the control plane checks it when it mounts the route;
- every other route is listed in ``DECISIONS`` below, by method and path template: either a
  permission of ``tenant_runtime.permissions.MATRIX`` (a route about one tenant: the caller must
  be a member whose role holds it) or one of the non-tenant decisions of ``NON_TENANT``.

tests/control_plane/test_permission_matrix.py walks every route of ``build_app`` and fails on a
route without a decision (or an entry here that names no route), and checks each tenant route
with each of the six roles, so a decision written here and the check the handler makes cannot
drift apart.

A route that also takes a tenant API key is listed in ``KEY_SCOPES`` with the key scopes it
accepts; ``authenticate_key`` (the only way a route resolves a key) finds the matched route's
entry and lets ``api_keys.check_key`` judge the key, its scope and its creator's current role.
A route not listed there refuses every key. The same tests walk every route with keys of every
scope, made by every role.

A refusal inside a tenant (``ScopeDenied``, 403) is audited as ``access.scope_denied`` with the
permission, the method, the path template and the role. The refused request's transaction
rolls back, so ``audits_denials`` writes the event afterwards in a short transaction of its own:
in the tenant's chain when the tenant is active (its compliance team reads it there), else in
the platform chain. Another tenant's id stays a plain 404 and is audited nowhere."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount, Route

from control_plane import audit
from control_plane.exceptions import Forbidden
from control_plane.models import Tenant
from control_plane.tenancy import api_keys
from control_plane.tenancy.service import ScopeDenied
from control_plane.web.services import Services, services
from tenant_runtime import audit as tenant_audit
from tenant_runtime import permissions
from tenant_runtime.context import Actor as TenantActor
from tenant_runtime.permissions import AccessEvents

log = logging.getLogger(__name__)

PUBLIC = "public"
SIGNED_IN = "signed-in"
INSTALLATION_OWNER = "installation-owner"
API_KEY = "api-key"
SCIM_TOKEN = "scim-token"  # noqa: S105 - a decision name
METRICS_TOKEN = "metrics-token"  # noqa: S105 - a decision name
NON_TENANT: dict[str, str] = {
    PUBLIC: "anyone, signed in or not",
    SIGNED_IN: "any signed-in user; what it shows is limited to their own account and tenants",
    INSTALLATION_OWNER: "a signed-in Owner of this installation (not of one tenant)",
    API_KEY: "a tenant API key (Authorization: Bearer), acting as its own tenant only",
    SCIM_TOKEN: "a SCIM token (Authorization: Bearer, scope scim) an installation Owner made "
                "for one identity provider, acting in that provider's view only",
    METRICS_TOKEN: "the scraper's bearer token, MAGISTRATE_METRICS_TOKEN (no token "
                   "configured: 404)",
}

# Routes outside the tenant areas. A tenant permission here means: a session caller must be a
# member whose role holds it; where an API key is also accepted (``/api/actions``,
# ``/api/agents``, ``/api/audit/export``), the key acts as its own tenant.
DECISIONS: dict[str, str] = {
    # pages of the installation
    "GET /": SIGNED_IN,
    "GET /approvals/nav": SIGNED_IN,
    "GET /healthz": PUBLIC,
    "GET /readyz": PUBLIC,
    "GET /metrics": METRICS_TOKEN,  # Prometheus; no data of any tenant, no content
    "MOUNT /static": PUBLIC,
    "GET /openapi.json": PUBLIC,  # the API's description, no data
    # the global pages: only the tenants whose role holds the tab's permission
    # (control_plane/console/across.py visible_tenants)
    "GET /gateway": SIGNED_IN,
    "GET /approvals": SIGNED_IN,
    "GET /audit": SIGNED_IN,
    "GET /jobs": SIGNED_IN,  # lists only the jobs of tenants one holds tenant.lifecycle in
    "GET /jobs.csv": SIGNED_IN,  # the same jobs as the page
    "POST /jobs/{job_id:int}/retry": SIGNED_IN,  # likewise; another tenant's job is a 404
    # signing in and one's own account
    "GET /sign-in": PUBLIC,
    "POST /sign-in": PUBLIC,
    "GET /sign-in/mfa": PUBLIC,  # the second step of a sign-in in progress
    "POST /sign-in/mfa": PUBLIC,
    "POST /sign-out": PUBLIC,  # ends the presented session, if any
    # single sign-on (control_plane/identity): the sign-in steps are the browser's own, bound
    # to it by state and its cookie; back-channel logout is authenticated by the signed token
    "GET /sign-in/sso/{provider_id:int}": PUBLIC,  # a link: starts a sign-in at the provider
    "GET /sign-in/sso/callback": PUBLIC,
    "GET /sign-in/sso/link": PUBLIC,
    "POST /sign-in/sso/link": PUBLIC,  # the account to link proves its password
    "POST /sso/backchannel-logout/{provider_id:int}": PUBLIC,
    "GET /sso": INSTALLATION_OWNER,
    "POST /sso/providers": INSTALLATION_OWNER,
    "GET /sso/providers/{provider_id:int}": INSTALLATION_OWNER,
    "POST /sso/providers/{provider_id:int}": INSTALLATION_OWNER,
    "POST /sso/providers/{provider_id:int}/disable": INSTALLATION_OWNER,
    "POST /sso/providers/{provider_id:int}/enable": INSTALLATION_OWNER,
    "POST /sso/policy": INSTALLATION_OWNER,
    "POST /sso/scim-tokens": INSTALLATION_OWNER,
    "POST /sso/scim-tokens/{token_id:int}/revoke": INSTALLATION_OWNER,
    # SCIM 2.0 provisioning (control_plane/scim): the token is the only credential
    "GET /scim/v2/Users": SCIM_TOKEN,
    "POST /scim/v2/Users": SCIM_TOKEN,
    "POST /scim/v2/Users/.search": SCIM_TOKEN,
    "GET /scim/v2/Users/{user_id}": SCIM_TOKEN,
    "PUT /scim/v2/Users/{user_id}": SCIM_TOKEN,
    "PATCH /scim/v2/Users/{user_id}": SCIM_TOKEN,
    "DELETE /scim/v2/Users/{user_id}": SCIM_TOKEN,
    "GET /scim/v2/Groups": SCIM_TOKEN,
    "POST /scim/v2/Groups": SCIM_TOKEN,
    "POST /scim/v2/Groups/.search": SCIM_TOKEN,
    "GET /scim/v2/Groups/{group_id}": SCIM_TOKEN,
    "PUT /scim/v2/Groups/{group_id}": SCIM_TOKEN,
    "PATCH /scim/v2/Groups/{group_id}": SCIM_TOKEN,
    "DELETE /scim/v2/Groups/{group_id}": SCIM_TOKEN,
    "GET /scim/v2/ServiceProviderConfig": SCIM_TOKEN,
    "GET /scim/v2/ResourceTypes": SCIM_TOKEN,
    "GET /scim/v2/ResourceTypes/{name}": SCIM_TOKEN,
    "GET /scim/v2/Schemas": SCIM_TOKEN,
    "GET /scim/v2/Schemas/{name}": SCIM_TOKEN,
    "GET /scim/v2/{rest:path}": SCIM_TOKEN,  # a SCIM 404 for any other address
    "POST /scim/v2/{rest:path}": SCIM_TOKEN,
    "PUT /scim/v2/{rest:path}": SCIM_TOKEN,
    "PATCH /scim/v2/{rest:path}": SCIM_TOKEN,
    "DELETE /scim/v2/{rest:path}": SCIM_TOKEN,
    "GET /account": SIGNED_IN,
    "POST /account/password": SIGNED_IN,
    "POST /account/sign-out-everywhere": SIGNED_IN,
    "POST /account/mfa/start": SIGNED_IN,
    "GET /account/mfa": SIGNED_IN,
    "POST /account/mfa": SIGNED_IN,
    "POST /account/mfa/disable": SIGNED_IN,
    "POST /account/my-data": SIGNED_IN,  # one's own data, rate-limited
    # users and tenants of the installation
    "GET /users": INSTALLATION_OWNER,
    "POST /users": INSTALLATION_OWNER,
    "POST /users/{user_id:int}/deactivate": INSTALLATION_OWNER,
    "POST /users/{user_id:int}/reactivate": INSTALLATION_OWNER,
    "GET /tenants": SIGNED_IN,  # the tenants one is a member of
    "GET /tenants/switch": SIGNED_IN,  # the switcher: a tenant one is not a member of is a 404
    "POST /tenants": INSTALLATION_OWNER,
    "POST /tenants/test-key": INSTALLATION_OWNER,
    "POST /tenants/local-key": INSTALLATION_OWNER,  # development only (409 in production)
    "GET /api/tenants": SIGNED_IN,
    "POST /api/tenants": INSTALLATION_OWNER,
    "GET /api/whoami": API_KEY,
    # one tenant (control-plane pages)
    "GET /tenants/{tenant_id:int}": "tenant.view",
    "GET /tenants/{tenant_id:int}/settings": "tenant.view",  # sections shown by role
    "POST /tenants/{tenant_id:int}/security/mfa": "tenant.lifecycle",
    "POST /tenants/{tenant_id:int}/security/sso": "tenant.lifecycle",
    "GET /tenants/{tenant_id:int}/gateway/calls": "gateway.view",
    "GET /tenants/{tenant_id:int}/gateway/calls.csv": "gateway.view",
    "GET /api/tenants/{tenant_id:int}": "tenant.view",
    "POST /tenants/{tenant_id:int}/retry": "tenant.lifecycle",
    "POST /tenants/{tenant_id:int}/key": "tenant.lifecycle",  # a failed provisioning's key
    "POST /tenants/{tenant_id:int}/suspend": "tenant.lifecycle",
    "POST /tenants/{tenant_id:int}/resume": "tenant.lifecycle",
    "POST /tenants/{tenant_id:int}/delete": "tenant.lifecycle",
    "POST /tenants/{tenant_id:int}/keys/rotate": "tenant.lifecycle",
    "POST /tenants/{tenant_id:int}/members": "members.manage",
    "POST /tenants/{tenant_id:int}/members/{membership_id:int}/remove": "members.manage",
    "POST /tenants/{tenant_id:int}/members/{membership_id:int}/role": "members.manage",
    "GET /api/tenants/{tenant_id:int}/members": "members.manage",
    "POST /api/tenants/{tenant_id:int}/members/{membership_id:int}/role": "members.manage",
    "DELETE /api/tenants/{tenant_id:int}/members/{membership_id:int}": "members.manage",
    "POST /tenants/{tenant_id:int}/api-keys": "api_keys.manage",
    "POST /tenants/{tenant_id:int}/api-keys/{key_id:int}/revoke": "api_keys.manage",
    "POST /tenants/{tenant_id:int}/audit/verify": "audit.verify",
    "GET /tenants/{tenant_id:int}/audit/verification": "audit.view",
    "GET /tenants/{tenant_id:int}/audit/export": "audit.export",
    "GET /tenants/{tenant_id:int}/backups": "tenant.lifecycle",
    "POST /tenants/{tenant_id:int}/backups/restore-as": "tenant.lifecycle",
    "POST /tenants/{tenant_id:int}/backups/replace": "tenant.lifecycle",
    "GET /tenants/{tenant_id:int}/exports": "audit.export",
    "POST /tenants/{tenant_id:int}/exports": "audit.export",
    "GET /tenants/{tenant_id:int}/exports/{job_id:int}": "audit.export",
    "GET /tenants/{tenant_id:int}/exports/{job_id:int}/download": "audit.export",
    # tenant JSON APIs (a session names the tenant with ?tenant=<id>; or an API key)
    "GET /api/audit/export": "audit.export",
    "POST /api/actions": "approvals.request",
    "GET /api/actions/{request_id}": "approvals.request",
    "POST /api/actions/{request_id}/execute": "approvals.request",
    "GET /api/agents/{agent_id}": "agents.view",
    "POST /api/agents/{agent_id}/shadow-runs": "agents.work",
    # the gateway
    "POST /v1/chat/completions": API_KEY,
    "POST /v1/responses": API_KEY,
    "POST /v1/embeddings": API_KEY,
    "POST /v1/messages": API_KEY,
    "POST /v1/messages/count_tokens": API_KEY,
    "GET /v1/models": API_KEY,
    # the tenant's MCP endpoint (Streamable HTTP); the key's tenant must be the one named
    "GET /mcp/{tenant_slug}": API_KEY,
    "POST /mcp/{tenant_slug}": API_KEY,
    "DELETE /mcp/{tenant_slug}": API_KEY,
    # the MCP authorization server (control_plane/mcp_oauth): discovery and the protocol's
    # endpoints are public (a client authenticates by PKCE and its code or refresh token); the
    # consent page needs a signed-in member, and checks their role in the tenant it names
    "GET /.well-known/oauth-protected-resource/mcp/{tenant_slug}": PUBLIC,
    "GET /.well-known/oauth-authorization-server": PUBLIC,
    "POST /oauth/register": PUBLIC,  # rate-limited per address, size-limited
    "GET /oauth/authorize": SIGNED_IN,
    "POST /oauth/authorize": SIGNED_IN,
    "POST /oauth/token": PUBLIC,
    "GET /tenants/{tenant_id:int}/connections": "tools.view",
    "POST /tenants/{tenant_id:int}/connections/{grant_id:int}/revoke": "tools.manage",
}


# The routes that accept a tenant API key, and the scopes a key needs for each (any one of
# them; none: any valid key). ``authenticate_key`` is the only way a route resolves a key, and
# it reads this table by the matched route, so a route not listed here refuses every key. The
# creator's current role must also hold the route's permission: its DECISIONS entry, or
# ``gateway.call`` for the gateway's routes (decided ``api-key``).
KEY_SCOPES: dict[str, tuple[str, ...]] = {
    "GET /api/whoami": (),  # shows the key itself: its tenant, name and scopes
    "GET /api/audit/export": ("audit:export",),
    "POST /api/actions": ("actions:request",),
    "GET /api/actions/{request_id}": ("read", "actions:request", "actions:execute"),
    "POST /api/actions/{request_id}/execute": ("actions:execute",),
    "GET /api/agents/{agent_id}": ("read", "agents"),
    "POST /api/agents/{agent_id}/shadow-runs": ("agents",),
    "POST /v1/chat/completions": ("gateway",),
    "POST /v1/responses": ("gateway",),
    "POST /v1/embeddings": ("gateway",),
    "POST /v1/messages": ("gateway",),
    "POST /v1/messages/count_tokens": ("gateway",),
    "GET /v1/models": ("gateway",),
    "GET /mcp/{tenant_slug}": ("mcp",),
    "POST /mcp/{tenant_slug}": ("mcp",),
    "DELETE /mcp/{tenant_slug}": ("mcp",),
}
KEY_PERMISSION = {API_KEY: "gateway.call", "GET /api/whoami": "tenant.view",
                  **{f"{method} /mcp/{{tenant_slug}}": "agents.work"
                     for method in ("GET", "POST", "DELETE")}}


def _check_table() -> None:
    for key, decision in DECISIONS.items():
        if decision not in NON_TENANT and decision not in permissions.MATRIX:
            raise ValueError(f"access.DECISIONS[{key!r}] = {decision!r} is neither a permission "
                             "of tenant_runtime/permissions.py nor one of "
                             f"{', '.join(NON_TENANT)}.")
    for key, scopes in KEY_SCOPES.items():
        if DECISIONS.get(key) not in (API_KEY, *permissions.MATRIX):
            raise ValueError(f"access.KEY_SCOPES names {key!r}, which DECISIONS does not "
                             "decide by a permission or 'api-key'.")
        unknown = [name for name in scopes if name not in api_keys.SCOPES]
        if unknown:
            raise ValueError(f"access.KEY_SCOPES[{key!r}] names unknown scopes {unknown}.")


_check_table()


def route_keys(route: BaseRoute) -> list[str]:
    """The ``DECISIONS`` keys of one route: one per method (HEAD goes with GET)."""
    if isinstance(route, Mount):
        return [f"MOUNT {route.path}"]
    if isinstance(route, Route):
        return [f"{m} {route.path}" for m in sorted(route.methods or ()) if m != "HEAD"]
    return [f"? {getattr(route, 'path', route)!r}"]


def decision_of(route: BaseRoute, key: str) -> str | None:
    """The decision of ``key`` (a method and path of ``route``), or None when it has none."""
    declared = getattr(getattr(route, "endpoint", None), "permission", None)
    if isinstance(declared, str):  # a mounted tenant area route carries its own
        return declared
    return DECISIONS.get(key)


def is_tenant_permission(decision: str | None) -> bool:
    return decision is not None and decision in permissions.MATRIX


# ------------------------------------------------------------------------------- API keys


def key_rule(request: Request) -> api_keys.KeyRule:
    """What the matched route asks of an API key (``KEY_SCOPES``); a route not listed there
    refuses keys."""
    route = request.scope.get("route")
    keys = route_keys(route) if isinstance(route, BaseRoute) else []
    key = next((k for k in keys if k.startswith(f"{request.method} ")
                or (request.method == "HEAD" and k.startswith("GET "))), None)
    if key is None or key not in KEY_SCOPES:
        raise Forbidden("This route does not accept API keys; sign in instead.")
    return key_rule_for(key)


def key_rule_for(key: str) -> api_keys.KeyRule:
    """The rule of one ``KEY_SCOPES`` entry (a method and path template)."""
    decision = DECISIONS[key]
    permission = KEY_PERMISSION.get(key) or KEY_PERMISSION.get(decision) or decision
    return api_keys.KeyRule(key, KEY_SCOPES[key], permission)


def authenticate_key(s: Session, request: Request) -> api_keys.ApiPrincipal:
    """The one place a route resolves the API key it was sent to a principal: the key's checks,
    the route's scope and the creator's current role (``api_keys.check_key``)."""
    return api_keys.authenticate_bearer(s, request.headers.get("authorization"),
                                        request.headers.get("x-api-key"),
                                        rule=key_rule(request))


def key_actor(principal: api_keys.ApiPrincipal) -> TenantActor:
    """Who a key is inside its tenant: the key, acting for its creator with the creator's
    current role (DESIGN.md, invariant 9: the human behind a key is the requester)."""
    key = principal.api_key
    return TenantActor("api_key", str(key.id), key.name, principal.creator_role,
                       on_behalf_of=str(principal.creator.id),
                       on_behalf_of_name=principal.requester_name)


# ------------------------------------------------------------------------------- denials

P = ParamSpec("P")
R = TypeVar("R")


def audits_denials(handler: Callable[Concatenate[Request, P], R]
                   ) -> Callable[Concatenate[Request, P], R]:
    """Wrap a plain handler that resolves tenant access inside its own transaction: when it
    ends in ``ScopeDenied``, its transaction has rolled back by the time this catches it;
    record the denial, then let the 403 through."""

    def run(request: Request, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return handler(request, *args, **kwargs)
        except ScopeDenied as denied:
            record_denial(request, denied)
            raise

    run.__name__, run.__qualname__ = handler.__name__, handler.__qualname__
    run.__doc__ = handler.__doc__
    return run


def route_template(request: Request) -> str:
    """The path template of the matched route (never the filled URL, which holds ids)."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else request.url.path


def record_denial(request: Request, denied: ScopeDenied) -> None:
    """Write ``access.scope_denied`` once, in its own transaction: the tenant's chain when the
    tenant is active, else (or when its database cannot be written) the platform chain."""
    if denied.recorded:
        return
    denied.recorded = True
    details: dict[str, Any] = {"permission": denied.permission, "method": request.method,
                               "path": route_template(request), "role": denied.role}
    svc = services(request)
    if denied.tenant_state == "active":
        try:
            if _record_in_tenant(svc, denied, details):
                return
        except SQLAlchemyError:
            log.exception("could not write a scope denial to tenant %s's chain; writing it to "
                          "the platform chain", denied.tenant_id)
    with svc.session_factory() as s, s.begin():
        audit.record(s, AccessEvents.SCOPE_DENIED,
                     actor=audit.Actor.user(denied.user_id, denied.user_email),
                     target_type="tenant", target_id=denied.tenant_id, details=details)


def _record_in_tenant(svc: Services, denied: ScopeDenied, details: dict[str, Any]) -> bool:
    with svc.session_factory() as s:
        tenant = s.get(Tenant, denied.tenant_id)
        if tenant is None or tenant.state != "active":  # changed since: the platform chain
            return False
        factory = svc.tenant_connections.session_factory(tenant)
    with factory() as ts, ts.begin():
        tenant_audit.record(ts, AccessEvents.SCOPE_DENIED,
                            actor=TenantActor("user", str(denied.user_id), denied.user_email,
                                              denied.role),
                            target_type="tenant", target_id=denied.tenant_id, details=details)
    return True
