"""Guarding an action Magistrate runs itself (a tenant's deletion, a key rotation) when the
tenant marks it restricted, by having an action class of that name with ``restricted`` set.

``guard`` either lets the action go ahead (no such restricted class), uses the approval named
by ``approval_id`` (it must be for this very action and this tenant, fresh and unused: it is
consumed, exactly once), or, with no approval named, opens an approval request and says so
(``ApprovalPending``): the caller runs nothing and tells the user to come back with the
approved request's id."""

from __future__ import annotations

from typing import Any

from tenant_runtime.approvals import classes
from tenant_runtime.approvals import service as approvals
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantError, TenantInvalidInput


class ApprovalPending(TenantError):
    status_code = 202

    def __init__(self, request_id: str, action: str) -> None:
        self.request_id = request_id
        super().__init__(f"{action} is a restricted action for this tenant: approval request "
                         f"{request_id} was opened. Once it is approved, do it again and give "
                         "that request's id.")


def guard(ctx: TenantContext, action: str, payload: dict[str, Any], *,
          approval_id: str | None, via: str = "dashboard") -> str | None:
    """None: go ahead unguarded; the consumed request's id: go ahead on that approval."""
    with ctx.session() as s, s.begin():
        cls = classes.class_by_name(s, action)
        if cls is None or not cls.restricted:
            return None
        if not approval_id:
            opened = str(approvals.request_action(s, ctx, action, payload, via=via).id)
    if not approval_id:  # raised once the request is committed
        raise ApprovalPending(opened, action)
    with ctx.session() as s, s.begin():
        req = approvals.access_request(s, approval_id.strip())
        cls = classes.class_by_name(s, action)
        if cls is None or not cls.restricted:  # no longer restricted meanwhile
            return None
        if req.action != cls.name or dict(req.payload) != payload:
            raise TenantInvalidInput(f"Approval request {req.id} is for another action; give "
                                     f"the id of an approved {action} request.")
        approvals.consume(s, ctx, req.id, via="internal")
        return str(req.id)
