"""A ``RedactedRequest`` as Bedrock Converse parameters, and a Converse answer (or its stream
events) as neutral blocks and stream events. Used by bedrock.py.

Messages: system messages go to ``system`` (one text block each); blocks are ``text`` (empty
ones left out), ``image`` (``{format, source: {bytes}}``, the bytes decoded from base64 or from a
data: URL; boto3 encodes them again for the wire), ``toolUse`` (``input`` = the arguments' JSON
object) and ``toolResult`` (text and image content, ``status: error`` for an error result).
Converse wants the turns to alternate: consecutive messages of one role are merged, tool results
first in a user turn. ``temperature``, ``top_p`` and ``stop`` go to ``inferenceConfig``;
``top_k``, which Converse has no field for, to ``additionalModelRequestFields`` as Anthropic's
models on Bedrock read it (features.py refuses it for other models). Tools go to
``toolConfig.tools[].toolSpec`` (``inputSchema.json``, ``strict``) with ``toolChoice`` auto /
any (required) / tool. What Converse cannot take (URL images, documents, thinking,
response_format, tool_choice none, parallel_tool_calls false, a history of tool calls without
tool definitions) is refused before the call by features.py.

Answers: text and toolUse blocks in order (arguments: ``json.dumps(input,
ensure_ascii=False)``); stop reasons end_turn and stop_sequence are "stop", max_tokens is
"length", tool_use "tool_calls", anything else (guardrail_intervened, content_filtered, ...)
"other".
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from tenant_runtime.gateway.content import AnswerBlock, Image, Text, ToolCall, ToolResult
from tenant_runtime.gateway.features import bedrock_anthropic
from tenant_runtime.gateway.messages import ChatMessage
from tenant_runtime.gateway.providers.render_anthropic import (
    ArgumentsNotAnObject,
    CannotSend,
    arguments_object,
    arguments_text,
    data_url,
)
from tenant_runtime.redaction import RedactedRequest

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls"}
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                 "image/gif": "gif", "image/webp": "webp"}

__all__ = ["ArgumentsNotAnObject", "BadImage", "CannotSend", "answer_blocks", "finish_reason",
           "params"]


class BadImage(CannotSend):
    """An image Converse cannot take: not base64, or not png, jpeg, gif or webp."""


def finish_reason(value: object) -> str:
    return FINISH_REASONS.get(value if isinstance(value, str) else "", "other")


def params(request: RedactedRequest, model: str) -> dict[str, Any]:
    inference: dict[str, Any] = {"maxTokens": request.max_tokens}
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    if request.top_p is not None:
        inference["topP"] = request.top_p
    if request.stop:
        inference["stopSequences"] = list(request.stop)
    out: dict[str, Any] = {"modelId": model, "messages": messages(request.messages),
                           "inferenceConfig": inference}
    if request.sampling.top_k is not None:
        if not bedrock_anthropic(model):  # refused before the call by features.py
            raise CannotSend("top_k cannot be sent: Bedrock takes it for Anthropic's models "
                             "only")
        out["additionalModelRequestFields"] = {"top_k": request.sampling.top_k}
    system = [{"text": m.text} for m in request.messages if m.role == "system"]
    if system:
        out["system"] = system
    if request.tools:
        config: dict[str, Any] = {"tools": [{"toolSpec": _tool_spec(t)} for t in request.tools]}
        choice = request.tool_choice
        if choice is not None and choice.mode != "none":
            config["toolChoice"] = ({"tool": {"name": choice.name}} if choice.mode == "tool"
                                    else {"any": {}} if choice.mode == "required"
                                    else {"auto": {}})
        out["toolConfig"] = config
    return out


def _tool_spec(tool: Any) -> dict[str, Any]:
    schema = dict(tool.parameters) if tool.parameters else {}
    schema.setdefault("type", "object")
    spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": schema}}
    if tool.description:
        spec["description"] = tool.description
    if tool.strict is not None:
        spec["strict"] = tool.strict
    return spec


def messages(chat: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for message in chat:
        if message.role == "system":
            continue
        blocks = [b for b in (_block(block) for block in message.blocks) if b is not None]
        if not blocks:
            continue
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": message.role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":
            turn["content"].sort(key=lambda b: "toolResult" not in b)
    return turns


def _block(block: Any) -> dict[str, Any] | None:
    if isinstance(block, Text):
        return {"text": block.text} if block.text else None
    if isinstance(block, Image):
        return {"image": image(block)}
    if isinstance(block, ToolCall):
        return {"toolUse": {"toolUseId": block.id, "name": block.name,
                            "input": arguments_object(block)}}
    if isinstance(block, ToolResult):
        content = [b for b in (_block(part) for part in block.content) if b is not None]
        result: dict[str, Any] = {"toolUseId": block.call_id,
                                  "content": content or [{"text": ""}]}
        if block.is_error:
            result["status"] = "error"
        return {"toolResult": result}
    raise TypeError(f"no Converse block for {type(block).__name__}")  # refused by features.py


def image(block: Image) -> dict[str, Any]:
    if block.source == "base64":
        media_type, data = block.media_type or "image/png", block.data
    else:
        inline = data_url(block.data)
        if inline is None:
            raise BadImage("Bedrock takes image bytes only, not an image URL")
        media_type, data = inline
    kind = IMAGE_FORMATS.get(media_type.lower())
    if kind is None:
        raise BadImage(f"Bedrock takes png, jpeg, gif or webp images, not {media_type}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage("an image's data is not valid base64") from None
    return {"format": kind, "source": {"bytes": raw}}


def answer_blocks(content: object) -> tuple[AnswerBlock, ...]:
    blocks: list[AnswerBlock] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("text"):
            blocks.append(Text(str(block["text"])))
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            blocks.append(ToolCall(str(use.get("toolUseId", "")), str(use.get("name", "")),
                                   arguments_text(use.get("input"))))
    return tuple(blocks)
