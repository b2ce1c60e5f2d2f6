"""A ``RedactedRequest`` as a Chat Completions body, and a Chat Completions answer (JSON, or
the chunks of a stream) as neutral choices and stream events. Used by openai_compat.py for
OpenAI, Azure OpenAI and on-prem servers.

Messages:
- system messages stay ``system`` messages (their text blocks joined by newlines);
- a user message's ``ToolResult`` blocks become one ``tool`` message each, in order (the
  provider wants them right after the assistant message that called), and the rest of the user
  content a ``user`` message after them. A ``tool`` message carries text only: a result's images
  go into that following ``user`` message, in the result's order; several texts of one result
  are joined by newlines. OpenAI has no error flag on a tool result: an error result's text is
  sent after an ``Error:`` line, so the model still learns the call failed;
- content that is one text is sent as a string (what every OpenAI-compatible server takes),
  anything else as a list of parts (``text``, ``image_url`` with ``detail``; base64 images as
  data: URLs);
- an assistant message sends its text and its ``tool_calls`` (``arguments`` as the JSON text the
  model wrote, unchanged).
Thinking and documents never reach here (features.py refuses them for these providers).

Answers: every choice in ``index`` order, its text, its tool calls (arguments as sent), its
finish reason (stop, length, tool_calls — function_call too — else other) and its logprobs as
sent. A refusal with no content is the choice's text.
"""

from __future__ import annotations

from typing import Any

from tenant_runtime.gateway.content import (
    AnswerBlock,
    Image,
    Text,
    ToolCall,
    ToolResult,
)
from tenant_runtime.gateway.messages import ChatMessage
from tenant_runtime.gateway.providers.base import StreamEvent, ToolCallDelta, ToolCallStart
from tenant_runtime.redaction import RedactedRequest

FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
                  "function_call": "tool_calls"}
ERROR_MARK = "Error:\n"


def finish_reason(value: object) -> str:
    return FINISH_REASONS.get(value if isinstance(value, str) else "", "other")


# -- the request -------------------------------------------------------------------------------

def body(request: RedactedRequest, model: str, provider: str) -> dict[str, Any]:
    """The Chat Completions body for ``request`` (``provider``: openai, azure-openai, on-prem)."""
    params: dict[str, Any] = {"model": model, "messages": messages(request.messages)}
    params["max_tokens" if provider == "on-prem" else "max_completion_tokens"] = \
        request.max_tokens
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.top_p is not None:
        params["top_p"] = request.top_p
    if request.stop:
        params["stop"] = list(request.stop)
    if request.n > 1:
        params["n"] = request.n
    if request.tools:
        params["tools"] = [_tool(t) for t in request.tools]
    if request.tool_choice is not None:
        choice = request.tool_choice
        params["tool_choice"] = ({"type": "function", "function": {"name": choice.name}}
                                 if choice.mode == "tool" else choice.mode)
    if request.parallel_tool_calls is not None:
        params["parallel_tool_calls"] = request.parallel_tool_calls
    if request.output is not None:
        params["response_format"] = _response_format(request)
    sampling = request.sampling
    for name in ("seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
                 "top_logprobs", "reasoning_effort"):
        value = getattr(sampling, name)
        if value is not None:
            params[name] = value
    if sampling.top_k is not None:  # on-prem only (features.py): vLLM's and TGI's extra field
        params["top_k"] = sampling.top_k
    return params


def _tool(tool: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name,
                                "parameters": tool.parameters or {"type": "object",
                                                                  "properties": {}}}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _response_format(request: RedactedRequest) -> dict[str, Any]:
    output = request.output
    assert output is not None  # noqa: S101 - checked by the caller
    if output.kind == "json_object":
        return {"type": "json_object"}
    schema: dict[str, Any] = {"name": output.name or "output",
                              "schema": output.schema or {"type": "object"}}
    if output.strict is not None:
        schema["strict"] = output.strict
    if output.description is not None:
        schema["description"] = output.description
    return {"type": "json_schema", "json_schema": schema}


def messages(chat: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in chat:
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
        elif message.role == "system":
            out.append({"role": "system", "content": "\n".join(
                b.text for b in message.content if isinstance(b, Text))})
        elif message.role == "assistant":
            out.append(_assistant(message.content))
        else:
            out.extend(_user(message.content))
    return out


def _assistant(blocks: tuple[Any, ...]) -> dict[str, Any]:
    texts = [_part(b) for b in blocks if isinstance(b, Text)]
    calls = [{"id": b.id, "type": "function",
              "function": {"name": b.name, "arguments": b.arguments}}
             for b in blocks if isinstance(b, ToolCall)]
    rendered: dict[str, Any] = {"role": "assistant", "content": _content(texts) if texts
                                else (None if calls else "")}
    if calls:
        rendered["tool_calls"] = calls
    return rendered


def _user(blocks: tuple[Any, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, ToolResult):
            text = "\n".join(b.text for b in block.content if isinstance(b, Text))
            out.append({"role": "tool", "tool_call_id": block.call_id,
                        "content": ERROR_MARK + text if block.is_error else text})
            parts.extend(_part(b) for b in block.content if isinstance(b, Image))
        elif isinstance(block, Text | Image):
            parts.append(_part(block))
    if parts or not out:
        out.append({"role": "user", "content": _content(parts) if parts else ""})
    return out


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _part(block: Text | Image) -> dict[str, Any]:
    if isinstance(block, Text):
        return {"type": "text", "text": block.text}
    url = block.data if block.source == "url" else \
        f"data:{block.media_type or 'image/png'};base64,{block.data}"
    image: dict[str, Any] = {"url": url}
    if block.detail:
        image["detail"] = block.detail
    return {"type": "image_url", "image_url": image}


# -- the answer --------------------------------------------------------------------------------

class BadShape(ValueError):
    """The answer does not have the shape Chat Completions documents."""


def choice_blocks(message: object) -> tuple[AnswerBlock, ...]:
    """A choice's ``message`` as blocks: its text (or refusal), then its tool calls."""
    if not isinstance(message, dict):
        raise BadShape("a choice has no message")
    text = message.get("content")
    if text is None:
        text = message.get("refusal")
    if not isinstance(text, str | None):
        raise BadShape("a message's content is not text")
    blocks: list[AnswerBlock] = [Text(text)] if text else []
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadShape("tool_calls is not a list")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str) \
                or not isinstance(function.get("name"), str) \
                or not isinstance(function.get("arguments", ""), str):
            raise BadShape("a tool call lacks its id, name or arguments")
        blocks.append(ToolCall(call["id"], function["name"], function.get("arguments") or ""))
    return tuple(blocks)


class ToolCallStream:
    """Turns the ``tool_calls`` deltas of a streamed choice into ``ToolCallStart`` and
    ``ToolCallDelta`` events. The provider's ``index`` tells the calls apart; ours counts them
    from 0 in the order they start (a server that numbers them otherwise is followed)."""

    def __init__(self) -> None:
        self._indexes: dict[int, int] = {}

    @property
    def started(self) -> bool:
        return bool(self._indexes)

    def events(self, deltas: object) -> list[StreamEvent]:
        if not isinstance(deltas, list):
            raise BadShape("tool_calls is not a list")
        out: list[StreamEvent] = []
        for delta in deltas:
            if not isinstance(delta, dict):
                raise BadShape("a tool call delta is not an object")
            their = delta.get("index", len(self._indexes))
            function = delta.get("function") or {}
            if not isinstance(their, int) or not isinstance(function, dict):
                raise BadShape("a tool call delta has no index")
            if their not in self._indexes:
                if not isinstance(delta.get("id"), str) \
                        or not isinstance(function.get("name"), str):
                    raise BadShape("a tool call starts without its id and name")
                self._indexes[their] = len(self._indexes)
                out.append(ToolCallStart(self._indexes[their], delta["id"], function["name"]))
            arguments = function.get("arguments")
            if arguments:
                if not isinstance(arguments, str):
                    raise BadShape("tool call arguments are not text")
                out.append(ToolCallDelta(self._indexes[their], arguments))
        return out
