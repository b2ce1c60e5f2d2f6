"""The fake LLM server speaks each provider's protocol well enough for the official SDKs: every
test here drives it with the real client (openai, anthropic, boto3), never with raw HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import boto3
import botocore.config
import botocore.exceptions
import openai
import pytest

from tests.fakes.llm_servers import LLMServer, event_stream_message, tokens_for

PROMPT = "Summarize the meeting notes"
ANSWER = "You said: " + PROMPT


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer() as fake:
        yield fake


@pytest.fixture
def openai_client(server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=server.api_key, base_url=f"{server.base_url}/v1",
                       max_retries=0, timeout=5) as client:
        yield client


@pytest.fixture
def azure_client(server) -> Iterator[openai.AzureOpenAI]:
    with openai.AzureOpenAI(azure_endpoint=server.base_url, api_key=server.api_key,
                            api_version="2024-10-21", max_retries=0, timeout=5) as client:
        yield client


@pytest.fixture
def anthropic_client(server) -> Iterator[anthropic.Anthropic]:
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


# -- OpenAI ---------------------------------------------------------------------------------

def test_openai_chat_completion(server, openai_client):
    result = openai_client.chat.completions.create(
        model="gpt-4o-mini", max_completion_tokens=100,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}])

    assert result.choices[0].message.content == ANSWER
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.prompt_tokens == tokens_for(len("Be brief.") + len(PROMPT))
    assert result.usage.completion_tokens == tokens_for(len(ANSWER))
    (request,) = server.received
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {server.api_key}"
    assert PROMPT.encode() in request.body


def test_openai_stream_splits_the_answer_and_sends_usage(server, openai_client):
    chunks = list(openai_client.chat.completions.create(
        model="gpt-4o-mini", max_completion_tokens=100, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": PROMPT}]))

    pieces = [c.choices[0].delta.content for c in chunks
              if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == ANSWER
    assert all(len(p) <= 3 for p in pieces)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == tokens_for(len(ANSWER))


def test_openai_max_tokens_cuts_the_answer(openai_client):
    result = openai_client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=3, messages=[{"role": "user", "content": PROMPT}])

    assert result.choices[0].finish_reason == "length"
    assert result.choices[0].message.content == ANSWER[:11]
    assert result.usage.completion_tokens == 3


def test_openai_models(openai_client):
    assert "gpt-4o-mini" in [m.id for m in openai_client.models.list()]


def test_openai_wrong_key_is_401_in_openai_shape(server):
    with openai.OpenAI(api_key="sk-wrong", base_url=f"{server.base_url}/v1",
                       max_retries=0) as client, pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "invalid_api_key"
    assert err.value.type == "invalid_request_error"


def test_openai_injected_faults(server, openai_client):
    server.fail_next((429, 7), 503)
    messages = [{"role": "user", "content": "hi"}]

    with pytest.raises(openai.RateLimitError) as limited:
        openai_client.chat.completions.create(model="m", messages=messages)
    assert limited.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.InternalServerError) as unavailable:
        openai_client.chat.completions.create(model="m", messages=messages)
    assert unavailable.value.status_code == 503
    assert openai_client.chat.completions.create(model="m", messages=messages).choices


def test_openai_timeout_reset_and_cut(server):
    server.hang_seconds = 2
    messages = [{"role": "user", "content": PROMPT}]
    with openai.OpenAI(api_key=server.api_key, base_url=f"{server.base_url}/v1",
                       max_retries=0, timeout=0.3) as client:
        server.fail_next("timeout", "reset", "cut")
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=messages)
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="m", messages=messages)
        stream = client.chat.completions.create(model="m", messages=messages, stream=True)
        pieces = []
        with stream, pytest.raises(openai.APIConnectionError):
            for chunk in stream:
                pieces.append(chunk.choices[0].delta.content)
        assert pieces == ["", ANSWER[:3]]  # the role chunk, the first piece, then the cut


# -- Azure OpenAI ---------------------------------------------------------------------------

def test_azure_with_api_key(server, azure_client):
    result = azure_client.chat.completions.create(
        model="my-deployment", messages=[{"role": "user", "content": PROMPT}])

    assert result.choices[0].message.content == ANSWER
    assert result.model == "my-deployment"
    (request,) = server.received
    assert request.path == "/openai/deployments/my-deployment/chat/completions" \
                           "?api-version=2024-10-21"
    assert request.headers["api-key"] == server.api_key


def test_azure_stream_with_entra_token(server):
    with openai.AzureOpenAI(azure_endpoint=server.base_url, api_version="2024-10-21",
                            azure_ad_token_provider=lambda: server.azure_token,
                            max_retries=0) as client:
        chunks = list(client.chat.completions.create(
            model="dep", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": PROMPT}]))

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert server.received[0].headers["authorization"] == f"Bearer {server.azure_token}"


def test_azure_wrong_token_and_missing_api_version(server):
    with openai.AzureOpenAI(azure_endpoint=server.base_url, api_version="2024-10-21",
                            azure_ad_token="not-the-token", max_retries=0) as client, \
            pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="dep", messages=[{"role": "user", "content": "x"}])
    with openai.OpenAI(api_key="unused", base_url=f"{server.base_url}/openai/deployments/dep",
                       default_headers={"api-key": server.api_key}, max_retries=0) as client, \
            pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="dep", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "MissingApiVersionParameter"


# -- Anthropic ------------------------------------------------------------------------------

def test_anthropic_message(server, anthropic_client):
    message = anthropic_client.messages.create(
        model="claude-sonnet-5-5", max_tokens=100, system="Be brief.",
        messages=[{"role": "user", "content": PROMPT}])

    assert message.content[0].text == ANSWER
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == tokens_for(len("Be brief.") + len(PROMPT))
    assert message.usage.output_tokens == tokens_for(len(ANSWER))
    (request,) = server.received
    assert request.headers["anthropic-version"]
    assert request.json()["system"] == "Be brief."


def test_anthropic_stream_events(anthropic_client):
    with anthropic_client.messages.stream(
            model="claude-sonnet-5-5", max_tokens=100,
            messages=[{"role": "user", "content": PROMPT}]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()

    assert "".join(pieces) == ANSWER
    assert all(len(p) <= 3 for p in pieces)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == tokens_for(len(ANSWER))


def test_anthropic_raw_stream_and_stop_sequence(anthropic_client):
    events = list(anthropic_client.messages.create(
        model="claude-sonnet-5-5", max_tokens=100, stream=True, stop_sequences=["meeting"],
        messages=[{"role": "user", "content": PROMPT}]))

    assert [e.type for e in events] == (
        ["message_start", "content_block_start"] + ["content_block_delta"] * 8
        + ["content_block_stop", "message_delta", "message_stop"])
    assert events[-2].delta.stop_reason == "stop_sequence"
    assert events[-2].delta.stop_sequence == "meeting"


def test_anthropic_errors(server, anthropic_client):
    server.fail_next(529)
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        anthropic_client.messages.create(model="m", max_tokens=10,
                                         messages=[{"role": "user", "content": "x"}])
    assert overloaded.value.status_code == 529
    assert overloaded.value.type == "overloaded_error"
    with anthropic.Anthropic(api_key="wrong", base_url=server.base_url,
                             max_retries=0) as client, \
            pytest.raises(anthropic.AuthenticationError):
        client.messages.create(model="m", max_tokens=10,
                               messages=[{"role": "user", "content": "x"}])


# -- Bedrock --------------------------------------------------------------------------------

def test_bedrock_converse(server, bedrock):
    result = bedrock.converse(
        modelId="anthropic.claude-3-haiku-20240307-v1:0",
        system=[{"text": "Be brief."}],
        messages=[{"role": "user", "content": [{"text": PROMPT}]}],
        inferenceConfig={"maxTokens": 100})

    assert result["output"]["message"]["content"] == [{"text": ANSWER}]
    assert result["stopReason"] == "end_turn"
    assert result["usage"]["inputTokens"] == tokens_for(len("Be brief.") + len(PROMPT))
    assert result["usage"]["outputTokens"] == tokens_for(len(ANSWER))
    assert "latencyMs" in result["metrics"]
    (request,) = server.received
    assert request.path == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    assert f"Credential={server.aws_access_key_id}/" in request.headers["authorization"]


def test_bedrock_converse_stream(bedrock):
    response = bedrock.converse_stream(
        modelId="amazon.nova-lite-v1:0", messages=[{"role": "user", "content": [{"text": PROMPT}]}])
    events = list(response["stream"])

    assert list(events[0]) == ["messageStart"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events
                   if "contentBlockDelta" in e)
    assert text == ANSWER
    assert {"messageStop": {"stopReason": "end_turn"}} in events
    assert events[-1]["metadata"]["usage"]["outputTokens"] == tokens_for(len(ANSWER))


def test_bedrock_errors(server, bedrock):
    server.fail_next(429, 503, 400)
    for code in ("ThrottlingException", "ServiceUnavailableException", "ValidationException"):
        with pytest.raises(botocore.exceptions.ClientError) as err:
            bedrock.converse(modelId="m", messages=[{"role": "user", "content": [{"text": "x"}]}])
        assert err.value.response["Error"]["Code"] == code
    wrong = boto3.session.Session().client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=server.base_url,
        aws_access_key_id="AKIDSOMEONEELSE", aws_secret_access_key="x")
    with pytest.raises(botocore.exceptions.ClientError) as denied:
        wrong.converse(modelId="m", messages=[{"role": "user", "content": [{"text": "x"}]}])
    wrong.close()
    assert denied.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_event_stream_frames_carry_valid_crcs():
    from botocore.eventstream import EventStreamBuffer

    buffer = EventStreamBuffer()
    buffer.add_data(event_stream_message("messageStop", {"stopReason": "end_turn"}))
    (message,) = list(buffer)
    assert message.headers[":event-type"] == "messageStop"
    assert message.payload == b'{"stopReason": "end_turn"}'
