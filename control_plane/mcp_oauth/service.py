"""Grants, authorization codes and tokens of the MCP authorization server.

- A **grant** is made when a member approves a client on the consent page: the tenant (named
  by the ``resource`` the client asked for, RFC 8707), the agent the client acts as, the
  member. It holds nothing beyond what the member's *current* role allows: every use re-reads
  the member's account and membership (bearer.py), like an API key's creator.
- An **authorization code** lives ``CODE_SECONDS``, is used once, and is bound to the client,
  the exact redirect URI, the PKCE S256 challenge and the resource. A code presented twice
  revokes its grant (RFC 6749 §4.1.2).
- **Access tokens** live ``ACCESS_TOKEN_SECONDS`` (an hour at most); **refresh tokens** are
  rotated on every use: a refresh token presented a second time revokes the whole grant, so a
  stolen one is worth one exchange at most, and the theft shows (``grant_revoked``, reason
  ``refresh_token_reuse``).

Only SHA-256 digests of codes and tokens are stored. Every change of a grant is audited on the
platform chain in the same transaction (``McpOAuthEvents``). Functions here never commit."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode, urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.db import utcnow
from control_plane.exceptions import NotFound
from control_plane.mcp_oauth import clients
from control_plane.mcp_oauth.clients import ClientInfo
from control_plane.mcp_oauth.exceptions import (
    InvalidGrant,
    InvalidRequest,
    InvalidTarget,
    UnsupportedGrantType,
)
from control_plane.mcp_oauth.models import OAuthClient, OAuthCode, OAuthGrant, OAuthToken
from control_plane.models import Membership, Tenant, User
from tenant_runtime import permissions

ACCESS_TOKEN_SECONDS = 3600
REFRESH_TOKEN_DAYS = 30
CODE_SECONDS = 120
SCOPE = "mcp"
PERMISSION = "agents.work"  # what a member's role must hold to connect an agent
ACCESS_PREFIX = "mgo_at_"
REFRESH_PREFIX = "mgo_rt_"
NEW_AGENT = "new"
VERIFIER_RE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
CHALLENGE_RE = re.compile(r"^[A-Za-z0-9\-_]{43,128}$")


class McpOAuthEvents:
    """The platform chain's events of the MCP authorization server."""

    CLIENT_REGISTERED = "mcp_oauth.client_registered"
    GRANT_CREATED = "mcp_oauth.grant_created"
    CONSENT_DENIED = "mcp_oauth.consent_denied"
    TOKEN_REFRESHED = "mcp_oauth.token_refreshed"  # noqa: S105 - an event name
    GRANT_REVOKED = "mcp_oauth.grant_revoked"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def resource_of(origin: str, slug: str) -> str:
    """The MCP endpoint of a tenant, as a resource indicator (RFC 8707)."""
    return f"{origin}/mcp/{slug}"


def tenant_of_resource(s: Session, origin: str, resource: str | None) -> Tenant:
    """The active tenant whose MCP endpoint ``resource`` names, or InvalidTarget."""
    if not resource:
        raise InvalidTarget("Give the resource parameter (RFC 8707): the address of the MCP "
                            f"endpoint the token is for, {origin}/mcp/<tenant>.")
    prefix = f"{origin}/mcp/"
    slug = resource[len(prefix):] if resource.startswith(prefix) else ""
    if not slug or "/" in slug or "?" in slug or "#" in slug:
        raise InvalidTarget(f"The resource {resource[:200]!r} is not an MCP endpoint of this "
                            f"server; it looks like {origin}/mcp/<tenant>.")
    tenant = s.scalars(select(Tenant).where(Tenant.slug == slug,
                                            Tenant.state == "active")).first()
    if tenant is None:
        raise InvalidTarget(f"The resource {resource[:200]!r} names no active tenant here.")
    return tenant


def find_client(s: Session, client_id: str | None) -> ClientInfo:
    """Who ``client_id`` is: a registered client, or a metadata document (fetched)."""
    if not client_id:
        raise InvalidRequest("Give the client_id parameter.")
    if clients.is_metadata_url(client_id):
        if len(client_id) > clients.MAX_URI_LENGTH:
            raise InvalidRequest("client_id is too long.")
        return clients.fetch_document(client_id)
    row = s.scalars(select(OAuthClient).where(OAuthClient.client_id == client_id[:64])).first()
    if row is None or row.client_id != client_id:
        raise clients.unknown_client()
    return clients.registered(row.client_id, row.client_name, list(row.redirect_uris))


def do_register_client(s: Session, registration: clients.Registration, *,
                       client_ip: str) -> OAuthClient:
    row = OAuthClient(client_id=clients.new_client_id(), client_name=registration.client_name,
                      redirect_uris=registration.redirect_uris,
                      client_uri=registration.client_uri, registered_from=client_ip[:64])
    s.add(row)
    s.flush()
    audit.record(s, McpOAuthEvents.CLIENT_REGISTERED, actor=audit.SYSTEM,
                 target_type="mcp_oauth_client", target_id=row.id,
                 details={"client_name": row.client_name, "client_ip": row.registered_from,
                          "redirect_hosts": sorted({urlsplit(u).netloc
                                                    for u in row.redirect_uris})})
    return row


# -- the authorization request ------------------------------------------------------------------


@dataclass(frozen=True)
class AuthorizationRequest:
    """An authorization request, checked: every field the consent form carries back."""

    client: ClientInfo
    redirect_uri: str
    state: str
    code_challenge: str
    resource: str
    scope: str
    tenant_id: int
    tenant_slug: str

    def form_fields(self) -> dict[str, str]:
        return {"response_type": "code", "client_id": self.client.client_id,
                "redirect_uri": self.redirect_uri, "state": self.state,
                "code_challenge": self.code_challenge, "code_challenge_method": "S256",
                "resource": self.resource, "scope": self.scope}

    def redirect(self, **params: str) -> str:
        joiner = "&" if urlsplit(self.redirect_uri).query else "?"
        return f"{self.redirect_uri}{joiner}{urlencode({**params, 'state': self.state})}"


def check_authorization_request(s: Session, params: dict[str, str], *,
                                origin: str) -> AuthorizationRequest:
    """The parameters of ``/oauth/authorize``, checked in the order a client can fix them.
    Nothing is sent to the redirect URI until it is known to be the client's own."""
    client = find_client(s, params.get("client_id"))
    redirect_uri = params.get("redirect_uri") or ""
    if redirect_uri not in client.redirect_uris:
        raise InvalidRequest("The redirect_uri is not one this client registered; it must "
                             "match one of them exactly.")
    if params.get("response_type") != "code":
        raise InvalidRequest("Only response_type=code is supported.")
    state = params.get("state") or ""
    if not state or len(state) > 500:
        raise InvalidRequest("Give a state parameter (at most 500 characters).")
    method = params.get("code_challenge_method")
    if method != "S256":
        raise InvalidRequest("PKCE with code_challenge_method=S256 is required; plain and "
                             "a missing method are refused.")
    challenge = params.get("code_challenge") or ""
    if not CHALLENGE_RE.match(challenge):
        raise InvalidRequest("Give a code_challenge: the base64url SHA-256 of the code "
                             "verifier (43 characters).")
    scope = " ".join(sorted(set((params.get("scope") or SCOPE).split()) - {"offline_access"}))
    if scope != SCOPE:
        raise InvalidRequest(f"The only scope offered is {SCOPE!r}.")
    resource = params.get("resource") or ""
    tenant = tenant_of_resource(s, origin, resource)
    return AuthorizationRequest(client, redirect_uri, state, challenge, resource, scope,
                                tenant.id, tenant.slug)


def eligible_role(s: Session, user: User, tenant_id: int) -> str | None:
    """The member's role in the tenant if it may connect agents (``PERMISSION``), else None."""
    role = s.scalars(select(Membership.role).where(Membership.user_id == user.id,
                                                   Membership.tenant_id == tenant_id)).first()
    return role if role is not None and permissions.allows(role, PERMISSION) else None


def agents_of(s: Session, user: User, tenant_id: int) -> list[tuple[int, str]]:
    """The agents this member's earlier grants act as in the tenant (a member may bind a new
    client to an agent they connected before; never to someone else's)."""
    rows = s.execute(select(OAuthGrant.agent_id, OAuthGrant.agent_name)
                     .where(OAuthGrant.user_id == user.id, OAuthGrant.tenant_id == tenant_id)
                     .order_by(OAuthGrant.agent_name)).all()
    seen: dict[int, str] = {}
    for agent_id, name in rows:
        seen.setdefault(agent_id, name)
    return sorted(seen.items(), key=lambda item: item[1])


def do_create_grant(s: Session, req: AuthorizationRequest, *, acting_user: User,
                    agent_id: int, agent_name: str) -> OAuthGrant:
    grant = OAuthGrant(tenant_id=req.tenant_id, user_id=acting_user.id,
                       client_id=req.client.client_id, client_name=req.client.client_name,
                       redirect_uri=req.redirect_uri, resource=req.resource, scope=req.scope,
                       agent_id=agent_id, agent_name=agent_name[:200])
    s.add(grant)
    s.flush()
    audit.record(s, McpOAuthEvents.GRANT_CREATED,
                 actor=audit.Actor.user(acting_user.id, acting_user.email),
                 target_type="mcp_oauth_grant", target_id=grant.id,
                 details={"tenant_id": req.tenant_id, "client_id": req.client.client_id[:200],
                          "client_name": req.client.client_name, "agent_id": agent_id,
                          "redirect_host": req.client.redirect_host(req.redirect_uri)})
    return grant


def do_issue_code(s: Session, grant: OAuthGrant, req: AuthorizationRequest) -> str:
    code = secrets.token_urlsafe(32)
    s.add(OAuthCode(code_hash=digest(code), grant_id=grant.id,
                    code_challenge=req.code_challenge,
                    expires_at=utcnow() + timedelta(seconds=CODE_SECONDS)))
    s.flush()
    return code


def do_record_denial(s: Session, req: AuthorizationRequest, *, acting_user: User) -> None:
    audit.record(s, McpOAuthEvents.CONSENT_DENIED,
                 actor=audit.Actor.user(acting_user.id, acting_user.email),
                 target_type="tenant", target_id=req.tenant_id,
                 details={"client_id": req.client.client_id[:200],
                          "client_name": req.client.client_name})


# -- the token endpoint -------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int
    scope: str

    def body(self) -> dict[str, str | int]:
        return {"access_token": self.access_token, "token_type": "Bearer",
                "expires_in": self.expires_in, "refresh_token": self.refresh_token,
                "scope": self.scope}


def _issue(s: Session, grant: OAuthGrant, now: datetime) -> IssuedTokens:
    access = ACCESS_PREFIX + secrets.token_urlsafe(32)
    refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
    s.add_all([
        OAuthToken(token_hash=digest(access), grant_id=grant.id, kind="access",
                   expires_at=now + timedelta(seconds=ACCESS_TOKEN_SECONDS)),
        OAuthToken(token_hash=digest(refresh), grant_id=grant.id, kind="refresh",
                   expires_at=now + timedelta(days=REFRESH_TOKEN_DAYS)),
    ])
    s.flush()
    return IssuedTokens(access, refresh, ACCESS_TOKEN_SECONDS, grant.scope)


def do_revoke_grant(s: Session, grant: OAuthGrant, *, reason: str,
                    actor: audit.Actor) -> None:
    """Revoke ``grant`` (idempotent): its tokens stop working on their next request."""
    if grant.revoked_at is not None:
        return
    grant.revoked_at = utcnow()
    grant.revoked_reason = reason
    audit.record(s, McpOAuthEvents.GRANT_REVOKED, actor=actor, target_type="mcp_oauth_grant",
                 target_id=grant.id,
                 details={"tenant_id": grant.tenant_id, "reason": reason,
                          "client_name": grant.client_name, "agent_id": grant.agent_id,
                          "member": grant.user_id})


def revoke_grants_of(s: Session, user_id: int, *, tenant_id: int | None, reason: str,
                     actor: audit.Actor) -> int:
    """Revoke every live grant ``user_id`` approved (in ``tenant_id``, or everywhere), each
    audited; how many. Like the member's keys, a revoked grant stays revoked when the account
    is reactivated or the member added again."""
    query = select(OAuthGrant).where(OAuthGrant.user_id == user_id,
                                     OAuthGrant.revoked_at.is_(None))
    if tenant_id is not None:
        query = query.where(OAuthGrant.tenant_id == tenant_id)
    rows = list(s.scalars(query.order_by(OAuthGrant.id).with_for_update()))
    for grant in rows:
        do_revoke_grant(s, grant, reason=reason, actor=actor)
    return len(rows)


def _check_member(s: Session, grant: OAuthGrant) -> None:
    user = s.get(User, grant.user_id)
    tenant = s.get(Tenant, grant.tenant_id)
    if user is None or not user.is_active or tenant is None or tenant.state != "active":
        raise InvalidGrant("The member who approved this client can no longer use it "
                           "(account deactivated, or the tenant is not active).")
    if eligible_role(s, user, grant.tenant_id) is None:
        raise InvalidGrant("The member who approved this client no longer holds a role that "
                           "may connect agents to this tenant.")


def _grant_for_client(s: Session, grant_id: int, client_id: str | None) -> OAuthGrant:
    grant = s.get(OAuthGrant, grant_id, with_for_update=True)
    if grant is None:
        raise InvalidGrant("This grant no longer exists.")
    if not client_id or not hmac.compare_digest(grant.client_id.encode(), client_id.encode()):
        raise InvalidGrant("This code or token was issued to another client_id.")
    return grant


def pkce_matches(verifier: str, challenge: str) -> bool:
    computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return hmac.compare_digest(computed.decode().rstrip("="), challenge)


def do_exchange_code(s: Session, form: dict[str, str]) -> IssuedTokens:
    """``grant_type=authorization_code``. The code is spent by any attempt that finds it, a
    failed one included; a code presented again revokes its grant."""
    code = form.get("code") or ""
    row = s.scalars(select(OAuthCode).where(OAuthCode.code_hash == digest(code))
                    .with_for_update()).first() if code else None
    if row is None:
        raise InvalidGrant("This authorization code is not valid.")
    grant = _grant_for_client(s, row.grant_id, form.get("client_id"))
    now = utcnow()
    if row.used_at is not None:
        do_revoke_grant(s, grant, reason="code_reuse", actor=audit.SYSTEM)
        raise InvalidGrant("This authorization code was already used; the grant it made is "
                           "revoked. Connect the client again.")
    row.used_at = now
    if row.expires_at <= now:
        raise InvalidGrant("This authorization code has expired; start the authorization "
                           "again.")
    if grant.revoked_at is not None:
        raise InvalidGrant("This grant was revoked.")
    if form.get("redirect_uri") != grant.redirect_uri:
        raise InvalidGrant("The redirect_uri differs from the one of the authorization "
                           "request; send the same one.")
    verifier = form.get("code_verifier") or ""
    if not VERIFIER_RE.match(verifier):
        raise InvalidGrant("Give the code_verifier (43 to 128 characters of A-Z a-z 0-9 - . _ "
                           "~) whose S256 challenge the authorization request sent.")
    if not pkce_matches(verifier, row.code_challenge):
        raise InvalidGrant("The code_verifier does not match the code_challenge of the "
                           "authorization request.")
    if form.get("resource") != grant.resource:
        raise InvalidTarget("The resource must be the one the client was authorized for: "
                            f"{grant.resource}.")
    _check_member(s, grant)
    grant.last_used_at = now
    return _issue(s, grant, now)


def do_refresh(s: Session, form: dict[str, str]) -> IssuedTokens:
    """``grant_type=refresh_token``: rotate. A refresh token used before revokes its grant."""
    token = form.get("refresh_token") or ""
    row = s.scalars(select(OAuthToken).where(OAuthToken.token_hash == digest(token),
                                             OAuthToken.kind == "refresh")
                    .with_for_update()).first() if token else None
    if row is None:
        raise InvalidGrant("This refresh token is not valid.")
    grant = _grant_for_client(s, row.grant_id, form.get("client_id"))
    if grant.revoked_at is not None:
        raise InvalidGrant("This grant was revoked; connect the client again.")
    now = utcnow()
    if row.used_at is not None:
        do_revoke_grant(s, grant, reason="refresh_token_reuse", actor=audit.SYSTEM)
        raise InvalidGrant("This refresh token was already used, so it may have been stolen: "
                           "the whole grant is revoked. Connect the client again.")
    row.used_at = now
    if row.expires_at <= now:
        raise InvalidGrant("This refresh token has expired; connect the client again.")
    resource = form.get("resource")
    if resource is not None and resource != grant.resource:
        raise InvalidTarget("The resource must be the one the client was authorized for: "
                            f"{grant.resource}.")
    _check_member(s, grant)
    grant.last_used_at = now
    issued = _issue(s, grant, now)
    audit.record(s, McpOAuthEvents.TOKEN_REFRESHED, actor=audit.SYSTEM,
                 target_type="mcp_oauth_grant", target_id=grant.id,
                 details={"tenant_id": grant.tenant_id})
    return issued


def do_token(s: Session, form: dict[str, str]) -> IssuedTokens:
    grant_type = form.get("grant_type")
    if grant_type == "authorization_code":
        return do_exchange_code(s, form)
    if grant_type == "refresh_token":
        return do_refresh(s, form)
    raise UnsupportedGrantType("grant_type must be authorization_code or refresh_token.")


# -- the grants page ----------------------------------------------------------------------------


def list_grants(s: Session, tenant_id: int) -> list[tuple[OAuthGrant, str | None]]:
    rows = s.execute(select(OAuthGrant, User.email).outerjoin(User, User.id == OAuthGrant.user_id)
                     .where(OAuthGrant.tenant_id == tenant_id)
                     .order_by(OAuthGrant.revoked_at.is_not(None), OAuthGrant.id.desc())).all()
    return [(g, e) for g, e in rows]


def access_grant(s: Session, tenant_id: int, grant_id: int) -> OAuthGrant:
    """The tenant's grant; another tenant's answers the same 404 as a missing one."""
    grant = s.get(OAuthGrant, grant_id, with_for_update=True)
    if grant is None or grant.tenant_id != tenant_id:
        raise NotFound("No such grant.")
    return grant

