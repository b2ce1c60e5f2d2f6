"""The drive layer. An agent moves through ``off → shadow → assist → autonomous``:

- **Handoff** creates a placeholder agent for a task with a deliberately narrow tool scope
  (reading and drafting only: no messaging, no calendar, nothing destructive); wider tools need
  real credentials wired by an operator first.
- **Shadow runs** record what the agent proposed beside what the human actually did, whether
  they agreed, and where known a ground-truth score (0 to 1). Runs count for the phase the
  agent was in when they were recorded.
- **Promotion** is proposed only when the evidence of the current phase clears the gate (at
  least 30 runs, at least 85 % agreement, at least half of the runs scored against ground
  truth; ``off → shadow`` needs no evidence, since a shadow agent only proposes), and it is a
  restricted action: it happens only when an approval is consumed (tenant_runtime/approvals),
  through the executor registered here.
- **Backward moves** (autonomous → assist → shadow → off) are always allowed, immediate, and
  audited; they cancel a promotion in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.agents.models import Agent, ShadowRun
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantError, TenantInvalidInput, TenantNotFound
from tenant_runtime.models import ProviderCredential

PHASES = ("off", "shadow", "assist", "autonomous")
# Each tool and what kind of thing it does; placeholder agents get only the "read" and "draft"
# kinds until credentials are wired.
TOOLS = {
    "read_task": "read", "search_knowledge_base": "read", "draft_reply": "draft",
    "update_ticket": "write", "send_message": "messaging", "send_email": "messaging",
    "schedule_meeting": "calendar", "cancel_meeting": "calendar",
    "delete_records": "destructive", "issue_refund": "destructive",
}
NARROW_KINDS = frozenset({"read", "draft"})
PLACEHOLDER_TOOLS = ("read_task", "search_knowledge_base", "draft_reply")
MIN_RUNS = 30
MIN_AGREEMENT_PERCENT = 85
MIN_SCORED_PERCENT = 50
PROMOTE_ACTION = "agent.promote"
TABLE = "shadow_runs"


class AgentEvents:
    CREATED = "agent.created"
    TOOLS_CHANGED = "agent.tools_changed"
    CREDENTIALS_WIRED = "agent.credentials_wired"
    SHADOW_RUN = "agent.shadow_run_recorded"
    PROMOTION_REQUESTED = "agent.promotion_requested"
    PROMOTED = "agent.promoted"
    PROMOTION_SKIPPED = "agent.promotion_skipped"
    DEMOTED = "agent.demoted"


class PromotionRefused(TenantError):
    status_code = 409
    default_message = "This agent cannot be promoted now."


@dataclass(frozen=True)
class Evidence:
    """The shadow runs of the agent's current phase, and whether they clear the gate."""

    phase: str
    runs: int
    agreed: int
    scored: int
    reasons: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.reasons

    @property
    def agreement_percent(self) -> float:
        return 100 * self.agreed / self.runs if self.runs else 0.0

    @property
    def scored_percent(self) -> float:
        return 100 * self.scored / self.runs if self.runs else 0.0


def gate(phase: str, runs: int, agreed: int, scored: int) -> Evidence:
    """The promotion gate, in whole numbers so 85 % means exactly 85 % (no float rounding):
    what blocks promotion out of ``phase``, as sentences; none means it may be proposed."""
    reasons = []
    if phase == "autonomous":
        reasons.append("The agent is already autonomous.")
    elif phase != "off":
        if runs < MIN_RUNS:
            reasons.append(f"{runs} shadow runs in the {phase} phase; at least {MIN_RUNS} are "
                           "needed.")
        if agreed * 100 < MIN_AGREEMENT_PERCENT * runs or runs == 0:
            reasons.append(f"Agreement with the human baseline is "
                           f"{100 * agreed / runs if runs else 0:.1f} %; at least "
                           f"{MIN_AGREEMENT_PERCENT} % is needed.")
        if scored * 100 < MIN_SCORED_PERCENT * runs or runs == 0:
            reasons.append(f"{100 * scored / runs if runs else 0:.1f} % of the runs were "
                           f"scored against ground truth; at least {MIN_SCORED_PERCENT} % "
                           "must be.")
    return Evidence(phase, runs, agreed, scored, reasons)


def get_agent(s: Session, agent_id: int, *, lock: bool = False) -> Agent:
    query = select(Agent).where(Agent.id == agent_id)
    agent = s.scalars(query.with_for_update() if lock else query).first()
    if agent is None:
        raise TenantNotFound("No such agent.")
    return agent


def record_event(s: Session, ctx: TenantContext, event: str, agent: Agent,
            **details: Any) -> None:
    audit.record(s, event, actor=ctx.actor, target_type="agent", target_id=agent.id,
                 details={"agent": agent.name, **details})


def list_agents(s: Session) -> list[Agent]:
    return list(s.scalars(select(Agent).order_by(Agent.name)))


def create_placeholder(s: Session, ctx: TenantContext, *, name: str,
                       task_id: int | None) -> Agent:
    """The agent created when a task is taken forward: phase off, the narrow tool scope."""
    name = name.strip()
    if not name or len(name) > 100:
        raise TenantInvalidInput("Name the agent (at most 100 characters).")
    agent = Agent(name=name, task_id=task_id, phase="off", tools=list(PLACEHOLDER_TOOLS),
                  created_by=ctx.actor.name)
    try:
        with s.begin_nested():
            s.add(agent)
            s.flush()
    except IntegrityError:
        raise TenantInvalidInput(f"There is already an agent named {name!r}.") from None
    record_event(s, ctx, AgentEvents.CREATED, agent, task_id=task_id, tools=list(agent.tools))
    return agent


def set_tools(s: Session, ctx: TenantContext, agent_id: int, tools: list[str]) -> Agent:
    agent = get_agent(s, agent_id, lock=True)
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        raise TenantInvalidInput(f"Unknown tool {unknown[0]!r}; the tools are "
                                 f"{', '.join(sorted(TOOLS))}.")
    wide = sorted(t for t in set(tools) if TOOLS[t] not in NARROW_KINDS)
    if wide and agent.credential_id is None:
        raise TenantInvalidInput(f"{wide[0]} ({TOOLS[wide[0]]}) needs real credentials: wire "
                                 "them first; until then the agent may only read and draft.")
    chosen = sorted(set(tools))
    if chosen != sorted(agent.tools):
        agent.tools = chosen
        record_event(s, ctx, AgentEvents.TOOLS_CHANGED, agent, tools=chosen)
    return agent


def wire_credentials(s: Session, ctx: TenantContext, agent_id: int,
                     credential_id: int) -> Agent:
    agent = get_agent(s, agent_id, lock=True)
    if s.get(ProviderCredential, credential_id) is None:
        raise TenantInvalidInput("No such credential.")
    agent.credential_id = credential_id
    record_event(s, ctx, AgentEvents.CREDENTIALS_WIRED, agent, credential_id=credential_id)
    return agent


def record_run(s: Session, ctx: TenantContext, agent_id: int, *, proposed: str, actual: str,
               agreed: bool, ground_truth_score: float | None = None) -> ShadowRun:
    agent = get_agent(s, agent_id)
    if agent.phase == "off":
        raise TenantInvalidInput("This agent is off: move it to shadow before recording runs.")
    if ground_truth_score is not None and not 0 <= ground_truth_score <= 1:
        raise TenantInvalidInput("A ground-truth score is between 0 and 1.")
    for label, value in (("proposed", proposed), ("actual", actual)):
        if len(value) > 4000:
            raise TenantInvalidInput(f"The {label} action is over 4,000 characters.")
    run = ShadowRun(agent_id=agent.id, phase=agent.phase, agreed=agreed,
                    ground_truth_score=ground_truth_score, recorded_by=ctx.actor.name)
    s.add(run)
    s.flush()  # the id seals the texts to this row
    run.proposed_sealed = ctx.sealer.seal(proposed, table=TABLE, column="proposed_sealed",
                                          row_key=run.id)
    run.actual_sealed = ctx.sealer.seal(actual, table=TABLE, column="actual_sealed",
                                        row_key=run.id)
    record_event(s, ctx, AgentEvents.SHADOW_RUN, agent, phase=agent.phase, agreed=agreed,
            scored=ground_truth_score is not None)
    return run


def run_texts(ctx: TenantContext, run: ShadowRun) -> tuple[str, str]:
    def open_(column: str, value: bytes | None) -> str:
        return "" if value is None else ctx.sealer.open_text(value, table=TABLE, column=column,
                                                               row_key=run.id)
    return open_("proposed_sealed", run.proposed_sealed), open_("actual_sealed",
                                                                run.actual_sealed)


def recent_runs(s: Session, agent_id: int, limit: int = 50) -> list[ShadowRun]:
    return list(s.scalars(select(ShadowRun).where(ShadowRun.agent_id == agent_id)
                          .order_by(ShadowRun.id.desc()).limit(limit)))


def evidence(s: Session, agent: Agent) -> Evidence:
    runs, agreed, scored = s.execute(
        select(func.count(), func.count().filter(ShadowRun.agreed),
               func.count(ShadowRun.ground_truth_score))
        .where(ShadowRun.agent_id == agent.id, ShadowRun.phase == agent.phase)).one()
    return gate(agent.phase, int(runs), int(agreed), int(scored))


def next_phase(phase: str) -> str:
    return PHASES[PHASES.index(phase) + 1]


def check_promotion(s: Session, agent: Agent) -> str:
    """The phase a promotion would reach, or PromotionRefused with the gate's reasons."""
    if agent.pending_request_id is not None:
        raise PromotionRefused(f"A promotion of {agent.name} is already waiting for approval "
                               f"(request {agent.pending_request_id}).")
    found = evidence(s, agent)
    if not found.ready:
        raise PromotionRefused(" ".join(found.reasons))
    return next_phase(agent.phase)


def apply_promotion(s: Session, ctx: TenantContext, payload: dict[str, Any]) -> Agent | None:
    """What an approved ``agent.promote`` does: the agent moves up one phase, if it is still
    where the request found it and the evidence still clears the gate. Otherwise (moved back
    in between, say) nothing moves, and the audit chain says why; the approval is used up."""
    agent = s.scalars(select(Agent).where(Agent.id == int(payload["agent_id"]))
                      .with_for_update()).first()
    if agent is None:
        return None
    found = evidence(s, agent)
    if agent.phase != payload.get("from") or not found.ready:
        why = (f"it is no longer in the {payload.get('from')} phase" if agent.phase !=
               payload.get("from") else " ".join(found.reasons))
        agent.pending_request_id = None
        record_event(s, ctx, AgentEvents.PROMOTION_SKIPPED, agent, phase=agent.phase,
                     reason=why)
        return None
    before, agent.phase = agent.phase, next_phase(agent.phase)
    agent.pending_request_id, agent.phase_changed_at = None, datetime.now(UTC)
    record_event(s, ctx, AgentEvents.PROMOTED, agent, phase_from=before, phase_to=agent.phase)
    return agent


def demote(s: Session, ctx: TenantContext, agent_id: int, to_phase: str) -> Agent:
    agent = get_agent(s, agent_id, lock=True)
    if to_phase not in PHASES or PHASES.index(to_phase) >= PHASES.index(agent.phase):
        raise TenantInvalidInput(f"From {agent.phase} an agent can move back to "
                                 f"{', '.join(PHASES[:PHASES.index(agent.phase)]) or 'nothing'}"
                                 "; moving forward is a promotion.")
    before, agent.phase = agent.phase, to_phase
    cancelled, agent.pending_request_id = agent.pending_request_id, None
    agent.phase_changed_at = datetime.now(UTC)
    record_event(s, ctx, AgentEvents.DEMOTED, agent, phase_from=before, phase_to=to_phase,
            cancelled_request=cancelled)
    return agent
