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
- **Sessions** (``Mcp-Session-Id``, the SDK's stateful session manager): a session belongs to
  the principal that opened it (tenant and API key, or tenant and OAuth grant), handed to the
  SDK as the request's authenticated user, so a request presenting another principal's
  session id is answered 404 like an unknown one. Every request is still authenticated and
  decided on its own: a revoked key or grant is refused at its next request, and when that
  request carries the session's id and the very credential last used on it, the session
  ends there (its GET stream and subscriptions with it). A client that sends nothing more
  is reached too: every ``MAGISTRATE_MCP_SESSION_RECHECK_SECONDS`` each live session's last
  credential is checked again by the same rule (``bearer.caller_of``), and a session whose
  credential no longer passes ends the same way. At most
  ``MAGISTRATE_MCP_SESSIONS_PER_CLIENT`` sessions per principal (one more ends its idlest,
  or is refused 429 when all are busy) and ``MAGISTRATE_MCP_MAX_SESSIONS`` per process (503
  beyond); a session idle for
  ``MAGISTRATE_MCP_SESSION_IDLE_SECONDS`` ends. Sessions live in the process that opened
  them: several web processes need routing that keeps a session on its process (docs/mcp.md,
  "Transport").

The client's own credential is never passed on: the upstream gets the credential registered for
it (tenant_runtime/mcp/service.upstream_credential)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, AuthorizationContext
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
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
from control_plane.web.access import key_rule_for
from control_plane.web.errors import database_unavailable
from control_plane.web.services import Services, services
from tenant_runtime.exceptions import TenantError
from tenant_runtime.mcp import gate
from tenant_runtime.mcp.server import PRINCIPAL, Principal, build_server
from tenant_runtime.mcp.sessions import SessionBook

log = logging.getLogger("magistrate.mcp")
PATH = "/mcp/{tenant_slug}"
SESSION_ROUTE = f"GET {PATH}"  # the key rule a session's re-check applies (its GET stream)
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


def _authenticate(request: Request, limiter: McpRateLimiter) -> tuple[Principal, str]:
    """The request's principal, and the key its sessions are bound to (``<tenant id>:
    api_key:<id>`` or ``<tenant id>:oauth_grant:<id>``)."""
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        caller = bearer.resolve(s, request, slug=request.path_params["tenant_slug"],
                                origin=svc.settings.public_origin)
        request.state.tenant, request.state.actor = caller.tenant.id, caller.label
        ctx = svc.tenant_connections.context(s, caller.tenant, caller.actor)
    tenant_id = caller.tenant.id

    def limit(agent_id: int, tool: str) -> str | None:
        return limiter.check(tenant_id, agent_id, tool)

    return (Principal(ctx, gate.Caller(caller.client_number, caller.client_name), limit),
            f"{tenant_id}:{caller.label}")


def _digest(credential: str) -> bytes:
    return hashlib.sha256(credential.encode()).digest()


def still_passes(svc: Services, credential: str, slug: str) -> bool:
    """Whether a live session's credential still passes the endpoint's check
    (``bearer.caller_of``, the one every request passes: key or grant not revoked, tenant
    active, the human behind it still entitled). Its transaction is rolled back: a re-check
    is not a use of the credential. An unreachable database keeps the session (every request
    is still checked on its own)."""
    try:
        with svc.session_factory() as s:
            try:
                bearer.caller_of(s, credential, slug=slug,
                                 origin=svc.settings.public_origin,
                                 rule=lambda: key_rule_for(SESSION_ROUTE), token_expiry=False)
            finally:
                s.rollback()
    except (MagistrateError, TenantError) as exc:
        return exc.status_code not in (401, 403, 404)
    except Exception as exc:
        if not database_unavailable(exc):
            log.exception("MCP session re-check failed")
        return True
    return True


class GovernedSessionManager(StreamableHTTPSessionManager):
    """The SDK's stateful session manager, with sessions bounded per principal (the SDK
    bounds them per process only) and each ending session's state (its subscriptions at the
    upstreams) dropped from the book. It extends the manager's two bookkeeping steps,
    admission and discard, and calls the SDK's own for the rest.

    A principal at its limit that opens one more session ends its least recently active one
    that has nothing in flight (many clients never send DELETE; the ended id answers 404 and
    its client initializes again, as the transport specifies); when every one of them is
    busy, the new one is refused (429 at the endpoint)."""

    def __init__(self, book: SessionBook, *, per_client: int, max_sessions: int,
                 idle_seconds: float) -> None:
        super().__init__(build_server(book), stateless=False, json_response=False,
                         session_idle_timeout=idle_seconds, max_sessions=max_sessions)
        self.book, self.per_client = book, per_client
        self.owners: dict[str, str] = {}  # session id -> principal
        # session id -> the credential last presented with it by its principal, and the
        # tenant slug it was presented at (what the periodic re-check checks again)
        self.credentials: dict[str, tuple[str, str]] = {}

    def note_credential(self, session_id: str, owner: str, credential: str,
                        slug: str) -> None:
        if self.owners.get(session_id) == owner:
            self.credentials[session_id] = (credential, slug)

    def end_refused(self, session_id: str, credential: str) -> None:
        """A request with this session id was refused its credential (revoked, expired, its
        human deactivated): when that is the very credential last used on the session, the
        session ends here, with its GET stream and subscriptions. Any other credential
        refused with the id ends nothing (it may not even know whose session it names)."""
        held, _ = self.credentials.get(session_id, ("", ""))
        if hmac.compare_digest(_digest(held), _digest(credential)):
            self.end(session_id)

    def end(self, session_id: str) -> None:
        transport = self._server_instances.get(session_id)
        if transport is not None and transport.idle_scope is not None:
            transport.idle_scope.cancel()  # the session's task ends it; _discard_session
            # forgets it

    async def recheck(self, passes: Callable[[str, str], bool]) -> list[str]:
        """Check each live session's credential again (``passes``, in a worker thread) and
        end the sessions whose credential no longer passes, open GET stream and
        subscriptions with them; the ended ids."""
        ended = []
        verdicts: dict[tuple[str, str], bool] = {}  # one check per credential and pass
        for session_id, held in list(self.credentials.items()):
            if held not in verdicts:
                verdicts[held] = await anyio.to_thread.run_sync(passes, *held)
            if not verdicts[held]:
                self.end(session_id)
                ended.append(session_id)
        return ended

    async def rechecking(self, every: float, passes: Callable[[str, str], bool]) -> None:
        """``recheck`` every ``every`` seconds, for the manager's lifetime: revocation reaches
        a session whose client sends nothing more (its GET stream stays open)."""
        while True:
            await anyio.sleep(every)
            for session_id in await self.recheck(passes):
                log.info("MCP session %s ended: its credential no longer passes",
                         session_id[:12])

    def held_by(self, owner: str) -> list[str]:
        return [sid for sid, held in self.owners.items() if held == owner]

    def room_for(self, owner: str) -> bool:
        held = self.held_by(owner)
        return len(held) < self.per_client or self._idlest(held) is not None

    def _idlest(self, session_ids: list[str]) -> anyio.CancelScope | None:
        """The idle scope of the least recently active of the sessions with no request in
        flight (the SDK's transport keeps its deadline at infinity while one is)."""
        scopes = [scope for sid in session_ids
                  if (transport := self._server_instances.get(sid)) is not None
                  and (scope := transport.idle_scope) is not None
                  and not scope.cancel_called and scope.deadline != math.inf]
        return min(scopes, key=lambda scope: scope.deadline, default=None)

    def _admit_session(self, requestor: AuthorizationContext | None
                       ) -> StreamableHTTPServerTransport | None:
        owner = requestor["client_id"] if requestor is not None else ""
        held = self.held_by(owner)
        if len(held) >= self.per_client:
            idlest = self._idlest(held)
            if idlest is None:
                return None
            idlest.cancel()  # the session's task ends it, and _discard_session forgets it
            for sid in held:
                transport = self._server_instances.get(sid)
                if transport is not None and transport.idle_scope is idlest:
                    self.owners.pop(sid, None)
        transport = super()._admit_session(requestor)
        if transport is not None and transport.mcp_session_id is not None:
            self.owners[transport.mcp_session_id] = owner
        return transport

    async def _discard_session(self, session_id: str,
                               transport: StreamableHTTPServerTransport) -> None:
        self.owners.pop(session_id, None)
        self.credentials.pop(session_id, None)
        self.book.forget(session_id)
        await super()._discard_session(session_id, transport)


class McpEndpoint:
    """The ASGI endpoint: Origin, key, tenant; then the SDK's session manager."""

    def __init__(self) -> None:
        self.manager: GovernedSessionManager | None = None
        self.book = SessionBook()
        self.limiter: McpRateLimiter | None = None

    def start(self, svc: Services) -> GovernedSessionManager:
        self.book = SessionBook()
        self.manager = GovernedSessionManager(
            self.book, per_client=svc.settings.mcp_sessions_per_client,
            max_sessions=svc.settings.mcp_max_sessions,
            idle_seconds=svc.settings.mcp_session_idle_seconds)
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
        session_id = request.headers.get(MCP_SESSION_ID_HEADER)
        presented = presented_key(request.headers.get("authorization"),
                                  request.headers.get("x-api-key")) or ""
        manager = self.manager
        try:
            principal, owner = await run_in_threadpool(_authenticate, request, limiter)
        except (MagistrateError, TenantError) as exc:
            if session_id and manager is not None and exc.status_code in (401, 403):
                manager.end_refused(session_id, presented)
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
        # the SDK binds a session to the user that opened it and answers 404 to any other
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=owner,  # noqa: S106
                                                      scopes=[]))  # the principal, no token
        if manager is not None and manager._task_group is not None:
            if session_id:
                manager.note_credential(session_id, owner, presented,
                                        request.path_params["tenant_slug"])
            if request.method == "POST" and not session_id and not manager.room_for(owner):
                await _error(request, 429, f"This client holds {manager.per_client} open MCP "
                                           "sessions, each busy, the most it may; end one "
                                           "(DELETE) or wait for one to finish."
                             )(scope, receive, send)
                return
            await manager.handle_request(scope, receive, send)
            return
        # an app run without its lifespan (an embedding, a test client): a stateless manager
        # for this request alone serves it, without sessions
        single = stateless_manager()
        async with single.run():
            await single.handle_request(scope, receive, send)


def stateless_manager() -> StreamableHTTPSessionManager:
    """No ``Mcp-Session-Id``, for an app run without its lifespan: each request on its own,
    answered on an SSE stream of its own; nothing reaches the client outside an answer."""
    return StreamableHTTPSessionManager(build_server(), stateless=True, json_response=False)


def endpoint_of(routes: list[Any]) -> McpEndpoint:
    for route in routes:
        if isinstance(route, Route) and isinstance(route.endpoint, McpEndpoint):
            return route.endpoint
    raise LookupError("no MCP route")


@asynccontextmanager
async def running(endpoint: McpEndpoint, svc: Services) -> AsyncIterator[None]:
    """The session manager's lifetime (and its sessions' book's), inside the app's
    lifespan."""
    manager = endpoint.start(svc)
    async with endpoint.book.running(), manager.run(), anyio.create_task_group() as tasks:
        tasks.start_soon(manager.rechecking, svc.settings.mcp_session_recheck_seconds,
                         functools.partial(still_passes, svc))
        try:
            yield
        finally:
            tasks.cancel_scope.cancel()


def make_routes() -> list[Route]:
    return [Route(PATH, McpEndpoint(), methods=["GET", "POST", "DELETE"])]
