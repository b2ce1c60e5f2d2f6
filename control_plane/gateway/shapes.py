"""The two drop-in request shapes, validated with pydantic and turned into a ``ChatRequest``:
OpenAI's chat completions and Anthropic's messages. Text content only; a field the gateway
does not support is refused (422, in the API's own error shape) with a sentence that names it,
rather than silently dropped (a caller relying on ``tools`` or ``seed`` must not get an answer
that ignored them). Fields that could carry personal data and have no effect on the answer
(``user``, ``safety_identifier``, ``metadata``, message ``name``) are accepted and never
forwarded. The official SDKs send only the fields their caller passes, so a plain call
(model, messages, max_tokens, temperature, top_p, stop, stream, stream_options) goes
through; docs/gateway.md lists what is accepted."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tenant_runtime.gateway.messages import ChatMessage, ChatRequest
from tenant_runtime.gateway.names import normalize_model_name
from tenant_runtime.text import escaped

DEFAULT_MAX_TOKENS = 4096
MAX_TOKENS_LIMIT = 200_000
MAX_MESSAGES = 1000


class InvalidBody(Exception):
    """JSON that does not fit the shape: answered 422 with ``message``, naming ``param``."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None  # Anthropic prompt caching: accepted, ignored


class OpenAIMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]


class OpenAIChat(_Strict):
    model: str = Field(max_length=200)
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, str] | None = None


class AnthropicMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[TextPart]


class AnthropicMessages(_Strict):
    model: str = Field(max_length=200)
    max_tokens: Tokens
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[TextPart] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=8)
    stream: bool = False
    metadata: dict[str, Any] | None = None


def _text(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "\n".join(p.text for p in content)


def _validation_sentence(exc: ValidationError) -> InvalidBody:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return InvalidBody(f"Unrecognized request argument supplied: {where}. The gateway "
                           "supports text chat only (no tools, images or other options).",
                           where)
    if error["type"] == "missing":
        return InvalidBody(f"Missing required parameter: {where}.", where)
    if not where:
        return InvalidBody("The request body must be a JSON object.")
    return InvalidBody(f"Invalid value for {where}: {error['msg']}.", where)


def _storable_model(body: Any) -> Any:
    """The body with its model name's NUL characters and unpaired surrogates written as
    escapes (which pydantic, Postgres and UTF-8 could not take): such a name is no model's,
    and goes on to be refused by the allowlist, audited, like any other unlisted name. Every
    other string of the body was checked at the edge (api.py, ``_json_body``)."""
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return {**body, "model": escaped(body["model"])}
    return body


def _model(raw: str) -> str:
    """The normalized name; a name that cannot be one is kept as sent (stripped): it matches
    no route, so the gateway refuses it as off the allowlist (403, audited) like any other."""
    if not raw.strip():
        raise InvalidBody("The model must be a model name such as 'gpt-4o-mini'.", "model")
    return normalize_model_name(raw) or raw.strip()[:100]


def openai_request(body: Any) -> tuple[ChatRequest, bool]:
    """The chat request and whether to send a usage chunk at the end of a stream."""
    try:
        parsed = OpenAIChat.model_validate(_storable_model(body))
    except ValidationError as exc:
        raise _validation_sentence(exc) from None
    if parsed.max_tokens and parsed.max_completion_tokens:
        raise InvalidBody("Give max_tokens or max_completion_tokens, not both.", "max_tokens")
    stop = [parsed.stop] if isinstance(parsed.stop, str) else (parsed.stop or [])
    if len(stop) > 4:
        raise InvalidBody("At most 4 stop sequences.", "stop")
    messages = tuple(ChatMessage("system" if m.role == "developer" else m.role, _text(m.content))
                     for m in parsed.messages)
    request = ChatRequest(
        model=_model(parsed.model), messages=messages,
        max_tokens=parsed.max_completion_tokens or parsed.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=parsed.temperature, top_p=parsed.top_p, stop=tuple(stop),
        stream=parsed.stream)
    return request, bool(parsed.stream_options and parsed.stream_options.include_usage)


def anthropic_request(body: Any) -> ChatRequest:
    try:
        parsed = AnthropicMessages.model_validate(_storable_model(body))
    except ValidationError as exc:
        raise _validation_sentence(exc) from None
    system = () if parsed.system is None else (ChatMessage("system", _text(parsed.system)),)
    messages = system + tuple(ChatMessage(m.role, _text(m.content)) for m in parsed.messages)
    return ChatRequest(model=_model(parsed.model), messages=messages,
                       max_tokens=parsed.max_tokens, temperature=parsed.temperature,
                       top_p=parsed.top_p, stop=tuple(parsed.stop_sequences or ()),
                       stream=parsed.stream)
