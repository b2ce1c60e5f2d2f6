"""Bedrock runtime Converse (``POST /model/{modelId}/converse`` and ``/converse-stream``):
toolConfig (toolSpec, toolChoice auto/any/tool), toolUse/toolResult blocks, images and
documents (bytes travel base64 in JSON); JSON answers and the AWS event stream."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tests.fakes.llm.model import Conversation, answer
from tests.fakes.llm.wire import BadRequest, Json, Marked, Stream, content, event_stream_message
from tests.fakes.llm.wire import marked as _marked

if TYPE_CHECKING:
    from tests.fakes.llm.server import LLMServer


def _text_and_others(blocks: Any) -> tuple[str, int]:
    text, others = "", 0
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        if "text" in block:
            text += str(block["text"])
        elif "json" in block:
            text += json.dumps(block["json"])
        elif "document" in block and "text" in ((block["document"] or {}).get("source") or {}):
            text += str(block["document"]["source"]["text"])
        elif any(k in block for k in ("image", "document", "video", "audio")):
            others += 1
    return text, others


def read(request: dict[str, Any]) -> Conversation:
    c = Conversation()
    for block in request.get("system") or []:
        if isinstance(block, dict) and "text" in block:
            c.system(str(block["text"]))
    messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
    if not messages or messages[0].get("role") != "user":
        raise BadRequest("A conversation must start with a user message. Try again with a "
                         "conversation that starts with a user message.")
    config = request.get("toolConfig")
    uses_tools = any(isinstance(b, dict) and ("toolUse" in b or "toolResult" in b)
                     for m in messages for b in m.get("content") or [])
    if uses_tools and not config:
        raise BadRequest("The toolConfig field must be defined when using toolUse and "
                         "toolResult content blocks.")
    pending: list[str] = []
    for i, m in enumerate(messages):
        blocks = [b for b in m.get("content") or [] if isinstance(b, dict)]
        if m.get("role") == "assistant":
            uses = [b["toolUse"] for b in blocks if isinstance(b.get("toolUse"), dict)]
            text, others = _text_and_others(blocks)
            c.message("assistant", text, images=others,
                      calls=[(str(u.get("name", "")), json.dumps(u.get("input", {})))
                             for u in uses])
            pending = [str(u.get("toolUseId")) for u in uses]
            continue
        results = [b["toolResult"] for b in blocks if isinstance(b.get("toolResult"), dict)]
        answered = {str(r.get("toolUseId")) for r in results}
        missing = [p for p in pending if p not in answered]
        if missing:
            raise BadRequest(f"Expected toolResult blocks at messages.{i}.content for the "
                             f"following Ids: {', '.join(missing)}")
        texts, others = [], 0
        for r in results:
            text, n = _text_and_others(r.get("content"))
            texts.append(text)
            others += n
        text, n = _text_and_others([b for b in blocks if "toolResult" not in b])
        c.message("user", text, results=texts, images=others + n)
        pending = []
    if pending:
        raise BadRequest(f"Expected toolResult blocks at messages.{len(messages)}.content for "
                         f"the following Ids: {', '.join(pending)}")
    if config:
        for tool in config.get("tools") or []:
            spec = tool.get("toolSpec") if isinstance(tool, dict) else None
            if isinstance(spec, dict):
                c.tool(str(spec.get("name", "")), spec.get("description"),
                       (spec.get("inputSchema") or {}).get("json"))
        choice = config.get("toolChoice") or {}
        if "any" in choice:
            c.choice = "required"
        elif "tool" in choice:
            c.choice, c.forced_name = "tool", str((choice["tool"] or {}).get("name"))
    inference = request.get("inferenceConfig") or {}
    extra = request.get("additionalModelRequestFields")
    if extra is not None and (not isinstance(extra, dict) or set(extra) - {"top_k"}):
        raise BadRequest("The model returned the following errors: additionalModelRequestFields "
                         "holds a field this fake's models do not take")
    c.max_tokens = inference.get("maxTokens")
    c.stop = list(inference.get("stopSequences") or [])
    return c


def converse(fake: LLMServer, request: dict[str, Any], model_id: str, *,
             stream: bool) -> Json | Stream:
    started = time.monotonic()
    a = answer(read(request), reply=fake.reply, scripted=fake.next_scripted(),
               n_tool_calls=fake.n_tool_calls, new_id=fake.id_maker("tooluse_", 22))
    usage = {"inputTokens": a.input_tokens, "outputTokens": a.output_tokens,
             "totalTokens": a.input_tokens + a.output_tokens}
    headers = {"x-amzn-RequestId": str(uuid.uuid4())}
    blocks: list[dict[str, Any]] = [{"text": a.text}] if a.text or not a.calls else []
    blocks += [{"toolUse": {"toolUseId": c.id, "name": c.name, "input": c.input()}}
               for c in a.calls]
    if not stream:
        return Json(200, {
            "output": {"message": {"role": "assistant", "content": blocks}},
            "stopReason": a.stop_reason, "usage": usage,
            "metrics": {"latencyMs": int((time.monotonic() - started) * 1000)}}, headers)

    def pieces() -> Iterator[Marked]:
        yield event_stream_message("messageStart", {"role": "assistant"})
        for index, block in enumerate(blocks):
            if "text" in block:
                for piece in fake.pieces(block["text"]):
                    yield content(event_stream_message("contentBlockDelta", {
                        "contentBlockIndex": index, "delta": {"text": piece}}))
            else:
                use = block["toolUse"]
                yield event_stream_message("contentBlockStart", {
                    "contentBlockIndex": index,
                    "start": {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}})
                arguments = next(c.arguments for c in a.calls if c.id == use["toolUseId"])
                for piece in fake.pieces(arguments):
                    yield content(event_stream_message("contentBlockDelta", {
                        "contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}))
            yield event_stream_message("contentBlockStop", {"contentBlockIndex": index})
        yield event_stream_message("messageStop", {"stopReason": a.stop_reason})
        yield event_stream_message("metadata", {
            "usage": usage, "metrics": {"latencyMs": int((time.monotonic() - started) * 1000)}})

    return Stream("application/vnd.amazon.eventstream", _marked(pieces()), headers)
