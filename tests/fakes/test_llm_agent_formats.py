"""The fake LLM provider speaks what agents send: tools, tool results, structured output,
images, thinking, the Responses API, embeddings. Every test drives it with the real SDK
(openai, anthropic, boto3) and checks what the SDK makes of the answer, so a wire format the
SDK would not parse fails here."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import anthropic
import boto3
import botocore.config
import botocore.exceptions
import openai
import pydantic
import pytest

from tests.fakes.llm_servers import IMAGE_TOKENS, LLMServer, Reply, ToolCall, tokens_for, vector

PROMPT = "Weather in <<CITY_1>> please"
WEATHER = {"type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]},
                                            "city": {"type": "string"},
                                            "days": {"type": "integer"}},
           "required": ["unit", "city", "days"]}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                                                 "parameters": WEATHER}},
              {"type": "function", "function": {"name": "get_time",
                                                 "parameters": {"type": "object"}}}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n-not-really-an-image").decode()


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer() as fake:
        yield fake


@pytest.fixture
def oai(server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=server.api_key, base_url=f"{server.base_url}/v1",
                       max_retries=0, timeout=5) as client:
        yield client


@pytest.fixture
def claude(server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key=server.api_key, base_url=server.base_url, max_retries=0,
                             timeout=5) as client:
        yield client


@pytest.fixture
def bedrock(server) -> Iterator:
    client = boto3.session.Session().client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=server.base_url,
        aws_access_key_id=server.aws_access_key_id, aws_secret_access_key="fake-secret",
        config=botocore.config.Config(retries={"total_max_attempts": 1}))
    yield client
    client.close()


def _arguments(text: str = PROMPT) -> dict:
    return {"unit": "c", "city": text, "days": 0}


# -- OpenAI chat completions -------------------------------------------------------------------

def test_chat_calls_the_first_tool_with_the_user_text(server, oai):
    result = oai.chat.completions.create(model="gpt-4o-mini", tools=CHAT_TOOLS,
                                         messages=[{"role": "user", "content": PROMPT}])

    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == _arguments()
    tools_characters = sum(
        len(t["function"]["name"]) + len(t["function"].get("description", ""))
        + len(json.dumps(t["function"]["parameters"], separators=(",", ":"), sort_keys=True))
        for t in CHAT_TOOLS)
    assert result.usage.prompt_tokens == tokens_for(len(PROMPT) + tools_characters)
    assert result.usage.completion_tokens == tokens_for(
        len("get_weather") + len(call.function.arguments))
    assert server.received[0].json()["tools"] == CHAT_TOOLS


def test_chat_tool_loop_answers_with_the_tool_results(oai):
    first = oai.chat.completions.create(model="m", tools=CHAT_TOOLS, n=1,
                                        messages=[{"role": "user", "content": PROMPT}])
    call = first.choices[0].message.tool_calls[0]
    messages = [{"role": "user", "content": PROMPT},
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id,
                 "content": [{"type": "text", "text": "Sunny in "},
                             {"type": "text", "text": "<<CITY_1>>"}]}]

    second = oai.chat.completions.create(model="m", tools=CHAT_TOOLS, messages=messages)

    assert second.choices[0].message.content == "Tool said: Sunny in <<CITY_1>>"
    assert second.choices[0].finish_reason == "stop"


def test_chat_refuses_broken_tool_histories_like_openai(oai):
    calling = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}
    answered_once = [{"role": "user", "content": "x"}, calling,
                     {"role": "tool", "tool_call_id": "call_a", "content": "noon"},
                     {"role": "user", "content": "and?"}]
    with pytest.raises(openai.BadRequestError) as unanswered:
        oai.chat.completions.create(model="m", messages=answered_once, tools=CHAT_TOOLS)
    assert unanswered.value.body["message"].endswith(
        "The following tool_call_ids did not have response messages: call_b")
    assert unanswered.value.param == "messages.[3].role"

    orphan = [{"role": "user", "content": "x"},
              {"role": "tool", "tool_call_id": "call_z", "content": "noon"}]
    with pytest.raises(openai.BadRequestError) as stray:
        oai.chat.completions.create(model="m", messages=orphan)
    assert "must be a response to a preceeding message with 'tool_calls'" in str(stray.value)

    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="m", tool_choice="required",
                                    messages=[{"role": "user", "content": "x"}])


def test_chat_tool_choice_and_parallel_calls(server, oai):
    server.n_tool_calls = 3
    user = [{"role": "user", "content": PROMPT}]

    several = oai.chat.completions.create(model="m", tools=CHAT_TOOLS, messages=user)
    named = oai.chat.completions.create(
        model="m", tools=CHAT_TOOLS, messages=user,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    single = oai.chat.completions.create(model="m", tools=CHAT_TOOLS, messages=user,
                                         parallel_tool_calls=False)
    none = oai.chat.completions.create(model="m", tools=CHAT_TOOLS, messages=user,
                                       tool_choice="none")

    calls = several.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time", "get_weather"]
    assert len({c.id for c in calls}) == 3
    assert json.loads(calls[1].function.arguments) == {"input": PROMPT}
    assert {c.function.name for c in named.choices[0].message.tool_calls} == {"get_time"}
    assert len(single.choices[0].message.tool_calls) == 1
    assert none.choices[0].message.content == "You said: " + PROMPT


def test_chat_stream_sends_tool_call_deltas_like_openai(server, oai):
    server.chunk_size = 5
    chunks = list(oai.chat.completions.create(
        model="m", tools=CHAT_TOOLS, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": PROMPT}]))

    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    head, rest = deltas[0], deltas[1:]
    assert (head.index, head.type, head.function.name, head.function.arguments) == (
        0, "function", "get_weather", "")
    assert head.id.startswith("call_")
    assert all(d.id is None and d.function.name is None and len(d.function.arguments) <= 5
               for d in rest)
    assert json.loads("".join(d.function.arguments for d in rest)) == _arguments()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 0

    with oai.chat.completions.stream(model="m", tools=CHAT_TOOLS,
                                     messages=[{"role": "user", "content": PROMPT}]) as stream:
        final = stream.get_final_completion()
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == _arguments()


class Forecast(pydantic.BaseModel):
    days: int
    summary: str
    sunny: bool


def test_chat_structured_output_parses_into_the_model(oai):
    parsed = oai.chat.completions.parse(model="m", response_format=Forecast,
                                        messages=[{"role": "user", "content": PROMPT}])
    assert parsed.choices[0].message.parsed == Forecast(days=0, summary="You said: " + PROMPT,
                                                        sunny=False)

    loose = oai.chat.completions.create(model="m", response_format={"type": "json_object"},
                                        messages=[{"role": "user", "content": PROMPT}])
    assert json.loads(loose.choices[0].message.content) == {"answer": "You said: " + PROMPT}


def test_chat_images_n_choices_logprobs_and_seed(server, oai):
    result = oai.chat.completions.create(
        model="m", n=2, logprobs=True, top_logprobs=2, seed=7,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": PROMPT},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])

    assert [c.index for c in result.choices] == [0, 1]
    assert {c.message.content for c in result.choices} == {"You said: " + PROMPT}
    assert result.usage.prompt_tokens == tokens_for(len(PROMPT)) + IMAGE_TOKENS
    assert result.usage.completion_tokens == 2 * tokens_for(len("You said: " + PROMPT))
    tokens = result.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == "You said: " + PROMPT
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in tokens)
    assert server.received[0].json()["seed"] == 7


def test_scripted_replies_override_the_rules_once_each(server, oai):
    server.script("first", ToolCall("get_time", '{"tz": "UTC"}'),
                  Reply("Checking.", (ToolCall("a", "{}"), ToolCall("b", "{}"))))
    user = [{"role": "user", "content": PROMPT}]

    first = oai.chat.completions.create(model="m", tools=CHAT_TOOLS, messages=user)
    second = oai.chat.completions.create(model="m", messages=user)
    third = oai.chat.completions.create(model="m", messages=user)
    fourth = oai.chat.completions.create(model="m", messages=user)

    assert first.choices[0].message.content == "first"
    assert second.choices[0].message.tool_calls[0].function.arguments == '{"tz": "UTC"}'
    assert third.choices[0].message.content == "Checking."
    assert [c.function.name for c in third.choices[0].message.tool_calls] == ["a", "b"]
    assert fourth.choices[0].message.content == "You said: " + PROMPT


# -- OpenAI Responses ------------------------------------------------------------------------

RESPONSE_TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather.",
                   "parameters": WEATHER, "strict": True}]


def test_responses_text_and_tool_loop_over_previous_response_id(server, oai):
    text = oai.responses.create(model="gpt-4.1", input=PROMPT, instructions="Be brief.")
    assert text.output_text == "You said: " + PROMPT
    assert text.status == "completed"
    assert text.usage.input_tokens == tokens_for(len("Be brief.") + len(PROMPT))
    assert text.usage.total_tokens == text.usage.input_tokens + text.usage.output_tokens

    calling = oai.responses.create(model="gpt-4.1", tools=RESPONSE_TOOLS, input=[
        {"role": "user", "content": [{"type": "input_text", "text": PROMPT},
                                     {"type": "input_image",
                                      "image_url": f"data:image/png;base64,{PNG}"}]}])
    (call,) = calling.output
    assert (call.type, call.name) == ("function_call", "get_weather")
    assert json.loads(call.arguments) == _arguments()
    assert calling.usage.input_tokens > IMAGE_TOKENS

    answered = oai.responses.create(
        model="gpt-4.1", tools=RESPONSE_TOOLS, previous_response_id=calling.id,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": "Rain in <<CITY_1>>"}])
    assert answered.output_text == "Tool said: Rain in <<CITY_1>>"
    assert answered.previous_response_id == calling.id

    stateless = oai.responses.create(  # the whole history sent back, output items as they came
        model="gpt-4.1", tools=RESPONSE_TOOLS, store=False,
        input=[{"role": "user", "content": PROMPT}, *calling.output,
               {"type": "function_call_output", "call_id": call.call_id, "output": "Fog"}])
    assert stateless.output_text == "Tool said: Fog"
    assert stateless.id not in server.responses


def test_responses_refuse_what_openai_refuses(oai):
    with pytest.raises(openai.BadRequestError) as unknown:
        oai.responses.create(model="m", input="hi", previous_response_id="resp_nope")
    assert unknown.value.code == "previous_response_not_found"
    assert unknown.value.param == "previous_response_id"

    unstored = oai.responses.create(model="m", input="hi", store=False)
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="m", input="again", previous_response_id=unstored.id)

    with pytest.raises(openai.BadRequestError) as orphan:
        oai.responses.create(model="m", input=[
            {"type": "function_call_output", "call_id": "call_x", "output": "1"}])
    assert "No tool call found for function call output with call_id call_x." in str(
        orphan.value)
    with pytest.raises(openai.BadRequestError) as unanswered:
        oai.responses.create(model="m", input=[
            {"role": "user", "content": "x"},
            {"type": "function_call", "call_id": "call_y", "name": "f", "arguments": "{}"}])
    assert "No tool output found for function call call_y." in str(unanswered.value)


def test_responses_stream_events_in_order(server, oai):
    with oai.responses.stream(model="m", input=PROMPT) as stream:
        events = list(stream)
        final = stream.get_final_response()

    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == final.output_text == "You said: " + PROMPT
    assert all(len(d) <= server.chunk_size for d in deltas)
    assert [e.sequence_number for e in events] == list(range(len(events)))

    with oai.responses.stream(model="m", input=PROMPT, tools=RESPONSE_TOOLS) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    assert json.loads(final.output[0].arguments) == _arguments()


def test_responses_structured_output_and_max_output_tokens(oai):
    parsed = oai.responses.parse(model="m", input=PROMPT, text_format=Forecast)
    assert parsed.output_parsed == Forecast(days=0, summary="You said: " + PROMPT, sunny=False)

    cut = oai.responses.create(model="m", input=PROMPT, max_output_tokens=2)
    assert cut.status == "incomplete"
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage.output_tokens == 2


# -- OpenAI embeddings -----------------------------------------------------------------------

def test_embeddings_are_deterministic_in_both_encodings(server, oai):
    default = oai.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    floats = oai.embeddings.create(model="text-embedding-3-small", input="alpha",
                                   encoding_format="float", dimensions=8)
    tokens = oai.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3]],
                                   encoding_format="float")

    assert server.received[0].json()["encoding_format"] == "base64"  # what the SDK asks for
    assert [len(d.embedding) for d in default.data] == [1536, 1536]
    assert default.data[0].embedding == vector("alpha", 1536)
    assert default.data[0].embedding != default.data[1].embedding
    assert abs(sum(v * v for v in default.data[0].embedding) - 1) < 1e-4
    assert floats.data[0].embedding == vector("alpha", 8)
    assert default.usage.prompt_tokens == tokens_for(5) + tokens_for(4)
    assert tokens.usage.total_tokens == 3
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=8)
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="text-embedding-3-small", input="")


# -- Azure OpenAI ----------------------------------------------------------------------------

def test_azure_deployments_and_v1_api(server):
    with openai.AzureOpenAI(azure_endpoint=server.base_url, api_key=server.api_key,
                            api_version="2024-10-21", max_retries=0) as azure:
        chat = azure.chat.completions.create(model="dep", tools=CHAT_TOOLS,
                                             messages=[{"role": "user", "content": PROMPT}])
        embedded = azure.embeddings.create(model="dep-embed", input="alpha")
    with openai.OpenAI(api_key=server.api_key, base_url=f"{server.base_url}/openai/v1/",
                       max_retries=0) as v1:
        response = v1.responses.create(model="gpt-4.1", input=PROMPT)

    assert chat.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert embedded.data[0].embedding == vector("alpha", 1536)
    assert response.output_text == "You said: " + PROMPT
    paths = [r.path for r in server.received]
    assert paths == ["/openai/deployments/dep/chat/completions?api-version=2024-10-21",
                     "/openai/deployments/dep-embed/embeddings?api-version=2024-10-21",
                     "/openai/v1/responses"]


# -- Anthropic -------------------------------------------------------------------------------

CLAUDE_TOOLS = [{"name": "get_weather", "description": "Weather.", "input_schema": WEATHER}]


def test_anthropic_tool_use_and_tool_result_loop(claude):
    first = claude.messages.create(model="claude-sonnet-5-5", max_tokens=200, tools=CLAUDE_TOOLS,
                                   messages=[{"role": "user", "content": PROMPT}])
    (use,) = first.content
    assert first.stop_reason == "tool_use"
    assert (use.type, use.name, use.input) == ("tool_use", "get_weather", _arguments())
    assert use.id.startswith("toolu_01")

    second = claude.messages.create(
        model="claude-sonnet-5-5", max_tokens=200, tools=CLAUDE_TOOLS, messages=[
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                          "is_error": True,
                                          "content": [{"type": "text", "text": "No data"}]}]}])
    assert second.content[0].text == "Tool said: No data"
    assert second.stop_reason == "end_turn"


def test_anthropic_refuses_unpaired_tool_blocks(claude):
    with pytest.raises(anthropic.BadRequestError) as unanswered:
        claude.messages.create(model="m", max_tokens=50, tools=CLAUDE_TOOLS, messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                               "name": "get_weather", "input": {}}]},
            {"role": "user", "content": "go on"}])
    assert "messages.1: `tool_use` ids were found without `tool_result` blocks immediately " \
           "after: toolu_1." in str(unanswered.value)
    with pytest.raises(anthropic.BadRequestError) as stray:
        claude.messages.create(model="m", max_tokens=50, messages=[
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9",
                                          "content": "x"}]}])
    assert "unexpected `tool_use_id` found in `tool_result` blocks: toolu_9" in str(stray.value)


def test_anthropic_stream_accumulates_tool_input(server, claude):
    with claude.messages.stream(model="m", max_tokens=200, tools=CLAUDE_TOOLS,
                                messages=[{"role": "user", "content": PROMPT}]) as stream:
        events = list(stream)
        final = stream.get_final_message()

    starts = [e for e in events if e.type == "content_block_start"]
    assert starts[0].content_block.type == "tool_use" and starts[0].content_block.input == {}
    partials = [e.delta.partial_json for e in events
                if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert len(partials) > 1 and all(len(p) <= server.chunk_size for p in partials)
    assert final.content[0].input == _arguments()
    assert final.stop_reason == "tool_use"


def test_anthropic_thinking_is_signed_and_checked_when_it_comes_back(claude):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    first = claude.messages.create(model="m", max_tokens=2000, thinking=thinking,
                                   tools=CLAUDE_TOOLS,
                                   messages=[{"role": "user", "content": PROMPT}])
    block, use = first.content
    assert block.type == "thinking" and block.thinking == "Let me think about: " + PROMPT
    assert block.signature

    def follow_up(assistant_content):
        return claude.messages.create(
            model="m", max_tokens=2000, thinking=thinking, tools=CLAUDE_TOOLS, messages=[
                {"role": "user", "content": PROMPT},
                {"role": "assistant", "content": assistant_content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                              "content": "Sunny"}]}])

    kept = [b.model_dump() for b in first.content]
    assert follow_up(kept).content[-1].text == "Tool said: Sunny"
    tampered = [{**kept[0], "thinking": "Something else"}, kept[1]]
    with pytest.raises(anthropic.BadRequestError) as bad_signature:
        follow_up(tampered)
    assert "messages.1.content.0: Invalid `signature` in `thinking` block" in str(
        bad_signature.value)
    with pytest.raises(anthropic.BadRequestError) as stripped:
        follow_up(kept[1:])
    assert "Expected `thinking` or `redacted_thinking`, but found `tool_use`" in str(
        stripped.value)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="m", max_tokens=2000, thinking=thinking,
                               tool_choice={"type": "any"}, tools=CLAUDE_TOOLS,
                               messages=[{"role": "user", "content": PROMPT}])
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="m", max_tokens=1000, thinking=thinking,
                               messages=[{"role": "user", "content": PROMPT}])


def test_anthropic_thinking_stream_and_redacted_thinking(server, claude):
    with claude.messages.stream(model="m", max_tokens=2000,
                                thinking={"type": "enabled", "budget_tokens": 1500},
                                messages=[{"role": "user", "content": PROMPT}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert deltas[0] == "thinking_delta" and "signature_delta" in deltas
    assert final.content[0].thinking == "Let me think about: " + PROMPT
    assert final.content[1].text == "You said: " + PROMPT

    server.redact_thinking = True
    first = claude.messages.create(model="m", max_tokens=2000, tools=CLAUDE_TOOLS,
                                   thinking={"type": "adaptive"},
                                   messages=[{"role": "user", "content": PROMPT}])
    assert first.content[0].type == "redacted_thinking"
    back = claude.messages.create(
        model="m", max_tokens=2000, tools=CLAUDE_TOOLS, thinking={"type": "adaptive"},
        messages=[{"role": "user", "content": PROMPT},
                  {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                  {"role": "user", "content": [{"type": "tool_result",
                                                "tool_use_id": first.content[1].id,
                                                "content": "ok"}]}])
    assert back.content[-1].text == "Tool said: ok"


def test_anthropic_images_documents_structured_output_and_count_tokens(claude):
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": PNG}},
               {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
               {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                               "data": "Notes."}},
               {"type": "text", "text": PROMPT}]
    counted = claude.messages.count_tokens(model="m", messages=[{"role": "user",
                                                                 "content": content}])
    message = claude.messages.create(model="m", max_tokens=100,
                                     messages=[{"role": "user", "content": content}])
    # the API version the SDK speaks takes no sampling fields: the fake refuses them as it does
    for field in ("temperature", "top_p", "top_k"):
        try:
            claude.messages.create(model="m", max_tokens=100, extra_body={field: 0.5},
                                   messages=[{"role": "user", "content": PROMPT}])
        except anthropic.BadRequestError as refused:
            assert field in str(refused)
        else:
            raise AssertionError(f"the fake took {field}")
    structured = claude.messages.create(
        model="m", max_tokens=200, messages=[{"role": "user", "content": PROMPT}],
        output_config={"format": {"type": "json_schema", "schema": {
            "type": "object", "properties": {"reply": {"type": "string"}},
            "required": ["reply"], "additionalProperties": False}}})

    assert counted.input_tokens == tokens_for(len("Notes.") + len(PROMPT)) + 2 * IMAGE_TOKENS
    assert message.usage.input_tokens == counted.input_tokens
    assert json.loads(structured.content[0].text) == {"reply": "You said: " + PROMPT}
    with_tools = claude.messages.count_tokens(model="m", tools=CLAUDE_TOOLS,
                                              messages=[{"role": "user", "content": PROMPT}])
    assert with_tools.input_tokens > tokens_for(len(PROMPT))


# -- Bedrock Converse ------------------------------------------------------------------------

TOOL_CONFIG = {"tools": [{"toolSpec": {"name": "get_weather", "description": "Weather.",
                                       "inputSchema": {"json": WEATHER}}}]}


def test_bedrock_tool_use_and_tool_result(bedrock):
    image = {"image": {"format": "png", "source": {"bytes": b"\x89PNG-bytes"}}}
    first = bedrock.converse(modelId="anthropic.claude-3-haiku-20240307-v1:0",
                             toolConfig=TOOL_CONFIG,
                             messages=[{"role": "user", "content": [{"text": PROMPT}, image]}])
    (block,) = first["output"]["message"]["content"]
    use = block["toolUse"]
    assert first["stopReason"] == "tool_use"
    assert (use["name"], use["input"]) == ("get_weather", _arguments())
    assert use["toolUseId"].startswith("tooluse_")
    assert first["usage"]["inputTokens"] > IMAGE_TOKENS

    second = bedrock.converse(
        modelId="m", toolConfig={**TOOL_CONFIG, "toolChoice": {"auto": {}}}, messages=[
            {"role": "user", "content": [{"text": PROMPT}]},
            first["output"]["message"],
            {"role": "user", "content": [{"toolResult": {
                "toolUseId": use["toolUseId"], "status": "success",
                "content": [{"text": "Sunny"}, {"json": {"high": 21}}]}}]}])
    assert second["output"]["message"]["content"] == [{"text": 'Tool said: Sunny{"high": 21}'}]
    assert second["stopReason"] == "end_turn"

    with pytest.raises(botocore.exceptions.ClientError) as no_config:
        bedrock.converse(modelId="m", messages=[
            {"role": "user", "content": [{"text": PROMPT}]}, first["output"]["message"],
            {"role": "user", "content": [{"toolResult": {"toolUseId": use["toolUseId"],
                                                         "content": [{"text": "x"}]}}]}])
    assert no_config.value.response["Error"]["Code"] == "ValidationException"
    assert "toolConfig field must be defined" in no_config.value.response["Error"]["Message"]


def test_bedrock_stream_sends_tool_use_start_and_input_pieces(server, bedrock):
    response = bedrock.converse_stream(
        modelId="m", messages=[{"role": "user", "content": [{"text": PROMPT}]}],
        toolConfig={**TOOL_CONFIG, "toolChoice": {"tool": {"name": "get_weather"}}})
    events = list(response["stream"])

    (start,) = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert start["start"]["toolUse"]["name"] == "get_weather"
    pieces = [e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
              if "contentBlockDelta" in e]
    assert all(len(p) <= server.chunk_size for p in pieces)
    assert json.loads("".join(pieces)) == _arguments()
    assert {"messageStop": {"stopReason": "tool_use"}} in events
