"""Anthropic's Messages in and out: the request shape parsed into a ``ChatRequest`` (tools,
tool_use and tool_result blocks, images, documents, thinking blocks passed back unchanged,
structured output through ``output_config``), and the answer and its stream written back in
Anthropic's shape (``content_block_start``/``input_json_delta``/``content_block_stop`` ...).
``POST /v1/messages/count_tokens`` takes the same shape without ``max_tokens``.

Server tools (web search, code execution, bash, text editor ...), ``mcp_servers`` and
``container`` are refused with a sentence naming them: they would run at the provider, beyond
the gateway's governance."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import Field

from control_plane.gateway.shapes import (
    MAX_MESSAGES,
    MAX_TOOLS,
    InvalidBody,
    Strict,
    TextPart,
    Tokens,
    ToolName,
    image_block,
    model_name,
    validated,
)
from tenant_runtime.gateway.content import (
    Block,
    Document,
    Image,
    OutputFormat,
    RedactedThinking,
    Text,
    Thinking,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)
from tenant_runtime.gateway.messages import ChatMessage, ChatRequest, Sampling
from tenant_runtime.gateway.providers.base import (
    SignatureDelta,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallStart,
)
from tenant_runtime.gateway.service import CallResult

STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
        "other": "end_turn"}
Cache = dict[str, Any] | None


class Base64Source(Strict):
    type: Literal["base64"]
    media_type: str
    data: str


class URLSource(Strict):
    type: Literal["url"]
    url: str


class PlainTextSource(Strict):
    type: Literal["text"]
    media_type: Literal["text/plain"]
    data: str


class ImageBlock(Strict):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]
    cache_control: Cache = None


class DocumentBlock(Strict):
    type: Literal["document"]
    source: Annotated[Base64Source | URLSource | PlainTextSource, Field(discriminator="type")]
    title: str | None = None
    context: str | None = None
    citations: dict[str, Any] | None = None
    cache_control: Cache = None


class ToolUseBlock(Strict):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=200)
    name: ToolName
    input: dict[str, Any]
    cache_control: Cache = None


ResultPart = Annotated[TextPart | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=200)
    content: str | list[ResultPart] | None = None
    is_error: bool | None = None
    cache_control: Cache = None


class ThinkingBlock(Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(Strict):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[TextPart | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock
                         | ThinkingBlock | RedactedThinkingBlock, Field(discriminator="type")]


class AnthropicMessage(Strict):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class CustomTool(Strict):
    name: ToolName
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    strict: bool | None = None
    cache_control: Cache = None


class ToolChoiceIn(Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: ToolName | None = None
    disable_parallel_tool_use: bool | None = None


class JsonOutput(Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Strict):
    format: JsonOutput | None = None
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None


class ThinkingConfig(Strict):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1024)
    display: Literal["summarized", "omitted"] | None = None


class AnthropicMessages(Strict):
    model: str = Field(max_length=200)
    max_tokens: Tokens
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[TextPart] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=8)
    stream: bool = False
    tools: list[CustomTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoiceIn | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    metadata: dict[str, Any] | None = None


class CountTokens(Strict):
    model: str = Field(max_length=200)
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[TextPart] | None = None
    tools: list[CustomTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoiceIn | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None


def _text(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "\n".join(p.text for p in content)


def _image(block: ImageBlock, where: str) -> Image:
    source = block.source
    if isinstance(source, URLSource):
        return image_block(source.url, None, f"{where}.source.url")
    return image_block(f"data:{source.media_type};base64,{source.data}", None,
                       f"{where}.source")


def _block(block: ContentBlock, where: str) -> Block:
    if isinstance(block, TextPart):
        return Text(block.text)
    if isinstance(block, ImageBlock):
        return _image(block, where)
    if isinstance(block, DocumentBlock):
        source = block.source
        if isinstance(source, PlainTextSource):
            return Document("text", source.data, source.media_type, block.title, block.context)
        if isinstance(source, URLSource):
            if not source.url.startswith("https://"):
                raise InvalidBody(f"{where}.source.url must be an https URL.", where)
            return Document("url", source.url, None, block.title, block.context)
        return Document("base64", source.data, source.media_type, block.title, block.context)
    if isinstance(block, ToolUseBlock):
        return ToolCall(block.id, block.name, json.dumps(block.input, ensure_ascii=False))
    if isinstance(block, ToolResultBlock):
        content = block.content
        parts: tuple[Text | Image, ...]
        if content is None:
            parts = ()
        elif isinstance(content, str):
            parts = (Text(content),)
        else:
            parts = tuple(Text(p.text) if isinstance(p, TextPart)
                          else _image(p, f"{where}.content.{k}") for k, p in enumerate(content))
        return ToolResult(block.tool_use_id, parts, bool(block.is_error))
    if isinstance(block, ThinkingBlock):
        return Thinking(block.thinking, block.signature)
    return RedactedThinking(block.data)


def _messages(system: str | list[TextPart] | None,
              messages: list[AnthropicMessage]) -> tuple[ChatMessage, ...]:
    out = [] if system is None else [ChatMessage("system", _text(system))]
    for n, m in enumerate(messages):
        if isinstance(m.content, str):
            out.append(ChatMessage(m.role, m.content))
        else:
            out.append(ChatMessage(m.role, tuple(_block(b, f"messages.{n}.content.{k}")
                                                 for k, b in enumerate(m.content))))
    return tuple(out)


def _tools(parsed: AnthropicMessages | CountTokens) -> tuple[tuple[Tool, ...],
                                                             ToolChoice | None, bool | None]:
    tools = tuple(Tool(t.name, t.description, t.input_schema, t.strict)
                  for t in parsed.tools or ())
    choice, parallel = None, None
    if parsed.tool_choice is not None:
        kind = parsed.tool_choice.type
        if kind == "tool":
            if parsed.tool_choice.name not in {t.name for t in tools}:
                raise InvalidBody("tool_choice.name must name one of the tools.",
                                  "tool_choice.name")
            choice = ToolChoice("tool", parsed.tool_choice.name)
        else:
            choice = ToolChoice({"auto": "auto", "any": "required", "none": "none"}[kind])  # type: ignore[arg-type]
        if parsed.tool_choice.disable_parallel_tool_use is not None:
            parallel = not parsed.tool_choice.disable_parallel_tool_use
    return tools, choice, parallel


def _request(parsed: AnthropicMessages | CountTokens, max_tokens: int,
             stream: bool) -> ChatRequest:
    tools, choice, parallel = _tools(parsed)
    output = None
    effort = None
    if parsed.output_config is not None:
        if parsed.output_config.format is not None:
            output = OutputFormat("json_schema", "output", parsed.output_config.format.schema_)
        effort = parsed.output_config.effort
    thinking = parsed.thinking.model_dump(exclude_none=True) if parsed.thinking else None
    full = parsed if isinstance(parsed, AnthropicMessages) else None
    return ChatRequest(
        model=model_name(parsed.model), messages=_messages(parsed.system, parsed.messages),
        max_tokens=max_tokens, temperature=full.temperature if full else None,
        top_p=full.top_p if full else None,
        stop=tuple(full.stop_sequences or ()) if full else (), stream=stream, tools=tools,
        tool_choice=choice, parallel_tool_calls=parallel, output=output,
        sampling=Sampling(top_k=full.top_k if full else None, reasoning_effort=effort,
                          thinking=thinking))


def parse(body: Any) -> tuple[ChatRequest, bool]:
    parsed = validated(AnthropicMessages, body)
    if parsed.thinking and parsed.thinking.budget_tokens \
            and parsed.thinking.budget_tokens >= parsed.max_tokens:
        raise InvalidBody("thinking.budget_tokens must be less than max_tokens.",
                          "thinking.budget_tokens")
    return _request(parsed, parsed.max_tokens, parsed.stream), False


def parse_count(body: Any) -> ChatRequest:
    return _request(validated(CountTokens, body), 1, False)


# --- answers ------------------------------------------------------------------------------

def _input(arguments: str) -> Any:
    """A tool call's arguments as Anthropic's ``input`` object; arguments a model wrote that are
    not a JSON object arrive as {"input": <their text>}, nothing dropped."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {"input": arguments}
    return value if isinstance(value, dict) else {"input": value}


def content_block(block: Any) -> dict[str, Any]:
    if isinstance(block, Text):
        return {"type": "text", "text": block.text}
    if isinstance(block, ToolCall):
        return {"type": "tool_use", "id": block.id, "name": block.name,
                "input": _input(block.arguments)}
    if isinstance(block, Thinking):
        return {"type": "thinking", "thinking": block.text, "signature": block.signature}
    return {"type": "redacted_thinking", "data": block.data}


def answer(chat: ChatRequest, result: CallResult, call_id: str) -> dict[str, Any]:
    choice = result.choices[0] if result.choices else None
    content = [content_block(b) for b in choice.content] if choice else []
    return {"id": call_id, "type": "message", "role": "assistant", "model": chat.model,
            "content": content, "stop_reason": STOP[result.finish_reason],
            "stop_sequence": None,
            "usage": {"input_tokens": result.usage.input_tokens,
                      "output_tokens": result.usage.output_tokens}}


def _event(name: str, body: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps({'type': name, **body}, ensure_ascii=False)}\n\n"


def stream(chat: ChatRequest, events: Iterator[StreamEvent | CallResult], call_id: str,
           include_usage: bool) -> Iterator[str]:
    yield _event("message_start", {"message": {
        "id": call_id, "type": "message", "role": "assistant", "model": chat.model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0}}})
    index = -1
    open_kind: Any = None  # the open block: "text", "thinking" or ("tool", n)

    def start(kind: Any, block: dict[str, Any]) -> Iterator[str]:
        nonlocal index, open_kind
        if open_kind is not None:
            yield _event("content_block_stop", {"index": index})
        index += 1
        open_kind = kind
        yield _event("content_block_start", {"index": index, "content_block": block})

    for event in events:
        if isinstance(event, TextDelta):
            if open_kind != "text":
                yield from start("text", {"type": "text", "text": ""})
            yield _event("content_block_delta", {"index": index, "delta": {
                "type": "text_delta", "text": event.text}})
        elif isinstance(event, ToolCallStart):
            yield from start(("tool", event.index), {"type": "tool_use", "id": event.id,
                                                     "name": event.name, "input": {}})
        elif isinstance(event, ToolCallDelta):
            yield _event("content_block_delta", {"index": index, "delta": {
                "type": "input_json_delta", "partial_json": event.arguments}})
        elif isinstance(event, ThinkingDelta):
            if open_kind != "thinking":
                yield from start("thinking", {"type": "thinking", "thinking": "",
                                              "signature": ""})
            yield _event("content_block_delta", {"index": index, "delta": {
                "type": "thinking_delta", "thinking": event.text}})
        elif isinstance(event, SignatureDelta):
            if open_kind != "thinking":
                yield from start("thinking", {"type": "thinking", "thinking": "",
                                              "signature": ""})
            yield _event("content_block_delta", {"index": index, "delta": {
                "type": "signature_delta", "signature": event.signature}})
        elif isinstance(event, RedactedThinking):
            yield from start("redacted", {"type": "redacted_thinking", "data": event.data})
        elif isinstance(event, CallResult):
            if open_kind is not None:
                yield _event("content_block_stop", {"index": index})
                open_kind = None
            yield _event("message_delta", {
                "delta": {"stop_reason": STOP[event.finish_reason], "stop_sequence": None},
                "usage": {"input_tokens": event.usage.input_tokens,
                          "output_tokens": event.usage.output_tokens}})
            yield _event("message_stop", {})
