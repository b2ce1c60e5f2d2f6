"""The one place the MCP endpoint turns ``Authorization: Bearer …`` into a caller.

Two credentials are accepted, told apart by their prefix:

- an **OAuth access token** (``mgo_at_…``) this server issued: its digest is looked up with its
  grant, tenant, member and the member's membership in one statement; refused (401) when
  unknown, expired, or its grant revoked; when the member is deactivated or no longer holds a
  role that may connect agents (``agents.work``) — the grant never does more than the member
  today; 403 while the tenant is suspended. A token whose grant was made for another tenant's
  endpoint (its ``resource``) answers 404, as a wrong-tenant key does;
- a **tenant API key** (``mg_…``) with the ``mcp`` scope: ``access.authenticate_key``.

Either way the caller is an agent of the tenant's drive layer: a key's own, or the agent the
member picked on the consent page (tenant_runtime/mcp/service.client_agent finds it by the
number ``-grant_id``, bound when the grant was made)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request

from control_plane.auth.credentials import presented_key
from control_plane.db import utcnow
from control_plane.exceptions import Forbidden, NotFound, NotSignedIn
from control_plane.mcp_oauth.service import ACCESS_PREFIX, PERMISSION, digest, resource_of
from control_plane.models import Tenant
from control_plane.tenancy.api_keys import KeyRule, authenticate_bearer
from control_plane.web.access import key_actor, key_rule
from tenant_runtime import permissions
from tenant_runtime.context import Actor as TenantActor

WRONG_TENANT = "There is nothing here. Check the address."

_GRANT_OF_ACCESS = (
    "SELECT t.expires_at, g.id, g.revoked_at, g.tenant_id, g.resource, g.client_name, "
    "g.last_used_at, u.id, u.email, u.is_active, m.role "
    "FROM mcp_oauth_tokens t JOIN mcp_oauth_grants g ON g.id = t.grant_id "
    "LEFT JOIN users u ON u.id = g.user_id "
    "LEFT JOIN memberships m ON m.user_id = g.user_id AND m.tenant_id = g.tenant_id "
    "WHERE t.token_hash = %(hash)s AND t.kind = 'access'")
_TOUCH = "UPDATE mcp_oauth_grants SET last_used_at = %(now)s WHERE id = %(id)s"


@dataclass(frozen=True)
class McpCaller:
    """Who is calling the MCP endpoint: the tenant, the actor inside it (acting for a human),
    and the number the MCP service knows the client's agent by."""

    tenant: Tenant
    actor: TenantActor
    client_number: int
    client_name: str
    label: str  # for logs: api_key:<id> or oauth_grant:<id>


def is_access_token(credential: str | None) -> bool:
    return bool(credential) and str(credential).startswith(ACCESS_PREFIX)


def _grant_caller(s: Session, token: str, *, slug: str, origin: str,
                  token_expiry: bool = True) -> McpCaller:
    row: Any = s.connection().exec_driver_sql(_GRANT_OF_ACCESS, {"hash": digest(token)}).first()
    if row is None:
        raise NotSignedIn("This access token is not valid.")
    (expires_at, grant_id, revoked_at, tenant_id, resource, client_name, last_used_at,
     user_id, email, active, role) = row
    now = utcnow()
    if revoked_at is not None:
        raise NotSignedIn("This access token's grant was revoked; connect the client again.")
    if token_expiry and expires_at <= now:
        raise NotSignedIn("This access token has expired; use the refresh token for a new "
                          "one.")
    tenant = s.get(Tenant, tenant_id)
    if tenant is None or tenant.state == "deleted":
        raise NotSignedIn("This access token is not valid.")
    if tenant.state == "suspended":
        raise Forbidden("This tenant is suspended; its MCP endpoint refuses every caller "
                        "until an Owner resumes it.")
    if tenant.state != "active":
        raise Forbidden("This tenant is not active yet.")
    if not active or user_id is None:
        raise NotSignedIn("This access token stopped working: the member who approved the "
                          "client is deactivated or gone.")
    if role is None:
        raise NotSignedIn("This access token stopped working: the member who approved the "
                          "client is no longer a member of this tenant.")
    if not permissions.allows(role, PERMISSION):
        raise Forbidden(f"The member who approved this client is now {role}, which may not "
                        f"{permissions.MATRIX[PERMISSION].means}; a grant never does more "
                        "than its member.")
    if tenant.slug != slug or resource != resource_of(origin, slug):
        raise NotFound(WRONG_TENANT)
    if last_used_at is None or (now - last_used_at).total_seconds() > 60:
        s.connection().exec_driver_sql(_TOUCH, {"now": now, "id": grant_id})
    # in the tenant's audit format a grant is a bearer credential like a key ("api_key"),
    # told apart by its id; every approval rule treats it as the member behind it
    actor = TenantActor("api_key", f"oauth_grant:{grant_id}", client_name, role,
                        on_behalf_of=str(user_id),
                        on_behalf_of_name=f"{email} (OAuth client {client_name})")
    return McpCaller(tenant, actor, -grant_id, client_name, f"oauth_grant:{grant_id}")


def resolve(s: Session, request: Request, *, slug: str, origin: str) -> McpCaller:
    """The caller behind the request's bearer credential, for the MCP endpoint of ``slug``."""
    credential = presented_key(request.headers.get("authorization"),
                               request.headers.get("x-api-key"))
    if not credential:
        raise NotSignedIn("Connect with OAuth (the resource_metadata of the WWW-Authenticate "
                          "header leads there) or send a tenant API key with the mcp scope as "
                          "'Authorization: Bearer mg_…'.")
    return caller_of(s, str(credential), slug=slug, origin=origin,
                     rule=lambda: key_rule(request))


def caller_of(s: Session, credential: str, *, slug: str, origin: str,
              rule: Callable[[], KeyRule], token_expiry: bool = True) -> McpCaller:
    """The caller behind ``credential`` (an access token or an API key checked against
    ``rule``), or the refusal: what every request passes, and what the endpoint re-checks for
    each live session (control_plane/api/mcp.py). ``token_expiry=False`` is that re-check's:
    a session belongs to its grant, and an access token that expired in the meantime is
    refreshed by the client at its next request, keeping the session."""
    if is_access_token(credential):
        return _grant_caller(s, credential, slug=slug, origin=origin,
                             token_expiry=token_expiry)
    principal = authenticate_bearer(s, None, credential, rule=rule())
    key = principal.api_key
    if principal.tenant.slug != slug:
        raise NotFound(WRONG_TENANT)
    return McpCaller(principal.tenant, key_actor(principal), key.id, key.name,
                     f"api_key:{key.id}")


def challenge(origin: str, slug: str, *, presented: bool) -> str:
    """The ``WWW-Authenticate`` of a 401 at ``/mcp/{slug}`` (RFC 9728 §5.1)."""
    metadata = f"{origin}/.well-known/oauth-protected-resource/mcp/{slug}"
    error = ', error="invalid_token"' if presented else ""
    return f'Bearer resource_metadata="{metadata}", scope="mcp"{error}'
