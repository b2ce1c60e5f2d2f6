"""``GET /openapi.json``: the OpenAPI 3.1 description of the programmatic API (``/api/...``) and
the gateway (``/v1/...``).

Request bodies are the very pydantic models the endpoints validate with, so the schema cannot
drift from what is accepted; responses are described by the models below, which tests check
against real answers. ``OPERATIONS`` names every programmatic route; a test fails when a route
under ``/api/`` or ``/v1/`` is missing here, or when an operation here has no route."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane.api.agents import RunBody
from control_plane.api.approvals import ActionRequest
from control_plane.api.members import RoleChange
from control_plane.gateway.anthropic_messages import AnthropicMessages, CountTokens
from control_plane.gateway.embeddings import Embeddings
from control_plane.gateway.openai_chat import OpenAIChat
from control_plane.gateway.responses_shapes import ResponsesCreate
from control_plane.tenancy.routes import CreateTenantRequest

VERSION = "1"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class ApiError(_Doc):
    """Every ``/api`` error: one sentence saying what to fix."""

    error: str
    status: int
    request_id: str | None = None


class Provisioning(_Doc):
    job_state: str
    done: int
    total: int


class TenantDocument(_Doc):
    id: int
    slug: str
    name: str
    state: str
    key_provider: str
    key_ref: str
    database_server: str | None
    provisioning: Provisioning | None = None
    role: str | None = None


class TenantList(_Doc):
    tenants: list[TenantDocument]


class MemberDocument(_Doc):
    id: int
    user_id: int
    role: str
    email: str | None = None
    active: bool | None = None


class MemberList(_Doc):
    members: list[MemberDocument]


class WhoAmI(_Doc):
    tenant: dict[str, Any]
    api_key: dict[str, Any]


class ActionDocument(_Doc):
    id: str
    action: str
    state: str
    restricted: bool
    approver_role: str | None
    approvals_needed: int
    via: str | None
    created_at: str | None
    expires_at: str | None
    executed_at: str | None
    url: str
    execute_url: str
    payload: dict[str, Any] | None = None


class AgentDocument(_Doc):
    id: int
    name: str
    phase: str
    tools: list[str]
    credentials_wired: bool
    pending_promotion: str | None
    evidence: dict[str, Any]
    url: str


class ShadowRunDocument(_Doc):
    id: int
    phase: str
    agent: AgentDocument


class OpenAIError(_Doc):
    error: dict[str, Any]


class AnthropicError(_Doc):
    type: str
    error: dict[str, Any]


class ModelList(_Doc):
    object: str
    data: list[dict[str, Any]]


class ChatCompletion(_Doc):
    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class ResponseDocument(_Doc):
    """A Response object of OpenAI's Responses API; it also repeats the request's settings
    (tools, tool_choice, text, instructions, temperature...)."""

    id: str
    object: str
    created_at: int
    status: str
    model: str
    output: list[dict[str, Any]]
    incomplete_details: dict[str, Any] | None
    usage: dict[str, Any] | None


class AnthropicAnswer(_Doc):
    id: str
    type: str
    role: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    usage: dict[str, Any]


class EmbeddingList(_Doc):
    object: str
    model: str
    data: list[dict[str, Any]]
    usage: dict[str, Any]


class TokenCount(_Doc):
    input_tokens: int


class StreamEvent(_Doc):
    """One server-sent event of a streamed answer: ``data`` is a chunk in the API's own
    streaming shape, as JSON (OpenAI's stream ends with ``data: [DONE]``); Anthropic's events
    are named (``message_start``, ``content_block_delta``, ``message_stop``...)."""

    data: str
    event: str | None = None


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form: {name}
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    responses: dict[int, tuple[str, type[BaseModel] | None]] = field(default_factory=dict)
    query: tuple[tuple[str, str, bool], ...] = ()  # (name, description, required)
    error_model: type[BaseModel] = ApiError
    security: tuple[str, ...] = ("apiKey",)
    media_type: str = "application/json"
    errors: tuple[int, ...] = (401, 403, 404, 409, 413, 415, 422, 503)  # 413/415: with a body
    streams: bool = False  # ``"stream": true`` answers text/event-stream


_ERRORS: dict[int, str] = {
    400: "the body is not JSON, or the request could never fit the tenant's token rate limit",
    401: "no valid API key or session",
    402: "the monthly spend cap is reached",
    403: "refused (the sentence says why)",
    404: "no such resource (or another tenant's)",
    409: "the resource's state does not allow it",
    413: "the body is over its limit",
    415: "the body is not application/json",
    422: "the input is invalid, or has a field the API does not take (the sentence names it)",
    429: "rate limited (Retry-After says when to try again)",
    502: "every attempt at the provider failed",
    503: "the tenant's key or a database is unavailable; try again later",
}
_GATEWAY_CALL_ERRORS = (400, 401, 402, 403, 413, 415, 422, 429, 502, 503)

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/api/whoami", "The tenant and key behind an API key", "tenancy",
              responses={200: ("the key's tenant", WhoAmI)}),
    Operation("GET", "/api/tenants", "Tenants the signed-in user belongs to", "tenancy",
              responses={200: ("the tenants", TenantList)}, security=("session",)),
    Operation("POST", "/api/tenants", "Create a tenant; provisioning continues as a job",
              "tenancy", body=CreateTenantRequest,
              responses={202: ("provisioning started", TenantDocument)},
              security=("session",)),
    Operation("GET", "/api/tenants/{tenant_id}", "One tenant and its provisioning progress",
              "tenancy", responses={200: ("the tenant", TenantDocument)},
              security=("session",)),
    Operation("GET", "/api/tenants/{tenant_id}/members", "The tenant's members and roles",
              "tenancy", responses={200: ("the members", MemberList)}, security=("session",)),
    Operation("POST", "/api/tenants/{tenant_id}/members/{membership_id}/role",
              "Change a member's role (never above one's own, never of a higher role, never "
              "the last Owner's)", "tenancy", body=RoleChange,
              responses={200: ("the membership", MemberDocument)}, security=("session",)),
    Operation("DELETE", "/api/tenants/{tenant_id}/members/{membership_id}",
              "Remove a member (never of a higher role, never the last Owner); their API "
              "keys of this tenant are revoked", "tenancy",
              responses={204: ("removed", None)}, security=("session",)),
    Operation("GET", "/api/audit/export", "Export the tenant's audit chain (NDJSON)", "audit",
              responses={200: ("the export file, ops/AUDIT_FORMAT.md", None)},
              query=(("tenant", "the tenant id (sessions only)", False),
                     ("first_seq", "first sequence number", False),
                     ("last_seq", "last sequence number", False),
                     ("since", "a date, or a date and time (UTC)", False),
                     ("until", "a date, or a date and time (UTC)", False)),
              security=("apiKey", "session"), media_type="application/x-ndjson"),
    Operation("POST", "/api/actions", "Ask to run an action; restricted ones need approval",
              "approvals", body=ActionRequest,
              responses={200: ("not restricted: approved at once", ActionDocument),
                         202: ("pending approval", ActionDocument)},
              query=(("tenant", "the tenant id (sessions only)", False),),
              security=("apiKey", "session")),
    Operation("GET", "/api/actions/{request_id}", "An approval request's state", "approvals",
              responses={200: ("the request", ActionDocument)},
              query=(("tenant", "the tenant id (sessions only)", False),),
              security=("apiKey", "session")),
    Operation("POST", "/api/actions/{request_id}/execute",
              "Use an approval, exactly once", "approvals",
              responses={200: ("approved: the payload to act on", ActionDocument)},
              query=(("tenant", "the tenant id (sessions only)", False),),
              security=("apiKey", "session")),
    Operation("GET", "/api/agents/{agent_id}", "An agent, its phase and its evidence",
              "agents", responses={200: ("the agent", AgentDocument)},
              query=(("tenant", "the tenant id (sessions only)", False),),
              security=("apiKey", "session")),
    Operation("POST", "/api/agents/{agent_id}/shadow-runs", "Record a shadow run", "agents",
              body=RunBody, responses={201: ("recorded", ShadowRunDocument)},
              query=(("tenant", "the tenant id (sessions only)", False),),
              security=("apiKey", "session")),
    Operation("POST", "/v1/chat/completions", "OpenAI-compatible chat completion", "gateway",
              body=OpenAIChat,
              responses={200: ("the answer (text/event-stream when stream is true)",
                               ChatCompletion)},
              error_model=OpenAIError, errors=_GATEWAY_CALL_ERRORS, streams=True),
    Operation("POST", "/v1/messages", "Anthropic-compatible message", "gateway",
              body=AnthropicMessages,
              responses={200: ("the answer (text/event-stream when stream is true)",
                               AnthropicAnswer)},
              error_model=AnthropicError, errors=_GATEWAY_CALL_ERRORS, streams=True),
    Operation("POST", "/v1/responses", "OpenAI-compatible Responses API (no stored responses)",
              "gateway", body=ResponsesCreate,
              responses={200: ("the response (text/event-stream when stream is true)",
                               ResponseDocument)},
              error_model=OpenAIError, errors=_GATEWAY_CALL_ERRORS, streams=True),
    Operation("POST", "/v1/messages/count_tokens", "Anthropic-compatible token count",
              "gateway", body=CountTokens,
              responses={200: ("the prompt's tokens", TokenCount)},
              error_model=AnthropicError, errors=_GATEWAY_CALL_ERRORS),
    Operation("POST", "/v1/embeddings", "OpenAI-compatible embeddings", "gateway",
              body=Embeddings, responses={200: ("one vector per input", EmbeddingList)},
              error_model=OpenAIError, errors=_GATEWAY_CALL_ERRORS),
    Operation("GET", "/v1/models", "The models on the tenant's allowlist", "gateway",
              responses={200: ("the allowed models", ModelList)}, error_model=OpenAIError,
              errors=(401, 403, 503)),
)


def _ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    document = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in document.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas.setdefault(model.__name__, document)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _path_params(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    return [{"name": name, "in": "path", "required": True,
             "schema": {"type": "integer"} if name in ("tenant_id", "agent_id", "membership_id")
             else {"type": "string", "maxLength": 64}} for name in names]


def _operation(op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, (description, model) in op.responses.items():
        if status == 204:
            responses[str(status)] = {"description": description}
            continue
        content = {op.media_type: {"schema": _ref(model, schemas) if model else {
            "type": "string"}}}
        if op.streams:
            content["text/event-stream"] = {"schema": _ref(StreamEvent, schemas)}
        responses[str(status)] = {"description": description, "content": content}
    for status in op.errors:
        if status in (413, 415) and op.body is None:
            continue
        responses[str(status)] = {"description": _ERRORS[status], "content": {
            "application/json": {"schema": _ref(op.error_model, schemas)}}}
    document: dict[str, Any] = {
        "operationId": f"{op.method.lower()}_{op.path.strip('/').replace('/', '_')}"
                       .replace("{", "").replace("}", "").replace("-", "_"),
        "summary": op.summary, "tags": [op.tag],
        "parameters": _path_params(op.path) + [
            {"name": name, "in": "query", "required": required, "description": description,
             "schema": {"type": "string", "maxLength": 100}}
            for name, description, required in op.query],
        "responses": responses,
        "security": [{scheme: []} for scheme in op.security],
    }
    if op.body is not None:
        document["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref(op.body, schemas)}}}
    return document


def build_spec() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Magistrate API", "version": VERSION,
                 "description": "The programmatic API and the governed LLM gateway. API keys "
                                "(mg_…) go in Authorization: Bearer (or x-api-key on /v1)."},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "a tenant API key, mg_…"},
                "session": {"type": "apiKey", "in": "cookie", "name": "magistrate_session",
                            "description": "a signed-in dashboard session (the cookie is "
                                           "__Host-magistrate_session under https)"},
            },
        },
    }


_SPEC: dict[str, Any] | None = None


def openapi_json(request: Request) -> Response:
    global _SPEC  # built once per process: the operations are fixed at import
    if _SPEC is None:
        _SPEC = build_spec()
    return JSONResponse(_SPEC)


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
