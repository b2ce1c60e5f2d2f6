"""The drop-in endpoints: ``POST /v1/chat/completions``, ``POST /v1/responses``,
``POST /v1/embeddings`` and ``GET /v1/models`` in OpenAI's shapes, ``POST /v1/messages`` and
``POST /v1/messages/count_tokens`` in Anthropic's, streaming included, so the official SDKs and
the agent frameworks built on them work with only ``base_url`` and ``api_key`` changed. This
module is the edge (key, body, tenant, errors, streaming); each API's shape has its module
(openai_chat, responses, anthropic_messages, embeddings). Authenticated by tenant API keys
(``mg_…``) that hold the ``gateway`` scope and whose creator's current role holds ``gateway.call``.

Every error answers in the shape of the API it came through, so an SDK raises its usual
exception with our sentence; errors the caller's SDK must not retry (ours already retried the
provider) carry ``x-should-retry: false``, which both SDKs honour.

    401 no, unknown, revoked or expired key, or   403 model not on the allowlist, tenant
        its creator deactivated or no longer a        suspended, the key lacks the gateway
        member                                        scope or its creator's role lacks it
    400 the body is not JSON; a request that
        could never fit the token rate limit      402 monthly spend cap reached
    415 not application/json                      429 rate limit (Retry-After)
    413 body over 4 MiB                           502 every provider attempt failed
    422 the JSON does not fit the API's shape     503 the tenant's key or database is
        (an unknown or unsupported field, a           unavailable
        missing one, a wrong value, a NUL or an
        unpaired surrogate in a string: the
        sentence names it); a custom redaction
        pattern timed out
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import sqlalchemy.exc
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from control_plane.exceptions import MagistrateError, RateLimited
from control_plane.gateway import anthropic_messages, embeddings, openai_chat
from control_plane.gateway.ratelimit import Counted, GatewayRateLimiter, judge
from control_plane.gateway.shapes import InvalidBody
from control_plane.tenancy import api_keys
from control_plane.web.access import key_rule
from control_plane.web.errors import DATABASE_RETRY_AFTER_SECONDS, database_unavailable
from control_plane.web.services import Services, services
from tenant_runtime import bridge
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.exceptions import TenantError, TenantKeyUnavailable
from tenant_runtime.gateway import config
from tenant_runtime.gateway.messages import ChatRequest
from tenant_runtime.gateway.providers import registry
from tenant_runtime.gateway.providers.base import StreamEvent
from tenant_runtime.gateway.service import (
    CallResult,
    Gateway,
    ModelRefused,
    PreparedCall,
    RateLimit,
)
from tenant_runtime.observability import metrics
from tenant_runtime.text import first_unstorable, refusal

log = logging.getLogger("magistrate.gateway")
MAX_BODY = 4 * 1024 * 1024
MODEL_FIELD = frozenset({"model"})
# a key refused at the edge, as the reason label of the refusals metric
KEY_REFUSALS = {401: "unauthenticated", 403: "forbidden", 404: "tenant_unavailable",
                409: "tenant_unavailable", 503: "tenant_unavailable"}
OPENAI_TYPES = {400: ("invalid_request_error", None), 401: ("invalid_request_error",
                                                            "invalid_api_key"),
                402: ("insufficient_quota", "insufficient_quota"),
                403: ("permission_error", "permission_denied"), 413: ("invalid_request_error",
                                                                      "request_too_large"),
                415: ("invalid_request_error", "unsupported_media_type"),
                422: ("invalid_request_error", None), 429: ("rate_limit_error",
                                                            "rate_limit_exceeded"),
                502: ("api_error", "upstream_error"), 503: ("api_error", "unavailable")}
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                   402: "billing_error", 403: "permission_error", 404: "not_found_error",
                   413: "request_too_large", 415: "invalid_request_error",
                   422: "invalid_request_error", 429: "rate_limit_error", 502: "api_error",
                   503: "overloaded_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def error_body(kind: str, err: ApiError) -> dict[str, Any]:
    if kind == "anthropic":
        return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(err.status, "api_error"),
                                           "message": err.message}}
    kind_type, code = OPENAI_TYPES.get(err.status, ("api_error", None))
    return {"error": {"message": err.message, "type": kind_type, "param": err.param,
                      "code": err.code or code}}


def error_response(request: Request, kind: str, err: ApiError) -> Response:
    headers = {"x-should-retry": "true" if err.status == 429 else "false", **err.headers}
    headers["x-request-id"] = getattr(request.state, "request_id", "")
    return JSONResponse(error_body(kind, err), status_code=err.status, headers=headers)


def api_error(exc: Exception) -> ApiError:
    """Our exceptions, as the status and sentence a caller sees; anything else is logged and
    answered 500 (or 503 when a database is unreachable) in the same shape."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidBody):  # JSON that does not fit the API's shape
        return ApiError(422, exc.message, param=exc.param)
    if isinstance(exc, RateLimited):
        return ApiError(429, exc.message, headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, ModelRefused):
        return ApiError(403, exc.message, code="model_not_allowed")
    if isinstance(exc, TenantKeyUnavailable):  # the customer's KMS: the operator should know
        log.warning("gateway call refused: %s", exc.message)
    if isinstance(exc, MagistrateError | TenantError):
        return ApiError(exc.status_code, exc.message)
    if database_unavailable(exc):  # a retry after a short wait is what helps: say so
        log.warning("gateway call failed: a database is unreachable (%s)", type(exc).__name__)
        return ApiError(503, "A database Magistrate depends on is unreachable; try again "
                             "shortly.", headers={
                                 "Retry-After": str(DATABASE_RETRY_AFTER_SECONDS),
                                 "x-should-retry": "true"})
    log.exception("gateway call failed unexpectedly")
    return ApiError(500, "Something went wrong on our side; it has been logged. Quote the "
                         "request id if you contact support.")


# --- the edge: key, body, tenant -----------------------------------------------------------

def _limiter(request: Request) -> GatewayRateLimiter:
    app_state = request.app.state
    limiter: GatewayRateLimiter | None = getattr(app_state, "gateway_limiter", None)
    if limiter is None:
        limiter = app_state.gateway_limiter = GatewayRateLimiter(services(request).redis)
    return limiter


def _tenant(request: Request) -> tuple[TenantContext, str]:
    """The tenant context of the calling API key, and the key's id: no round trip to the
    control database when the process's key cache holds the key (``tenancy/key_cache.py``:
    dropped the moment Postgres notifies a change to the key, its tenant, creator, membership
    or data keys, bypassed while the process is not listening, never older than
    ``MAGISTRATE_GATEWAY_KEY_CACHE_SECONDS``), else one (an autocommit SELECT on a connection
    taken without a pre-ping; ``control_plane.db.make_hot_path_engine``). Every /v1 endpoint
    resolves its key here. A connection that died while pooled is dropped and the read, which
    changes nothing but ``last_used_at``, runs once more on a fresh one."""
    svc = services(request)
    sessions = svc.hot_path_sessions or svc.session_factory
    for attempt in (1, 2):
        try:
            with sessions() as s:
                return _tenant_in(request, svc, s)
        except MagistrateError as exc:
            metrics.refused(KEY_REFUSALS.get(exc.status_code, "forbidden"))
            raise
        except sqlalchemy.exc.DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _tenant_in(request: Request, svc: Services, s: Session) -> tuple[TenantContext, str]:
    key = api_keys.authenticate_gateway_key(s, request.headers.get("authorization"),
                                            request.headers.get("x-api-key"),
                                            rule=key_rule(request), cache=svc.key_cache)
    request.state.tenant, request.state.actor = key.tenant_id, f"api_key:{key.key_id}"
    actor = Actor("api_key", str(key.key_id), key.key_name, key.creator_role,
                  on_behalf_of=str(key.creator_id))
    return svc.tenant_connections.gateway_context(s, key, actor), str(key.key_id)


def _json_body(request: Request, raw: bytes) -> Any:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "Send the request body as JSON with 'Content-Type: "
                            "application/json'.")
    if len(raw) > MAX_BODY:
        raise ApiError(413, "The request body is over 4 MiB.")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "The request body is not valid JSON.") from None
    # text that cannot be stored or sent on (tenant_runtime/text.py), except the model name:
    # that is the allowlist's to refuse, audited, like any other name off the list (shapes.py)
    found = first_unstorable(body, skip=MODEL_FIELD)
    if found is not None:
        raise ApiError(422, refusal(*found), param=found[0])
    return body


def _rate_limit(request: Request, ctx: TenantContext) -> RateLimit:
    """The tenant's rate limiter, as every endpoint hands it to the gateway, which calls it
    from its one choke point (``Gateway.admit``) with the request's token bound: a request
    that could never fit in a minute answers 400 at once; the request is counted (on the event
    loop, the count is sent and its answer read while the gateway admits the request), and the
    function returned judges the counts: over the limits of this minute, 429. The request is
    counted once: admitted again (its configuration changed under it), it is judged on the
    same counts against the limits given then."""
    limiter = _limiter(request)
    counts: list[Callable[[], Counted]] = []

    def limit(*, tokens: int, what: str, requests_per_minute: int,
              tokens_per_minute: int) -> Callable[[], None]:
        if tokens > tokens_per_minute:
            metrics.refused("token_limit")
            raise ApiError(400, f"This request may use up to {tokens:,} tokens ({what}), more "
                                f"than the tenant's limit of {tokens_per_minute:,} tokens per "
                                "minute; lower max_tokens or shorten the input.",
                           param="max_tokens")
        if not counts:
            counts.append(limiter.begin(ctx.tenant_id, tokens=tokens))
        counted = counts[0]
        return lambda: judge(counted(), requests_per_minute=requests_per_minute,
                             tokens_per_minute=tokens_per_minute)

    return limit


def _started(request: Request) -> float | None:
    """When the call's body was read (``_with_body``): the start of its overhead metric."""
    return getattr(request.state, "gateway_started", None)


def _prepare(request: Request, ctx: TenantContext, key_id: str, chat: ChatRequest,
             kind: str) -> tuple[Gateway, PreparedCall]:
    gateway = Gateway(ctx, api_key_id=key_id, started=_started(request))
    return gateway, gateway.prepare(chat, endpoint_kind=kind,
                                    rate_limit=_rate_limit(request, ctx))


class ClosingStream(StreamingResponse):
    """A streaming response over a sync iterator, which one producer runs to its end (the
    call's generator settles and audits the call as it ends): a greenlet on the event loop when
    the call path runs there (``on_loop``), else a worker thread. It hands the pieces to the
    response as they come: where Starlette would hop to a thread and back for every piece,
    pieces that arrive together go out in one write. When the client hangs up, the thread stops
    after the piece in hand and closes the iterator (closing the provider's stream at once,
    not whenever the garbage collector runs), and the response waits for that. asyncio only,
    as uvicorn runs the app."""

    def __init__(self, events: Iterator[str], *, on_loop: bool = False) -> None:
        super().__init__(self._pieces(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self._events = events
        # where the iterator runs: a worker thread, or the event loop (``bridge.run``: the
        # call path's I/O awaits there, so no thread is needed)
        self._run: Callable[..., Any] = bridge.run if on_loop else anyio.to_thread.run_sync
        self._stop = threading.Event()
        self._producer: asyncio.Future[None] | None = None
        self._raised = False  # the producer's outcome went through the response

    async def _pieces(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        ready: deque[str] = deque()
        wake = asyncio.Event()
        finished = False
        # a wake-up is on its way to the loop: pieces added meanwhile need none of their own
        # (each costs the loop a write to its self-pipe and a turn). The loop clears it before
        # it takes the pieces, so a piece added after it took them sends a new one.
        signalled = False

        def mark_finished() -> None:
            nonlocal finished
            finished = True
            wake.set()

        def produce() -> None:  # in a worker thread
            nonlocal signalled
            try:
                for piece in self._events:
                    ready.append(piece)
                    if not signalled:
                        signalled = True
                        loop.call_soon_threadsafe(wake.set)
                    if self._stop.is_set():
                        break
            finally:
                try:
                    close(self._events)
                finally:
                    loop.call_soon_threadsafe(mark_finished)

        self._producer = asyncio.ensure_future(self._run(produce))
        try:
            while True:
                await wake.wait()
                wake.clear()
                signalled = False
                done = finished  # read before draining: every piece came before the mark
                if ready:
                    yield "".join([ready.popleft() for _ in range(len(ready))])
                if done:
                    break
            self._raised = True
            await self._producer  # its exception, if the iterator raised one
        finally:
            self._stop.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stop.set()
            with anyio.CancelScope(shield=True):
                if self._producer is None:  # ended before the first piece was asked for
                    await self._run(close, self._events)
                else:
                    await asyncio.wait([self._producer])
                    error = None if self._producer.cancelled() else self._producer.exception()
                    if error is not None and not self._raised:  # the client had gone
                        log.error("a gateway stream failed after its client left",
                                  exc_info=error)


def _sse(events: Iterator[str]) -> StreamingResponse:
    return ClosingStream(events, on_loop=bridge.active())


def _call(request: Request, kind: str,
          parse: Callable[[Any], tuple[ChatRequest, bool]],
          answer: Callable[[ChatRequest, CallResult, str], dict[str, Any]],
          stream: Callable[[ChatRequest, Iterator[StreamEvent | CallResult], str, bool],
                           Iterator[str]], *, id_prefix: str | None = None) -> Response:
    try:
        ctx, key_id = _tenant(request)
        chat, include_usage = parse(_json_body(request, request.state.body))
        gateway, call = _prepare(request, ctx, key_id, chat, kind)
        prefix = id_prefix or ("msg" if kind == "anthropic" else "chatcmpl")
        call_id = f"{prefix}_{secrets.token_hex(12)}"
        if not chat.stream:
            return JSONResponse(answer(chat, gateway.complete(call), call_id),
                                headers={"x-request-id": request.state.request_id})
        events = gateway.stream(call)
        first = next(events)  # before the response starts: a failure gets its own status
        chained = _chain(first, events)
        return _sse(_guarded(kind, stream(chat, chained, call_id, include_usage), chained))
    except Exception as exc:  # noqa: BLE001 - every error in the API's own shape
        return error_response(request, kind, api_error(exc))


def _chain(first: StreamEvent | CallResult, rest: Iterator[StreamEvent | CallResult]
           ) -> Iterator[StreamEvent | CallResult]:
    try:
        yield first
        yield from rest
    finally:
        close(rest)


def close(events: Iterator[Any]) -> None:
    """Close a generator: a ``for`` loop over it does not, when its own generator is closed."""
    closer = getattr(events, "close", None)
    if closer is not None:
        closer()


# --- the endpoints ------------------------------------------------------------------------

def _guarded(kind: str, rendered: Iterator[str], events: Iterator[Any]) -> Iterator[str]:
    """A rendered stream whose failure after the response started arrives as the API's own
    error event (OpenAI's stream then ends with ``[DONE]``)."""
    try:
        yield from rendered
    except TenantError as exc:
        if kind == "anthropic":
            yield f"event: error\ndata: {json.dumps(error_body(kind, api_error(exc)))}\n\n"
        else:
            yield f"data: {json.dumps(error_body(kind, api_error(exc)))}\n\n"
            yield "data: [DONE]\n\n"
    finally:
        close(rendered)
        close(events)


def chat_completions(request: Request) -> Response:
    return _call(request, "openai", openai_chat.parse, openai_chat.answer, openai_chat.stream)


def list_models(request: Request) -> Response:
    """GET /v1/models: the tenant's allowed models only."""
    try:
        ctx, _ = _tenant(request)
        with ctx.session() as s:
            routes = config.allowed_routes(s)
        return JSONResponse({"object": "list", "data": [
            {"id": r.model_name, "object": "model", "created": int(r.created_at.timestamp()),
             "owned_by": r.provider} for r in routes]})
    except Exception as exc:  # noqa: BLE001
        return error_response(request, "openai", api_error(exc))


def messages(request: Request) -> Response:
    return _call(request, "anthropic", anthropic_messages.parse, anthropic_messages.answer,
                 anthropic_messages.stream)


def count_tokens(request: Request) -> Response:
    """POST /v1/messages/count_tokens: the prompt's tokens as the route's provider counts
    them, after redaction (Anthropic routes), or the gateway's estimate (others); no spend."""
    try:
        ctx, key_id = _tenant(request)
        chat = anthropic_messages.parse_count(_json_body(request, request.state.body))
        tokens = Gateway(ctx, api_key_id=key_id).count_tokens(
            chat, endpoint_kind="anthropic", rate_limit=_rate_limit(request, ctx))
        return JSONResponse({"input_tokens": tokens},
                            headers={"x-request-id": request.state.request_id})
    except Exception as exc:  # noqa: BLE001 - every error in the API's own shape
        return error_response(request, "anthropic", api_error(exc))


def embeddings_endpoint_sync(request: Request) -> Response:
    try:
        ctx, key_id = _tenant(request)
        parsed = embeddings.parse(_json_body(request, request.state.body))
        result = Gateway(ctx, api_key_id=key_id, started=_started(request)).embed(
            parsed, endpoint_kind="openai", rate_limit=_rate_limit(request, ctx))
        return JSONResponse(embeddings.answer(parsed, result),
                            headers={"x-request-id": request.state.request_id})
    except Exception as exc:  # noqa: BLE001
        return error_response(request, "openai", api_error(exc))


async def _with_body(request: Request, endpoint: Callable[[Request], Response]) -> Response:
    """Read the body here (a plain ``def`` endpoint cannot), at most MAX_BODY bytes of it, then
    run the endpoint: on the event loop when the app serves its calls there (``on_loop``),
    else in the thread pool like every other endpoint."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            break
    request.state.body = bytes(body)
    request.state.gateway_started = time.perf_counter()  # the overhead metric starts here
    if on_loop(request):
        return await bridge.run(endpoint, request)
    return await run_in_threadpool(endpoint, request)


@asynccontextmanager
async def calls_on_this_loop(app: Any, *, enabled: bool) -> AsyncIterator[None]:
    """For the app's lifespan: when ``enabled``, the gateway's calls run on the loop the app
    started on (``on_loop``) until it stops; then the clients the call path made on this loop
    are closed (the rate limiter's Redis client; the providers' async SDK clients)."""
    if enabled:
        app.state.call_path_loop = asyncio.get_running_loop()
    try:
        yield
    finally:
        app.state.call_path_loop = None
        limiter: GatewayRateLimiter | None = getattr(app.state, "gateway_limiter", None)
        if limiter is not None:
            await limiter.aclose()
        await registry.ASYNC_CLIENTS.aclose()


def on_loop(request: Request) -> bool:
    """Whether this request's call path runs on the event loop (tenant_runtime/bridge.py): the
    loop is the one the app's lifespan started on (``serve_calls_on``), where the loop's own
    clients (Redis, the providers' async SDK clients) live and are closed at shutdown. An app
    run without its lifespan, or with ``MAGISTRATE_GATEWAY_ON_EVENT_LOOP=false``, runs it in
    the thread pool."""
    return getattr(request.app.state, "call_path_loop", None) is asyncio.get_running_loop()


async def chat_completions_endpoint(request: Request) -> Response:
    return await _with_body(request, chat_completions)


async def messages_endpoint(request: Request) -> Response:
    return await _with_body(request, messages)


async def count_tokens_endpoint(request: Request) -> Response:
    return await _with_body(request, count_tokens)


async def embeddings_endpoint(request: Request) -> Response:
    return await _with_body(request, embeddings_endpoint_sync)


routes = [
    Route("/v1/chat/completions", chat_completions_endpoint, methods=["POST"]),
    Route("/v1/embeddings", embeddings_endpoint, methods=["POST"]),
    Route("/v1/messages", messages_endpoint, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens_endpoint, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
