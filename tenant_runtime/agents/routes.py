"""The drive layer's pages: the tenant's agents, and one page per agent with its phase, tools,
the promotion gate's evidence and the recent shadow runs. Operators, Admins and Owners act;
every change is audited; a promotion becomes an approval request."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tenant_runtime import permissions
from tenant_runtime.agents import promotion, service
from tenant_runtime.agents.models import Agent
from tenant_runtime.context import TenantContext
from tenant_runtime.credentials.service import list_credentials
from tenant_runtime.exceptions import TenantError, TenantNotFound
from tenant_runtime.routing import TenantRoute


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csrf_token: str = ""


def _blank_is_none(value: object) -> object:
    return None if value == "" else value


class NewAgentForm(_Form):
    name: str = Field(max_length=100)
    task_id: int | None = Field(default=None, ge=1)

    _task = field_validator("task_id", mode="before")(_blank_is_none)


class ToolsForm(_Form):
    tools: str = Field(default="", max_length=1000)


class CredentialForm(_Form):
    credential_id: int | None = Field(default=None, ge=1)

    _credential = field_validator("credential_id", mode="before")(_blank_is_none)


class RunForm(_Form):
    proposed: str = Field(max_length=4000)
    actual: str = Field(max_length=4000)
    agreed: bool = False
    ground_truth_score: float | None = Field(default=None, ge=0, le=1)

    _score = field_validator("ground_truth_score", mode="before")(_blank_is_none)


class DemoteForm(_Form):
    to_phase: str = Field(max_length=20)


class EmptyForm(_Form):
    pass


def _agent_id(request: Request) -> int:
    return int(request.path_params["agent_id"])


def agents_page(request: Request, ctx: TenantContext, *, status_code: int = 200,
                **extra: object) -> Response:
    with ctx.session() as s, s.begin():
        agents = service.list_agents(s)
    return request.app.state.render(  # type: ignore[no-any-return]
        request, "tenants/agents.html",
        {"agents": agents, "role": ctx.actor.role,
         "can_act": permissions.allows(ctx.actor.role, "agents.work"), **extra},
        status_code=status_code)


def agent_page(request: Request, ctx: TenantContext, *, status_code: int = 200,
               **extra: object) -> Response:
    can_act = permissions.allows(ctx.actor.role, "agents.work")
    with ctx.session() as s, s.begin():
        agent = s.get(Agent, _agent_id(request))
        if agent is None:
            raise TenantNotFound("No such agent.")
        runs = [(run, *service.run_texts(ctx, run))
                for run in service.recent_runs(s, agent.id)]
        context = {
            "agent": agent, "evidence": service.evidence(s, agent), "runs": runs,
            "phases": service.PHASES, "tools": service.TOOLS,
            "narrow": service.NARROW_KINDS, "role": ctx.actor.role,
            "can_act": can_act,
            "credentials": list_credentials(s, ctx) if can_act else [],
            "thresholds": (service.MIN_RUNS, service.MIN_AGREEMENT_PERCENT,
                           service.MIN_SCORED_PERCENT), **extra}
    return request.app.state.render(  # type: ignore[no-any-return]
        request, "tenants/agent.html", context, status_code=status_code)


def create_agent(request: Request, ctx: TenantContext) -> Response:
    form: NewAgentForm = request.state.form
    try:
        with ctx.session() as s, s.begin():
            agent = service.create_placeholder(s, ctx, name=form.name, task_id=form.task_id)
    except TenantError as exc:
        return agents_page(request, ctx, status_code=exc.status_code, error=exc.message)
    return RedirectResponse(f"/tenants/{ctx.tenant_id}/agents/{agent.id}", 303)


def _act(request: Request, ctx: TenantContext, act: Callable[[Session], object],
         notice: str) -> Response:
    try:
        with ctx.session() as s, s.begin():
            act(s)
    except TenantNotFound:
        raise
    except TenantError as exc:
        return agent_page(request, ctx, status_code=exc.status_code, error=exc.message)
    return agent_page(request, ctx, notice=notice)


def set_tools(request: Request, ctx: TenantContext) -> Response:
    form: ToolsForm = request.state.form
    tools = [t.strip() for t in form.tools.replace(",", " ").split() if t.strip()]
    return _act(request, ctx, lambda s: service.set_tools(s, ctx, _agent_id(request), tools),
                "Tools saved.")


def wire_credentials(request: Request, ctx: TenantContext) -> Response:
    form: CredentialForm = request.state.form
    if form.credential_id is None:
        return agent_page(request, ctx, status_code=422,
                          error="Choose the credential to wire (add one on the credentials "
                                "page first).")
    credential_id = form.credential_id
    return _act(request, ctx, lambda s: service.wire_credentials(
        s, ctx, _agent_id(request), credential_id), "Credentials wired.")


def record_run(request: Request, ctx: TenantContext) -> Response:
    form: RunForm = request.state.form
    return _act(request, ctx, lambda s: service.record_run(
        s, ctx, _agent_id(request), proposed=form.proposed, actual=form.actual,
        agreed=form.agreed, ground_truth_score=form.ground_truth_score), "Shadow run recorded.")


def request_promotion(request: Request, ctx: TenantContext) -> Response:
    return _act(request, ctx, lambda s: promotion.request(s, ctx, _agent_id(request)),
                "Promotion requested: it happens once an approver approves it.")


def demote(request: Request, ctx: TenantContext) -> Response:
    form: DemoteForm = request.state.form
    return _act(request, ctx, lambda s: service.demote(s, ctx, _agent_id(request),
                                                        form.to_phase), "Moved back.")


routes = [
    TenantRoute("/agents", agents_page, permission="agents.view"),
    TenantRoute("/agents", create_agent, "POST", form=NewAgentForm, permission="agents.work"),
    TenantRoute("/agents/{agent_id:int}", agent_page, permission="agents.view"),
    TenantRoute("/agents/{agent_id:int}/tools", set_tools, "POST", form=ToolsForm,
                permission="agents.work"),
    TenantRoute("/agents/{agent_id:int}/credentials", wire_credentials, "POST",
                form=CredentialForm, permission="agents.work"),
    TenantRoute("/agents/{agent_id:int}/runs", record_run, "POST", form=RunForm,
                permission="agents.work"),
    TenantRoute("/agents/{agent_id:int}/promote", request_promotion, "POST", form=EmptyForm,
                permission="agents.work"),
    TenantRoute("/agents/{agent_id:int}/demote", demote, "POST", form=DemoteForm,
                permission="agents.work"),
]
