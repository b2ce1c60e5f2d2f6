"""Anthropic Messages (``POST /v1/messages``, ``POST /v1/messages/count_tokens``): tools and
tool_choice, tool_use/tool_result blocks, extended thinking with signed thinking blocks (the
signature is checked when a block comes back), images, documents, output_config.format; JSON
answers and Anthropic's SSE events."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tests.fakes.llm.model import Answer, Conversation, answer
from tests.fakes.llm.wire import SSE, BadRequest, Json, Marked, Stream, content, marked, sse

if TYPE_CHECKING:
    from tests.fakes.llm.server import LLMServer

_KEY = b"fake-anthropic-thinking-key"
THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"


def sign(thinking: str) -> str:
    """The signature this fake gives a thinking block (and checks when the block comes back)."""
    mac = hmac.new(_KEY, b"thinking\0" + thinking.encode(), hashlib.sha256).digest()
    return base64.b64encode(b"\x12fake" + mac).decode()


def redact(thinking: str) -> str:
    """The ``data`` of a redacted_thinking block: opaque, and checked when it comes back."""
    mac = hmac.new(_KEY, b"redacted\0" + thinking.encode(), hashlib.sha256).hexdigest()
    return base64.b64encode(json.dumps({"t": thinking, "m": mac}).encode()).decode()


def _redacted_is_ours(data: Any) -> bool:
    try:
        sealed = json.loads(base64.b64decode(str(data), validate=True))
        return hmac.compare_digest(redact(sealed["t"]), str(data))
    except (ValueError, KeyError, TypeError):
        return False


def _blocks(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    return [b for b in value if isinstance(b, dict)] if isinstance(value, list) else []


def _text_and_others(blocks: list[dict[str, Any]]) -> tuple[str, int]:
    text, others = "", 0
    for block in blocks:
        kind = block.get("type")
        source = block.get("source") or {}
        if kind == "text":
            text += str(block.get("text", ""))
        elif kind == "document" and source.get("type") == "text":
            text += str(source.get("data", ""))
        elif kind == "document" and source.get("type") == "content":
            inner, n = _text_and_others(_blocks(source.get("content")))
            text, others = text + inner, others + n
        elif kind in ("image", "document"):
            others += 1
    return text, others


# API version 2026-10-21 (anthropic 2.x) removed the sampling parameters: any value is a 400
REMOVED_SAMPLING = ("temperature", "top_p", "top_k")


def read(request: dict[str, Any], *, thinking: bool) -> Conversation:
    for name in REMOVED_SAMPLING:
        if name in request:
            raise BadRequest(f"{name}: Extra inputs are not permitted")
    c = Conversation()
    system = request.get("system")
    if system:
        c.system(_text_and_others(_blocks(system))[0])
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: at least one message is required")
    previous_uses: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        blocks = _blocks(m.get("content"))
        if m["role"] == "assistant":
            if previous_uses:
                _unanswered(i - 1, previous_uses)
            for k, block in enumerate(blocks):
                if block.get("type") == "thinking" and block.get("signature") != sign(
                        str(block.get("thinking", ""))):
                    raise BadRequest(f"messages.{i}.content.{k}: Invalid `signature` in "
                                     "`thinking` block")
                if block.get("type") == "redacted_thinking" and not _redacted_is_ours(
                        block.get("data")):
                    raise BadRequest(f"messages.{i}.content.{k}: Invalid `data` in "
                                     "`redacted_thinking` block")
            uses = [b for b in blocks if b.get("type") == "tool_use"]
            text, others = _text_and_others(blocks)
            c.message("assistant", text, images=others,
                      calls=[(str(u.get("name", "")), json.dumps(u.get("input", {})))
                             for u in uses])
            previous_uses = [str(u.get("id")) for u in uses]
            continue
        results: list[str] = []
        answered: set[str] = set()
        others = 0
        for k, block in enumerate(blocks):
            if block.get("type") != "tool_result":
                continue
            if block.get("tool_use_id") not in previous_uses:
                raise BadRequest(f"messages.{i}.content.{k}: unexpected `tool_use_id` found in "
                                 f"`tool_result` blocks: {block.get('tool_use_id')}. Each "
                                 "`tool_result` block must have a corresponding `tool_use` "
                                 "block in the previous message.")
            answered.add(str(block.get("tool_use_id")))
            result_text, n = _text_and_others(_blocks(block.get("content", "")))
            results.append(result_text)
            others += n
        missing = [u for u in previous_uses if u not in answered]
        if missing:
            _unanswered(i - 1, missing)
        text, n = _text_and_others([b for b in blocks if b.get("type") != "tool_result"])
        c.message("user", text, results=results, images=others + n)
        if thinking and results and i >= 1 and i == len(messages) - 1:
            first = _blocks(messages[i - 1].get("content"))[:1]
            found = first[0].get("type") if first else "nothing"
            if found not in ("thinking", "redacted_thinking"):
                raise BadRequest(
                    f"messages.{i - 1}.content.0.type: Expected `thinking` or "
                    f"`redacted_thinking`, but found `{found}`. When `thinking` is enabled, a "
                    "final `assistant` message must start with a thinking block (preceeding "
                    "the lastmost set of `tool_use` and `tool_result` blocks). We recommend "
                    "you include thinking blocks from previous turns. To avoid this "
                    "requirement, disable `thinking`. Please consult our documentation at "
                    f"{THINKING_DOCS}")
        previous_uses = []
    if previous_uses:
        _unanswered(len(messages) - 1, previous_uses)
    for index, tool in enumerate(request.get("tools") or []):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            continue  # server tools (web search, code execution): never called by the fake
        if not tool.get("name"):
            raise BadRequest(f"tools.{index}.custom.name: Field required")
        c.tool(str(tool["name"]), tool.get("description"), tool.get("input_schema"))
    choice = request.get("tool_choice") or {}
    kind = choice.get("type", "auto")
    c.choice = {"auto": "auto", "none": "none", "any": "required", "tool": "tool"}.get(kind, "auto")
    c.forced_name = choice.get("name") if kind == "tool" else None
    c.parallel = not choice.get("disable_parallel_tool_use", False)
    if thinking and kind in ("any", "tool"):
        raise BadRequest("Thinking may not be enabled when tool_choice forces tool use.")
    output_format = (request.get("output_config") or {}).get("format") or {}
    if output_format.get("type") == "json_schema":
        c.json_schema = output_format.get("schema") or {}
    c.stop = list(request.get("stop_sequences") or [])
    return c


def _unanswered(index: int, ids: list[str]) -> None:
    raise BadRequest(f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
                     f"immediately after: {', '.join(ids)}. Each `tool_use` block must have a "
                     "corresponding `tool_result` block in the next message.")


def _thinking(request: dict[str, Any]) -> bool:
    config = request.get("thinking") or {}
    kind = config.get("type")
    if kind == "enabled":
        budget = config.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            raise BadRequest("thinking.enabled.budget_tokens: Input should be greater than or "
                             "equal to 1024")
        if isinstance(request.get("max_tokens"), int) and budget >= request["max_tokens"]:
            raise BadRequest("`max_tokens` must be greater than `thinking.budget_tokens`. "
                             f"Please consult our documentation at {THINKING_DOCS}")
        return True
    return kind == "adaptive"


def count_tokens(fake: LLMServer, request: dict[str, Any]) -> Json:
    conversation = read(request, thinking=_thinking(request))
    return Json(200, {"input_tokens": conversation.input_tokens})


def _content(fake: LLMServer, a: Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if a.thinking is not None:
        blocks.append({"type": "redacted_thinking", "data": redact(a.thinking)}
                      if fake.redact_thinking else
                      {"type": "thinking", "thinking": a.thinking, "signature": sign(a.thinking)})
    if a.text or not a.calls:
        blocks.append({"type": "text", "text": a.text})
    blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.input()}
               for c in a.calls]
    return blocks


def message(fake: LLMServer, request: dict[str, Any]) -> Json | Stream:
    if not isinstance(request.get("max_tokens"), int):
        raise BadRequest("max_tokens: Field required")
    thinking = _thinking(request)
    conversation = read(request, thinking=thinking)
    conversation.max_tokens = request["max_tokens"]
    a = answer(conversation, reply=fake.reply, scripted=fake.next_scripted(),
               n_tool_calls=fake.n_tool_calls, new_id=fake.id_maker("toolu_01", 22),
               thinking=thinking)
    ident, model = "msg_01" + uuid.uuid4().hex[:22], request.get("model", "")
    blocks = _content(fake, a)
    usage = {"input_tokens": a.input_tokens, "output_tokens": a.output_tokens,
             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    headers = {"request-id": "req_" + uuid.uuid4().hex[:24]}
    if not request.get("stream"):
        return Json(200, {"id": ident, "type": "message", "role": "assistant", "model": model,
                          "content": blocks, "stop_reason": a.stop_reason,
                          "stop_sequence": a.stop_sequence, "usage": usage}, headers)

    def pieces() -> Iterator[Marked]:
        yield sse("message_start", {"type": "message_start", "message": {
            "id": ident, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1}}})
        for index, block in enumerate(blocks):
            kind = block["type"]
            start = {"thinking": {"type": "thinking", "thinking": "", "signature": ""},
                     "text": {"type": "text", "text": ""},
                     "tool_use": {**block, "input": {}}}.get(kind, block)
            yield sse("content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": start})
            if index == 0:
                yield sse("ping", {"type": "ping"})
            deltas: list[dict[str, Any]] = []
            if kind == "thinking":
                deltas = [{"type": "thinking_delta", "thinking": p}
                          for p in fake.pieces(block["thinking"])]
            elif kind == "text":
                deltas = [{"type": "text_delta", "text": p} for p in fake.pieces(block["text"])]
            elif kind == "tool_use":
                arguments = next(c.arguments for c in a.calls if c.id == block["id"])
                deltas = [{"type": "input_json_delta", "partial_json": p}
                          for p in fake.pieces(arguments)]
            for delta in deltas:
                yield content(sse("content_block_delta", {"type": "content_block_delta",
                                                          "index": index, "delta": delta}))
            if kind == "thinking":
                yield sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                  "delta": {"type": "signature_delta",
                                                            "signature": block["signature"]}})
            yield sse("content_block_stop", {"type": "content_block_stop", "index": index})
        yield sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": a.stop_reason, "stop_sequence": a.stop_sequence},
            "usage": {"output_tokens": a.output_tokens}})
        yield sse("message_stop", {"type": "message_stop"})

    return Stream(SSE, marked(pieces()), headers)
