"""A ``RedactedRequest`` as Anthropic Messages parameters, and a Message (or its stream events)
as neutral blocks and stream events. Used by anthropic.py.

Messages:
- system messages go to the top-level ``system`` (their texts joined by blank lines);
- blocks: text (empty texts are left out: the API refuses them), image (base64 source; an
  https URL as a url source; a data: URL as a base64 source), document (text, base64 or url
  source, with title and context), tool_use (``input`` = the arguments' JSON object; empty
  arguments are ``{}``), tool_result (text and image content, ``is_error``), thinking and
  redacted_thinking exactly as the provider sent them (the signature must stay valid);
- the API wants user and assistant turns to alternate: consecutive messages of one role are
  merged into one turn, and in a user turn the tool_result blocks come first, as the API
  requires (the rest of the turn after them, in order). A turn of one text is sent as a string.
Tool arguments that are not a JSON object cannot be a tool_use ``input``, and the API takes no
``temperature``, ``top_p`` or ``top_k``: features.py refuses such a request for this provider
before any call, and ``CannotSend`` is the guard here.

Parameters: tools (``input_schema``, ``strict``), tool_choice (auto, none, required → any, a
named tool → tool) with ``disable_parallel_tool_use`` when parallel tool calls are off (on
tool_choice auto when the request named no choice), ``output_config.format`` (json_schema) and
``output_config.effort`` (reasoning_effort: none and minimal are low), ``thinking`` as the caller
sent it.

Answers: text, tool_use (arguments: ``json.dumps(input, ensure_ascii=False)``), thinking (with
its signature) and redacted_thinking blocks, in order; stop reasons end_turn and stop_sequence
are "stop", max_tokens "length", tool_use "tool_calls", anything else "other".
"""

from __future__ import annotations

import json
from typing import Any

from tenant_runtime.gateway.content import (
    AnswerBlock,
    Document,
    Image,
    RedactedThinking,
    Text,
    Thinking,
    ToolCall,
    ToolResult,
)
from tenant_runtime.gateway.messages import ChatMessage
from tenant_runtime.redaction import RedactedRequest

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls"}
EFFORTS = {"none": "low", "minimal": "low", "low": "low", "medium": "medium", "high": "high",
           "xhigh": "xhigh", "max": "max"}


class CannotSend(ValueError):
    """The request holds something this provider cannot take. features.py refuses such a
    request before any call; this is the renderer's guard, so nothing is ever dropped."""


class ArgumentsNotAnObject(CannotSend):
    """A tool call's arguments are not a JSON object, which Anthropic and Bedrock cannot take."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the arguments of a call to the tool {name!r} are not a JSON object, "
                         "which this provider cannot take")


def finish_reason(value: object) -> str:
    return FINISH_REASONS.get(value if isinstance(value, str) else "", "other")


def arguments_object(call: ToolCall) -> dict[str, Any]:
    """A tool call's arguments as the JSON object Anthropic's ``input`` and Bedrock's toolUse
    ``input`` are ("" is ``{}``)."""
    if not call.arguments.strip():
        return {}
    try:
        value = json.loads(call.arguments)
    except ValueError:
        raise ArgumentsNotAnObject(call.name) from None
    if not isinstance(value, dict):
        raise ArgumentsNotAnObject(call.name)
    return value


def arguments_text(value: object) -> str:
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


# -- the request -------------------------------------------------------------------------------

def params(request: RedactedRequest, model: str, *, counting: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``client.messages.create`` (``counting``: of ``count_tokens``,
    which takes no max_tokens nor stop sequences)."""
    for name, value in (("temperature", request.temperature), ("top_p", request.top_p),
                        ("top_k", request.sampling.top_k)):
        if value is not None:  # API version 2026-10-21 answers 400 to any value
            raise CannotSend(f"{name} cannot be sent: Anthropic's API takes no sampling "
                             "parameters")
    system = "\n\n".join(m.text for m in request.messages if m.role == "system")
    out: dict[str, Any] = {"model": model, "messages": messages(request.messages)}
    if not counting:
        out["max_tokens"] = request.max_tokens
        if request.stop:
            out["stop_sequences"] = list(request.stop)
    if system:
        out["system"] = system
    if request.tools:
        out["tools"] = [_tool(t) for t in request.tools]
    choice = _tool_choice(request)
    if choice is not None:
        out["tool_choice"] = choice
    config: dict[str, Any] = {}
    if request.output is not None and request.output.kind == "json_schema":
        config["format"] = {"type": "json_schema",
                            "schema": request.output.schema or {"type": "object"}}
    if request.sampling.reasoning_effort is not None:
        config["effort"] = EFFORTS.get(request.sampling.reasoning_effort,
                                       request.sampling.reasoning_effort)
    if config:
        out["output_config"] = config
    if request.sampling.thinking is not None:
        out["thinking"] = dict(request.sampling.thinking)
    return out


def _tool(tool: Any) -> dict[str, Any]:
    schema = dict(tool.parameters) if tool.parameters else {}
    schema.setdefault("type", "object")
    rendered: dict[str, Any] = {"name": tool.name, "input_schema": schema}
    if tool.description is not None:
        rendered["description"] = tool.description
    if tool.strict is not None:
        rendered["strict"] = tool.strict
    return rendered


def _tool_choice(request: RedactedRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if choice is None and (request.parallel_tool_calls is not False or not request.tools):
        return None
    mode = choice.mode if choice is not None else "auto"
    rendered: dict[str, Any] = {"type": {"required": "any"}.get(mode, mode)}
    if mode == "tool":
        rendered["name"] = choice.name if choice is not None else None
    if request.parallel_tool_calls is False and mode != "none":
        rendered["disable_parallel_tool_use"] = True
    return rendered


def messages(chat: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    """The non-system messages as alternating turns (consecutive same-role ones merged)."""
    turns: list[dict[str, Any]] = []
    for message in chat:
        if message.role == "system":
            continue
        blocks = [_block(b) for b in message.blocks]
        blocks = [b for b in blocks if b is not None]
        if not blocks:
            continue
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": message.role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":  # tool results first, the rest after them, in order
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
        if len(turn["content"]) == 1 and set(turn["content"][0]) == {"type", "text"}:
            turn["content"] = turn["content"][0]["text"]  # one text: the short form
    return turns


def _block(block: Any) -> dict[str, Any] | None:
    if isinstance(block, Text):
        return {"type": "text", "text": block.text} if block.text else None
    if isinstance(block, Image):
        return {"type": "image", "source": image_source(block)}
    if isinstance(block, Document):
        return _document(block)
    if isinstance(block, ToolCall):
        return {"type": "tool_use", "id": block.id, "name": block.name,
                "input": arguments_object(block)}
    if isinstance(block, ToolResult):
        content = [_block(b) for b in block.content]
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": block.call_id,
                                  "content": [c for c in content if c is not None]}
        if block.is_error:
            result["is_error"] = True
        return result
    if isinstance(block, Thinking):
        return {"type": "thinking", "thinking": block.text, "signature": block.signature}
    if isinstance(block, RedactedThinking):
        return {"type": "redacted_thinking", "data": block.data}
    raise TypeError(f"no Anthropic block for {type(block).__name__}")


def data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a base64 data: URL, else None."""
    if not url.startswith("data:"):
        return None
    head, comma, data = url[5:].partition(",")
    if not comma or not head.endswith(";base64"):
        return None
    return head.removesuffix(";base64").split(";")[0] or "image/png", data


def image_source(image: Image) -> dict[str, Any]:
    if image.source == "base64":
        return {"type": "base64", "media_type": image.media_type or "image/png",
                "data": image.data}
    inline = data_url(image.data)
    if inline is not None:
        return {"type": "base64", "media_type": inline[0], "data": inline[1]}
    return {"type": "url", "url": image.data}


def _document(document: Document) -> dict[str, Any]:
    source: dict[str, Any]
    if document.source == "text":
        source = {"type": "text", "media_type": document.media_type or "text/plain",
                  "data": document.data}
    elif document.source == "base64":
        source = {"type": "base64", "media_type": document.media_type or "application/pdf",
                  "data": document.data}
    else:
        source = {"type": "url", "url": document.data}
    rendered: dict[str, Any] = {"type": "document", "source": source}
    if document.title is not None:
        rendered["title"] = document.title
    if document.context is not None:
        rendered["context"] = document.context
    return rendered


# -- the answer --------------------------------------------------------------------------------

def answer_blocks(content: list[Any]) -> tuple[AnswerBlock, ...]:
    """A Message's content (the SDK's block models) as neutral blocks, in order."""
    blocks: list[AnswerBlock] = []
    for block in content:
        if block.type == "text":
            if block.text:
                blocks.append(Text(block.text))
        elif block.type == "tool_use":
            blocks.append(ToolCall(block.id, block.name, arguments_text(block.input)))
        elif block.type == "thinking":
            blocks.append(Thinking(block.thinking, block.signature))
        elif block.type == "redacted_thinking":
            blocks.append(RedactedThinking(block.data))
    return tuple(blocks)
