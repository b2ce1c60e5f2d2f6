"""OpenAI's Responses API, ``POST /v1/responses``: the request, validated against its pydantic
shape (responses_shapes.py: unknown fields refused, 422 naming them), turned into the
provider-neutral ``ChatRequest`` that every other drop-in endpoint makes, and the endpoint;
responses_render.py writes the answer and the stream back in the Responses API's own shape.

    input (a string, or items)                   ChatRequest
      message (user, system, developer,      →     ChatMessage (developer as system); text and
        assistant; EasyInputMessage too)             image parts as Text and Image blocks
      function_call                          →     a ToolCall block of an assistant message
                                                     (consecutive calls join one message, and
                                                     the assistant message before them)
      function_call_output                   →     a ToolResult block of a user message
                                                     (consecutive outputs join one message)
    instructions                             →     a system message, first
    tools (function)                         →     Tool; built-in tools are refused
    tool_choice, parallel_tool_calls         →     ToolChoice, parallel_tool_calls
    text.format (json_object, json_schema)   →     OutputFormat
    max_output_tokens, temperature, top_p    →     max_tokens, temperature, top_p
    reasoning.effort                         →     sampling.reasoning_effort

The gateway keeps no prompt or answer text, so nothing that needs a stored response goes
through: ``previous_response_id``, ``item_reference`` items, ``conversation``, ``background``
and ``prompt`` are refused with a sentence, and ``store: true`` is accepted but stores nothing
(the answer says ``store: false``). Reasoning items are refused: the gateway never returns
them, so a conversation held through it has none to send back. ``metadata``, ``user``,
``safety_identifier`` and ``prompt_cache_key`` are accepted and never forwarded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control_plane.gateway import api
from control_plane.gateway.responses_render import answer, stream
from control_plane.gateway.responses_shapes import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    FunctionTool,
    InputImage,
    InputText,
    MessageItem,
    OutputText,
    Refusal,
    ResponsesCreate,
    TextConfig,
    TextFormatJsonObject,
    TextFormatJsonSchema,
)
from control_plane.gateway.shapes import InvalidBody
from tenant_runtime.gateway.content import (
    Block,
    Image,
    OutputFormat,
    Text,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)
from tenant_runtime.gateway.messages import ChatMessage, ChatRequest, Sampling
from tenant_runtime.gateway.names import normalize_model_name
from tenant_runtime.text import escaped

DEFAULT_MAX_OUTPUT_TOKENS = 4096
NO_STORAGE = ("{field} needs responses stored by the gateway, which keeps no prompt or answer "
              "text; send the conversation's items in `input` instead.")
BUILT_IN = ("The tool type '{type}' at {where} is one of OpenAI's built-in tools, which run on "
            "OpenAI's servers and cannot be governed by the gateway; offer function tools "
            "(type 'function') instead.")
# ``include`` values the gateway honours: it never returns reasoning items, so there is no
# encrypted reasoning to leave out of them
INCLUDABLE = frozenset({"reasoning.encrypted_content"})
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ResponsesCall:
    """The chat request, and what the answer echoes back of the request (the Responses API
    repeats the call's settings in every response object)."""

    chat: ChatRequest
    echo: dict[str, Any] = field(default_factory=dict, hash=False)


# --- errors ---------------------------------------------------------------------------------

def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic location as OpenAI's ``param`` spells it: ``input[2].content[0].file_id``."""
    out, after = "", None
    for part in loc:
        if after == "format" and part in ("text", "json_object", "json_schema"):
            after = None  # the union's tag, not a field
            continue
        after = part
        if isinstance(part, int):
            out += f"[{part}]"
        elif not any(c in str(part) for c in "[]()'\","):  # union branches: not a field
            out += f".{part}" if out else str(part)
    return out


def _invalid(exc: ValidationError, prefix: str = "") -> InvalidBody:
    error = exc.errors()[0]
    rest = _where(error["loc"])
    where = f"{prefix}.{rest}" if prefix and rest and not rest.startswith("[") else \
        prefix + rest
    if error["type"] == "extra_forbidden":
        return InvalidBody(f"Unrecognized request argument supplied: {where}. The gateway's "
                           "Responses API does not support it (docs/gateway.md lists what it "
                           "accepts).", where)
    if error["type"] == "missing":
        return InvalidBody(f"Missing required parameter: {where}.", where)
    if not where:
        return InvalidBody("The request body must be a JSON object.")
    return InvalidBody(f"Invalid value for {where}: {error['msg']}.", where)


def _validate(model: type[M], value: Any, where: str) -> M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise _invalid(exc, where) from None


def _model_name(raw: str) -> str:
    """As the other endpoints do (shapes.py): a name that cannot be one is kept as sent, and
    the allowlist refuses it (403, audited)."""
    if not raw.strip():
        raise InvalidBody("The model must be a model name such as 'gpt-4o-mini'.", "model")
    return normalize_model_name(raw) or raw.strip()[:100]


# --- content --------------------------------------------------------------------------------

def _image(part: InputImage, where: str) -> Image:
    if part.file_id is not None:
        raise InvalidBody(f"{where}.file_id refers to a file stored with OpenAI, which the "
                          "gateway cannot see or govern; send the image as image_url (an https "
                          "or data: URL) instead.", f"{where}.file_id")
    if not part.image_url:
        raise InvalidBody(f"{where} needs an image_url (an https or data: URL).",
                          f"{where}.image_url")
    detail = part.detail if part.detail in ("low", "high", "auto") else None
    if part.detail == "original":
        raise InvalidBody(f"{where}.detail 'original' is not supported by the gateway; use "
                          "low, high or auto.", f"{where}.detail")
    return Image("url", part.image_url, detail=detail)


def _input_part(raw: Any, where: str, *, images: bool = True) -> Text | Image:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "input_text":
        return Text(_validate(InputText, raw, where).text)
    if kind == "input_image" and images:
        return _image(_validate(InputImage, raw, where), where)
    if kind == "input_file":
        raise InvalidBody(f"{where}: input_file parts are not supported by the gateway; send "
                          "the file's text as input_text.", f"{where}.type")
    if kind == "input_audio":
        raise InvalidBody(f"{where}: input_audio parts are not supported by the gateway.",
                          f"{where}.type")
    raise InvalidBody(f"Invalid value for {where}.type: {kind!r} is not a content part the "
                      "gateway accepts here (input_text"
                      f"{', input_image' if images else ''}).", f"{where}.type")


def _assistant_part(raw: Any, where: str) -> Text:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "output_text":
        return Text(_validate(OutputText, raw, where).text)
    if kind == "refusal":
        return Text(_validate(Refusal, raw, where).refusal)
    if kind == "input_text":
        return Text(_validate(InputText, raw, where).text)
    raise InvalidBody(f"Invalid value for {where}.type: {kind!r} is not a content part of an "
                      "assistant message (output_text, refusal).", f"{where}.type")


def _message(item: MessageItem, where: str) -> ChatMessage:
    role = "system" if item.role == "developer" else item.role
    if isinstance(item.content, str):
        return ChatMessage(role, item.content)
    at = f"{where}.content"
    blocks: tuple[Block, ...]
    if role == "assistant":
        blocks = tuple(_assistant_part(p, f"{at}[{i}]") for i, p in enumerate(item.content))
    else:
        blocks = tuple(_input_part(p, f"{at}[{i}]", images=role == "user")
                       for i, p in enumerate(item.content))
    return ChatMessage(role, blocks)


def _tool_output(item: FunctionCallOutputItem, where: str) -> ToolResult:
    if isinstance(item.output, str):
        return ToolResult(item.call_id, (Text(item.output),) if item.output else ())
    return ToolResult(item.call_id, tuple(_input_part(p, f"{where}.output[{i}]")
                                          for i, p in enumerate(item.output)))


def _items(raw: list[dict[str, Any]]) -> list[ChatMessage]:
    """The input items as messages: function calls join the assistant message they follow,
    consecutive outputs one user message, as the Messages-shaped providers need them."""
    messages: list[ChatMessage] = []
    last_kind = ""
    called: set[str] = set()
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        kind = item.get("type") if isinstance(item, dict) else None
        if not isinstance(item, dict):
            raise InvalidBody(f"Invalid value for {where}: an input item is a JSON object.",
                              where)
        if kind == "message" or (kind is None and "role" in item):
            messages.append(_message(_validate(MessageItem, item, where), where))
        elif kind == "function_call":
            call = _validate(FunctionCallItem, item, where)
            block = ToolCall(call.call_id, call.name, call.arguments)
            called.add(call.call_id)
            if messages and messages[-1].role == "assistant":
                messages[-1] = ChatMessage("assistant", (*messages[-1].blocks, block))
            else:
                messages.append(ChatMessage("assistant", (block,)))
        elif kind == "function_call_output":
            output = _validate(FunctionCallOutputItem, item, where)
            if output.call_id not in called:
                raise InvalidBody(f"{where} answers the call_id {output.call_id!r}, which no "
                                  "function_call item before it in input made; send the "
                                  "function_call item too.", f"{where}.call_id")
            result = _tool_output(output, where)
            if last_kind == "output":
                messages[-1] = ChatMessage("user", (*messages[-1].blocks, result))
            else:
                messages.append(ChatMessage("user", (result,)))
        elif kind == "reasoning":
            raise InvalidBody(f"{where}: reasoning items are not accepted. The gateway never "
                              "returns them (a conversation held through it has none), and "
                              "an OpenAI reasoning item cannot be passed to every provider; "
                              "leave them out of input.", f"{where}.type")
        elif kind == "item_reference":
            raise InvalidBody(NO_STORAGE.format(field=f"{where} (an item_reference)"),
                              f"{where}.type")
        elif kind is None:
            raise InvalidBody(f"Missing required parameter: {where}.type.", f"{where}.type")
        else:
            raise InvalidBody(f"Invalid value for {where}.type: {kind!r} items belong to "
                              "OpenAI's built-in tools, which the gateway does not support; it "
                              "accepts message, function_call and function_call_output items.",
                              f"{where}.type")
        last_kind = "output" if kind == "function_call_output" else "other"
    return messages


# --- tools and options ----------------------------------------------------------------------

def _tools(raw: list[dict[str, Any]]) -> tuple[Tool, ...]:
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        where = f"tools[{i}]"
        kind = item.get("type") if isinstance(item, dict) else None
        if kind != "function":
            if kind is None:
                raise InvalidBody(f"Missing required parameter: {where}.type.", f"{where}.type")
            raise InvalidBody(BUILT_IN.format(type=kind, where=where), f"{where}.type")
        tool = _validate(FunctionTool, item, where)
        if any(t.name == tool.name for t in tools):
            raise InvalidBody(f"Two tools are named {tool.name!r}; tool names must be unique.",
                              f"{where}.name")
        tools.append(Tool(tool.name, tool.description,
                          tool.parameters if tool.parameters is not None else {},
                          tool.strict))
    return tuple(tools)


def _tool_choice(raw: str | dict[str, Any] | None,
                 tools: tuple[Tool, ...]) -> ToolChoice | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw == "required" and not tools:
            raise InvalidBody("tool_choice 'required' needs at least one tool in tools.",
                              "tool_choice")
        return ToolChoice(raw)  # type: ignore[arg-type]
    kind = raw.get("type")
    if kind != "function":
        raise InvalidBody(f"Invalid value for tool_choice.type: {kind!r}. The gateway accepts "
                          "'auto', 'none', 'required' or {\"type\": \"function\", \"name\": "
                          "...}.", "tool_choice.type")
    choice = _validate(FunctionChoice, raw, "tool_choice")
    if all(t.name != choice.name for t in tools):
        raise InvalidBody(f"tool_choice names the function {choice.name!r}, which is not among "
                          "tools.", "tool_choice.name")
    return ToolChoice("tool", choice.name)


def _output(text: TextConfig | None) -> OutputFormat | None:
    if text is None:
        return None
    if text.verbosity not in (None, "medium"):
        raise InvalidBody("text.verbosity is not supported by the gateway (it cannot be "
                          "passed to every provider); leave it out.", "text.verbosity")
    fmt = text.format
    if isinstance(fmt, TextFormatJsonObject):
        return OutputFormat("json_object")
    if isinstance(fmt, TextFormatJsonSchema):
        return OutputFormat("json_schema", name=fmt.name, schema=fmt.schema_,
                            strict=fmt.strict, description=fmt.description)
    return None


def _refuse_unsupported(parsed: ResponsesCreate) -> None:
    if parsed.previous_response_id is not None:
        raise InvalidBody(NO_STORAGE.format(field="previous_response_id"),
                          "previous_response_id")
    if parsed.conversation is not None:
        raise InvalidBody(NO_STORAGE.format(field="conversation"), "conversation")
    if parsed.background:
        raise InvalidBody("background needs responses stored by the gateway until they are "
                          "fetched, and it keeps no prompt or answer text; call without "
                          "background, streaming if the answer is long.", "background")
    if parsed.prompt is not None:
        raise InvalidBody("prompt refers to a prompt template stored with OpenAI, which the "
                          "gateway cannot see or redact; send its text as instructions and "
                          "input instead.", "prompt")
    for value in parsed.include or ():
        if value not in INCLUDABLE:
            raise InvalidBody(f"include {value!r} cannot be honoured by the gateway; it can "
                              "only include what it returns (message and function_call "
                              "items).", "include")
    if parsed.truncation == "auto":
        raise InvalidBody("truncation 'auto' is not supported: the gateway never drops input "
                          "items; send 'disabled' or leave it out.", "truncation")
    if parsed.service_tier not in (None, "auto", "default"):
        raise InvalidBody(f"service_tier {parsed.service_tier!r} is not supported: the "
                          "gateway's routes decide where a call goes; send 'auto' or "
                          "'default', or leave it out.", "service_tier")
    reasoning = parsed.reasoning
    if reasoning is not None and (reasoning.summary or reasoning.generate_summary):
        which = "summary" if reasoning.summary else "generate_summary"
        raise InvalidBody(f"reasoning.{which} is not supported: the gateway returns no "
                          "reasoning items; leave it out.", f"reasoning.{which}")


def _storable_model(body: Any) -> Any:
    """The model name with NULs and unpaired surrogates escaped (shapes.py says why)."""
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return {**body, "model": escaped(body["model"])}
    return body


def responses_request(body: Any) -> ResponsesCall:
    parsed = _validate(ResponsesCreate, _storable_model(body), "")
    _refuse_unsupported(parsed)
    messages: list[ChatMessage] = []
    if parsed.instructions:
        messages.append(ChatMessage("system", parsed.instructions))
    if isinstance(parsed.input, str):
        messages.append(ChatMessage("user", parsed.input))
    else:
        messages.extend(_items(parsed.input))
    if not messages:
        raise InvalidBody("input is empty: send a string or at least one item.", "input")
    tools = _tools(parsed.tools or [])
    tool_choice = _tool_choice(parsed.tool_choice, tools)
    effort = parsed.reasoning.effort if parsed.reasoning else None
    chat = ChatRequest(
        model=_model_name(parsed.model), messages=tuple(messages),
        max_tokens=parsed.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS,
        temperature=parsed.temperature, top_p=parsed.top_p, stream=parsed.stream,
        tools=tools, tool_choice=tool_choice, parallel_tool_calls=parsed.parallel_tool_calls,
        output=_output(parsed.text), sampling=Sampling(reasoning_effort=effort))
    return ResponsesCall(chat, _echo(parsed))


def _echo(parsed: ResponsesCreate) -> dict[str, Any]:
    """The request's settings as every Response object repeats them."""
    fmt: dict[str, Any] = {"type": "text"}
    if parsed.text is not None and parsed.text.format is not None:
        fmt = parsed.text.format.model_dump(by_alias=True, exclude_none=True)
    choice: Any = parsed.tool_choice if parsed.tool_choice is not None else "auto"
    return {
        "instructions": parsed.instructions,
        "max_output_tokens": parsed.max_output_tokens,
        "metadata": parsed.metadata or {},
        "parallel_tool_calls": (True if parsed.parallel_tool_calls is None
                                else parsed.parallel_tool_calls),
        "previous_response_id": None,
        "reasoning": {"effort": parsed.reasoning.effort if parsed.reasoning else None,
                      "summary": None},
        "service_tier": "default",
        "store": False,  # nothing is stored, whatever the request said
        "temperature": 1.0 if parsed.temperature is None else parsed.temperature,
        "text": {"format": fmt, "verbosity": "medium"},
        "tool_choice": choice,
        "tools": [{"type": "function", "name": t.get("name"),
                   "description": t.get("description"), "parameters": t.get("parameters"),
                   "strict": t.get("strict")} for t in parsed.tools or []],
        "top_p": 1.0 if parsed.top_p is None else parsed.top_p,
        "truncation": "disabled",
        "user": parsed.user,
        "safety_identifier": parsed.safety_identifier,
        "prompt_cache_key": parsed.prompt_cache_key,
    }


# --- the endpoint ---------------------------------------------------------------------------

def create_response(request: Request) -> Response:
    echo: dict[str, Any] = {}

    def parse(body: Any) -> tuple[ChatRequest, bool]:
        call = responses_request(body)
        echo.update(call.echo)
        return call.chat, False

    return api._call(request, "openai", parse,
                     lambda chat, result, call_id: answer(chat, result, call_id, echo),
                     lambda chat, events, call_id, _usage: stream(chat, events, call_id, echo),
                     id_prefix="resp")


async def create_response_endpoint(request: Request) -> Response:
    return await api._with_body(request, create_response)


routes = [Route("/v1/responses", create_response_endpoint, methods=["POST"])]
