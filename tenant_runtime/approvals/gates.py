"""Guarding an action Magistrate runs itself (a tenant's deletion, a key rotation) when the
tenant marks it restricted, by having an action class of that name with ``restricted`` set.

``guard`` either lets the action go ahead (no such restricted class), uses the approval named
by ``approval_id`` (it must be for this very action and this tenant, fresh and unused: it is
consumed, exactly once), or, with no approval named, opens an approval request and says so
(``ApprovalPending``): the caller runs nothing and tells the user to come back with the
approved request's id.

``require`` / ``check_required`` / ``consume_required`` serve an action that always needs an
approval whatever the tenant configured (restoring a backup over the live database,
``tenant.restore``): its class is made restricted with the defaults at the first request, a
class the tenant made unrestricted is refused rather than honoured, and the approval must come
from a decision (a request approved by an unrestricted class does not count). The caller checks
the approval before its long work and consumes it only once that work succeeded."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from tenant_runtime.approvals import classes
from tenant_runtime.approvals import service as approvals
from tenant_runtime.approvals.models import ApprovalRequest
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantError, TenantInvalidInput


class ApprovalPending(TenantError):
    status_code = 202

    def __init__(self, request_id: str, action: str, *, always: bool = False) -> None:
        self.request_id = request_id
        why = "always needs an approval" if always else "is a restricted action for this tenant"
        super().__init__(f"{action} {why}: approval request {request_id} was opened. Once an "
                         "approver other than you has approved it, do it again and give that "
                         "request's id.")


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
        _check_for(req, action, payload)
        approvals.consume(s, ctx, req.id, via="internal")
        return str(req.id)


def _check_for(req: ApprovalRequest, action: str, payload: dict[str, Any]) -> None:
    if req.action != action or dict(req.payload) != payload:
        raise TenantInvalidInput(f"Approval request {req.id} is for another action; give "
                                 f"the id of an approved {action} request.")


def _restricted_class(s: Session, ctx: TenantContext, action: str) -> None:
    cls = classes.class_by_name(s, action)
    if cls is None:
        classes.do_add_default_class(s, ctx, action)
    elif not cls.restricted:
        raise TenantInvalidInput(f"{action} always needs an approval, but this tenant's "
                                 f"{action} action class is marked not restricted: an Owner or "
                                 "Admin marks it restricted on the Approvals page, then ask "
                                 "again.")


def require(ctx: TenantContext, action: str, payload: dict[str, Any], *,
            via: str = "internal") -> None:
    """Open the approval request for an action that always needs one; raises
    ``ApprovalPending`` (the request committed) for the caller to report."""
    with ctx.session() as s, s.begin():
        _restricted_class(s, ctx, action)
        opened = str(approvals.request_action(s, ctx, action, payload, via=via).id)
    raise ApprovalPending(opened, action, always=True)


def check_required(ctx: TenantContext, action: str, payload: dict[str, Any],
                   approval_id: str) -> str:
    """The approval's id when it could be consumed now for this very action; else the
    sentence why not (nothing consumed)."""
    with ctx.session() as s:
        _restricted_class(s, ctx, action)  # never committed: a read check
        req = approvals.access_request(s, approval_id.strip())
        _check_for(req, action, payload)
        if not req.restricted:
            raise TenantInvalidInput(f"Approval request {req.id} was approved without a "
                                     f"decision; {action} needs an approver's decision. Ask "
                                     "again.")
        approvals.check_usable(req)
        return str(req.id)


def consume_required(ctx: TenantContext, action: str, payload: dict[str, Any],
                     approval_id: str) -> str:
    """Consume the approval checked by ``check_required`` (exactly once; audited)."""
    with ctx.session() as s, s.begin():
        req = approvals.access_request(s, approval_id.strip())
        _check_for(req, action, payload)
        if not req.restricted:
            raise TenantInvalidInput(f"Approval request {req.id} was approved without a "
                                     f"decision; {action} needs an approver's decision.")
        approvals.consume(s, ctx, req.id, via="internal")
        return str(req.id)
