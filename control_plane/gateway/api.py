"""The drop-in endpoints: ``POST /v1/chat/completions`` and ``GET /v1/models`` in OpenAI's
shapes, ``POST /v1/messages`` in Anthropic's, streaming included, so the official SDKs work
with only ``base_url`` and ``api_key`` changed. Authenticated by tenant API keys (``mg_…``) that
hold the ``gateway`` scope and whose creator's current role holds ``gateway.call``.

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
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from control_plane.exceptions import MagistrateError, RateLimited
from control_plane.gateway.ratelimit import GatewayRateLimiter
from control_plane.gateway.shapes import InvalidBody, anthropic_request, openai_request
from control_plane.tenancy import api_keys
from control_plane.web.access import key_rule
from control_plane.web.errors import DATABASE_RETRY_AFTER_SECONDS, database_unavailable
from control_plane.web.services import services
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.exceptions import TenantError, TenantKeyUnavailable
from tenant_runtime.gateway import config, pricing
from tenant_runtime.gateway.messages import ChatRequest
from tenant_runtime.gateway.service import CallResult, Gateway, ModelRefused, PreparedCall
from tenant_runtime.text import first_unstorable, refusal

log = logging.getLogger("magistrate.gateway")
MAX_BODY = 4 * 1024 * 1024
MODEL_FIELD = frozenset({"model"})
FINISH = {"openai": {"stop": "stop", "length": "length", "other": "stop"},
          "anthropic": {"stop": "end_turn", "length": "max_tokens", "other": "end_turn"}}
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
    """The tenant context of the calling API key, and the key's id."""
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        key = api_keys.authenticate_gateway_key(s, request.headers.get("authorization"),
                                                request.headers.get("x-api-key"),
                                                rule=key_rule(request))
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


def _prepare(request: Request, ctx: TenantContext, key_id: str, chat: ChatRequest,
             kind: str) -> tuple[Gateway, PreparedCall]:
    limiter = _limiter(request)

    def limit(requests_per_minute: int, tokens_per_minute: int) -> None:
        tokens = pricing.prompt_token_bound(m.content for m in chat.messages) + chat.max_tokens
        if tokens > tokens_per_minute:
            raise ApiError(400, f"This request may use up to {tokens:,} tokens (prompt and "
                                f"max_tokens), more than the tenant's limit of "
                                f"{tokens_per_minute:,} tokens per minute; lower max_tokens "
                                "or shorten the prompt.", param="max_tokens")
        limiter.check(ctx.tenant_id, tokens=tokens, requests_per_minute=requests_per_minute,
                      tokens_per_minute=tokens_per_minute)

    gateway = Gateway(ctx, api_key_id=key_id)
    return gateway, gateway.prepare(chat, endpoint_kind=kind, rate_limit=limit)


class ClosingStream(StreamingResponse):
    """A streaming response over a sync iterator, which one worker thread runs to its end (the
    call's generator settles and audits the call as it ends), handing the pieces to the event
    loop as they come: where Starlette would hop to a thread and back for every piece, pieces
    that arrive together go out in one write. When the client hangs up, the thread stops
    after the piece in hand and closes the iterator (closing the provider's stream at once,
    not whenever the garbage collector runs), and the response waits for that. asyncio only,
    as uvicorn runs the app."""

    def __init__(self, events: Iterator[str]) -> None:
        super().__init__(self._pieces(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self._events = events
        self._stop = threading.Event()
        self._producer: asyncio.Future[None] | None = None
        self._raised = False  # the producer's outcome went through the response

    async def _pieces(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        ready: deque[str] = deque()
        wake = asyncio.Event()
        finished = False

        def mark_finished() -> None:
            nonlocal finished
            finished = True
            wake.set()

        def produce() -> None:  # in a worker thread
            try:
                for piece in self._events:
                    ready.append(piece)
                    loop.call_soon_threadsafe(wake.set)
                    if self._stop.is_set():
                        break
            finally:
                try:
                    close(self._events)
                finally:
                    loop.call_soon_threadsafe(mark_finished)

        self._producer = asyncio.ensure_future(anyio.to_thread.run_sync(produce))
        try:
            while True:
                await wake.wait()
                wake.clear()
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
                    await anyio.to_thread.run_sync(close, self._events)
                else:
                    await asyncio.wait([self._producer])
                    error = None if self._producer.cancelled() else self._producer.exception()
                    if error is not None and not self._raised:  # the client had gone
                        log.error("a gateway stream failed after its client left",
                                  exc_info=error)


def _sse(events: Iterator[str]) -> StreamingResponse:
    return ClosingStream(events)


def _call(request: Request, kind: str,
          parse: Callable[[Any], tuple[ChatRequest, bool]],
          answer: Callable[[ChatRequest, CallResult, str], dict[str, Any]],
          stream: Callable[[ChatRequest, Iterator[str | CallResult], str, bool],
                           Iterator[str]]) -> Response:
    try:
        ctx, key_id = _tenant(request)
        chat, include_usage = parse(_json_body(request, request.state.body))
        gateway, call = _prepare(request, ctx, key_id, chat, kind)
        call_id = f"{'msg' if kind == 'anthropic' else 'chatcmpl'}_{secrets.token_hex(12)}"
        if not chat.stream:
            return JSONResponse(answer(chat, gateway.complete(call), call_id),
                                headers={"x-request-id": request.state.request_id})
        events = gateway.stream(call)
        first = next(events)  # before the response starts: a failure gets its own status
        return _sse(stream(chat, _chain(first, events), call_id, include_usage))
    except Exception as exc:  # noqa: BLE001 - every error in the API's own shape
        return error_response(request, kind, api_error(exc))


def _chain(first: str | CallResult, rest: Iterator[str | CallResult]
           ) -> Iterator[str | CallResult]:
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


# --- OpenAI -------------------------------------------------------------------------------

def _openai_usage(result: CallResult) -> dict[str, int]:
    return {"prompt_tokens": result.usage.input_tokens,
            "completion_tokens": result.usage.output_tokens,
            "total_tokens": result.usage.input_tokens + result.usage.output_tokens}


def _openai_answer(chat: ChatRequest, result: CallResult, call_id: str) -> dict[str, Any]:
    return {"id": call_id, "object": "chat.completion", "created": int(time.time()),
            "model": chat.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text,
                                                 "refusal": None},
                         "finish_reason": FINISH["openai"][result.finish_reason],
                         "logprobs": None}],
            "usage": _openai_usage(result)}


def _openai_stream(chat: ChatRequest, events: Iterator[str | CallResult], call_id: str,
                   include_usage: bool) -> Iterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None,
              usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {"id": call_id, "object": "chat.completion.chunk",
                                "created": created, "model": chat.model,
                                "choices": [] if usage else [{"index": 0, "delta": delta,
                                                              "finish_reason": finish,
                                                              "logprobs": None}]}
        if usage:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    try:
        for event in events:
            if isinstance(event, str):
                yield chunk({"content": event})
            else:
                yield chunk({}, FINISH["openai"][event.finish_reason])
                if include_usage:
                    yield chunk({}, usage=_openai_usage(event))
    except TenantError as exc:
        yield f"data: {json.dumps(error_body('openai', api_error(exc)))}\n\n"
    finally:
        close(events)
    yield "data: [DONE]\n\n"


def chat_completions(request: Request) -> Response:
    return _call(request, "openai", openai_request, _openai_answer, _openai_stream)


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


# --- Anthropic ----------------------------------------------------------------------------

def _anthropic_answer(chat: ChatRequest, result: CallResult, call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "message", "role": "assistant", "model": chat.model,
            "content": [{"type": "text", "text": result.text}],
            "stop_reason": FINISH["anthropic"][result.finish_reason], "stop_sequence": None,
            "usage": {"input_tokens": result.usage.input_tokens,
                      "output_tokens": result.usage.output_tokens}}


def _anthropic_stream(chat: ChatRequest, events: Iterator[str | CallResult], call_id: str,
                      include_usage: bool) -> Iterator[str]:
    def event(name: str, body: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **body}, ensure_ascii=False)}\n\n"

    yield event("message_start", {"message": {
        "id": call_id, "type": "message", "role": "assistant", "model": chat.model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0}}})
    yield event("content_block_start", {"index": 0, "content_block": {"type": "text",
                                                                      "text": ""}})
    try:
        for item in events:
            if isinstance(item, str):
                yield event("content_block_delta", {"index": 0, "delta": {
                    "type": "text_delta", "text": item}})
            else:
                yield event("content_block_stop", {"index": 0})
                yield event("message_delta", {
                    "delta": {"stop_reason": FINISH["anthropic"][item.finish_reason],
                              "stop_sequence": None},
                    "usage": {"input_tokens": item.usage.input_tokens,
                              "output_tokens": item.usage.output_tokens}})
                yield event("message_stop", {})
    except TenantError as exc:
        yield f"event: error\ndata: {json.dumps(error_body('anthropic', api_error(exc)))}\n\n"
    finally:
        close(events)


def messages(request: Request) -> Response:
    return _call(request, "anthropic", lambda body: (anthropic_request(body), False),
                 _anthropic_answer, _anthropic_stream)


async def _with_body(request: Request, endpoint: Callable[[Request], Response]) -> Response:
    """Read the body here (a plain ``def`` endpoint cannot), at most MAX_BODY bytes of it, then
    run the endpoint in the thread pool like every other endpoint."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            break
    request.state.body = bytes(body)
    return await run_in_threadpool(endpoint, request)


async def chat_completions_endpoint(request: Request) -> Response:
    return await _with_body(request, chat_completions)


async def messages_endpoint(request: Request) -> Response:
    return await _with_body(request, messages)


routes = [
    Route("/v1/chat/completions", chat_completions_endpoint, methods=["POST"]),
    Route("/v1/messages", messages_endpoint, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
