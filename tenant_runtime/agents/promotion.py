"""Promotion as a restricted action: requesting one creates an approval request
(tenant_runtime/approvals); the phase changes only when an approver's approval is consumed,
through the executor registered here, in the same transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from tenant_runtime.agents import service
from tenant_runtime.agents.service import PROMOTE_ACTION, AgentEvents, PromotionRefused
from tenant_runtime.approvals import classes
from tenant_runtime.approvals import service as approvals
from tenant_runtime.approvals.executors import register_executor
from tenant_runtime.approvals.models import ApprovalRequest
from tenant_runtime.context import TenantContext


@register_executor(PROMOTE_ACTION)
def _promote(s: Session, ctx: TenantContext, payload: dict[str, Any]) -> None:
    service.apply_promotion(s, ctx, payload)


def request(s: Session, ctx: TenantContext, agent_id: int, *,
            via: str = "dashboard") -> ApprovalRequest:
    """Ask for the agent's next phase: the gate must be open, and no promotion may be waiting."""
    agent = service.get_agent(s, agent_id, lock=True)
    to_phase = service.check_promotion(s, agent)
    cls = classes.class_by_name(s, PROMOTE_ACTION)
    if cls is not None and not cls.restricted:
        raise PromotionRefused(f"The action class {PROMOTE_ACTION} must stay restricted: "
                               "promoting an agent always needs an approval.")
    req = approvals.request_action(s, ctx, PROMOTE_ACTION,
                                   {"agent_id": agent.id, "agent": agent.name,
                                    "from": agent.phase, "to": to_phase}, via=via)
    agent.pending_request_id = str(req.id)
    audit_details = {"phase_from": agent.phase, "phase_to": to_phase, "request": str(req.id)}
    service.record_event(s, ctx, AgentEvents.PROMOTION_REQUESTED, agent, **audit_details)
    return req
