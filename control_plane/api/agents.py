"""The drive layer's JSON API, for a tenant's agents:

- ``GET /api/agents/{id}``: the agent's phase and the tools it may use now (an agent checks
  this before acting: in ``shadow`` it only proposes; a tool not listed is not allowed).
- ``POST /api/agents/{id}/shadow-runs`` ``{"proposed", "actual", "agreed",
  "ground_truth_score"}``: record a run (201) and get the promotion gate's evidence back.

Authenticated like ``/api/actions`` (control_plane/api/approvals.py): a tenant API key, or a
session naming the tenant with ``?tenant=<id>`` whose role holds ``agents.view`` (to read) or
``agents.work`` (to record a run). Another tenant's agent ids answer 404."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane.api.approvals import _context
from control_plane.exceptions import InvalidInput
from control_plane.web.forms import read_json_object, validated
from tenant_runtime.agents import service
from tenant_runtime.agents.models import Agent
from tenant_runtime.context import TenantContext


class RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    proposed: str = Field(max_length=4000)
    actual: str = Field(max_length=4000)
    agreed: bool
    ground_truth_score: float | None = Field(default=None, ge=0, le=1)


def agent_json(ctx: TenantContext, s: Any, agent: Agent) -> dict[str, Any]:
    found = service.evidence(s, agent)
    return {"id": agent.id, "name": agent.name, "phase": agent.phase,
            "tools": sorted(agent.tools), "credentials_wired": agent.credential_id is not None,
            "pending_promotion": agent.pending_request_id,
            "evidence": {"phase": found.phase, "runs": found.runs, "agreed": found.agreed,
                         "scored": found.scored, "promotion_possible": found.ready,
                         "blocked_by": found.reasons},
            "url": f"/tenants/{ctx.tenant_id}/agents/{agent.id}"}


def _agent_id(request: Request) -> int:
    raw = request.path_params["agent_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidInput("The agent id is a number.")
    return int(raw)


def api_get_agent(request: Request) -> Response:
    ctx = _context(request, permission="agents.view")
    with ctx.session() as s, s.begin():
        document = agent_json(ctx, s, service.get_agent(s, _agent_id(request)))
    return JSONResponse(document)


def _record(request: Request, raw: dict[str, Any]) -> Response:
    ctx = _context(request, permission="agents.work")
    body = validated(RunBody, raw)
    with ctx.session() as s, s.begin():
        agent_id = _agent_id(request)
        run = service.record_run(s, ctx, agent_id, proposed=body.proposed,
                                 actual=body.actual, agreed=body.agreed,
                                 ground_truth_score=body.ground_truth_score)
        document = {"id": run.id, "phase": run.phase,
                    "agent": agent_json(ctx, s, service.get_agent(s, agent_id))}
    return JSONResponse(document, status_code=201)


async def api_record_run(request: Request) -> Response:
    raw = await read_json_object(request)
    return await run_in_threadpool(_record, request, raw)


routes = [
    Route("/api/agents/{agent_id}", api_get_agent, methods=["GET"]),
    Route("/api/agents/{agent_id}/shadow-runs", api_record_run, methods=["POST"]),
]
