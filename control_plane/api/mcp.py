"""The tenant's MCP endpoint, ``/mcp/{tenant_slug}`` (Streamable HTTP; GET, POST and DELETE as
the transport defines them), served by tenant_runtime/mcp/server.py through the official SDK's
session manager.

Before a byte reaches the SDK:

- **Origin**: a request that carries an ``Origin`` other than the installation's public origin
  is refused (403), so a web page the user visits cannot drive the endpoint through their
  browser (DNS rebinding). Programs send no Origin.
- **Authentication** (``control_plane/mcp_oauth/bearer.py``, the one resolver): an OAuth access
  token of a grant made for this endpoint, or a tenant API key holding the ``mcp`` scope,
  either acting for a human whose current role holds ``agents.work`` (401 and 403 as for every
  key route; a 401 names the protected resource metadata in ``WWW-Authenticate``, RFC 9728).
  The credential's tenant must be the one named in the path: any other slug answers 404, the
  same as one that does not exist.
- **Protocol version**: an ``MCP-Protocol-Version`` header naming a revision the SDK does not
  speak is answered 400 with the versions it does (a request without the header is taken as
  the spec's default revision).
- **Rate limits**: per agent and per agent and tool, per minute, in Redis
  (``MAGISTRATE_MCP_CALLS_PER_MINUTE``, ``MAGISTRATE_MCP_TOOL_CALLS_PER_MINUTE``); over a
  limit the call is answered with an error result and audited (gate.py).

The client's own credential is never passed on: the upstream gets the credential registered for
it (tenant_runtime/mcp/service.upstream_credential)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import SUPPORTED_PROTOCOL_VERSIONS
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from control_plane.auth.credentials import presented_key
from control_plane.auth.ratelimit import LocalWindows
from control_plane.exceptions import MagistrateError
from control_plane.mcp_oauth import bearer
from control_plane.web.errors import database_unavailable
from control_plane.web.services import Services, services
from tenant_runtime.exceptions import TenantError
from tenant_runtime.mcp import gate
from tenant_runtime.mcp.server import PRINCIPAL, Principal, build_server

log = logging.getLogger("magistrate.mcp")
PATH = "/mcp/{tenant_slug}"
WINDOW = 60


class McpRateLimiter:
    """Calls per agent, and per agent and tool, in the current minute (Redis; in-process while
    Redis is unreachable)."""

    def __init__(self, client: redis.Redis, *, per_agent: int, per_tool: int) -> None:
        self.client, self.per_agent, self.per_tool = client, per_agent, per_tool
        self.local = LocalWindows()

    def _counts(self, keys: list[str]) -> list[int]:
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.incr(key)
                pipe.expire(key, WINDOW * 2)
            return [int(total) for total in pipe.execute()[::2]]
        except redis.RedisError as exc:
            log.warning("Redis unreachable for MCP rate limits (%s); counting in-process",
                        type(exc).__name__)
            out = []
            for key in keys:
                self.local.incr(key, WINDOW, 1)
                out.append(self.local.get(key)[0])
            return out

    def check(self, tenant_id: int, agent_id: int, tool: str) -> str | None:
        window = int(time.time() // WINDOW)
        base = f"magistrate:rl:mcp:{tenant_id}:{agent_id}:{window}"
        agent_calls, tool_calls = self._counts([base, f"{base}:{tool}"])
        if agent_calls > self.per_agent:
            return (f"This agent made more than {self.per_agent} tool calls this minute; "
                    "try again in a minute.")
        if tool_calls > self.per_tool:
            return (f"This agent called {tool} more than {self.per_tool} times this minute; "
                    "try again in a minute.")
        return None


def _error(request: Request, status: int, message: str) -> JSONResponse:
    headers = {}
    if status == 401:
        presented = presented_key(request.headers.get("authorization"),
                                  request.headers.get("x-api-key")) is not None
        headers["WWW-Authenticate"] = bearer.challenge(
            services(request).settings.public_origin, request.path_params["tenant_slug"],
            presented=presented)
    return JSONResponse({"error": message, "status": status,
                         "request_id": getattr(request.state, "request_id", "")},
                        status_code=status, headers=headers)


def _authenticate(request: Request, limiter: McpRateLimiter) -> Principal:
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        caller = bearer.resolve(s, request, slug=request.path_params["tenant_slug"],
                                origin=svc.settings.public_origin)
        request.state.tenant, request.state.actor = caller.tenant.id, caller.label
        ctx = svc.tenant_connections.context(s, caller.tenant, caller.actor)
    tenant_id = caller.tenant.id

    def limit(agent_id: int, tool: str) -> str | None:
        return limiter.check(tenant_id, agent_id, tool)

    return Principal(ctx, gate.Caller(caller.client_number, caller.client_name), limit)


class McpEndpoint:
    """The ASGI endpoint: Origin, key, tenant; then the SDK's session manager."""

    def __init__(self) -> None:
        self.manager: StreamableHTTPSessionManager | None = None
        self.limiter: McpRateLimiter | None = None

    def start(self, svc: Services) -> StreamableHTTPSessionManager:
        self.manager = new_manager()
        self.limiter_of(svc)
        return self.manager

    def limiter_of(self, svc: Services) -> McpRateLimiter:
        if self.limiter is None:
            self.limiter = McpRateLimiter(svc.redis,
                                          per_agent=svc.settings.mcp_calls_per_minute,
                                          per_tool=svc.settings.mcp_tool_calls_per_minute)
        return self.limiter

    def origin_allowed(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            return True
        return origin.rstrip("/").lower() == services(request).settings.public_origin.lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        if not self.origin_allowed(request):
            await _error(request, 403, "This endpoint does not answer requests from that "
                                       "Origin (DNS rebinding protection).")(scope, receive, send)
            return
        limiter = self.limiter_of(services(request))
        try:
            principal = await run_in_threadpool(_authenticate, request, limiter)
        except (MagistrateError, TenantError) as exc:
            await _error(request, exc.status_code, exc.message)(scope, receive, send)
            return
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            await _error(request, 503, "A database Magistrate depends on is unavailable right "
                                       "now; try again in a few seconds.")(scope, receive, send)
            return
        version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER)
        if version is not None and version not in SUPPORTED_PROTOCOL_VERSIONS:
            await _error(request, 400, f"MCP-Protocol-Version {version[:40]!r} is not one this "
                                       "endpoint speaks; send one of "
                                       f"{', '.join(SUPPORTED_PROTOCOL_VERSIONS)} (the version "
                                       "initialize negotiated).")(scope, receive, send)
            return
        scope.setdefault("state", {})[PRINCIPAL] = principal
        manager = self.manager
        if manager is not None and manager._task_group is not None:
            await manager.handle_request(scope, receive, send)
            return
        # an app run without its lifespan (an embedding, a test client): the manager is
        # stateless, so one for this request alone serves it the same
        single = new_manager()
        async with single.run():
            await single.handle_request(scope, receive, send)


def new_manager() -> StreamableHTTPSessionManager:
    """Stateless: any web process answers any request, each authenticated on its own (no
    ``Mcp-Session-Id``; docs/mcp.md, "Transport"). Answers are SSE streams of the request
    they answer, so an upstream's progress notifications reach the agent as the call runs."""
    return StreamableHTTPSessionManager(build_server(), stateless=True, json_response=False)


def endpoint_of(routes: list[Any]) -> McpEndpoint:
    for route in routes:
        if isinstance(route, Route) and isinstance(route.endpoint, McpEndpoint):
            return route.endpoint
    raise LookupError("no MCP route")


@asynccontextmanager
async def running(endpoint: McpEndpoint, svc: Services) -> AsyncIterator[None]:
    """The session manager's lifetime, inside the app's lifespan."""
    async with endpoint.start(svc).run():
        yield


def make_routes() -> list[Route]:
    return [Route(PATH, McpEndpoint(), methods=["GET", "POST", "DELETE"])]
