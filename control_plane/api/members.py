"""The members JSON API, for a signed-in Owner or Admin (a session and its CSRF token; API
keys are refused: no scope manages members):

- ``GET /api/tenants/{id}/members``: every member, their role and membership id.
- ``POST /api/tenants/{id}/members/{membership_id}/role`` ``{"role": "Viewer"}``: change a
  member's role.
- ``DELETE /api/tenants/{id}/members/{membership_id}``: remove a member (and revoke the API keys
  they made in this tenant).

The rules are the dashboard's and the CLI's, in ``control_plane/tenancy/service.py``: nobody
removes or changes the role of a member whose role outranks theirs, nobody gives a role above
their own, and the last active Owner is neither removed nor demoted (409)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane.exceptions import MagistrateError
from control_plane.tenancy import service
from control_plane.tenancy.areas import with_tenant
from control_plane.web.access import audits_denials
from control_plane.web.forms import read_json_object, validated
from control_plane.web.services import services


class RoleChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(max_length=20)


def _members(s: Any, tenant: Any) -> list[dict[str, Any]]:
    return [{"id": m.id, "user_id": u.id, "email": u.email, "role": m.role,
             "active": u.is_active} for m, u in service.members(s, tenant)]


@audits_denials
def api_list_members(request: Request) -> Response:
    with services(request).session_factory() as s, s.begin():
        _, access = with_tenant(request, s, permission="members.manage")
        body = {"members": _members(s, access.tenant)}
    return JSONResponse(body)


@audits_denials
def _change(request: Request, raw: dict[str, Any],
            body_error: MagistrateError | None) -> Response:
    with services(request).session_factory() as s, s.begin():
        me, access = with_tenant(request, s, permission="members.manage")
        if body_error is not None:  # judged once the caller's access is settled
            raise body_error
        body = validated(RoleChange, raw)
        changed = service.do_change_member_role(
            s, access, int(request.path_params["membership_id"]), role=body.role,
            acting_user=me.user)
        document = {"id": changed.id, "user_id": changed.user_id, "role": changed.role}
    return JSONResponse(document)


async def api_change_role(request: Request) -> Response:
    raw: dict[str, Any] = {}
    body_error: MagistrateError | None = None
    try:
        raw = await read_json_object(request)
    except MagistrateError as exc:  # another tenant's id stays a 404, whatever the body
        body_error = exc
    return await run_in_threadpool(_change, request, raw, body_error)


@audits_denials
def api_remove_member(request: Request) -> Response:
    with services(request).session_factory() as s, s.begin():
        me, access = with_tenant(request, s, permission="members.manage")
        service.do_remove_member(s, access, int(request.path_params["membership_id"]),
                                 acting_user=me.user)
    return Response(status_code=204)


routes = [
    Route("/api/tenants/{tenant_id:int}/members", api_list_members, methods=["GET"]),
    Route("/api/tenants/{tenant_id:int}/members/{membership_id:int}/role", api_change_role,
          methods=["POST"]),
    Route("/api/tenants/{tenant_id:int}/members/{membership_id:int}", api_remove_member,
          methods=["DELETE"]),
]
