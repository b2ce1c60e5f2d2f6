"""OpenAI's Chat Completions in and out: the request shape (pydantic, unknown fields refused
with a sentence naming them) parsed into a ``ChatRequest``, and the answer and its stream
written back in OpenAI's shape, tool calls included.

Legacy ``functions``/``function_call`` are refused with a sentence saying to send ``tools`` and
``tool_choice`` (every current SDK and framework does): translating them would need tool-call
ids the legacy form does not have. ``store: true`` is refused (the gateway does not ask
providers to keep completions). Thinking blocks a provider returns have no place in this shape
and are left out of the answer, as OpenAI leaves out its own models' reasoning."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import Field

from control_plane.gateway.shapes import (
    DEFAULT_MAX_TOKENS,
    MAX_MESSAGES,
    MAX_TOOLS,
    InvalidBody,
    Strict,
    TextPart,
    Tokens,
    ToolName,
    arguments_json,
    image_block,
    model_name,
    validated,
)
from tenant_runtime.gateway.content import (
    Block,
    OutputFormat,
    Text,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)
from tenant_runtime.gateway.messages import ChatMessage, ChatRequest, Sampling
from tenant_runtime.gateway.providers.base import (
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
)
from tenant_runtime.gateway.service import CallResult

FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "other": "stop"}
MAX_CHOICES = 8


class ImageURL(Strict):
    url: str = Field(max_length=8 * 1024 * 1024)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class RefusalPart(Strict):
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


class FunctionCall(Strict):
    name: ToolName
    arguments: str


class ToolCallIn(Strict):
    id: str = Field(min_length=1, max_length=200)
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(Strict):
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(Strict):
    role: Literal["user"]
    content: str | list[UserPart]
    name: str | None = None


class AssistantMessage(Strict):
    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    tool_calls: list[ToolCallIn] | None = Field(default=None, max_length=MAX_TOOLS)
    refusal: str | None = None
    name: str | None = None


class ToolMessage(Strict):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str = Field(min_length=1, max_length=200)


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage,
                    Field(discriminator="role")]


class FunctionDef(Strict):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Strict):
    name: ToolName


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchema(Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class FormatText(Strict):
    type: Literal["text"]


class FormatJsonObject(Strict):
    type: Literal["json_object"]


class FormatJsonSchema(Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[FormatText | FormatJsonObject | FormatJsonSchema,
                           Field(discriminator="type")]


class StreamOptions(Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # accepted; streams are never obfuscated


class OpenAIChat(Strict):
    model: str = Field(max_length=200)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    store: bool | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None  # accepted, not forwarded
    metadata: dict[str, str] | None = None
    functions: list[Any] | None = None
    function_call: Any = None


LEGACY = ("The legacy {field} form is not supported: send tools=[{{\"type\": \"function\", "
          "\"function\": ...}}] and tool_choice instead.")


def _text(content: str | list[TextPart] | list[AssistantPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(p.text if isinstance(p, TextPart) else p.refusal for p in content)


def _user_blocks(content: str | list[UserPart], where: str) -> str | tuple[Block, ...]:
    if isinstance(content, str):
        return content
    blocks: list[Block] = []
    for n, part in enumerate(content):
        if isinstance(part, TextPart):
            blocks.append(Text(part.text))
        else:
            blocks.append(image_block(part.image_url.url, part.image_url.detail,
                                      f"{where}.content.{n}.image_url.url"))
    return tuple(blocks)


def _messages(parsed: OpenAIChat) -> tuple[ChatMessage, ...]:
    """The messages, neutral: ``tool`` messages become tool-result blocks of a user message,
    consecutive ones (answers to one assistant turn's calls) joined."""
    out: list[ChatMessage] = []
    for n, m in enumerate(parsed.messages):
        where = f"messages.{n}"
        if isinstance(m, SystemMessage):
            out.append(ChatMessage("system", _text(m.content)))
        elif isinstance(m, UserMessage):
            out.append(ChatMessage("user", _user_blocks(m.content, where)))
        elif isinstance(m, AssistantMessage):
            if m.content is None and not m.tool_calls and m.refusal is None:
                raise InvalidBody(f"{where} must have content or tool_calls (an assistant "
                                  "message says something or calls a tool).", where)
            blocks: list[Block] = []
            if text := _text(m.content) or (m.refusal or ""):
                blocks.append(Text(text))
            for k, call in enumerate(m.tool_calls or ()):
                blocks.append(ToolCall(call.id, call.function.name, arguments_json(
                    call.function.arguments, f"{where}.tool_calls.{k}.function.arguments")))
            out.append(ChatMessage("assistant", tuple(blocks)))
        else:
            result = ToolResult(m.tool_call_id, (Text(_text(m.content)),))
            last = out[-1] if out else None
            if last is not None and last.role == "user" and isinstance(last.content, tuple) \
                    and last.content and all(isinstance(b, ToolResult) for b in last.content):
                out[-1] = ChatMessage("user", (*last.content, result))
            else:
                out.append(ChatMessage("user", (result,)))
    return tuple(out)


def _output(fmt: ResponseFormat | None) -> OutputFormat | None:
    if fmt is None or isinstance(fmt, FormatText):
        return None
    if isinstance(fmt, FormatJsonObject):
        return OutputFormat("json_object")
    spec = fmt.json_schema
    return OutputFormat("json_schema", spec.name, spec.schema_, spec.strict, spec.description)


def _tool_choice(choice: str | NamedToolChoice | None) -> ToolChoice | None:
    if choice is None:
        return None
    if isinstance(choice, NamedToolChoice):
        return ToolChoice("tool", choice.function.name)
    return ToolChoice(choice)  # type: ignore[arg-type]


def parse(body: Any) -> tuple[ChatRequest, bool]:
    """The chat request, and whether to send a usage chunk at the end of a stream."""
    parsed = validated(OpenAIChat, body)
    if parsed.functions is not None:
        raise InvalidBody(LEGACY.format(field="functions"), "functions")
    if parsed.function_call is not None:
        raise InvalidBody(LEGACY.format(field="function_call"), "function_call")
    if parsed.store:
        raise InvalidBody("store: true is not supported: the gateway does not ask providers to "
                          "keep completions. Leave store out or set it to false.", "store")
    if parsed.max_tokens and parsed.max_completion_tokens:
        raise InvalidBody("Give max_tokens or max_completion_tokens, not both.", "max_tokens")
    stop = [parsed.stop] if isinstance(parsed.stop, str) else (parsed.stop or [])
    if len(stop) > 4:
        raise InvalidBody("At most 4 stop sequences.", "stop")
    if parsed.top_logprobs is not None and not parsed.logprobs:
        raise InvalidBody("top_logprobs needs logprobs: true.", "top_logprobs")
    tools = tuple(Tool(t.function.name, t.function.description,
                       t.function.parameters or {"type": "object", "properties": {}},
                       t.function.strict) for t in parsed.tools or ())
    choice = _tool_choice(parsed.tool_choice)
    if choice is not None and choice.mode == "tool" and choice.name not in {t.name for t in tools}:
        raise InvalidBody(f"tool_choice names {choice.name!r}, which is not among the tools.",
                          "tool_choice")
    request = ChatRequest(
        model=model_name(parsed.model), messages=_messages(parsed),
        max_tokens=parsed.max_completion_tokens or parsed.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=parsed.temperature, top_p=parsed.top_p, stop=tuple(stop),
        stream=parsed.stream, tools=tools, tool_choice=choice,
        parallel_tool_calls=parsed.parallel_tool_calls, output=_output(parsed.response_format),
        n=parsed.n or 1,
        sampling=Sampling(seed=parsed.seed, presence_penalty=parsed.presence_penalty,
                          frequency_penalty=parsed.frequency_penalty,
                          logit_bias=parsed.logit_bias, logprobs=parsed.logprobs,
                          top_logprobs=parsed.top_logprobs,
                          reasoning_effort=parsed.reasoning_effort))
    return request, bool(parsed.stream_options and parsed.stream_options.include_usage)


# --- answers ------------------------------------------------------------------------------

def usage(result: CallResult) -> dict[str, int]:
    return {"prompt_tokens": result.usage.input_tokens,
            "completion_tokens": result.usage.output_tokens,
            "total_tokens": result.usage.input_tokens + result.usage.output_tokens}


def _tool_calls(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def answer(chat: ChatRequest, result: CallResult, call_id: str) -> dict[str, Any]:
    choices = []
    for index, choice in enumerate(result.choices):
        message: dict[str, Any] = {"role": "assistant", "content": choice.text or None,
                                   "refusal": None}
        if choice.tool_calls:
            message["tool_calls"] = _tool_calls(choice.tool_calls)
        elif message["content"] is None:
            message["content"] = ""
        choices.append({"index": index, "message": message,
                        "finish_reason": FINISH[choice.finish_reason],
                        "logprobs": choice.logprobs})
    return {"id": call_id, "object": "chat.completion", "created": int(time.time()),
            "model": chat.model, "choices": choices, "usage": usage(result)}


def stream(chat: ChatRequest, events: Iterator[StreamEvent | CallResult], call_id: str,
           include_usage: bool) -> Iterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None,
              totals: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {"id": call_id, "object": "chat.completion.chunk",
                                "created": created, "model": chat.model,
                                "choices": [] if totals else [{"index": 0, "delta": delta,
                                                               "finish_reason": finish,
                                                               "logprobs": None}]}
        if totals:
            body["usage"] = totals
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    # a text piece's chunk is this chunk with the piece's JSON string in the place of the
    # marker's (the content is the chunk's last string): the same text as ``chunk``, without
    # building and encoding the whole chunk for every piece
    head, _, tail = chunk({"content": "\x00"}).rpartition('"\\u0000"')
    yield chunk({"role": "assistant", "content": ""})
    for event in events:
        if isinstance(event, TextDelta):
            yield f"{head}{json.dumps(event.text, ensure_ascii=False)}{tail}"
        elif isinstance(event, ToolCallStart):
            yield chunk({"tool_calls": [{"index": event.index, "id": event.id,
                                         "type": "function",
                                         "function": {"name": event.name, "arguments": ""}}]})
        elif isinstance(event, ToolCallDelta):
            yield chunk({"tool_calls": [{"index": event.index,
                                         "function": {"arguments": event.arguments}}]})
        elif isinstance(event, CallResult):
            yield chunk({}, FINISH[event.finish_reason])
            if include_usage:
                yield chunk({}, totals=usage(event))
        # thinking: no place in this shape (see the module's docstring)
    yield "data: [DONE]\n\n"
