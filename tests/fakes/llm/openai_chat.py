"""OpenAI Chat Completions (``POST /v1/chat/completions``, and Azure's deployments): tools,
tool_choice, parallel_tool_calls, tool-role messages, response_format, image parts, ``n``,
logprobs; JSON answers and SSE chunks as OpenAI sends them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tests.fakes.llm.model import Answer, Conversation, answer
from tests.fakes.llm.wire import SSE, BadRequest, Json, Marked, Stream, content, marked, sse

if TYPE_CHECKING:
    from tests.fakes.llm.server import LLMServer


def _parts(content_value: Any) -> tuple[str, int]:
    """The text of a message's content (a string or a list of parts) and its non-text parts."""
    if isinstance(content_value, str):
        return content_value, 0
    text, others = "", 0
    for part in content_value if isinstance(content_value, list) else []:
        if isinstance(part, dict) and part.get("type") in ("text", "refusal"):
            text += str(part.get("text") or part.get("refusal") or "")
        elif isinstance(part, dict):
            others += 1  # image_url, input_audio, file
    return text, others


def read(request: dict[str, Any]) -> Conversation:
    """The conversation of a chat completion request; refuses what OpenAI refuses."""
    c = Conversation()
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must contain at least one message.", param="messages")
    pending: list[str] = []  # tool_call ids of the last assistant message still unanswered
    answerable: set[str] = set()
    for index, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"Invalid type for 'messages[{index}]': expected an object.",
                             param=f"messages[{index}]")
        role = str(m.get("role"))
        if pending and role != "tool":
            _unanswered(pending, index)
        text, others = _parts(m.get("content"))
        if role == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in answerable:
                raise BadRequest("Invalid parameter: messages with role 'tool' must be a response "
                                 "to a preceeding message with 'tool_calls'.",
                                 param=f"messages.[{index}].role")
            if call_id in pending:
                pending.remove(call_id)
            c.message("tool", results=[text], images=others)
        elif role == "assistant":
            calls = [t for t in m.get("tool_calls") or [] if isinstance(t, dict)]
            functions = [t.get("function") or {} for t in calls]
            c.message("assistant", text, images=others,
                      calls=[(str(f.get("name", "")), str(f.get("arguments", "")))
                             for f in functions])
            pending = [str(t.get("id")) for t in calls]
            answerable = set(pending)
        else:
            c.message(role, text, images=others)
            answerable = set()
    if pending:
        _unanswered(pending, len(messages))
    tools = request.get("tools") or []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            continue  # custom tools: offered, never called by the fake
        if not function.get("name"):
            raise BadRequest(f"Missing required parameter: 'tools[{index}].function.name'.",
                             param=f"tools[{index}].function.name",
                             code="missing_required_parameter")
        c.tool(str(function["name"]), function.get("description"), function.get("parameters"))
    choice = request.get("tool_choice")
    if choice is not None and not tools:
        raise BadRequest("Invalid value for 'tool_choice': 'tool_choice' is only allowed when "
                         "'tools' are specified.", param="tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        c.choice, c.forced_name = "tool", str((choice.get("function") or {}).get("name"))
        if c.forced_name not in {t.name for t in c.tools}:
            raise BadRequest(f"Invalid value for 'tool_choice': no function named "
                             f"'{c.forced_name}' was specified in the 'tools' parameter.",
                             param="tool_choice")
    elif choice in ("none", "required", "auto"):
        c.choice = str(choice)
    c.parallel = request.get("parallel_tool_calls") is not False
    response_format = request.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        c.json_schema = (response_format.get("json_schema") or {}).get("schema") or {}
    c.json_object = response_format.get("type") == "json_object"
    c.max_tokens = request.get("max_completion_tokens") or request.get("max_tokens")
    stop = request.get("stop") or []
    c.stop = [stop] if isinstance(stop, str) else list(stop)
    return c


def _unanswered(ids: list[str], index: int) -> None:
    raise BadRequest("An assistant message with 'tool_calls' must be followed by tool messages "
                     "responding to each 'tool_call_id'. The following tool_call_ids did not "
                     f"have response messages: {', '.join(ids)}",
                     param=f"messages.[{index}].role")


def logprobs(text: str, top: int, start: int = 0) -> list[dict[str, Any]]:
    """A plausible logprobs list: the text in tokens of 4 characters, each with ``top``
    alternatives (the token itself first)."""
    tokens = [text[i: i + 4] for i in range(0, len(text), 4)]
    out = []
    for n, token in enumerate(tokens, start):
        logprob = -round(0.01 * (n % 7 + 1), 4)
        alternatives = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
        alternatives += [{"token": f"{token}~{k}", "logprob": round(logprob - 2.5 * k, 4),
                          "bytes": list(f"{token}~{k}".encode())} for k in range(1, top)]
        out.append({"token": token, "logprob": logprob, "bytes": list(token.encode()),
                    "top_logprobs": alternatives[:top]})
    return out


def chat_completion(fake: LLMServer, request: dict[str, Any], model: str) -> Json | Stream:
    conversation = read(request)
    n = request.get("n") or 1
    if not isinstance(n, int) or not 1 <= n <= 128:
        raise BadRequest(f"Invalid 'n': integer must be between 1 and 128, got {n}.", param="n")
    scripted = fake.next_scripted()
    new_id = fake.id_maker("call_")

    def ids_of(choice: int) -> Callable[[int], str]:
        return lambda i: new_id(choice * 1000 + i)

    answers = [answer(conversation, reply=fake.reply, scripted=scripted,
                      n_tool_calls=fake.n_tool_calls, new_id=ids_of(k)) for k in range(n)]
    want_logprobs = bool(request.get("logprobs"))
    top = int(request.get("top_logprobs") or 0)
    first = answers[0]
    completion = sum(a.output_tokens for a in answers)
    usage = {"prompt_tokens": first.input_tokens, "completion_tokens": completion,
             "total_tokens": first.input_tokens + completion,
             "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                           "accepted_prediction_tokens": 0,
                                           "rejected_prediction_tokens": 0}}
    ident, created = "chatcmpl-" + new_id(999_999)[5:], int(time.time())
    if not request.get("stream"):
        return Json(200, {
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [_choice(k, a, want_logprobs, top) for k, a in enumerate(answers)],
            "usage": usage, "service_tier": "default", "system_fingerprint": "fp_fake"})

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse(None, {"id": ident, "object": "chat.completion.chunk", "created": created,
                          "model": model, "service_tier": "default",
                          "system_fingerprint": "fp_fake", "choices": choices, **extra})

    include_usage = bool((request.get("stream_options") or {}).get("include_usage"))

    def pieces() -> Iterator[Marked]:
        for k, a in enumerate(answers):
            role_content = "" if a.text or not a.calls else None
            yield chunk([{"index": k, "delta": {"role": "assistant", "content": role_content,
                                                "refusal": None},
                          "logprobs": None, "finish_reason": None}])
            at = 0
            for piece in fake.pieces(a.text):
                probs = ({"content": logprobs(piece, top, at), "refusal": None}
                         if want_logprobs else None)
                at += len(logprobs(piece, 0))
                yield content(chunk([{"index": k, "delta": {"content": piece},
                                      "logprobs": probs, "finish_reason": None}]))
            for i, call in enumerate(a.calls):
                yield chunk([{"index": k, "delta": {"tool_calls": [{
                    "index": i, "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": ""}}]},
                    "logprobs": None, "finish_reason": None}])
                for piece in fake.pieces(call.arguments):
                    yield content(chunk([{"index": k, "delta": {"tool_calls": [{
                        "index": i, "function": {"arguments": piece}}]},
                        "logprobs": None, "finish_reason": None}]))
            yield chunk([{"index": k, "delta": {}, "logprobs": None,
                          "finish_reason": a.finish_reason}])
        if include_usage:
            yield chunk([], usage=usage)
        yield b"data: [DONE]\n\n"

    return Stream(SSE, marked(pieces()))


def _choice(index: int, a: Answer, want_logprobs: bool, top: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant",
                               "content": a.text if a.text or not a.calls else None,
                               "refusal": None, "annotations": []}
    if a.calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in a.calls]
    return {"index": index, "finish_reason": a.finish_reason, "message": message,
            "logprobs": ({"content": logprobs(a.text, top), "refusal": None}
                         if want_logprobs else None)}
