"""``POST /v1/responses`` through the official ``openai`` SDK, unchanged but for base URL and
key, against the fake providers (which the gateway calls with Chat Completions or its own
wire): answers and streams restore the caller's values while no provider wire sees them, a
function tool round trip carries the original values to the tool and keeps the tool's
personal data from the provider, structured output parses, and what cannot be honoured is
refused in OpenAI's error shape."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from tests.control_plane.gateway.conftest import calls
from tests.control_plane.gateway.test_gateway_api import PII, PROMPT, assert_no_pii, oai, wire

LOOKUP = {"type": "function", "name": "lookup_customer",
          "description": "Find a customer's record by what the user said about them",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                         "required": ["query"], "additionalProperties": False},
          "strict": True}
RECORD = f"{PII['person']}, {PII['email']}, card {PII['card']}: account in good standing."


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku", "nova-lite"])
def test_a_response_restores_the_callers_values_and_the_wire_has_none(gw, model):
    with oai(gw) as client:
        response = client.responses.create(model=model, instructions="You are terse.",
                                           input=PROMPT, max_output_tokens=300)
    assert response.output_text == f"You said: {PROMPT}"
    assert response.status == "completed" and response.id.startswith("resp_")
    assert response.model == model and response.usage.total_tokens > 0
    assert_no_pii(wire(gw))
    assert b"terse" in wire(gw)  # the instructions went as the system prompt
    row = calls(gw)[-1]
    assert (row.status, row.model_name, row.stream) == ("ok", model, False)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
def test_a_streamed_response_follows_the_sdks_event_model(gw, model):
    gw.llm.chunk_size = 1  # every placeholder split across many chunks
    with oai(gw) as client, client.responses.stream(model=model, input=PROMPT,
                                                    max_output_tokens=300) as stream:
        kinds, text = [], ""
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert text == final.output_text == f"You said: {PROMPT}"
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert_no_pii(wire(gw))
    assert calls(gw)[-1].stream is True


def run_tool(call) -> str:
    """The program's tool: it gets the model's arguments and answers with personal data."""
    query = json.loads(call.arguments)["query"]
    assert query == PROMPT, "the tool must receive the original values"
    return RECORD


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
def test_a_function_tool_round_trip_restores_arguments_and_redacts_results(gw, model):
    history: list = [{"role": "user", "content": PROMPT}]
    with oai(gw) as client:
        first = client.responses.create(model=model, input=history, tools=[LOOKUP],
                                        max_output_tokens=300)
        assert [item.type for item in first.output] == ["function_call"]
        call = first.output[0]
        assert call.name == "lookup_customer" and call.id.startswith("fc_")
        history += [*first.output, {"type": "function_call_output", "call_id": call.call_id,
                                    "output": run_tool(call)}]
        second = client.responses.create(model=model, input=history, tools=[LOOKUP],
                                         max_output_tokens=300)
    assert second.output_text == f"Tool said: {RECORD}"
    assert_no_pii(wire(gw))  # neither the prompt nor the tool's answer reached the provider
    assert len(calls(gw)) == 2


def test_a_streamed_tool_call_arrives_in_argument_fragments(gw):
    gw.llm.chunk_size = 2
    with oai(gw) as client, client.responses.stream(
            model="gpt-4o-mini", input=PROMPT, tools=[LOOKUP], max_output_tokens=300,
            tool_choice={"type": "function", "name": "lookup_customer"}) as stream:
        fragments = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call" and len(fragments) > 3
    assert "".join(fragments) == call.arguments and run_tool(call) == RECORD
    assert_no_pii(wire(gw))


class Draft(BaseModel):
    reply: str


def test_structured_output_parses_with_the_sdks_helper(gw):
    with oai(gw) as client:
        parsed = client.responses.parse(model="gpt-4o-mini", input=PROMPT, text_format=Draft,
                                        max_output_tokens=400)
    assert parsed.output_parsed == Draft(reply=f"You said: {PROMPT}")
    assert_no_pii(wire(gw))
    sent = json.loads([r for r in gw.llm.received][-1].body)
    assert sent["response_format"]["json_schema"]["name"] == "Draft"


@pytest.mark.parametrize(("extra", "needle"), [
    ({"previous_response_id": "resp_123"}, "keeps no prompt or answer text"),
    ({"tools": [{"type": "web_search"}]}, "'web_search'"),
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "reasoning items"),
    ({"background": True}, "background"),
])
def test_what_cannot_be_honoured_is_refused_in_openais_error_shape(gw, extra, needle):
    body = {"model": "gpt-4o-mini", "input": "hi", **extra}
    with oai(gw, max_retries=0) as client, pytest.raises(
            openai.UnprocessableEntityError) as refused:
        client.responses.create(**body)
    assert needle in refused.value.message and refused.value.body["type"] == \
        "invalid_request_error"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert gw.llm.received == []


def test_a_model_off_the_allowlist_is_refused(gw):
    with oai(gw, max_retries=0) as client, pytest.raises(openai.PermissionDeniedError):
        client.responses.create(model="gpt-4.1", input="hi")
    assert gw.llm.received == []


def test_a_stream_the_provider_cuts_ends_with_an_error_event(gw):
    gw.llm.fail_next("cut")
    with oai(gw, max_retries=0) as client:
        events = list(client.responses.create(model="gpt-4o-mini", input=PROMPT, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "error"
    assert "openai" in events[-1].message
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert calls(gw)[-1].status == "error"


def test_fields_that_carry_personal_data_are_accepted_and_not_forwarded(gw):
    marker = "jane.doe.4821"
    with oai(gw) as client:
        response = client.responses.create(
            model="gpt-4o-mini", input="Hi there", store=True, user=marker,
            safety_identifier=marker, prompt_cache_key=marker, metadata={"ticket": marker},
            include=["reasoning.encrypted_content"], truncation="disabled")
    assert response.output_text == "You said: Hi there"
    assert response.metadata == {"ticket": marker}
    assert response.model_extra["store"] is False  # nothing was stored
    assert marker.encode() not in wire(gw)
