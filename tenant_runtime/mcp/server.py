"""The MCP server behind a tenant's endpoint: the official SDK's low-level ``Server``, run by
its Streamable HTTP session manager (stateful: ``Mcp-Session-Id``, SSE answers; each request
is still authenticated and decided on its own, control_plane/api/mcp.py).

The control plane authenticates the request and puts a ``Principal`` (the tenant context of the
calling key, the key, the rate limiter) in the ASGI scope's state under ``PRINCIPAL``; the
handlers read it from the HTTP request the SDK hands them. Database work runs in worker threads
(the synchronous service code); upstream exchanges are async.

- ``tools/list``: every upstream's ``tools/list`` is fetched and folded into the catalogue
  (service.do_sync_tools: a changed tool is quarantined there and then), and the visible tools
  are answered under ``<upstream>__<tool>``; an upstream that does not answer contributes none.
- ``tools/call``: gate.plan_call decides; a refused call is answered with a tool result
  ``isError: true`` that says why (and, for a pending approval, its id in structured content);
  a forwarded one goes to the upstream, its result's placeholders restored.
- ``resources/read`` and ``prompts/get``: a full URI or name (``magistrate://<upstream>/<uri>``,
  ``<upstream>__<name>``) names its upstream; a bare one is resolved by asking the upstreams'
  listings which of them offers it (``_resolved``), then gate.plan_read decides as for the
  full name. Tools' bare names are resolved in gate.plan_call, from the catalogue.
- During a forwarded call, the upstream's log notifications, elicitation and sampling requests
  travel to the agent's client on the call's stream (relay.py); a call waiting for an approval
  is also told through elicitation where the client declared it.
- ``logging/setLevel`` keeps the level in the session (sessions.py) and passes it to each
  upstream a call connects to; ``resources/subscribe`` is decided by gate.plan_read as a read
  of the resource and held at its upstream for as long as the session (or ``unsubscribe``)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST
from pydantic import BaseModel

from tenant_runtime import outbound
from tenant_runtime.context import TenantContext
from tenant_runtime.mcp import gate, relay, service, upstream
from tenant_runtime.mcp.exceptions import UpstreamAuthFailed, UpstreamUnreachable
from tenant_runtime.mcp.models import McpTool, McpUpstream
from tenant_runtime.mcp.oauth import UpstreamCredential
from tenant_runtime.mcp.sessions import SESSION_HEADER, SessionBook, SessionState
from tenant_runtime.redaction.arguments import restore_value

log = logging.getLogger("magistrate.mcp")
PRINCIPAL = "mcp_principal"
ResultT = TypeVar("ResultT", bound=BaseModel)


@dataclass(frozen=True)
class Principal:
    ctx: TenantContext
    caller: gate.Caller
    limit: Callable[[int, str], str | None] | None = None


def principal_of(ctx: ServerRequestContext[Any, Any]) -> Principal:
    request = ctx.request
    found = getattr(request, "scope", {}).get("state", {}).get(PRINCIPAL)
    if not isinstance(found, Principal):  # the endpoint always sets it; never reached without
        raise RuntimeError("the MCP endpoint did not authenticate this request")
    return found


def session_id_of(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The ``Mcp-Session-Id`` the request came with (none on a stateless request)."""
    headers = getattr(ctx.request, "headers", None)
    return headers.get(SESSION_HEADER) if headers is not None else None


def _tool(row: McpTool, upstream_row: McpUpstream) -> types.Tool:
    annotations = types.ToolAnnotations.model_validate(row.annotations) \
        if row.annotations else None
    return types.Tool(name=f"{upstream_row.name}{service.SEPARATOR}{row.name}",
                      description=row.description, input_schema=row.input_schema,
                      annotations=annotations)


def _upstreams(ctx: TenantContext) -> list[tuple[int, str, UpstreamCredential]]:
    with ctx.session() as s, s.begin():
        return [(u.id, u.url, service.upstream_credential(ctx, u))
                for u in service.list_upstreams(s)]


def _sync(ctx: TenantContext, upstream_id: int, announced: list[service.AnnouncedTool]) -> None:
    with ctx.session() as s, s.begin():
        row = s.get(McpUpstream, upstream_id, with_for_update=True)
        if row is not None:
            service.do_sync_tools(s, ctx, row, announced)


def _visible(ctx: TenantContext, caller: gate.Caller, answered: set[int]) -> list[types.Tool]:
    """The tools this caller sees (its agent is made on its first request)."""
    with ctx.session() as s, s.begin():
        service.client_agent(s, ctx, api_key_id=caller.api_key_id, key_name=caller.key_name)
        return [_tool(t, u) for t, u in service.list_tools(s)
                if u.id in answered and gate.visible(t)]


async def sync_catalogue(ctx: TenantContext) -> set[int]:
    """Fetch every upstream's tools and fold them into the catalogue; the ids that answered."""
    rows = await anyio.to_thread.run_sync(_upstreams, ctx)
    answered: set[int] = set()

    async def one(upstream_id: int, url: str, credential: UpstreamCredential) -> None:
        try:
            announced = await upstream.list_tools(ctx.egress, url, credential)
        except Exception as exc:  # noqa: BLE001 - one upstream's failure hides only its tools
            log.warning("MCP upstream %s of tenant %s did not list its tools: %s",
                        upstream_id, ctx.tenant_id, upstream.why(exc))
            return
        await anyio.to_thread.run_sync(_sync, ctx, upstream_id, announced)
        answered.add(upstream_id)

    async with anyio.create_task_group() as tg:
        for upstream_id, url, credential in rows:
            tg.start_soon(one, upstream_id, url, credential)
    return answered


async def on_list_tools(ctx: ServerRequestContext[Any, Any],
                        params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    who = principal_of(ctx)
    answered = await sync_catalogue(who.ctx)
    tools = await anyio.to_thread.run_sync(_visible, who.ctx, who.caller, answered)
    return types.ListToolsResult(tools=tools)


def _error(text: str, structured: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                structured_content=structured, is_error=True)


def call_handler(book: SessionBook | None) -> Callable[..., Awaitable[types.CallToolResult]]:
    async def on_call_tool(ctx: ServerRequestContext[Any, Any],
                           params: types.CallToolRequestParams) -> types.CallToolResult:
        who = principal_of(ctx)
        arguments = dict(params.arguments or {})
        plan = await anyio.to_thread.run_sync(
            lambda: gate.plan_call(who.ctx, who.caller, params.name, arguments,
                                   limit=who.limit))
        if not plan.forward:
            await relay.tell_pending(ctx, who.ctx, plan)
            return _error(plan.refusal or "", plan.structured)
        session_id = session_id_of(ctx)
        state: SessionState | None = book.states.get(session_id) \
            if book is not None and session_id else None
        started = time.perf_counter()
        outcome = gate.FORWARDED
        try:
            result = await upstream.call_tool(who.ctx.egress, plan.url, plan.credential,
                                              str(plan.tool), plan.arguments,
                                              progress=ctx.session.report_progress,
                                              relay=relay.for_call(ctx, who.ctx, plan, state))
        except anyio.get_cancelled_exc_class():
            # the client's notifications/cancelled (or its session's end): the upstream call
            # was abandoned with it (the SDK client tells the upstream); recorded as such
            latency_ms = int((time.perf_counter() - started) * 1000)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    lambda: gate.record_call(who.ctx, plan, outcome=gate.CANCELLED,
                                             latency_ms=latency_ms))
            raise
        except Exception as exc:  # noqa: BLE001 - the agent gets a sentence, the log the kind
            outcome = gate.UPSTREAM_NO_TOKEN if outbound.cause_of(exc, UpstreamAuthFailed) \
                else gate.UPSTREAM_ERROR
            result = _error(f"The upstream {plan.upstream} failed: {upstream.why(exc)}")
        if plan.restorer is not None:
            result = types.CallToolResult.model_validate(
                restore_value(result.model_dump(by_alias=True, exclude_none=True),
                              plan.restorer))
        latency_ms = int((time.perf_counter() - started) * 1000)
        await anyio.to_thread.run_sync(
            lambda: gate.record_call(who.ctx, plan, outcome=outcome, latency_ms=latency_ms))
        return result

    return on_call_tool


# --- resources and prompts ----------------------------------------------------------------------


async def _gather(ctx: TenantContext, what: upstream.Listing) -> list[tuple[str, Any]]:
    """(upstream name, item) for every item every upstream offers; an upstream that does not
    answer, or does not offer them, contributes none."""
    with ctx.session() as s, s.begin():
        rows = [(u.name, u.url, service.upstream_credential(ctx, u))
                for u in service.list_upstreams(s)]
    found: dict[str, list[Any]] = {}

    async def one(name: str, url: str, credential: UpstreamCredential) -> None:
        try:
            found[name] = await upstream.list_all(ctx.egress, url, credential, what)
        except Exception as exc:  # noqa: BLE001 - one upstream's failure hides only its items
            log.warning("MCP upstream %s of tenant %s did not list its %s: %s", name,
                        ctx.tenant_id, what, upstream.why(exc))

    async with anyio.create_task_group() as tg:
        for name, url, credential in rows:
            tg.start_soon(one, name, url, credential)
    return [(name, item) for name, _, _ in rows for item in found.get(name, [])]


async def on_list_resources(ctx: ServerRequestContext[Any, Any],
                            params: types.PaginatedRequestParams | None
                            ) -> types.ListResourcesResult:
    who = principal_of(ctx)
    return types.ListResourcesResult(resources=[
        r.model_copy(update={"uri": gate.public_uri(name, r.uri),
                             "name": f"{name}{service.SEPARATOR}{r.name}"})
        for name, r in await _gather(who.ctx, "resources")])


async def on_list_resource_templates(ctx: ServerRequestContext[Any, Any],
                                     params: types.PaginatedRequestParams | None
                                     ) -> types.ListResourceTemplatesResult:
    who = principal_of(ctx)
    return types.ListResourceTemplatesResult(resource_templates=[
        t.model_copy(update={"uri_template": gate.public_uri(name, t.uri_template),
                             "name": f"{name}{service.SEPARATOR}{t.name}"})
        for name, t in await _gather(who.ctx, "templates")])


async def on_list_prompts(ctx: ServerRequestContext[Any, Any],
                          params: types.PaginatedRequestParams | None
                          ) -> types.ListPromptsResult:
    who = principal_of(ctx)
    return types.ListPromptsResult(prompts=[
        p.model_copy(update={"name": f"{name}{service.SEPARATOR}{p.name}"})
        for name, p in await _gather(who.ctx, "prompts")])


def _upstream_names(ctx: TenantContext) -> set[str]:
    with ctx.session() as s, s.begin():
        return {u.name for u in service.list_upstreams(s)}


async def _offering(ctx: TenantContext, kind: str, name: str) -> list[str]:
    """The upstreams offering a bare resource URI (a resource of that URI, or else a resource
    template it matches) or a bare prompt name, by their own listings."""
    if kind == "prompt":
        return sorted({u for u, p in await _gather(ctx, "prompts") if p.name == name})
    if kind == "template":
        return sorted({u for u, r in await _gather(ctx, "templates") if r.uri_template == name})
    exact = sorted({u for u, r in await _gather(ctx, "resources") if r.uri == name})
    return exact or sorted({u for u, r in await _gather(ctx, "templates")
                            if gate.template_matches(r.uri_template, name)})


async def _resolved(ctx: TenantContext, kind: str, upstream_name: str, name: str,
                    asked: str) -> tuple[str, str, str, list[str] | None]:
    """(upstream, its own name of the item, the item's full name, the candidates) of what the
    agent asked for: by its full name when it names a registered upstream; else as a bare URI
    or name, which one upstream must offer (the candidates go to gate.plan_read, which refuses
    none as unknown and several as ambiguous). Resolution decides no rule."""
    if upstream_name and name and upstream_name in await anyio.to_thread.run_sync(
            _upstream_names, ctx):
        return upstream_name, name, asked, None
    candidates = await _offering(ctx, kind, asked)
    if len(candidates) != 1:
        return "", asked, asked, candidates
    return candidates[0], asked, gate.full_name(kind, candidates[0], asked), candidates


def _refused(plan: gate.Plan) -> MCPError:
    code = INVALID_PARAMS if plan.outcome in (gate.UNKNOWN, gate.AMBIGUOUS) else INTERNAL_ERROR
    return MCPError(code, plan.refusal or "", {"outcome": plan.outcome})


async def _relay(who: Principal, plan: gate.Plan, model: type[ResultT],
                 exchange: Callable[[], Awaitable[ResultT]]) -> ResultT:
    """Forward a planned read, restore placeholders in its answer, record it (with the
    digest of what came back, never the content)."""
    started = time.perf_counter()
    try:
        result = await exchange()
    except MCPError as exc:  # the upstream's own error (an unknown URI): passed on as it is
        plan.outcome = gate.UPSTREAM_ERROR
        await anyio.to_thread.run_sync(
            lambda: gate.record_call(who.ctx, plan, outcome=gate.UPSTREAM_ERROR,
                                     latency_ms=int((time.perf_counter() - started) * 1000)))
        raise MCPError(exc.code, exc.message) from None
    except Exception as exc:  # noqa: BLE001 - the agent gets a sentence, the log the kind
        await anyio.to_thread.run_sync(
            lambda: gate.record_call(who.ctx, plan, outcome=gate.UPSTREAM_ERROR,
                                     latency_ms=int((time.perf_counter() - started) * 1000)))
        raise MCPError(INTERNAL_ERROR, f"The upstream {plan.upstream} failed: "
                                       f"{upstream.why(exc)}") from None
    dumped = result.model_dump(by_alias=True, exclude_none=True)
    if plan.restorer is not None:
        result = model.model_validate(restore_value(dumped, plan.restorer))
    plan.result_digest = gate.arguments_digest(dumped)
    latency_ms = int((time.perf_counter() - started) * 1000)
    await anyio.to_thread.run_sync(
        lambda: gate.record_call(who.ctx, plan, outcome=gate.FORWARDED, latency_ms=latency_ms))
    return result


async def on_read_resource(ctx: ServerRequestContext[Any, Any],
                           params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    who = principal_of(ctx)
    upstream_name, uri, public, candidates = await _resolved(
        who.ctx, "resource", *gate.split_uri(params.uri), params.uri)
    plan = await anyio.to_thread.run_sync(
        lambda: gate.plan_read(who.ctx, who.caller, "resource", upstream_name, uri, public,
                               {"uri": uri}, limit=who.limit, candidates=candidates))
    if not plan.forward:
        raise _refused(plan)
    return await _relay(who, plan, types.ReadResourceResult, lambda: upstream.read_resource(
        who.ctx.egress, plan.url, plan.credential, uri))


async def on_get_prompt(ctx: ServerRequestContext[Any, Any],
                        params: types.GetPromptRequestParams) -> types.GetPromptResult:
    who = principal_of(ctx)
    upstream_name, name, public, candidates = await _resolved(
        who.ctx, "prompt", *gate.split_name(params.name), params.name)
    arguments = dict(params.arguments or {})
    plan = await anyio.to_thread.run_sync(
        lambda: gate.plan_read(who.ctx, who.caller, "prompt", upstream_name, name, public,
                               arguments, limit=who.limit, candidates=candidates))
    if not plan.forward:
        raise _refused(plan)
    sent = {k: str(v) for k, v in plan.arguments.items()}
    return await _relay(who, plan, types.GetPromptResult, lambda: upstream.get_prompt(
        who.ctx.egress, plan.url, plan.credential, name, sent))


async def on_completion(ctx: ServerRequestContext[Any, Any],
                        params: types.CompleteRequestParams) -> types.CompleteResult:
    """Completions of a prompt's or resource template's argument, from the upstream that
    offers it (full or bare name, as for prompts/get and resources/read), decided as a read
    of it (gate.plan_read) and recorded as ``mcp.completion_asked``; for an ``external``
    upstream the values typed so far go redacted and the suggestions come back restored."""
    who = principal_of(ctx)
    ref = params.ref
    kind, asked = ("prompt", ref.name) if isinstance(ref, types.PromptReference) \
        else ("template", ref.uri)
    split = gate.split_name(asked) if kind == "prompt" else gate.split_uri(asked)
    upstream_name, name, public, candidates = await _resolved(who.ctx, kind, *split, asked)
    context = dict(params.context.arguments or {}) if params.context else {}
    arguments = {"argument": {params.argument.name: params.argument.value}, "context": context}
    plan = await anyio.to_thread.run_sync(
        lambda: gate.plan_read(who.ctx, who.caller, "prompt" if kind == "prompt" else
                               "resource", upstream_name, name, public, arguments,
                               limit=who.limit, candidates=candidates, record_as="completion"))
    if not plan.forward:
        raise _refused(plan)
    [(argument, value)] = plan.arguments["argument"].items()
    own: types.PromptReference | types.ResourceTemplateReference = (
        types.PromptReference(name=name) if kind == "prompt"
        else types.ResourceTemplateReference(uri=name))
    return await _relay(who, plan, types.CompleteResult, lambda: upstream.complete(
        who.ctx.egress, plan.url, plan.credential, own, {"name": argument, "value": value},
        plan.arguments["context"]))


# --- the session's own: log level, resource subscriptions -----------------------------------------


def _session_of(ctx: ServerRequestContext[Any, Any], book: SessionBook | None, what: str
                ) -> tuple[SessionBook, str]:
    session_id = session_id_of(ctx)
    if book is None or not session_id:
        raise MCPError(INVALID_REQUEST, f"{what} needs a session: send the Mcp-Session-Id "
                                        "that initialize answered.")
    return book, session_id


def session_handlers(book: SessionBook | None) -> dict[str, Any]:
    async def on_set_level(ctx: ServerRequestContext[Any, Any],
                           params: types.SetLevelRequestParams) -> types.EmptyResult:
        principal_of(ctx)
        session_id = session_id_of(ctx)
        if book is not None and session_id:
            book.state(session_id).level = params.level
        return types.EmptyResult()

    async def on_subscribe(ctx: ServerRequestContext[Any, Any],
                           params: types.SubscribeRequestParams) -> types.EmptyResult:
        who = principal_of(ctx)
        held, session_id = _session_of(ctx, book, "A resource subscription")
        upstream_name, uri, public, candidates = await _resolved(
            who.ctx, "resource", *gate.split_uri(params.uri), params.uri)
        plan = await anyio.to_thread.run_sync(
            lambda: gate.plan_read(who.ctx, who.caller, "resource", upstream_name, uri, public,
                                   {"uri": uri}, limit=who.limit, candidates=candidates,
                                   record_as="subscription"))
        if not plan.forward:
            raise _refused(plan)
        agent_side = ctx.session  # its standalone stream carries the updates

        async def updated() -> None:
            try:
                await agent_side.send_resource_updated(params.uri)
            except Exception as exc:  # noqa: BLE001 - a gone client ends nothing else
                log.info("MCP resource update not delivered: %s", type(exc).__name__)

        watch = functools.partial(upstream.watch_resource, who.ctx.egress, plan.url,
                                  plan.credential, uri, updated)
        started = time.perf_counter()
        try:
            await held.subscribe(session_id, params.uri, watch)
        except OverflowError as exc:
            raise MCPError(INVALID_REQUEST, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the agent gets a sentence, the log the kind
            await anyio.to_thread.run_sync(
                lambda: gate.record_call(who.ctx, plan, outcome=gate.UPSTREAM_ERROR,
                                         latency_ms=int((time.perf_counter() - started) * 1000)))
            why = exc.message if isinstance(exc, MCPError | UpstreamUnreachable) \
                else upstream.why(exc)
            raise MCPError(INTERNAL_ERROR, f"The upstream {plan.upstream} did not take the "
                                           f"subscription: {why}") from None
        await anyio.to_thread.run_sync(
            lambda: gate.record_call(who.ctx, plan, outcome=gate.FORWARDED,
                                     latency_ms=int((time.perf_counter() - started) * 1000)))
        return types.EmptyResult()

    async def on_unsubscribe(ctx: ServerRequestContext[Any, Any],
                             params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        principal_of(ctx)
        held, session_id = _session_of(ctx, book, "Unsubscribing")
        await held.unsubscribe(session_id, params.uri)
        return types.EmptyResult()

    return {"set_level": on_set_level, "subscribe": on_subscribe,
            "unsubscribe": on_unsubscribe}


def build_server(book: SessionBook | None = None) -> Server[Any]:
    """The endpoint's server; ``book`` holds the sessions' own state (none: stateless, no
    subscriptions)."""
    handlers = session_handlers(book)
    server: Server[Any] = Server(
        "magistrate", version="1",
        instructions="Tools, resources and prompts of this tenant's upstream MCP servers, "
                     "governed by Magistrate: each call is checked, may need an approval, and "
                     "is audited.",
        on_list_tools=on_list_tools, on_call_tool=call_handler(book),
        on_list_resources=on_list_resources,
        on_list_resource_templates=on_list_resource_templates,
        on_read_resource=on_read_resource,
        on_subscribe_resource=handlers["subscribe"],
        on_unsubscribe_resource=handlers["unsubscribe"],
        on_list_prompts=on_list_prompts, on_get_prompt=on_get_prompt,
        on_completion=on_completion)
    # declares the logging capability; registered by method, as the SDK's constructor
    # argument for it warns that the capability is deprecated in a later revision
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams,
                               handlers["set_level"])
    return server
