"""Talking to an upstream MCP server: the official SDK's Streamable HTTP client over the
egress-checked client of tenant_runtime/outbound.py (every connection checked, redirects
refused), carrying the upstream's own credential and never the caller's: fixed headers, or
OAuth client credentials whose token requests and discovery go through that same client
(oauth.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import mcp_types as types
from anyio.abc import TaskStatus
from mcp import ClientSession
from mcp.client.session import ElicitationFnT, LoggingFnT, MessageHandlerFnT, SamplingFnT
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT

from tenant_runtime import outbound
from tenant_runtime.gateway.egress import EgressPolicy, EgressRefused
from tenant_runtime.mcp.exceptions import UpstreamAuthFailed, UpstreamUnreachable
from tenant_runtime.mcp.oauth import UpstreamCredential
from tenant_runtime.mcp.service import AnnouncedTool

TIMEOUT = 30.0


@dataclass(frozen=True)
class Relay:
    """What the agent's session lends one exchange with an upstream (relay.py): answers to the
    upstream's server-to-client requests (each offered to the upstream only when the agent's
    client declared it), a sink for its log notifications, and the log level the agent set."""

    sampling: SamplingFnT | None = None
    elicitation: ElicitationFnT | None = None
    logging: LoggingFnT | None = None
    log_level: types.LoggingLevel | None = None


NO_RELAY = Relay()


@asynccontextmanager
async def connect(policy: EgressPolicy, url: str, credential: UpstreamCredential,
                  relay: Relay = NO_RELAY, message_handler: MessageHandlerFnT | None = None
                  ) -> AsyncIterator[ClientSession]:
    async with outbound.async_http_client(policy, headers=credential.headers,
                                          auth=credential.auth(), timeout=TIMEOUT) as http, \
            streamable_http_client(url, http_client=http) as (read, write), \
            ClientSession(read, write, sampling_callback=relay.sampling,
                          elicitation_callback=relay.elicitation,
                          logging_callback=relay.logging,
                          message_handler=message_handler) as session:
        init = await session.initialize()
        if relay.log_level is not None and init.capabilities.logging is not None:
            await session.send_request(types.SetLevelRequest(
                params=types.SetLevelRequestParams(level=relay.log_level)), types.EmptyResult)
        yield session


def why(exc: BaseException) -> str:
    """A sentence for a failed upstream exchange (the egress refusal, or the authorization
    server's, when there is one)."""
    refused = outbound.refusal(exc)
    if refused is not None:
        return refused.message
    no_token = outbound.cause_of(exc, UpstreamAuthFailed)
    if no_token is not None:
        return no_token.message
    inner = exc
    while isinstance(inner, BaseExceptionGroup) and inner.exceptions:
        inner = inner.exceptions[0]
    return f"The upstream did not answer as an MCP server ({type(inner).__name__})."


async def list_tools(policy: EgressPolicy, url: str,
                     credential: UpstreamCredential) -> list[AnnouncedTool]:
    try:
        async with connect(policy, url, credential) as session:
            tools: list[types.Tool] = []
            cursor: str | None = None
            for _ in range(50):  # pages
                page = await session.list_tools(
                    params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
                tools += page.tools
                cursor = page.next_cursor
                if not cursor:
                    break
    except (EgressRefused, UpstreamAuthFailed):
        raise
    except Exception as exc:
        no_token = outbound.cause_of(exc, UpstreamAuthFailed)
        if no_token is not None:
            raise no_token from None  # noqa: BLE001 - any failure of the exchange is the upstream's
        raise UpstreamUnreachable(why(exc)) from None
    return [AnnouncedTool(t.name, t.description or "", dict(t.input_schema),
                          t.annotations.model_dump(by_alias=True, exclude_none=True)
                          if t.annotations else {}) for t in tools]


async def call_tool(policy: EgressPolicy, url: str, credential: UpstreamCredential, name: str,
                    arguments: dict[str, Any], progress: ProgressFnT | None = None,
                    relay: Relay = NO_RELAY) -> types.CallToolResult:
    """One tool call; the upstream's progress notifications go to ``progress`` (relayed to the
    agent when it asked for progress), its log notifications, sampling and elicitation
    requests to ``relay``."""
    async with connect(policy, url, credential, relay) as session:
        result = await session.call_tool(name, arguments, progress_callback=progress)
    if not isinstance(result, types.CallToolResult):
        raise UpstreamUnreachable("The upstream answered the tool call with something other "
                                  "than a tool result.")
    return result


# --- resources and prompts, where the upstream offers them --------------------------------------

Listing = Literal["resources", "templates", "prompts"]


def _offers(session: ClientSession, what: Listing) -> bool:
    init = session.initialize_result
    capabilities = init.capabilities if init is not None else None
    if capabilities is None:
        return False
    return (capabilities.prompts if what == "prompts" else capabilities.resources) is not None


async def list_all(policy: EgressPolicy, url: str, credential: UpstreamCredential,
                   what: Listing) -> list[Any]:
    """Every page of the upstream's resources, resource templates or prompts; none when the
    upstream does not offer them (its capabilities)."""
    async with connect(policy, url, credential) as session:
        if not _offers(session, what):
            return []
        found: list[Any] = []
        cursor: str | None = None
        for _ in range(50):  # pages
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            if what == "resources":
                page: Any = await session.list_resources(params=params)
                found += page.resources
            elif what == "templates":
                page = await session.list_resource_templates(params=params)
                found += page.resource_templates
            else:
                page = await session.list_prompts(params=params)
                found += page.prompts
            cursor = page.next_cursor
            if not cursor:
                break
        return found


async def read_resource(policy: EgressPolicy, url: str, credential: UpstreamCredential,
                        uri: str) -> types.ReadResourceResult:
    async with connect(policy, url, credential) as session:
        result = await session.read_resource(uri)
    if not isinstance(result, types.ReadResourceResult):
        raise UpstreamUnreachable("The upstream answered the read with something other than "
                                  "a resource.")
    return result


async def complete(policy: EgressPolicy, url: str, credential: UpstreamCredential,
                   ref: types.PromptReference | types.ResourceTemplateReference,
                   argument: dict[str, str], context: dict[str, str]) -> types.CompleteResult:
    """The upstream's completions of one argument; none when it does not offer completions
    (its capabilities)."""
    async with connect(policy, url, credential) as session:
        init = session.initialize_result
        if init is None or init.capabilities.completions is None:
            return types.CompleteResult(completion=types.Completion(values=[]))
        result = await session.complete(ref, argument, context or None)
    if not isinstance(result, types.CompleteResult):
        raise UpstreamUnreachable("The upstream answered the completion request with something "
                                  "other than completions.")
    return result


async def get_prompt(policy: EgressPolicy, url: str, credential: UpstreamCredential, name: str,
                     arguments: dict[str, str]) -> types.GetPromptResult:
    async with connect(policy, url, credential) as session:
        result = await session.get_prompt(name, arguments)
    if not isinstance(result, types.GetPromptResult):
        raise UpstreamUnreachable("The upstream answered the prompt request with something "
                                  "other than a prompt.")
    return result


async def watch_resource(policy: EgressPolicy, url: str, credential: UpstreamCredential,
                         uri: str, updated: Callable[[], Awaitable[None]], stop: anyio.Event,
                         *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Subscribe to one of the upstream's resources and call ``updated`` at each of its
    ``notifications/resources/updated`` for it, until ``stop`` is set (then unsubscribe and
    end the upstream session). Started with ``task_group.start``: the subscription's refusal
    (the upstream's error, or its not offering subscriptions) is raised to the starter."""

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification) \
                and str(message.params.uri) == uri:
            await updated()

    async with connect(policy, url, credential, message_handler=on_message) as session:
        init = session.initialize_result
        resources = init.capabilities.resources if init is not None else None
        if resources is None or not resources.subscribe:
            raise UpstreamUnreachable("The upstream does not offer resource subscriptions.")
        # by the typed requests: the SDK's helpers warn that a later revision replaces them
        await session.send_request(types.SubscribeRequest(
            params=types.SubscribeRequestParams(uri=uri)), types.EmptyResult)
        task_status.started()
        await stop.wait()
        await session.send_request(types.UnsubscribeRequest(
            params=types.UnsubscribeRequestParams(uri=uri)), types.EmptyResult)
