"""The Responses API's answers, whole and streamed, written from what the gateway's service
returns (restored content blocks, or restored stream events and a final result).

A Response object holds the answer's output items in order: text becomes one ``message`` item
(``output_text`` content, no annotations), each tool call a ``function_call`` item; thinking
is not returned (no ``reasoning`` items). ``status`` is ``incomplete`` with
``incomplete_details.reason: max_output_tokens`` when the model ran out of tokens. A stream
sends OpenAI's events, each with its ``sequence_number``:

    response.created, response.in_progress
    per text:       response.output_item.added, response.content_part.added,
                    response.output_text.delta…, response.output_text.done,
                    response.content_part.done, response.output_item.done
    per tool call:  response.output_item.added, response.function_call_arguments.delta…,
                    response.function_call_arguments.done, response.output_item.done
    response.completed (or response.incomplete), with the whole Response

and a failure after the stream began as one ``error`` event."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any, Protocol

from control_plane.gateway import api
from tenant_runtime.exceptions import TenantError
from tenant_runtime.gateway.content import AnswerBlock, Choice, RedactedThinking, Text, ToolCall
from tenant_runtime.gateway.messages import ChatRequest
from tenant_runtime.gateway.providers.base import (
    SignatureDelta,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from tenant_runtime.gateway.service import CallResult

DELTAS = (TextDelta, ToolCallStart, ToolCallDelta, ThinkingDelta, SignatureDelta,
          RedactedThinking)


class Ending(Protocol):
    """What ends a stream: the service's CallResult (usage and the finish reason)."""

    @property
    def usage(self) -> Usage: ...

    @property
    def finish_reason(self) -> str: ...


def response_id(call_id: str) -> str:
    """The response's id: the call's (api.py makes it ``resp_…``), or one made from it."""
    return call_id if call_id.startswith("resp_") else "resp_" + call_id.rsplit("_", 1)[-1]


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def usage_of(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.input_tokens + usage.output_tokens}


def response_object(chat: ChatRequest, echo: dict[str, Any], rid: str, created: int, *,
                    status: str, output: list[dict[str, Any]],
                    usage: Usage | None = None) -> dict[str, Any]:
    incomplete = status == "incomplete"
    return {"id": rid, "object": "response", "created_at": created, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "model": chat.model, "output": output,
            "usage": usage_of(usage) if usage is not None else None,
            **echo}


def _message(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}] if status != "in_progress" else []}


def _function_call(item_id: str, call: ToolCall, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call.id, "name": call.name,
            "arguments": call.arguments, "status": status}


def _status(finish_reason: str) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def output_items(content: tuple[AnswerBlock, ...], status: str) -> list[dict[str, Any]]:
    """The answer's blocks as output items: consecutive texts one message, each tool call
    one function_call; thinking left out."""
    items: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            items.append(_message(_item_id("msg"), "".join(texts), status))
            texts.clear()

    for block in content:
        if isinstance(block, Text):
            texts.append(block.text)
        elif isinstance(block, ToolCall):
            flush()
            items.append(_function_call(_item_id("fc"), block, "completed"))
    flush()
    return items


def render(chat: ChatRequest, choice: Choice, usage: Usage, call_id: str,
           echo: dict[str, Any]) -> dict[str, Any]:
    status = _status(choice.finish_reason)
    return response_object(chat, echo, response_id(call_id), int(time.time()), status=status,
                            output=output_items(choice.content, status), usage=usage)


def answer(chat: ChatRequest, result: CallResult, call_id: str, echo: dict[str, Any]
           ) -> dict[str, Any]:
    """The whole answer of a call: the first choice (the Responses API has no ``n``)."""
    choice = (result.choices[0] if result.choices else
              Choice((Text(result.text),) if result.text else (), result.finish_reason))
    return render(chat, choice, result.usage, call_id, echo)


# --- streaming ------------------------------------------------------------------------------

class _Stream:
    """The events of one streamed response, numbered in order."""

    def __init__(self, chat: ChatRequest, echo: dict[str, Any], rid: str) -> None:
        self.chat, self.echo, self.rid = chat, echo, rid
        self.created = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # items, as they stand
        self.message: int | None = None  # output index of the open message
        self.calls: dict[int, int] = {}  # open tool calls: the call's index → output index

    def event(self, kind: str, **body: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **body}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    def response(self, status: str, usage: Usage | None = None) -> dict[str, Any]:
        return response_object(self.chat, self.echo, self.rid, self.created, status=status,
                               output=self.output, usage=usage)

    def start(self) -> Iterator[str]:
        yield self.event("response.created", response=self.response("in_progress"))
        yield self.event("response.in_progress", response=self.response("in_progress"))

    def text(self, delta: str) -> Iterator[str]:
        if self.message is None:
            yield from self.close_calls("completed")
            self.message = len(self.output)
            item = _message(_item_id("msg"), "", "in_progress")
            self.output.append(item)
            yield self.event("response.output_item.added", output_index=self.message,
                             item=item)
            item["content"] = [{"type": "output_text", "text": "", "annotations": [],
                                "logprobs": []}]
            yield self.event("response.content_part.added", item_id=item["id"],
                             output_index=self.message, content_index=0,
                             part={"type": "output_text", "text": "", "annotations": []})
        item = self.output[self.message]
        item["content"][0]["text"] += delta
        if delta:
            yield self.event("response.output_text.delta", item_id=item["id"],
                             output_index=self.message, content_index=0, delta=delta,
                             logprobs=[])

    def close_message(self, status: str) -> Iterator[str]:
        if self.message is None:
            return
        index, self.message = self.message, None
        item = self.output[index]
        part = item["content"][0]
        yield self.event("response.output_text.done", item_id=item["id"], output_index=index,
                         content_index=0, text=part["text"], logprobs=[])
        yield self.event("response.content_part.done", item_id=item["id"], output_index=index,
                         content_index=0, part={"type": "output_text", "text": part["text"],
                                                "annotations": []})
        item["status"] = status
        yield self.event("response.output_item.done", output_index=index, item=item)

    def call_start(self, start: ToolCallStart) -> Iterator[str]:
        yield from self.close_message("completed")
        index = self.calls[start.index] = len(self.output)
        item = _function_call(_item_id("fc"), ToolCall(start.id, start.name, ""),
                              "in_progress")
        self.output.append(item)
        yield self.event("response.output_item.added", output_index=index, item=item)

    def call_delta(self, delta: ToolCallDelta) -> Iterator[str]:
        index = self.calls.get(delta.index)
        if index is None or not delta.arguments:  # fragments of a call never started: none
            return
        item = self.output[index]
        item["arguments"] += delta.arguments
        yield self.event("response.function_call_arguments.delta", item_id=item["id"],
                         output_index=index, delta=delta.arguments)

    def close_calls(self, status: str) -> Iterator[str]:
        for index in sorted(self.calls.values()):
            item = self.output[index]
            yield self.event("response.function_call_arguments.done", item_id=item["id"],
                             output_index=index, name=item["name"],
                             arguments=item["arguments"])
            item["status"] = status
            yield self.event("response.output_item.done", output_index=index, item=item)
        self.calls.clear()

    def finish(self, ending: Ending) -> Iterator[str]:
        status = _status(ending.finish_reason)
        yield from self.close_message(status)
        yield from self.close_calls("completed")
        yield self.event(f"response.{status}", response=self.response(status, ending.usage))


def stream(chat: ChatRequest, events: Iterator[Any], call_id: str, echo: dict[str, Any]
           ) -> Iterator[str]:
    """The SSE text of a streamed response, from the service's restored events and its final
    result; a failure once the stream has begun ends it with an ``error`` event."""
    out = _Stream(chat, echo, response_id(call_id))
    yield from out.start()
    try:
        for event in events:
            if isinstance(event, TextDelta):
                yield from out.text(event.text)
            elif isinstance(event, ToolCallStart):
                yield from out.call_start(event)
            elif isinstance(event, ToolCallDelta):
                yield from out.call_delta(event)
            elif isinstance(event, DELTAS):  # thinking is not returned
                continue
            elif isinstance(event, str):  # a text fragment, as the service streamed before
                yield from out.text(event)
            else:
                yield from out.finish(event)
    except TenantError as exc:
        error = api.error_body("openai", api.api_error(exc))["error"]
        yield out.event("error", code=error["code"], message=error["message"],
                        param=error["param"])
    finally:
        api.close(events)
