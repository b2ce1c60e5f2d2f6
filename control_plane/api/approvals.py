"""The approval gate's JSON API, for a tenant's agents and programs.

- ``POST /api/actions`` ``{"action": "deploy.production", "payload": {"service_id": 7}}``:
  202 with the request (``id``, ``state`` pending) for a restricted action; 200 when the class
  is not restricted (approved at once, or already run). Unknown action: 422.
- ``GET /api/actions/{id}``: its state (pending, approved, rejected, executed, expired).
- ``POST /api/actions/{id}/execute``: uses the approval, atomically: 200 exactly once; 409 with a
  sentence after that (and while pending, when rejected or expired); 404 for a missing id or
  another tenant's.

Authenticated by a tenant API key (``Authorization: Bearer mg_…``, no cookie, so no CSRF
token), or by a session naming the tenant with ``?tenant=<id>`` (a role holding
``approvals.request``; CSRF applies as to every browser request; a refusal is audited as a scope
denial). Errors are ``{"error", "status", "request_id"}``."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane.exceptions import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
)
from control_plane.tenancy import api_keys, service
from control_plane.tenancy.mfa_policy import check_mfa
from control_plane.web.access import audits_denials, authenticate_key, key_actor
from control_plane.web.deps import require_user
from control_plane.web.forms import read_json_object, validated
from control_plane.web.services import services
from tenant_runtime.approvals import service as approvals
from tenant_runtime.approvals.models import ApprovalRequest
from tenant_runtime.context import Actor, TenantContext

TENANT_ID = re.compile(r"[0-9]{1,18}")


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = Field(max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict)


@audits_denials
def _context(request: Request, *, permission: str = "approvals.request") -> TenantContext:
    """The tenant context of the caller: its API key's tenant, or the session's member whose
    role holds ``permission``. A key is checked by ``authenticate_key`` against the route's
    scope and its creator's current role."""
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        if api_keys.presented_key(request.headers.get("authorization"),
                                  request.headers.get("x-api-key")):
            principal = authenticate_key(s, request)
            key = principal.api_key
            request.state.tenant, request.state.actor = principal.tenant.id, f"api_key:{key.id}"
            named = request.query_params.get("tenant")
            if named is not None and named.strip() != str(principal.tenant.id):
                raise NotFound("No such tenant.")  # a key reaches its own tenant only
            return svc.tenant_connections.context(s, principal.tenant, key_actor(principal))
        me = require_user(s, request)
        named = request.query_params.get("tenant", "").strip()
        if not TENANT_ID.fullmatch(named):
            raise InvalidInput("Name the tenant by its id: ?tenant=<id>.")
        access = service.access_tenant(s, int(named), user=me.user, permission=permission)
        check_mfa(access, me)  # a session, not a key: the tenant's MFA rule applies
        request.state.tenant = access.tenant.id
        if access.tenant.state == "suspended":
            raise Forbidden("This tenant is suspended; an Owner can resume it on the tenant's "
                            "page.")
        if access.tenant.state != "active":
            raise Conflict("This tenant is not active yet.")
        actor = Actor("user", str(me.user.id), me.user.email, access.role)
        return svc.tenant_connections.context(s, access.tenant, actor)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def request_json(ctx: TenantContext, req: ApprovalRequest, state: str) -> dict[str, Any]:
    return {"id": str(req.id), "action": req.action, "state": state,
            "restricted": req.restricted, "approver_role": req.approver_role,
            "approvals_needed": req.approvals_needed, "via": req.via,
            "created_at": _iso(req.created_at), "expires_at": _iso(req.expires_at),
            "executed_at": _iso(req.executed_at),
            "url": f"/tenants/{ctx.tenant_id}/approvals/{req.id}",
            "execute_url": f"/api/actions/{req.id}/execute"}


def _create(request: Request, raw: dict[str, Any]) -> Response:
    ctx = _context(request)
    body = validated(ActionRequest, raw)
    with ctx.session() as s, s.begin():
        req = approvals.request_action(s, ctx, body.action, body.payload, via="api")
        state = approvals.display_state(req)
        document = request_json(ctx, req, state)
    return JSONResponse(document, status_code=202 if state == "pending" else 200,
                        headers={"Location": f"/api/actions/{document['id']}"})


async def api_request_action(request: Request) -> Response:
    """POST /api/actions."""
    raw = await read_json_object(request)
    return await run_in_threadpool(_create, request, raw)


def api_get_action(request: Request) -> Response:
    """GET /api/actions/{id}."""
    ctx = _context(request)
    with ctx.session() as s, s.begin():
        req = approvals.access_request(s, request.path_params["request_id"])
        document = request_json(ctx, req, approvals.display_state(req))
    return JSONResponse(document)


def api_execute_action(request: Request) -> Response:
    """POST /api/actions/{id}/execute: 200 once, with the payload to act on; 409 after."""
    ctx = _context(request)
    with ctx.session() as s, s.begin():
        req = approvals.consume(s, ctx, request.path_params["request_id"], via="api")
        document = {**request_json(ctx, req, req.state), "payload": req.payload}
    return JSONResponse(document)


routes = [
    Route("/api/actions", api_request_action, methods=["POST"]),
    Route("/api/actions/{request_id}", api_get_action, methods=["GET"]),
    Route("/api/actions/{request_id}/execute", api_execute_action, methods=["POST"]),
]
