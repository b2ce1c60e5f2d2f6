"""Requests and notifications that travel towards the agent's client during a call, over its
session (docs/mcp.md, "Transport"):

- **An upstream's elicitation and sampling requests** (``elicitation/create``,
  ``sampling/createMessage``) during a forwarded call are relayed to the agent's client on the
  call's own stream, and its answer goes back to the upstream. Governed:
  - offered to the upstream only when the agent's client declared the capability (the
    upstream's session then declares it too; otherwise the upstream sees a client without it);
  - sampling is a request to use the *agent's* model. ``includeContext`` is dropped (set to
    none): at Magistrate's endpoint "this server" is every upstream of the tenant, and an
    upstream has no claim on what the agent learnt from the others; the messages, system
    prompt and limits go as the upstream wrote them, for the client (and its human, where it
    asks one) to judge, as the specification requires of clients;
  - for an ``external`` upstream the placeholders in what it asks are restored (the person
    sees the values they know) and the client's answer passes the same redaction as the
    call's arguments before it goes back (gate.outgoing);
  - each relayed request is one ``mcp.client_asked`` audit event (kind, upstream, tool, the
    answer's action; never the message or the answer), written by gate.record_client_asked.
- **An upstream's log notifications** (``notifications/message``) during a call are relayed
  on the call's stream when at or above the level the agent set (``logging/setLevel``, kept
  in its session, sessions.py), their placeholders restored.
- **A pending approval**: where the agent's client declared elicitation, Magistrate also says
  so there (a form with no fields, its message the same sentence as the error result's), and
  records the client's answer; the tool result (``isError``, the approval's id) is unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import mcp_types as types
from mcp.client.session import ClientRequestContext
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST

from tenant_runtime.context import TenantContext
from tenant_runtime.mcp import gate, upstream
from tenant_runtime.mcp.sessions import SessionState
from tenant_runtime.redaction.arguments import restore_value

log = logging.getLogger("magistrate.mcp")
ANSWER_TIMEOUT = 300.0  # seconds the agent's client (or its human) has to answer a request
NOTICE_TIMEOUT = 120.0  # ... to acknowledge a pending approval's notice


def _declared(ctx: ServerRequestContext[Any, Any], kind: str) -> bool:
    caps = ctx.session.client_capabilities
    return caps is not None and getattr(caps, kind) is not None


async def _ask(ctx: ServerRequestContext[Any, Any], request: types.ServerRequest,
               result_type: type[Any], timeout: float) -> Any:
    with anyio.fail_after(timeout):
        return await ctx.session.send_request(
            request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id))


async def _audit(tenant: TenantContext, plan: gate.Plan, *, kind: str, outcome: str,
                 origin: str) -> None:
    await anyio.to_thread.run_sync(lambda: gate.record_client_asked(
        tenant, plan, kind=kind, outcome=outcome, origin=origin))


def _restored(model: Any, plan: gate.Plan) -> Any:
    if plan.restorer is None:
        return model
    return type(model).model_validate(
        restore_value(model.model_dump(by_alias=True, exclude_none=True), plan.restorer))


async def _outgoing(tenant: TenantContext, plan: gate.Plan, result: Any) -> Any:
    if plan.restorer is None:  # an internal upstream: the answer goes as it is
        return result
    dumped = result.model_dump(by_alias=True, exclude_none=True)
    redacted = await anyio.to_thread.run_sync(lambda: gate.outgoing(tenant, plan, dumped))
    return type(result).model_validate(redacted)


def for_call(ctx: ServerRequestContext[Any, Any], tenant: TenantContext, plan: gate.Plan,
             state: SessionState | None) -> upstream.Relay:
    """The relay one forwarded call lends its upstream exchange."""

    async def elicitation(context: ClientRequestContext, params: types.ElicitRequestParams
                          ) -> types.ElicitResult | types.ErrorData:
        answer: types.ElicitResult | types.ErrorData = await _relayed(
            ctx, tenant, plan, "elicitation",
            types.ElicitRequest(params=_restored(params, plan)), types.ElicitResult)
        return answer

    async def sampling(context: ClientRequestContext, params: types.CreateMessageRequestParams
                       ) -> Any:
        asked = _restored(params, plan).model_copy(update={"include_context": None})
        with_tools = bool(params.tools or params.tool_choice)
        return await _relayed(ctx, tenant, plan, "sampling",
                              types.CreateMessageRequest(params=asked),
                              types.CreateMessageResultWithTools if with_tools
                              else types.CreateMessageResult)

    async def logging_(params: types.LoggingMessageNotificationParams) -> None:
        if state is not None and not state.shows(params.level):
            return
        shown = _restored(params, plan)
        await ctx.session.send_notification(types.LoggingMessageNotification(params=shown),
                                            related_request_id=ctx.request_id)

    return upstream.Relay(
        elicitation=elicitation if _declared(ctx, "elicitation") else None,
        sampling=sampling if _declared(ctx, "sampling") else None,
        logging=logging_, log_level=state.level if state is not None else None)


async def _relayed(ctx: ServerRequestContext[Any, Any], tenant: TenantContext, plan: gate.Plan,
                   kind: str, request: Any, result_type: type[Any]) -> Any:
    """One upstream request relayed to the agent's client and its answer back, audited."""
    try:
        result = await _ask(ctx, request, result_type, ANSWER_TIMEOUT)
    except TimeoutError:
        await _audit(tenant, plan, kind=kind, outcome="timeout", origin="upstream")
        return types.ErrorData(code=INTERNAL_ERROR, message="The agent's client did not "
                               f"answer the {kind} request in time.")
    except MCPError as exc:
        await _audit(tenant, plan, kind=kind, outcome="error", origin="upstream")
        return exc.error
    except Exception as exc:  # noqa: BLE001 - the upstream gets an error, the log the kind
        log.warning("MCP %s relay of tenant %s failed: %s", kind, tenant.tenant_id,
                    type(exc).__name__)
        await _audit(tenant, plan, kind=kind, outcome="error", origin="upstream")
        return types.ErrorData(code=INVALID_REQUEST, message=f"The {kind} request could not "
                               "reach the agent's client.")
    outcome = getattr(result, "action", "answered")
    await _audit(tenant, plan, kind=kind, outcome=outcome, origin="upstream")
    return await _outgoing(tenant, plan, result)


async def tell_pending(ctx: ServerRequestContext[Any, Any], tenant: TenantContext,
                       plan: gate.Plan) -> None:
    """Where the client declared elicitation, say that ``plan``'s call waits for an approval
    (gate's sentence, with the request's id), and record the client's answer."""
    if plan.outcome != gate.PENDING or not _declared(ctx, "elicitation"):
        return
    notice = types.ElicitRequest(params=types.ElicitRequestFormParams(
        message=plan.refusal or "", requested_schema={"type": "object", "properties": {}}))
    try:
        answer = await _ask(ctx, notice, types.ElicitResult, NOTICE_TIMEOUT)
        outcome = answer.action
    except TimeoutError:
        outcome = "timeout"
    except Exception as exc:  # noqa: BLE001 - the notice is a courtesy; the result says it all
        log.info("MCP approval notice of tenant %s not delivered: %s", tenant.tenant_id,
                 type(exc).__name__)
        outcome = "error"
    await _audit(tenant, plan, kind="elicitation", outcome=outcome, origin="approval")
