"""OpenAI Responses (``POST /v1/responses``, and Azure's ``/openai/v1/responses``): input as a
string or items (messages, function_call, function_call_output), instructions, flat function
tools, text.format, max_output_tokens, previous_response_id over the responses this server
stored; a Response object, or the SSE event sequence with sequence numbers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tests.fakes.llm.model import Answer, Conversation, answer
from tests.fakes.llm.wire import SSE, BadRequest, Json, Marked, Stream, content, marked, sse

if TYPE_CHECKING:
    from tests.fakes.llm.server import LLMServer


def _parts(value: Any) -> tuple[str, int]:
    if isinstance(value, str):
        return value, 0
    text, others = "", 0
    for part in value if isinstance(value, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") in ("input_text", "output_text", "text"):
            text += str(part.get("text") or "")
        elif part.get("type") == "refusal":
            text += str(part.get("refusal") or "")
        else:
            others += 1  # input_image, input_file, input_audio
    return text, others


def _items(request: dict[str, Any]) -> list[dict[str, Any]]:
    value = request.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise BadRequest("Missing required parameter: 'input'.", param="input",
                         code="missing_required_parameter")
    items = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise BadRequest(f"Invalid type for 'input[{index}]': expected an object.",
                             param=f"input[{index}]")
        items.append(item)
    return items


def read(fake: LLMServer, request: dict[str, Any]) -> tuple[Conversation, list[dict[str, Any]]]:
    """The conversation, and the items it is made of (the stored previous turns first)."""
    previous = request.get("previous_response_id")
    history: list[dict[str, Any]] = []
    if previous is not None:
        with fake._lock:
            stored = fake.responses.get(str(previous))
        if stored is None:
            raise BadRequest(f"Previous response with id '{previous}' not found.",
                             param="previous_response_id", code="previous_response_not_found")
        history = list(stored)
    items = history + _items(request)
    c = Conversation()
    instructions = request.get("instructions")
    if isinstance(instructions, str):
        c.system(instructions)
    calls = {str(i.get("call_id")) for i in items if i.get("type") == "function_call"}
    outputs = {str(i.get("call_id")) for i in items if i.get("type") == "function_call_output"}
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call_output" and str(item.get("call_id")) not in calls:
            raise BadRequest("No tool call found for function call output with call_id "
                             f"{item.get('call_id')}.", param="input")
        if kind == "function_call" and str(item.get("call_id")) not in outputs:
            raise BadRequest(f"No tool output found for function call {item.get('call_id')}.",
                             param="input")
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            text, others = _parts(item.get("content"))
            c.message(str(item.get("role", "user")), text, images=others)
        elif kind == "function_call":
            c.message("assistant", calls=[(str(item.get("name", "")),
                                           str(item.get("arguments", "")))])
        elif kind == "function_call_output":
            text, others = _parts(item.get("output"))
            c.message("tool", results=[text], images=others)
    for tool in request.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "function":
            if not tool.get("name"):
                raise BadRequest("Missing required parameter: 'tools[0].name'.",
                                 param="tools[0].name", code="missing_required_parameter")
            c.tool(str(tool["name"]), tool.get("description"), tool.get("parameters"))
    choice = request.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        c.choice, c.forced_name = "tool", str(choice.get("name"))
    elif choice in ("none", "required", "auto"):
        c.choice = str(choice)
    c.parallel = request.get("parallel_tool_calls") is not False
    text_format = (request.get("text") or {}).get("format") or {}
    if text_format.get("type") == "json_schema":
        c.json_schema = text_format.get("schema") or {}
    c.json_object = text_format.get("type") == "json_object"
    c.max_tokens = request.get("max_output_tokens")
    return c, items


def _output(a: Answer, new_id: Any, *, done: bool = True) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if a.text or not a.calls:
        items.append({"id": "msg_" + new_id(900)[4:], "type": "message",
                      "status": "completed" if done and not a.truncated else "incomplete",
                      "role": "assistant",
                      "content": [{"type": "output_text", "text": a.text, "annotations": [],
                                   "logprobs": []}]})
    items += [{"id": "fc_" + new_id(800 + i)[5:], "type": "function_call",
               "status": "completed", "call_id": c.id, "name": c.name, "arguments": c.arguments}
              for i, c in enumerate(a.calls)]
    return items


def response(fake: LLMServer, request: dict[str, Any], model: str) -> Json | Stream:
    conversation, items = read(fake, request)
    new_id = fake.id_maker("call_")
    a = answer(conversation, reply=fake.reply, scripted=fake.next_scripted(),
               n_tool_calls=fake.n_tool_calls, new_id=new_id)
    ident = "resp_" + new_id(999_999)[5:]
    output = _output(a, new_id)
    store = request.get("store") is not False
    if store:
        replay = [({"type": "message", "role": "assistant", "content": i["content"]}
                   if i["type"] == "message" else i) for i in output]
        with fake._lock:
            fake.responses[ident] = items + replay
    created = int(time.time())

    def body(status: str, out: list[dict[str, Any]], usage: bool) -> dict[str, Any]:
        return {
            "id": ident, "object": "response", "created_at": created, "status": status,
            "background": False, "error": None,
            "incomplete_details": ({"reason": "max_output_tokens"}
                                   if status == "incomplete" else None),
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"), "max_tool_calls": None,
            "model": model, "output": out,
            "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
            "previous_response_id": request.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
            "store": store, "temperature": request.get("temperature", 1.0),
            "text": request.get("text") or {"format": {"type": "text"}},
            "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools") or [], "top_p": request.get("top_p", 1.0),
            "truncation": request.get("truncation", "disabled"),
            "usage": ({"input_tokens": a.input_tokens,
                       "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                       "output_tokens": a.output_tokens,
                       "output_tokens_details": {"reasoning_tokens": 0},
                       "total_tokens": a.input_tokens + a.output_tokens} if usage else None),
            "user": request.get("user"), "metadata": request.get("metadata") or {}}

    final = "incomplete" if a.truncated else "completed"
    if not request.get("stream"):
        return Json(200, body(final, output, True))
    return Stream(SSE, marked(_events(fake, body, output, final)))


def _events(fake: LLMServer, body: Any, output: list[dict[str, Any]],
            final: str) -> Iterator[Marked]:
    sequence = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> bytes:
        return sse(kind, {"type": kind, "sequence_number": next(sequence), **fields})

    yield event("response.created", response=body("in_progress", [], False))
    yield event("response.in_progress", response=body("in_progress", [], False))
    for index, item in enumerate(output):
        ids = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            text = item["content"][0]["text"]
            yield event("response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "content": []})
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            yield event("response.content_part.added", **ids, content_index=0, part=empty)
            for piece in fake.pieces(text):
                yield content(event("response.output_text.delta", **ids, content_index=0,
                                    delta=piece, logprobs=[]))
            yield event("response.output_text.done", **ids, content_index=0, text=text,
                        logprobs=[])
            yield event("response.content_part.done", **ids, content_index=0,
                        part=item["content"][0])
        else:
            yield event("response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "arguments": ""})
            for piece in fake.pieces(item["arguments"]):
                yield content(event("response.function_call_arguments.delta", **ids,
                                    delta=piece))
            yield event("response.function_call_arguments.done", **ids,
                        arguments=item["arguments"])
        yield event("response.output_item.done", output_index=index, item=item)
    yield event(f"response.{final}", response=body(final, output, True))
