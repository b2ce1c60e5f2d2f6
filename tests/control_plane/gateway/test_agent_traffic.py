"""Agent traffic through the gateway with the official SDKs, on every provider: tools, tool
calls (whole and streamed), tool results, structured output, images, embeddings and token
counts. The fake provider's recorded bytes never hold the caller's personal data, and the
caller gets the original values back, inside tool-call arguments and JSON answers too."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from pydantic import BaseModel
from sqlalchemy import select

from tenant_runtime.models import AuditEvent
from tests.control_plane.gateway.conftest import ROUTES, GatewayEnv
from tests.control_plane.gateway.test_gateway_api import ant, oai, set_settings, wire

NAME = 'Ann O"Brien \\ Smith'
EMAIL = "ann.obrien@example.com"
PHONE = "415-555-0188"
PROMPT = f"Look up {EMAIL} and call {PHONE}"
LOOKUP = {"type": "function", "function": {
    "name": "lookup_customer", "description": "Find a customer by e-mail or phone.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                   "required": ["query"]}}}
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5"
       "ErkJggg==")


def assert_clean(env: GatewayEnv) -> None:
    sent = wire(env).decode("utf-8", "replace")
    for value in (EMAIL, PHONE):
        assert value not in sent, f"{value!r} reached the provider"


def events(env: GatewayEnv, kind: str) -> list[AuditEvent]:
    with env.ctx.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.event_type == kind)
                              .order_by(AuditEvent.seq)))


@pytest.mark.parametrize("model", sorted(ROUTES))
def test_a_tool_loop_keeps_the_originals_for_the_tool_and_none_for_the_provider(gw, model):
    with oai(gw) as client:
        messages = [{"role": "user", "content": PROMPT}]
        first = client.chat.completions.create(model=model, messages=messages, tools=[LOOKUP],
                                               max_tokens=200)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        call = choice.message.tool_calls[0]
        assert call.function.name == "lookup_customer"
        assert json.loads(call.function.arguments) == {"query": PROMPT}  # originals back
        messages += [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id,
                      "content": f"Found {NAME}, {EMAIL}"}]
        second = client.chat.completions.create(model=model, messages=messages,
                                                tools=[LOOKUP], max_tokens=200)
        assert second.choices[0].message.content == f"Tool said: Found {NAME}, {EMAIL}"
    assert_clean(gw)
    call_events = events(gw, "gateway.call")
    assert call_events[-2].details["tool_calls"] == {"lookup_customer": 1}
    assert "query" not in json.dumps(call_events[-2].details)  # names and counts only


@pytest.mark.parametrize("model", sorted(ROUTES))
def test_streamed_tool_calls_arrive_in_openai_shape_restored(gw, model):
    gw.llm.chunk_size = 2  # placeholders split across argument fragments
    with oai(gw) as client:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPT}], tools=[LOOKUP],
            max_tokens=200, stream=True)
        arguments, names, finish = {}, {}, None
        for chunk in stream:
            for delta in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
                if delta.id:
                    names[delta.index] = delta.function.name
                arguments[delta.index] = (arguments.get(delta.index, "")
                                          + (delta.function.arguments or ""))
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
    assert names == {0: "lookup_customer"} and finish == "tool_calls"
    assert json.loads(arguments[0]) == {"query": PROMPT}
    assert_clean(gw)


class Customer(BaseModel):
    name: str
    email: str


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku", "llama-onprem"])
def test_structured_output_parses_with_the_originals_escaped(gw, model):
    gw.llm.script(json.dumps({"name": "[PERSON_1] x", "email": "[EMAIL_1]"}))
    with oai(gw) as client:
        parsed = client.chat.completions.parse(
            model=model, response_format=Customer, max_tokens=200,
            messages=[{"role": "user", "content": f"Extract: {EMAIL} wrote it"}])
    customer = parsed.choices[0].message.parsed
    assert customer.email == EMAIL
    assert_clean(gw)


def test_a_restored_value_with_quotes_stays_one_json_string(gw):
    hostile = 'x@example.com", "admin": true, "y": "'
    gw.llm.script(json.dumps({"name": "n", "email": "[EMAIL_1]"}))
    with oai(gw) as client:
        parsed = client.chat.completions.parse(
            model="gpt-4o-mini", response_format=Customer, max_tokens=200,
            messages=[{"role": "user", "content": f"Extract: {hostile}"}])
    message = parsed.choices[0].message
    assert message.parsed.email.startswith("x@example.com")
    assert "admin" not in json.loads(message.content)


@pytest.mark.parametrize("model", sorted(ROUTES))
def test_anthropic_sdk_tools_and_streamed_input_json(gw, model):
    tool = {"name": "lookup_customer", "description": "Find a customer.",
            "input_schema": LOOKUP["function"]["parameters"]}
    with ant(gw) as client:
        message = client.messages.create(model=model, max_tokens=200, tools=[tool],
                                         messages=[{"role": "user", "content": PROMPT}])
        assert message.stop_reason == "tool_use"
        use = next(b for b in message.content if b.type == "tool_use")
        assert use.input == {"query": PROMPT}
        history = [{"role": "user", "content": PROMPT},
                   {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                     for b in message.content]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                 "content": f"Found {NAME}"}]}]
        with client.messages.stream(model=model, max_tokens=200, tools=[tool],
                                    messages=history) as stream:
            final = stream.get_final_message()
        assert final.content[-1].text == f"Tool said: Found {NAME}"
        with client.messages.stream(model=model, max_tokens=200, tools=[tool],
                                    messages=[{"role": "user", "content": PROMPT}]) as stream:
            streamed = stream.get_final_message()
        assert next(b for b in streamed.content if b.type == "tool_use").input == {
            "query": PROMPT}
    assert_clean(gw)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku", "nova-lite"])
def test_images_go_through_when_the_policy_allows_and_are_refused_otherwise(gw, model):
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    with oai(gw) as client:
        answer = client.chat.completions.create(model=model, max_tokens=50,
                                                messages=[{"role": "user", "content": content}])
        assert answer.choices[0].message.content == "You said: What is this?"
        assert PNG.encode() in wire(gw)
        set_settings(gw, image_policy="refuse")
        gw.llm.clear()
        with pytest.raises(openai.PermissionDeniedError, match="images"):
            client.chat.completions.create(model=model, max_tokens=50,
                                           messages=[{"role": "user", "content": content}])
    assert gw.llm.received == []
    assert events(gw, "gateway.image_refused")


def test_tool_rules_refuse_a_forbidden_tool_before_anything_is_sent(gw):
    set_settings(gw, tool_rules=[{"tool": "lookup_*", "models": ["claude-haiku"]},
                                 {"tool": "delete_*", "models": []}])
    with oai(gw) as client:
        with pytest.raises(openai.PermissionDeniedError, match="lookup_customer"):
            client.chat.completions.create(model="gpt-4o-mini", tools=[LOOKUP], max_tokens=50,
                                           messages=[{"role": "user", "content": "hi"}])
        assert gw.llm.received == []
        allowed = client.chat.completions.create(model="claude-haiku", tools=[LOOKUP],
                                                 max_tokens=50,
                                                 messages=[{"role": "user", "content": "hi"}])
        assert allowed.choices[0].finish_reason == "tool_calls"
    refused = events(gw, "gateway.tool_refused")
    assert refused[-1].details["tools"] == ["lookup_customer"]


def test_a_field_the_provider_cannot_take_is_refused_naming_it(gw):
    with oai(gw) as client:
        with pytest.raises(openai.UnprocessableEntityError,
                           match="anthropic, which cannot take logprobs"):
            client.chat.completions.create(model="claude-haiku", logprobs=True, max_tokens=20,
                                           messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.UnprocessableEntityError, match="legacy functions"):
            client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=20, functions=[LOOKUP["function"]],
                messages=[{"role": "user", "content": "hi"}])
        both = client.chat.completions.create(model="gpt-4o-mini", logprobs=True, seed=7, n=2,
                                              max_tokens=20,
                                              messages=[{"role": "user", "content": "hi"}])
        assert len(both.choices) == 2
    assert gw.llm.received[-1].json()["seed"] == 7


@pytest.mark.parametrize("model", ["gpt-4o-mini", "azure-4o", "llama-onprem"])
def test_embeddings_are_redacted_charged_and_audited(gw, model):
    with oai(gw) as client:
        result = client.embeddings.create(model=model, input=[PROMPT, "plain"])
    assert len(result.data) == 2 and result.usage.prompt_tokens > 0
    assert_clean(gw)
    event = events(gw, "gateway.call")[-1]
    assert event.details["inputs"] == 2 and event.details["redactions"]["EMAIL"] == 1


def test_embeddings_on_a_provider_without_them_are_refused(gw):
    with oai(gw) as client, pytest.raises(openai.UnprocessableEntityError,
                                          match="anthropic, which cannot take embeddings"):
        client.embeddings.create(model="claude-haiku", input="hello")
    assert gw.llm.received == []


def test_count_tokens_counts_redacted_text(gw):
    with ant(gw) as client:
        counted = client.messages.count_tokens(model="claude-haiku",
                                               messages=[{"role": "user", "content": PROMPT}])
        estimated = client.messages.count_tokens(model="gpt-4o-mini",
                                                 messages=[{"role": "user", "content": PROMPT}])
    assert counted.input_tokens > 0 and estimated.input_tokens > 0
    assert_clean(gw)
    assert [e.details["counted"] for e in events(gw, "gateway.tokens_counted")] == [
        "provider", "estimate"]


def test_the_402_says_when_the_reservation_is_what_does_not_fit(gw):
    set_settings(gw, monthly_cap_micros=2_000)  # $0.002: far from spent
    with ant(gw) as client, pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.create(model="claude-haiku", max_tokens=20_000,
                               messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 402
    message = str(refused.value)
    assert "worst case" in message and "A max_tokens of at most" in message
    fits = int(message.split("A max_tokens of at most ")[1].split(" ")[0].replace(",", ""))
    with ant(gw) as client:
        client.messages.create(model="claude-haiku", max_tokens=fits,
                               messages=[{"role": "user", "content": "hi"}])


def test_thinking_blocks_come_back_signed_and_pass_back_unchanged(gw):
    with ant(gw) as client:
        first = client.messages.create(
            model="claude-haiku", max_tokens=4000,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": PROMPT}])
        thinking = first.content[0]
        assert thinking.type == "thinking" and thinking.signature
        assert EMAIL not in thinking.thinking  # never restored: the signature covers it
        history = [{"role": "user", "content": PROMPT},
                   {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                     for b in first.content]},
                   {"role": "user", "content": "And then?"}]
        # the fake provider refuses a thinking block whose signature no longer matches
        second = client.messages.create(model="claude-haiku", max_tokens=4000,
                                        thinking={"type": "enabled", "budget_tokens": 1024},
                                        messages=history)
        assert second.content[-1].text == "You said: And then?"
        with client.messages.stream(model="claude-haiku", max_tokens=4000,
                                    thinking={"type": "enabled", "budget_tokens": 1024},
                                    messages=history) as stream:
            streamed = stream.get_final_message()
        assert streamed.content[0].type == "thinking" and streamed.content[0].signature
    assert_clean(gw)
    with ant(gw) as client, pytest.raises(anthropic.UnprocessableEntityError,
                                          match="openai, which cannot take thinking"):
        client.messages.create(model="gpt-4o-mini", max_tokens=2000, messages=[
            {"role": "user", "content": "hi"}],
            thinking={"type": "enabled", "budget_tokens": 1024})


def test_documents_reach_claude_redacted_and_are_refused_where_unsupported(gw):
    document = {"type": "document", "title": "Note",
                "source": {"type": "text", "media_type": "text/plain",
                           "data": f"Customer {EMAIL} called"}}
    with ant(gw) as client:
        client.messages.create(model="claude-haiku", max_tokens=50, messages=[
            {"role": "user", "content": [document, {"type": "text", "text": "Summarize"}]}])
        assert_clean(gw)
        assert b"[EMAIL_1]" in wire(gw)
        with pytest.raises(anthropic.UnprocessableEntityError, match="cannot take document"):
            client.messages.create(model="gpt-4o-mini", max_tokens=50, messages=[
                {"role": "user", "content": [document, {"type": "text", "text": "Summarize"}]}])
