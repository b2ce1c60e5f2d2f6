"""OpenAI's Responses API (``POST /v1/responses``): request items translate into the gateway's
provider-neutral chat request, every refused field names itself, and answers and streams fit
the official SDK's own types (parsed with them here). The end-to-end tests with the SDK
against the fake providers are in test_responses_sdk.py."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent

from control_plane.gateway.responses import responses_request
from control_plane.gateway.responses_render import render, stream
from control_plane.gateway.shapes import InvalidBody
from tenant_runtime.gateway.content import (
    Choice,
    Image,
    OutputFormat,
    Text,
    Thinking,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)
from tenant_runtime.gateway.messages import ChatMessage
from tenant_runtime.gateway.providers.base import (
    Finished,
    ProviderError,
    SignatureDelta,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from tenant_runtime.gateway.service import ProvidersFailed

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}


def parse(**body: Any):
    return responses_request({"model": "gpt-4o-mini", **body})


def refused(**body: Any) -> InvalidBody:
    with pytest.raises(InvalidBody) as caught:
        parse(**body)
    return caught.value


# --- parsing --------------------------------------------------------------------------------

def test_a_string_input_with_instructions_is_a_system_and_a_user_message():
    call = parse(input="Hello", instructions="Be terse.", max_output_tokens=50,
                 temperature=0.2, top_p=0.9, reasoning={"effort": "low"})
    chat = call.chat
    assert chat.messages == (ChatMessage("system", "Be terse."), ChatMessage("user", "Hello"))
    assert (chat.max_tokens, chat.temperature, chat.top_p) == (50, 0.2, 0.9)
    assert chat.sampling.reasoning_effort == "low" and chat.stream is False
    assert call.echo["instructions"] == "Be terse." and call.echo["store"] is False


def test_message_items_translate_role_by_role_with_images():
    chat = parse(input=[
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Un chat.", "annotations": []}]},
        {"role": "user", "content": "Merci"},
    ]).chat
    assert chat.messages == (
        ChatMessage("system", "Answer in French."),
        ChatMessage("user", (Text("What is this?"),
                             Image("url", "https://example.com/a.png", detail="low"))),
        ChatMessage("assistant", (Text("Un chat."),)),
        ChatMessage("user", "Merci"))


def test_function_calls_join_the_assistant_message_and_outputs_one_user_message():
    chat = parse(input=[
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Paris"}', "id": "fc_1", "status": "completed"},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather",
         "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "4 C"}]},
        {"type": "function_call", "call_id": "call_3", "name": "get_weather",
         "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_3", "output": ""},
    ], tools=[WEATHER], tool_choice="auto", parallel_tool_calls=True).chat
    assert chat.messages[1:] == (
        ChatMessage("assistant", (Text("Checking."),
                                  ToolCall("call_1", "get_weather", '{"city":"Paris"}'),
                                  ToolCall("call_2", "get_weather", '{"city":"Oslo"}'))),
        ChatMessage("user", (ToolResult("call_1", (Text("18 C"),)),
                             ToolResult("call_2", (Text("4 C"),)))),
        ChatMessage("assistant", (ToolCall("call_3", "get_weather", '{"city":"Rome"}'),)),
        ChatMessage("user", (ToolResult("call_3", ()),)))
    assert chat.tools == (Tool("get_weather", "Weather in a city", WEATHER["parameters"],
                               True),)
    assert chat.tool_choice == ToolChoice("auto") and chat.parallel_tool_calls is True


def test_tool_choice_and_text_formats():
    chat = parse(input="x", tools=[WEATHER],
                 tool_choice={"type": "function", "name": "get_weather"}).chat
    assert chat.tool_choice == ToolChoice("tool", "get_weather")
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    call = parse(input="x", text={"format": {"type": "json_schema", "name": "answer",
                                             "schema": schema, "strict": True,
                                             "description": "The answer"}})
    assert call.chat.output == OutputFormat("json_schema", "answer", schema, True, "The answer")
    assert call.echo["text"]["format"]["schema"] == schema
    assert parse(input="x", text={"format": {"type": "json_object"}}).chat.output == \
        OutputFormat("json_object")
    assert parse(input="x", text={"format": {"type": "text"}}).chat.output is None


def test_what_has_no_effect_on_the_answer_is_accepted_and_not_forwarded():
    call = parse(input="x", store=True, metadata={"team": "ops"}, user="u-1",
                 safety_identifier="s-1", prompt_cache_key="k", truncation="disabled",
                 service_tier="auto", include=["reasoning.encrypted_content"],
                 stream_options={"include_obfuscation": False})
    assert call.chat.messages == (ChatMessage("user", "x"),)
    assert call.echo["metadata"] == {"team": "ops"} and call.echo["store"] is False


@pytest.mark.parametrize(("body", "param", "phrase"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id", "keeps no prompt or answer"),
    ({"conversation": "conv_1"}, "conversation", "keeps no prompt or answer"),
    ({"background": True}, "background", "keeps no prompt or answer"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt", "stored with OpenAI"),
    ({"context_management": [{"type": "compaction"}]}, "context_management",
     "Unrecognized request argument"),
    ({"top_logprobs": 2}, "top_logprobs", "Unrecognized request argument"),
    ({"max_tool_calls": 2}, "max_tool_calls", "Unrecognized request argument"),
    ({"include": ["message.output_text.logprobs"]}, "include", "cannot be honoured"),
    ({"include": ["file_search_call.results"]}, "include", "cannot be honoured"),
    ({"truncation": "auto"}, "truncation", "never drops"),
    ({"service_tier": "flex"}, "service_tier", "routes decide"),
    ({"reasoning": {"summary": "auto"}}, "reasoning.summary", "no reasoning items"),
    ({"reasoning": {"effort": "huge"}}, "reasoning.effort", "Invalid value"),
    ({"text": {"verbosity": "low"}}, "text.verbosity", "verbosity"),
    ({"text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema",
     "Missing required parameter"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "'web_search'"),
    ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["vs"]}]},
     "tools[1].type", "'file_search'"),
    ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type", "'mcp'"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type", "'code_interpreter'"),
    ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type", "'computer_use_preview'"),
    ({"tools": [{"type": "custom", "name": "x"}]}, "tools[0].type", "'custom'"),
    ({"tools": [{**WEATHER, "defer_loading": True}]}, "tools[0].defer_loading",
     "Unrecognized"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].name", "unique"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
     "tool_choice.name", "not among tools"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type", "web_search_preview"),
    ({"tool_choice": "required"}, "tool_choice", "at least one tool"),
    ({"max_output_tokens": 0}, "max_output_tokens", "Invalid value"),
    ({"temperature": 3}, "temperature", "Invalid value"),
    ({"stream_options": {"include_usage": True}}, "stream_options.include_usage",
     "Unrecognized"),
])
def test_every_refused_field_names_itself(body, param, phrase):
    error = refused(input="hi", **body)
    assert error.param == param, error.message
    assert phrase in error.message and param.split(".")[0].split("[")[0] in error.message


@pytest.mark.parametrize(("item", "param", "phrase"), [
    ({"type": "reasoning", "id": "rs_1", "summary": []}, "input[1].type", "reasoning items"),
    ({"type": "item_reference", "id": "msg_1"}, "input[1].type", "keeps no prompt"),
    ({"type": "web_search_call", "id": "ws_1"}, "input[1].type", "built-in tools"),
    ({"type": "computer_call_output", "call_id": "c"}, "input[1].type", "built-in tools"),
    ({"role": "user", "content": [{"type": "input_image", "file_id": "file-1",
                                   "detail": "auto"}]},
     "input[1].content[0].file_id", "stored with OpenAI"),
    ({"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]},
     "input[1].content[0].type", "input_file"),
    ({"role": "user", "content": [{"type": "input_image", "detail": "auto"}]},
     "input[1].content[0].image_url", "needs an image_url"),
    ({"role": "system", "content": [{"type": "input_image", "image_url": "https://x/a.png"}]},
     "input[1].content[0].type", "input_image"),
    ({"role": "assistant", "content": [{"type": "input_image", "image_url": "https://x"}]},
     "input[1].content[0].type", "assistant message"),
    ({"role": "tool", "content": "x"}, "input[1].role", "Invalid value"),
    ({"role": "user", "content": "x", "name": "bob"}, "input[1].name", "Unrecognized"),
    ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[1].call_id",
     "Missing required parameter"),
    ({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}",
      "namespace": "ns"}, "input[1].namespace", "Invalid value"),
    ({"type": "function_call_output", "output": "x"}, "input[1].call_id", "Missing"),
    ({"type": "function_call_output", "call_id": "c", "output": "x"}, "input[1].call_id",
     "no function_call item"),
    ({"content": "no role"}, "input[1].type", "Missing required parameter"),
])
def test_every_refused_item_names_where_it_is(item, param, phrase):
    error = refused(input=[{"role": "user", "content": "hi"}, item])
    assert error.param == param, error.message
    assert phrase in error.message and param.split(".")[0] in error.message


def test_a_tool_outputs_parts_are_checked_like_a_messages():
    error = refused(input=[
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c",
         "output": [{"type": "input_file", "file_data": "x"}]}])
    assert error.param == "input[1].output[0].type" and "input_file" in error.message


def test_an_empty_or_missing_input_is_refused():
    assert refused(input=[]).param == "input"
    assert refused().param == "input"
    with pytest.raises(InvalidBody) as caught:
        responses_request({"input": "x"})
    assert caught.value.param == "model"


# --- answers --------------------------------------------------------------------------------

ECHO = parse(input="x", tools=[WEATHER], instructions="Be terse.").echo
CHAT = parse(input="x", tools=[WEATHER]).chat


def test_an_answer_is_a_response_the_sdk_parses():
    choice = Choice((Thinking("hmm", "sig"), Text("Let me check. "), Text("One moment."),
                     ToolCall("call_9", "get_weather", '{"city":"Paris"}')), "tool_calls")
    body = render(CHAT, choice, Usage(12, 7), "chatcmpl_abc123", ECHO)
    response = Response.model_validate(body)
    assert response.id == "resp_abc123" and response.status == "completed"
    assert response.output_text == "Let me check. One moment."
    assert [item.type for item in response.output] == ["message", "function_call"]
    message, call = response.output
    assert message.id.startswith("msg_") and message.role == "assistant"
    assert message.content[0].annotations == []
    assert call.id.startswith("fc_") and (call.call_id, call.name, call.arguments) == (
        "call_9", "get_weather", '{"city":"Paris"}')
    assert response.usage.total_tokens == 19 and response.usage.input_tokens == 12
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.tools[0].name == "get_weather" and response.instructions == "Be terse."
    assert response.incomplete_details is None and "hmm" not in json.dumps(body)


def test_an_answer_cut_at_max_output_tokens_is_incomplete():
    body = render(CHAT, Choice((Text("Half an ans"),), "length"), Usage(3, 5), "c_1", ECHO)
    response = Response.model_validate(body)
    assert response.status == "incomplete" and response.output[0].status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"


# --- streams --------------------------------------------------------------------------------

EVENT_TYPES = {typing.get_args(cls.model_fields["type"].annotation)[0]: cls
               for cls in typing.get_args(typing.get_args(ResponseStreamEvent)[0])}


def sse(pieces: Iterator[str]) -> list[Any]:
    """The stream as the SDK's event objects, each checked against its own type."""
    events = []
    for piece in pieces:
        name, data = piece.removesuffix("\n\n").split("\n")
        body = json.loads(data.removeprefix("data: "))
        assert name == f"event: {body['type']}"
        events.append(EVENT_TYPES[body["type"]].model_validate(body))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events


def test_a_stream_of_text_and_tool_calls_follows_openais_event_sequence():
    events = sse(stream(CHAT, iter([
        ThinkingDelta("hmm"), SignatureDelta("sig"), TextDelta("Let me "), TextDelta("check."),
        ToolCallStart(0, "call_1", "get_weather"), ToolCallDelta(0, '{"city":'),
        ToolCallDelta(0, '"Paris"}'), ToolCallStart(1, "call_2", "get_weather"),
        ToolCallDelta(1, '{"city":"Oslo"}'), Finished(Usage(10, 20), "tool_calls", 1)]),
        "chatcmpl_xyz", ECHO))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    created, final = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == [] and created.id == final.id
    assert final.status == "completed" and final.output_text == "Let me check."
    assert [(o.type, o.status) for o in final.output] == [
        ("message", "completed"), ("function_call", "completed"),
        ("function_call", "completed")]
    assert [o.arguments for o in final.output[1:]] == ['{"city":"Paris"}', '{"city":"Oslo"}']
    assert final.usage.total_tokens == 30
    text_done = events[6]
    assert text_done.text == "Let me check." and text_done.item_id == final.output[0].id
    args_done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(e.output_index, e.item_id) for e in args_done] == [
        (1, final.output[1].id), (2, final.output[2].id)]


def test_a_stream_cut_at_max_output_tokens_ends_incomplete():
    events = sse(stream(CHAT, iter([TextDelta("Half"), Finished(Usage(1, 1), "length", 1)]),
                        "c_1", ECHO))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-2].item.status == "incomplete"


def test_a_failure_mid_stream_is_an_error_event():
    def failing() -> Iterator[Any]:
        yield TextDelta("Hel")
        raise ProvidersFailed(str(ProviderError("openai", 3, "HTTP 500")))

    events = sse(stream(CHAT, failing(), "c_1", ECHO))
    assert [e.type for e in events][-2:] == ["response.output_text.delta", "error"]
    assert "openai failed after 3 attempts" in events[-1].message
    assert events[-1].code == "upstream_error"
