"""The governed MCP pages: ``/tenants/{id}/mcp``, upstream MCP servers (Owners and Admins
register and remove them, with a sealed credential: a bearer token, a custom header, or OAuth
client credentials; and fetch their tools now), the tool catalogue with each tool's
description, schema, scan flags and decision, and the quarantine queue first; and
``/tenants/{id}/mcp/calls``, the tool-call history per agent and the connected clients."""

from __future__ import annotations

from functools import partial
from typing import Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tenant_runtime import permissions
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.mcp import service, upstream
from tenant_runtime.mcp.exceptions import UpstreamAuthFailed
from tenant_runtime.routing import TenantRoute


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csrf_token: str = ""


class UpstreamForm(_Form):
    name: str = Field(max_length=32)
    url: str = Field(max_length=2000)
    credential_kind: Literal["none", "bearer", "header", "oauth"] = "none"
    credential: str = Field(default="", max_length=4096)
    header_name: str = Field(default="", max_length=100)
    client_id: str = Field(default="", max_length=255)
    scope: str = Field(default="", max_length=1000)
    token_endpoint: str = Field(default="", max_length=2000)
    auth_method: Literal["client_secret_basic", "client_secret_post",
                         "private_key_jwt"] = "client_secret_basic"
    private_key: str = Field(default="", max_length=10_000)
    redaction: Literal["internal", "external"] = "internal"
    new_tools: Literal["allowed", "denied", "restricted"] = "denied"


class DecisionForm(_Form):
    policy: Literal["allowed", "denied", "restricted"]
    action_class: str = Field(default="", max_length=100)
    side_effecting: Literal["", "yes", "no"] = ""


class EmptyForm(_Form):
    pass


def _render(request: Request, ctx: TenantContext, *, status_code: int = 200,
            **extra: object) -> Response:
    render = request.app.state.render
    with ctx.session() as s:
        upstreams = service.list_upstreams(s)
        tools = service.list_tools(s)
    quarantined = [(t, u) for t, u in tools if t.quarantined]
    return render(request, "tenants/mcp.html",  # type: ignore[no-any-return]
                  {"upstreams": upstreams, "tools": tools, "quarantined": quarantined,
                   "can_manage": permissions.allows(ctx.actor.role, "tools.manage"),
                   "endpoint": f"/mcp/{ctx.slug}", **extra},
                  status_code=status_code)


def mcp_page(request: Request, ctx: TenantContext) -> Response:
    return _render(request, ctx)


def add_upstream(request: Request, ctx: TenantContext) -> Response:
    form: UpstreamForm = request.state.form
    secret = form.private_key if form.credential_kind == "oauth" \
        and form.auth_method == "private_key_jwt" else form.credential
    data = service.UpstreamInput(form.name, form.url, form.credential_kind, secret,
                                 form.header_name, form.redaction, form.new_tools,
                                 form.client_id, form.scope, form.token_endpoint,
                                 form.auth_method)
    try:
        with ctx.session() as s, s.begin():
            row = service.do_add_upstream(s, ctx, data)
            name = row.name
    except TenantInvalidInput as exc:
        return _render(request, ctx, status_code=422, error=exc.message)
    return _render(request, ctx, status_code=201,
                   notice=f"Upstream {name} registered; fetch its tools to fill the catalogue.")


def sync_upstream(request: Request, ctx: TenantContext) -> Response:
    upstream_id = int(request.path_params["upstream_id"])
    with ctx.session() as s:
        row = service.access_upstream(s, upstream_id)
        url, credential, name = row.url, service.upstream_credential(ctx, row), row.name
    try:
        announced = anyio.run(partial(upstream.list_tools, ctx.egress, url, credential))
        with ctx.session() as s, s.begin():
            row = service.access_upstream(s, upstream_id)
            service.do_sync_tools(s, ctx, row, announced)
    except (TenantInvalidInput, UpstreamAuthFailed) as exc:
        return _render(request, ctx, status_code=exc.status_code, error=f"{name}: {exc.message}")
    return _render(request, ctx, notice=f"{name} announced {len(announced)} tools.")


def remove_upstream(request: Request, ctx: TenantContext) -> Response:
    with ctx.session() as s, s.begin():
        service.do_remove_upstream(s, ctx, int(request.path_params["upstream_id"]))
    return RedirectResponse(f"/tenants/{ctx.tenant_id}/mcp", 303)


def decide_tool(request: Request, ctx: TenantContext) -> Response:
    form: DecisionForm = request.state.form
    side = {"": None, "yes": True, "no": False}[form.side_effecting]
    try:
        with ctx.session() as s, s.begin():
            row = service.do_decide_tool(s, ctx, int(request.path_params["tool_id"]),
                                         policy=form.policy,
                                         action_class=form.action_class or None,
                                         side_effecting=side)
            name = row.name
    except TenantInvalidInput as exc:
        return _render(request, ctx, status_code=422, error=exc.message)
    return _render(request, ctx, notice=f"{name} is now {form.policy}.")


def _whole(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise TenantInvalidInput(f"{name!r} must be a positive whole number.")
    return int(value)


def calls_page(request: Request, ctx: TenantContext) -> Response:
    """Tool-call history: the most recent calls (all agents, or one), a page at a time, and
    the clients (API keys acting as agents) that called the endpoint."""
    agent_id, before_id = _whole(request, "agent"), _whole(request, "before_id")
    with ctx.session() as s:
        page = service.list_calls(s, agent_id=agent_id, before_id=before_id)
        clients = service.connected_clients(s)
    render = request.app.state.render
    return render(request, "tenants/mcp_calls.html",  # type: ignore[no-any-return]
                  {"calls": page.rows, "next_before_id": page.next_before_id,
                   "older_page": before_id is not None, "agent_id": agent_id,
                   "clients": clients})


routes = [
    TenantRoute("/mcp", mcp_page, permission="tools.view"),
    TenantRoute("/mcp/calls", calls_page, permission="tools.view"),
    TenantRoute("/mcp/upstreams", add_upstream, "POST", form=UpstreamForm,
                permission="tools.manage"),
    TenantRoute("/mcp/upstreams/{upstream_id:int}/sync", sync_upstream, "POST", form=EmptyForm,
                permission="tools.manage"),
    TenantRoute("/mcp/upstreams/{upstream_id:int}/delete", remove_upstream, "POST",
                form=EmptyForm, permission="tools.manage"),
    TenantRoute("/mcp/tools/{tool_id:int}", decide_tool, "POST", form=DecisionForm,
                permission="tools.manage"),
]
