"""The authorization server over HTTP, and its dashboard pages.

Discovery (public, no data): ``/.well-known/oauth-protected-resource/mcp/{tenant_slug}``
(RFC 9728: the resource, its authorization server) and ``/.well-known/oauth-authorization-server``
(RFC 8414). Protocol endpoints: ``POST /oauth/register`` (RFC 7591), ``GET|POST /oauth/authorize``
(the consent page: a signed-in member, CSRF as every form), ``POST /oauth/token``. Dashboard:
``/tenants/{id}/connections`` lists a tenant's grants; Owners and Admins revoke them.

Errors of the protocol endpoints are RFC 6749 JSON (``error``, ``error_description`` — a
sentence saying what to fix) with ``Cache-Control: no-store``; on the consent page a person
sees the sentence on a page (nothing is sent to a redirect URI that is not the client's own)."""

from __future__ import annotations

import time
from typing import Any

import redis
from pydantic import Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from control_plane import audit
from control_plane.auth.ratelimit import LocalWindows
from control_plane.exceptions import RateLimited
from control_plane.mcp_oauth import clients, service
from control_plane.mcp_oauth.agents import bind_agent
from control_plane.mcp_oauth.exceptions import InvalidRequest, OAuthError
from control_plane.models import Tenant, User
from control_plane.tenancy.areas import with_tenant
from control_plane.web.access import audits_denials
from control_plane.web.deps import client_ip, require_user
from control_plane.web.forms import Form, form_endpoint, read_form, read_json_object
from control_plane.web.services import services
from control_plane.web.templating import render
from tenant_runtime import permissions
from tenant_runtime.context import Actor as TenantActor

REGISTRATIONS_PER_HOUR = 20
REGISTRATION_MAX_BYTES = 16 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_local = LocalWindows()


def _origin(request: Request) -> str:
    return services(request).settings.public_origin


def _oauth_error(exc: OAuthError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=NO_STORE)


# -- discovery ----------------------------------------------------------------------------------


def protected_resource(request: Request) -> Response:
    origin = _origin(request)
    slug = request.path_params["tenant_slug"]
    return JSONResponse({
        "resource": service.resource_of(origin, slug),
        "authorization_servers": [origin],
        "scopes_supported": [service.SCOPE],
        "bearer_methods_supported": ["header"],
        "resource_name": f"Magistrate MCP endpoint of {slug}",
    })


def authorization_server(request: Request) -> Response:
    origin = _origin(request)
    return JSONResponse({
        "issuer": origin,
        "authorization_endpoint": f"{origin}/oauth/authorize",
        "token_endpoint": f"{origin}/oauth/token",
        "registration_endpoint": f"{origin}/oauth/register",
        "scopes_supported": [service.SCOPE],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "code_challenge_methods_supported": ["S256"],
        "client_id_metadata_document_supported": True,
    })


# -- registration -------------------------------------------------------------------------------


def _count_registration(request: Request) -> None:
    """At most ``REGISTRATIONS_PER_HOUR`` registrations per client address."""
    key = f"magistrate:rl:oauth-register:{client_ip(request)}:{int(time.time() // 3600)}"
    try:
        client = services(request).redis
        count = int(client.incr(key))
        client.expire(key, 7200)
    except redis.RedisError:
        _local.incr(key, 3600, 1)
        count = _local.get(key)[0]
    if count > REGISTRATIONS_PER_HOUR:
        raise RateLimited(3600, f"More than {REGISTRATIONS_PER_HOUR} client registrations "
                                "from this address this hour; try again later.")


def _register(request: Request, metadata: dict[str, Any]) -> Response:
    registration = clients.check_registration(metadata)
    with services(request).session_factory() as s, s.begin():
        row = service.do_register_client(s, registration, client_ip=client_ip(request))
        body = {"client_id": row.client_id,
                "client_id_issued_at": int(row.created_at.timestamp()) if row.created_at
                else int(time.time()),
                "client_name": row.client_name, "redirect_uris": list(row.redirect_uris),
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"], "scope": service.SCOPE}
        if row.client_uri:
            body["client_uri"] = row.client_uri
    return JSONResponse(body, status_code=201, headers=NO_STORE)


async def register(request: Request) -> Response:
    metadata = await read_json_object(request, REGISTRATION_MAX_BYTES)
    try:
        await run_in_threadpool(_count_registration, request)
        return await run_in_threadpool(_register, request, metadata)
    except OAuthError as exc:
        return _oauth_error(exc)


# -- consent ------------------------------------------------------------------------------------


class ConsentForm(Form):
    response_type: str = Field(default="", max_length=20)
    client_id: str = Field(default="", max_length=2000)
    redirect_uri: str = Field(default="", max_length=2000)
    state: str = Field(default="", max_length=500)
    code_challenge: str = Field(default="", max_length=128)
    code_challenge_method: str = Field(default="", max_length=10)
    resource: str = Field(default="", max_length=2000)
    scope: str = Field(default="", max_length=200)
    agent: str = Field(default=service.NEW_AGENT, max_length=20)
    decision: str = Field(default="", max_length=10)


def _refusal_page(request: Request, exc: OAuthError) -> Response:
    return render(request, "oauth/refused.html", {"message": exc.description},
                  status_code=exc.status_code)


def _params(request: Request) -> dict[str, str]:
    return {k: v[:2000] for k, v in request.query_params.items()}


def consent_page(request: Request) -> Response:
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me = require_user(s, request)
        if not request.query_params:  # opened by hand: say what the page is for
            return render(request, "oauth/about.html", {})
        try:
            req = service.check_authorization_request(s, _params(request),
                                                      origin=svc.settings.public_origin)
        except OAuthError as exc:
            return _refusal_page(request, exc)
        role = service.eligible_role(s, me.user, req.tenant_id)
        context = {"req": req, "fields": req.form_fields(), "role": role,
                   "redirect_host": req.client.redirect_host(req.redirect_uri),
                   "agents": service.agents_of(s, me.user, req.tenant_id) if role else [],
                   "new_agent": service.NEW_AGENT}
        return render(request, "oauth/consent.html", context, status_code=200 if role else 403)


def _approve(s: Session, request: Request, req: service.AuthorizationRequest, user: User,
             role: str, agent_choice: str) -> str:
    svc = services(request)
    chosen: int | None = None
    if agent_choice != service.NEW_AGENT:
        known = dict(service.agents_of(s, user, req.tenant_id))
        chosen = int(agent_choice) if agent_choice.isdigit() else None
        if chosen is None or chosen not in known:
            raise InvalidRequest("Pick one of the agents offered, or a new agent.")
    grant = service.do_create_grant(s, req, acting_user=user, agent_id=0, agent_name="")
    tenant = s.get(Tenant, req.tenant_id)
    assert tenant is not None  # noqa: S101 - check_authorization_request found it active
    ctx = svc.tenant_connections.context(s, tenant, TenantActor("user", str(user.id),
                                                                user.email, role))
    grant.agent_id, grant.agent_name = bind_agent(ctx, grant.id, agent_id=chosen,
                                                  client_name=req.client.client_name)
    code = service.do_issue_code(s, grant, req)
    return req.redirect(code=code)


@form_endpoint(ConsentForm)
def consent(request: Request, form: ConsentForm) -> Response:
    svc = services(request)
    fields = form.model_dump(exclude={"csrf_token", "agent", "decision"})
    try:
        with svc.session_factory() as s, s.begin():
            me = require_user(s, request)
            req = service.check_authorization_request(s, fields,
                                                      origin=svc.settings.public_origin)
            if form.decision == "deny":
                service.do_record_denial(s, req, acting_user=me.user)
                return RedirectResponse(req.redirect(error="access_denied"), 303)
            if form.decision != "approve":
                raise InvalidRequest("Choose Approve or Deny.")
            role = service.eligible_role(s, me.user, req.tenant_id)
            if role is None:
                raise InvalidRequest("Your role in this tenant may not connect agents; an "
                                     "Owner or Admin can.")
            target = _approve(s, request, req, me.user, role, form.agent)
    except OAuthError as exc:
        return _refusal_page(request, exc)
    return RedirectResponse(target, 303)


# -- tokens -------------------------------------------------------------------------------------


class TokenForm(Form):
    grant_type: str = Field(default="", max_length=40)
    code: str = Field(default="", max_length=200)
    redirect_uri: str | None = Field(default=None, max_length=2000)
    code_verifier: str = Field(default="", max_length=200)
    client_id: str = Field(default="", max_length=2000)
    refresh_token: str = Field(default="", max_length=200)
    resource: str | None = Field(default=None, max_length=2000)
    scope: str = Field(default="", max_length=200)


def _token(request: Request, form: dict[str, str]) -> Response:
    error: OAuthError | None = None
    with services(request).session_factory() as s, s.begin():
        try:
            issued = service.do_token(s, form)
        except OAuthError as exc:
            # a spent code, a used refresh token, a grant revoked on reuse: kept (committed)
            error = exc
    if error is not None:
        return _oauth_error(error)
    return JSONResponse(issued.body(), headers=NO_STORE)


async def token(request: Request) -> Response:
    form = await read_form(request, TokenForm)
    fields = {k: v for k, v in form.model_dump(exclude={"csrf_token"}).items() if v is not None}
    return await run_in_threadpool(_token, request, fields)


# -- the grants page ----------------------------------------------------------------------------


class EmptyForm(Form):
    pass


def _grants_page(request: Request, *, status_code: int = 200, **extra: object) -> Response:
    with services(request).session_factory() as s, s.begin():
        _, access = with_tenant(request, s, permission="tools.view")
        context = {"tenant": access.tenant, "grants": service.list_grants(s, access.tenant.id),
                   "can_revoke": permissions.allows(access.role, "tools.manage"),
                   "endpoint": service.resource_of(_origin(request), access.tenant.slug),
                   **extra}
        return render(request, "oauth/grants.html", context, status_code=status_code)


@audits_denials
def grants_page(request: Request) -> Response:
    return _grants_page(request)


@form_endpoint(EmptyForm)
@audits_denials
def revoke_grant(request: Request, form: EmptyForm) -> Response:
    with services(request).session_factory() as s, s.begin():
        me, access = with_tenant(request, s, permission="tools.manage")
        grant = service.access_grant(s, access.tenant.id, int(request.path_params["grant_id"]))
        name = grant.client_name
        service.do_revoke_grant(s, grant, reason="revoked_by_member",
                                actor=audit.Actor.user(me.user.id, me.user.email))
    return _grants_page(request, notice=f"The grant of {name} is revoked; its tokens stop "
                                        "working on their next request.")


routes = [
    Route("/.well-known/oauth-protected-resource/mcp/{tenant_slug}", protected_resource,
          methods=["GET"]),
    Route("/.well-known/oauth-authorization-server", authorization_server, methods=["GET"]),
    Route("/oauth/register", register, methods=["POST"]),
    Route("/oauth/authorize", consent_page, methods=["GET"]),
    Route("/oauth/authorize", consent, methods=["POST"]),
    Route("/oauth/token", token, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/connections", grants_page, methods=["GET"]),
    Route("/tenants/{tenant_id:int}/connections/{grant_id:int}/revoke", revoke_grant,
          methods=["POST"]),
]
