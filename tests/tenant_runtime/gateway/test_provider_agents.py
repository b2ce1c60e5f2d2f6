"""Agent traffic through each adapter, through its real SDK against the protocol fake
(tests/fakes/llm): a conversation with tools, tool calls, tool results and an image renders to
each provider's documented shape (asserted on the recorded bytes), answers with tool calls come
back as ``ToolCall`` blocks, streamed tool-call fragments as ``ToolCallStart`` /
``ToolCallDelta`` in order, thinking blocks round-trip byte-identical, structured output and
sampling fields reach the wire, embeddings and count_tokens."""
# ruff: noqa: F811 - the fixtures of test_providers.py, imported by name

from __future__ import annotations

import base64
import json
import struct
from dataclasses import replace

import pytest

from tenant_runtime.gateway.content import (
    Document,
    Image,
    OutputFormat,
    RedactedThinking,
    Text,
    Thinking,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)
from tenant_runtime.gateway.features import unsupported
from tenant_runtime.gateway.messages import ChatMessage, ChatRequest, EmbeddingRequest, Sampling
from tenant_runtime.gateway.providers.base import (
    Finished,
    ProviderError,
    SignatureDelta,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallStart,
)
from tenant_runtime.redaction import Profile, redact_embedding, redact_request
from tests.fakes.llm import IMAGE_TOKENS, Reply, sign, tokens_for, vector
from tests.fakes.llm import ToolCall as Scripted
from tests.tenant_runtime.gateway.test_providers import (  # noqa: F401 - fixtures
    adapters,
    server,
    sleeps,
    target_for,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 24).decode()
WEATHER = Tool("get_weather", "The weather in a city.",
               {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}, strict=True)
TIME = Tool("get_time", "The time in a city.",
            {"type": "object", "properties": {"city": {"type": "string"}}})
CALL_A = ToolCall("call_a", "get_weather", '{"city": "Zürich"}')
CALL_B = ToolCall("call_b", "get_time", '{"city": "Oslo"}')
OPENAI_SHAPED = ("openai", "azure-openai", "on-prem")
ALL = (*OPENAI_SHAPED, "anthropic", "bedrock")


def redacted(chat: ChatRequest):
    request, _ = redact_request(chat, Profile.named("off"))
    return request


def agent_turn(**fields) -> ChatRequest:
    """A second turn of an agent loop: the model called two tools, both answered (one with an
    error), the user adds a picture and a question."""
    messages = (
        ChatMessage("system", "You are a travel assistant."),
        ChatMessage("user", "Weather in Zürich and the time in Oslo?"),
        ChatMessage("assistant", (Text("Let me look."), CALL_A, CALL_B)),
        ChatMessage("user", (ToolResult("call_a", (Text("12 °C, rain"),)),
                             ToolResult("call_b", (Text("no clock"),), is_error=True),
                             Text("And what is on this picture?"),
                             Image("base64", PNG, "image/png"))),
    )
    return ChatRequest(model="any", messages=messages, max_tokens=200,
                       tools=(WEATHER, TIME), **fields)


# -- what goes on the wire ----------------------------------------------------------------------

@pytest.mark.parametrize("provider", OPENAI_SHAPED)
def test_openai_renders_tools_calls_results_and_images(server, adapters, provider):
    request = agent_turn(tool_choice=ToolChoice("auto"), parallel_tool_calls=False)
    assert unsupported(request, provider) == []

    completion = adapters[provider].complete(redacted(request), target_for(server, provider))

    body = server.received[-1].json()
    assert body["messages"] == [
        {"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": "Weather in Zürich and the time in Oslo?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_time", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "12 °C, rain"},
        {"role": "tool", "tool_call_id": "call_b", "content": "Error:\nno clock"},
        {"role": "user", "content": [
            {"type": "text", "text": "And what is on this picture?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
    ]
    assert body["tools"] == [
        {"type": "function", "function": {"name": "get_weather",
                                          "parameters": WEATHER.parameters,
                                          "description": "The weather in a city.",
                                          "strict": True}},
        {"type": "function", "function": {"name": "get_time", "parameters": TIME.parameters,
                                          "description": "The time in a city."}}]
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("auto", False)
    # the last turn is the user's question: the fake calls the first tool with its text
    assert completion.finish_reason == "tool_calls"
    (call,) = completion.choices[0].tool_calls
    assert json.loads(call.arguments) == {"city": "And what is on this picture?"}


def test_anthropic_renders_tools_calls_results_images_and_documents(server, adapters):
    request = agent_turn(tool_choice=ToolChoice("tool", "get_weather"),
                         parallel_tool_calls=False)
    pdf = Document("base64", base64.b64encode(b"%PDF-1.4").decode(), "application/pdf",
                   title="Itinerary")
    request = replace(request, messages=(
        *request.messages[:3],
        ChatMessage("user", (Image("url", "https://example.com/a.png", detail="auto"),)),
        ChatMessage("user", request.messages[3].content + (pdf,))))
    assert unsupported(request, "anthropic") == []  # detail auto is the default: nothing lost
    high = replace(request, messages=(
        ChatMessage("user", (Image("url", "https://example.com/a.png", detail="high"),)),))
    assert unsupported(high, "anthropic") == [
        "image_url.detail (low or high; leave it out or send auto)"]

    adapters["anthropic"].complete(redacted(request), target_for(server, "anthropic"))

    body = server.received[-1].json()
    assert body["system"] == "You are a travel assistant."
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Zürich and the time in Oslo?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_a", "name": "get_weather",
             "input": {"city": "Zürich"}},
            {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {"city": "Oslo"}}]},
        # two user messages merged into one turn, tool results first
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_a",
             "content": [{"type": "text", "text": "12 °C, rain"}]},
            {"type": "tool_result", "tool_use_id": "call_b",
             "content": [{"type": "text", "text": "no clock"}], "is_error": True},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            {"type": "text", "text": "And what is on this picture?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": pdf.data}, "title": "Itinerary"}]},
    ]
    assert body["tools"] == [
        {"name": "get_weather", "input_schema": WEATHER.parameters,
         "description": "The weather in a city.", "strict": True},
        {"name": "get_time", "input_schema": TIME.parameters,
         "description": "The time in a city."}]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather",
                                   "disable_parallel_tool_use": True}


def test_bedrock_renders_tool_config_tool_use_results_and_image_bytes(server, adapters):
    request = agent_turn(tool_choice=ToolChoice("required"))
    request = replace(request, messages=(
        *request.messages,
        ChatMessage("user", (Image("url", f"data:image/jpeg;base64,{PNG}"),))))
    assert unsupported(request, "bedrock") == []

    adapters["bedrock"].complete(redacted(request), target_for(server, "bedrock"))

    body = server.received[-1].json()
    assert body["system"] == [{"text": "You are a travel assistant."}]
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Zürich and the time in Oslo?"}]},
        {"role": "assistant", "content": [
            {"text": "Let me look."},
            {"toolUse": {"toolUseId": "call_a", "name": "get_weather",
                         "input": {"city": "Zürich"}}},
            {"toolUse": {"toolUseId": "call_b", "name": "get_time",
                         "input": {"city": "Oslo"}}}]},
        {"role": "user", "content": [
            {"toolResult": {"toolUseId": "call_a", "content": [{"text": "12 °C, rain"}]}},
            {"toolResult": {"toolUseId": "call_b", "content": [{"text": "no clock"}],
                            "status": "error"}},
            {"text": "And what is on this picture?"},
            # bytes travel base64 in Converse's JSON: boto3 encoded the decoded image again
            {"image": {"format": "png", "source": {"bytes": PNG}}},
            {"image": {"format": "jpeg", "source": {"bytes": PNG}}}]},
    ]
    assert body["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": WEATHER.parameters},
                                "description": "The weather in a city.", "strict": True}},
                  {"toolSpec": {"name": "get_time", "inputSchema": {"json": TIME.parameters},
                                "description": "The time in a city."}}],
        "toolChoice": {"any": {}}}


def test_openai_structured_output_and_sampling_reach_the_wire(server, adapters):
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    request = ChatRequest(
        model="any", messages=(ChatMessage("user", "Where?"),), max_tokens=50, n=2,
        output=OutputFormat("json_schema", "place", schema, strict=True),
        sampling=Sampling(seed=7, presence_penalty=0.5, frequency_penalty=-0.5,
                          logit_bias={"50256": -100}, logprobs=True, top_logprobs=2,
                          reasoning_effort="low"))

    completion = adapters["openai"].complete(redacted(request), target_for(server, "openai"))

    body = server.received[-1].json()
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "place", "schema": schema, "strict": True}}
    assert {k: body[k] for k in ("n", "seed", "presence_penalty", "frequency_penalty",
                                 "logit_bias", "logprobs", "top_logprobs",
                                 "reasoning_effort")} == {
        "n": 2, "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "logit_bias": {"50256": -100}, "logprobs": True, "top_logprobs": 2,
        "reasoning_effort": "low"}
    assert len(completion.choices) == 2
    assert [json.loads(c.text) for c in completion.choices] == [{"city": "You said: Where?"}] * 2
    first = completion.choices[0].logprobs["content"]
    assert "".join(t["token"] for t in first) == completion.choices[0].text
    assert len(first[0]["top_logprobs"]) == 2


def test_on_prem_sends_top_k_and_json_object(server, adapters):
    request = ChatRequest(model="any", messages=(ChatMessage("user", "Hi"),), max_tokens=50,
                          output=OutputFormat("json_object"), sampling=Sampling(top_k=40))

    completion = adapters["on-prem"].complete(redacted(request), target_for(server, "on-prem"))

    body = server.received[-1].json()
    assert (body["top_k"], body["response_format"]) == (40, {"type": "json_object"})
    assert json.loads(completion.text) == {"answer": "You said: Hi"}


def test_anthropic_structured_output_effort_and_thinking_reach_the_wire(server, adapters):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    request = ChatRequest(
        model="any", messages=(ChatMessage("user", "Where?"),), max_tokens=4000,
        output=OutputFormat("json_schema", "place", schema),
        sampling=Sampling(reasoning_effort="minimal",
                          thinking={"type": "enabled", "budget_tokens": 2048}))

    completion = adapters["anthropic"].complete(redacted(request),
                                                target_for(server, "anthropic"))

    body = server.received[-1].json()
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema},
                                     "effort": "low"}
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    thinking, text = completion.choices[0].content
    assert thinking == Thinking("Let me think about: Where?", sign("Let me think about: Where?"))
    assert json.loads(text.text) == {"city": "You said: Where?"}


# -- tool calls back ----------------------------------------------------------------------------

def ask_weather(max_tokens: int = 200, **fields) -> ChatRequest:
    return ChatRequest(model="any", messages=(ChatMessage("user", "Weather in Zürich?"),),
                       max_tokens=max_tokens, tools=(WEATHER, TIME), **fields)


@pytest.mark.parametrize("provider", ALL)
def test_an_answer_with_tool_calls_parses_to_tool_call_blocks(server, adapters, provider):
    server.script(Reply("Checking.", (Scripted("get_weather", '{"city": "Zürich"}'),
                                      Scripted("get_time", '{"city": "Oslo", "n": [1, 2]}'))))

    completion = adapters[provider].complete(redacted(ask_weather()),
                                             target_for(server, provider))

    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.text == "Checking."
    first, second = choice.tool_calls
    assert (first.name, second.name) == ("get_weather", "get_time")
    assert json.loads(first.arguments) == {"city": "Zürich"}
    assert json.loads(second.arguments) == {"city": "Oslo", "n": [1, 2]}
    assert first.id != second.id and first.id and second.id
    if provider not in OPENAI_SHAPED:  # rebuilt from the input object, non-ASCII kept
        assert first.arguments == '{"city": "Zürich"}'


@pytest.mark.parametrize("provider", ALL)
def test_streamed_tool_calls_arrive_as_starts_and_fragments_in_order(server, adapters, provider):
    arguments = '{"city": "Zürich", "days": 3}'
    server.script(Reply("Ok.", (Scripted("get_weather", arguments),
                                Scripted("get_time", "{}"))))

    events = list(adapters[provider].stream(redacted(ask_weather(stream=True)),
                                            target_for(server, provider)))

    texts = [e.text for e in events if isinstance(e, TextDelta)]
    calls = [e for e in events if isinstance(e, ToolCallStart | ToolCallDelta)]
    assert "".join(texts) == "Ok."
    first_start, second_start = (e for e in calls if isinstance(e, ToolCallStart))
    assert (first_start.index, first_start.name) == (0, "get_weather")
    assert (second_start.index, second_start.name) == (1, "get_time")
    assert calls[0] == first_start and calls.index(second_start) > 1
    before = calls[1:calls.index(second_start)]
    after = calls[calls.index(second_start) + 1:]
    assert all(isinstance(e, ToolCallDelta) and e.index == 0 for e in before)
    assert len(before) > 3  # the fake's 3-character pieces, passed on as they came
    assert json.loads("".join(e.arguments for e in before)) == json.loads(arguments)
    assert all(isinstance(e, ToolCallDelta) and e.index == 1 for e in after)
    assert json.loads("".join(e.arguments for e in after)) == {}
    assert isinstance(events[-1], Finished)
    assert events[-1].finish_reason == "tool_calls"
    assert events[-1].attempts == 1


@pytest.mark.parametrize("provider", ALL)
def test_tool_choice_none_and_auto_after_results_answer_in_text(server, adapters, provider):
    request = agent_turn(tool_choice=None if provider == "bedrock" else ToolChoice("none"))
    request = replace(request, messages=request.messages[:3] + (
        ChatMessage("user", (ToolResult("call_a", (Text("sunny"),)),
                             ToolResult("call_b", (Text("noon"),)))),))

    completion = adapters[provider].complete(redacted(request), target_for(server, provider))

    assert completion.text == "Tool said: sunny\nnoon"
    assert completion.choices[0].tool_calls == ()


# -- thinking -----------------------------------------------------------------------------------

@pytest.mark.parametrize("redact_thinking", [False, True])
def test_thinking_blocks_round_trip_byte_identical(adapters, redact_thinking):
    from tests.fakes.llm import LLMServer

    with LLMServer(redact_thinking=redact_thinking) as fake:
        target = target_for(fake, "anthropic")
        thinking = Sampling(thinking={"type": "enabled", "budget_tokens": 1024})
        fake.script(Scripted("get_weather", '{"city": "Zürich"}'))
        first = adapters["anthropic"].complete(
            redacted(ask_weather(sampling=thinking, max_tokens=2000)), target)
        said = first.choices[0].content
        kind = RedactedThinking if redact_thinking else Thinking
        assert isinstance(said[0], kind) and isinstance(said[-1], ToolCall)

        # the next turn sends the assistant's blocks back: the fake checks the signature
        follow_up = ChatRequest(model="any", max_tokens=2000, tools=(WEATHER, TIME),
                                sampling=thinking, messages=(
            ChatMessage("user", "Weather in Zürich?"),
            ChatMessage("assistant", said),
            ChatMessage("user", (ToolResult(said[-1].id, (Text("sunny"),)),))))
        second = adapters["anthropic"].complete(redacted(follow_up), target)

        sent = fake.received[-1].json()["messages"][1]["content"][0]
        if redact_thinking:
            assert sent == {"type": "redacted_thinking", "data": said[0].data}
        else:
            assert sent == {"type": "thinking", "thinking": said[0].text,
                            "signature": said[0].signature}
        assert second.choices[0].text == "Tool said: sunny"


def test_a_streamed_thinking_block_arrives_with_its_signature(server, adapters):
    request = ChatRequest(model="any", messages=(ChatMessage("user", "Why?"),), max_tokens=2000,
                          stream=True,
                          sampling=Sampling(thinking={"type": "enabled", "budget_tokens": 1024}))

    events = list(adapters["anthropic"].stream(redacted(request),
                                               target_for(server, "anthropic")))

    thought = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    (signature,) = [e.signature for e in events if isinstance(e, SignatureDelta)]
    assert thought == "Let me think about: Why?"
    assert signature == sign(thought)
    kinds = [type(e) for e in events]
    assert kinds.index(SignatureDelta) < kinds.index(TextDelta)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "You said: Why?"


def test_a_streamed_redacted_thinking_block_arrives_whole(adapters):
    from tests.fakes.llm import LLMServer

    with LLMServer(redact_thinking=True) as fake:
        request = ChatRequest(model="any", messages=(ChatMessage("user", "Why?"),),
                              max_tokens=2000, stream=True,
                              sampling=Sampling(thinking={"type": "adaptive"}))
        events = list(adapters["anthropic"].stream(redacted(request),
                                                   target_for(fake, "anthropic")))

    (block,) = [e for e in events if isinstance(e, RedactedThinking)]
    assert isinstance(events[0], RedactedThinking) and block.data


# -- arguments Anthropic and Bedrock cannot take ------------------------------------------------

@pytest.mark.parametrize("provider", ["anthropic", "bedrock"])
def test_tool_arguments_that_are_not_an_object_are_refused_before_any_call(server, adapters,
                                                                           provider):
    request = agent_turn()
    broken = ToolCall("call_a", "get_weather", '["Zürich"]')
    request = replace(request, messages=(
        request.messages[0], request.messages[1],
        ChatMessage("assistant", (broken, CALL_B)), request.messages[3]))

    assert unsupported(request, provider) == [
        "tool_calls (arguments that are not a JSON object)"]
    assert unsupported(request, "openai") == []
    with pytest.raises(ProviderError, match="get_weather.*not a JSON object") as caught:
        adapters[provider].complete(redacted(request), target_for(server, provider))
    assert (caught.value.attempts, caught.value.status) == (0, 422)
    assert server.received == []


def test_bedrock_needs_tool_definitions_with_a_tool_history():
    request = replace(agent_turn(), tools=())

    assert "tools (Bedrock needs the tool definitions when the history holds tool calls)" \
        in unsupported(request, "bedrock")
    assert unsupported(request, "anthropic") == []


def test_empty_arguments_are_an_empty_object(server, adapters):
    request = agent_turn()
    request = replace(request, messages=(
        request.messages[0], request.messages[1],
        ChatMessage("assistant", (ToolCall("call_a", "get_weather", ""), CALL_B)),
        request.messages[3]))

    adapters["anthropic"].complete(redacted(request), target_for(server, "anthropic"))

    assert server.received[-1].json()["messages"][1]["content"][0]["input"] == {}


# -- embeddings and count_tokens ----------------------------------------------------------------

@pytest.mark.parametrize("provider", OPENAI_SHAPED)
def test_embeddings(server, adapters, provider):
    request = redact_embedding(EmbeddingRequest("any", ("first text", "second, longer text"),
                                                dimensions=8), Profile.named("off"))
    target = target_for(server, provider, model="text-embedding-3-small")

    embeddings = adapters[provider].embed(request, target)

    assert embeddings.vectors == (vector("first text", 8), vector("second, longer text", 8))
    assert embeddings.usage.input_tokens == tokens_for(10) + tokens_for(19)
    assert embeddings.usage.output_tokens == 0
    assert embeddings.attempts == 1
    sent = server.received[-1]
    assert sent.json() == {"model": "text-embedding-3-small",
                           "input": ["first text", "second, longer text"], "dimensions": 8}
    if provider == "azure-openai":
        assert sent.path.startswith("/openai/deployments/text-embedding-3-small/embeddings?")
    else:
        assert sent.path == "/v1/embeddings"


def test_embeddings_in_base64_are_kept_as_sent(server, adapters):
    request = redact_embedding(EmbeddingRequest("any", ("hello",), dimensions=4,
                                                encoding_format="base64"), Profile.named("off"))

    (encoded,) = adapters["openai"].embed(request, target_for(server, "openai")).vectors

    assert isinstance(encoded, str)
    assert list(struct.unpack("<4f", base64.b64decode(encoded))) == vector("hello", 4)


def test_embeddings_are_retried_like_calls(server, adapters, sleeps):
    request = redact_embedding(EmbeddingRequest("any", ("hello",)), Profile.named("off"))
    server.fail_next(503)

    embeddings = adapters["openai"].embed(request, target_for(server, "openai"))

    assert embeddings.attempts == 2 and len(sleeps) == 1
    server.fail_next(400)
    with pytest.raises(ProviderError, match="openai failed after 1 attempt"):
        adapters["openai"].embed(request, target_for(server, "openai"))


def test_count_tokens(server, adapters, sleeps):
    request = agent_turn()
    server.fail_next(529)

    counted = adapters["anthropic"].count_tokens(redacted(request),
                                                 target_for(server, "anthropic"))

    sent = server.received[-1]
    assert sent.path == "/v1/messages/count_tokens"
    body = sent.json()
    assert "max_tokens" not in body and len(body["tools"]) == 2
    assert body["messages"] == server.received[-1].json()["messages"]
    assert len(sleeps) == 1  # retried like a call
    # the fake counts what the model reads (texts, calls, results, tools) and 85 per image
    completion = adapters["anthropic"].complete(redacted(request),
                                                target_for(server, "anthropic"))
    assert counted == completion.usage.input_tokens > IMAGE_TOKENS


@pytest.mark.parametrize("provider", ["anthropic", "bedrock"])
def test_a_streamed_call_without_argument_fragments_has_empty_object_arguments(server, adapters,
                                                                                provider):
    server.script(Scripted("get_time", ""))  # the fake sends no input fragments at all

    events = list(adapters[provider].stream(redacted(ask_weather(stream=True)),
                                            target_for(server, provider)))

    start, delta = (e for e in events if isinstance(e, ToolCallStart | ToolCallDelta))
    assert start.name == "get_time" and delta == ToolCallDelta(0, "{}")
    assert events[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize(("image", "problem"), [
    (Image("base64", PNG, "image/bmp"), "png, jpeg, gif or webp images, not image/bmp"),
    (Image("base64", "not base64!", "image/png"), "not valid base64"),
])
def test_bedrock_refuses_images_it_cannot_take_before_any_call(server, adapters, image, problem):
    request = ChatRequest(model="any", max_tokens=50,
                          messages=(ChatMessage("user", (Text("What is this?"), image)),))

    with pytest.raises(ProviderError, match=problem) as caught:
        adapters["bedrock"].complete(redacted(request), target_for(server, "bedrock"))

    assert (caught.value.attempts, caught.value.status) == (0, 422)
    assert server.received == []


def test_openai_gets_a_tool_results_images_in_a_user_message_after_the_tool_messages(server,
                                                                                     adapters):
    request = replace(agent_turn(), messages=(
        *agent_turn().messages[:3],
        ChatMessage("user", (ToolResult("call_a", (Text("here is the map"),
                                                   Image("url", "https://example.com/m.png",
                                                         detail="low"))),
                             ToolResult("call_b", ())))))

    adapters["openai"].complete(redacted(request), target_for(server, "openai"))

    assert server.received[-1].json()["messages"][3:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": "here is the map"},
        {"role": "tool", "tool_call_id": "call_b", "content": ""},
        {"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "https://example.com/m.png", "detail": "low"}}]}]


def test_the_registry_names_the_adapters_that_embed_and_count():
    from tenant_runtime.gateway.providers.anthropic import AnthropicAdapter
    from tenant_runtime.gateway.providers.registry import embedding_adapter_for, token_counter

    assert [embedding_adapter_for(p).provider for p in OPENAI_SHAPED] == list(OPENAI_SHAPED)
    for provider in ("anthropic", "bedrock"):
        with pytest.raises(ValueError, match=f"{provider} serves no embeddings"):
            embedding_adapter_for(provider)
    assert isinstance(token_counter(), AnthropicAdapter)
