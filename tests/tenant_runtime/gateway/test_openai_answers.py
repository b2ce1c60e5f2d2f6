"""The OpenAI-compatible adapter reads answers as plain JSON (not the SDK's models): answers of
the shapes servers really send are read right, and anything else is refused with the same
sentence the SDK's validation error gave, without a retry. The SDK is still the client: its
requests go through an ``openai.OpenAI`` whose HTTP client answers from a script."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx2
import openai
import pytest

from tenant_runtime.gateway.content import ToolCall
from tenant_runtime.gateway.messages import ChatMessage, ChatRequest
from tenant_runtime.gateway.providers.base import (
    Finished,
    ProviderError,
    Target,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from tenant_runtime.gateway.providers.openai_compat import OpenAICompatAdapter, sse_data
from tenant_runtime.gateway.providers.registry import ClientCache
from tenant_runtime.gateway.providers.retry import RetryPolicy
from tenant_runtime.redaction import Profile, redact_request

TARGET = Target("on-prem", "local-model", "http://llm.internal/v1", "key", timeout_seconds=5)


def adapter_answering(answer: Callable[[httpx2.Request], httpx2.Response],
                      seen: list[httpx2.Request]) -> OpenAICompatAdapter:
    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return answer(request)

    clients = ClientCache()
    clients.get(TARGET, lambda: openai.OpenAI(
        api_key="key", base_url=TARGET.endpoint, max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler))))
    return OpenAICompatAdapter("on-prem", clients=clients,
                               policy=RetryPolicy(sleep=lambda _: None))


def request():
    chat = ChatRequest(model="m", messages=(ChatMessage("user", "Hello there"),), max_tokens=20)
    return redact_request(chat, Profile.named("off"))[0]


def json_answer(body: object) -> Callable[[httpx2.Request], httpx2.Response]:
    return lambda _: httpx2.Response(200, json=body)


def sse_answer(text: str) -> Callable[[httpx2.Request], httpx2.Response]:
    return lambda _: httpx2.Response(200, content=text.encode(),
                                     headers={"content-type": "text/event-stream"})


def test_an_answer_is_read_from_its_json_and_the_sdk_sends_the_request():
    seen: list[httpx2.Request] = []
    adapter = adapter_answering(json_answer({
        "id": "x", "object": "chat.completion", "model": "local-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"},
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
        "system_fingerprint": "new-field-the-sdk-does-not-know"}), seen)

    answer = adapter.complete(request(), TARGET)

    assert (answer.text, answer.usage, answer.finish_reason, answer.attempts) == (
        "Hi!", Usage(7, 2), "length", 1)
    sent = seen[0]
    assert sent.url.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer key"
    assert sent.headers["user-agent"].startswith("OpenAI/")
    assert json.loads(sent.content) == {"model": "local-model", "max_tokens": 20,
                                        "messages": [{"role": "user",
                                                      "content": "Hello there"}]}


def test_an_answer_without_usage_or_content_is_estimated_not_free():
    adapter = adapter_answering(json_answer({"choices": [
        {"index": 0, "message": {"role": "assistant", "content": None},
         "finish_reason": "stop"}]}), [])

    answer = adapter.complete(request(), TARGET)

    assert answer.text == "" and answer.usage.input_tokens > 0 and answer.finish_reason == "stop"


@pytest.mark.parametrize("body", [
    b"<html>gateway timeout</html>",
    b"[1, 2]",
    b'{"choices": {"0": "not a list"}}',
    b'{"choices": [{"message": {"content": ["parts"]}}]}',
    b'{"choices": ["text"]}',
])
def test_an_answer_of_another_shape_is_refused_without_a_retry(body):
    seen: list[httpx2.Request] = []
    adapter = adapter_answering(lambda _: httpx2.Response(
        200, content=body, headers={"content-type": "application/json"}), seen)

    with pytest.raises(ProviderError) as failed:
        adapter.complete(request(), TARGET)

    assert "the provider's answer did not have the expected shape" in failed.value.detail
    assert failed.value.attempts == 1 and len(seen) == 1


def test_a_stream_is_decoded_event_by_event():
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
    stream = (": a comment line, ignored\n\n"
              f"data: {json.dumps(chunk)}\n\n"
              # one event's data over two lines, and no space after the colon
              'data:{"choices": [{"index": 0, "delta": {"content": "lo"},\n'
              'data: "finish_reason": "stop"}, {"index": 1, "delta": {"content": "x"}}]}\n\n'
              'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}\n\n'
              "data: [DONE]\n\n"
              # anything after [DONE] is read (the connection is reused) but not taken
              'data: {"choices": [{"index": 0, "delta": {"content": "late"}}]}\n\n')
    seen: list[httpx2.Request] = []
    adapter = adapter_answering(sse_answer(stream), seen)

    events = list(adapter.stream(request(), TARGET))

    assert events == [TextDelta("Hel"), TextDelta("lo"), Finished(Usage(3, 1), "stop", 1)]
    assert json.loads(seen[0].content)["stream_options"] == {"include_usage": True}


def test_an_error_inside_a_stream_fails_the_call():
    adapter = adapter_answering(sse_answer(
        'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
        'data: {"error": {"message": "the model crashed", "type": "server_error"}}\n\n'), [])

    events = adapter.stream(request(), TARGET)
    assert next(events) == TextDelta("Hi")
    with pytest.raises(ProviderError) as failed:
        list(events)
    assert "broke off after it had started" in failed.value.detail
    assert "the model crashed" not in str(failed.value)  # never the provider's own words


def test_server_sent_event_data():
    lines = ["data: a", "", "event: x", "data: b", "data: c", "", "", "data: d"]
    assert list(sse_data(lines)) == ["a", "b\nc", "d"]


def test_tool_calls_are_read_from_an_answer_with_every_choice_and_its_logprobs():
    call = {"id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    adapter = adapter_answering(json_answer({"choices": [
        {"index": 1, "message": {"role": "assistant", "content": "second"},
         "finish_reason": "content_filter"},
        {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
         "finish_reason": "tool_calls", "logprobs": {"content": []}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}}), [])

    answer = adapter.complete(request(), TARGET)

    first, second = answer.choices
    assert first.content == (ToolCall("call_1", "lookup", '{"q": "x"}'),)
    assert (first.finish_reason, first.logprobs) == ("tool_calls", {"content": []})
    assert (second.text, second.finish_reason) == ("second", "other")


def test_a_server_sending_a_whole_tool_call_in_one_chunk_is_followed():
    chunks = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [  # vLLM-style: all at once
            {"index": 3, "id": "call_9", "type": "function",
             "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 5, "id": "call_10", "function": {"name": "other", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 5, "function": {"arguments": "{}"}}]}, "finish_reason": "tool_calls"}]},
    ]
    stream = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    adapter = adapter_answering(sse_answer(stream), [])

    events = list(adapter.stream(request(), TARGET))

    assert events[:-1] == [ToolCallStart(0, "call_9", "lookup"),
                           ToolCallDelta(0, '{"q": "x"}'),
                           ToolCallStart(1, "call_10", "other"), ToolCallDelta(1, "{}")]
    assert events[-1].finish_reason == "tool_calls"
    assert events[-1].usage.output_tokens > 0  # no usage sent: estimated from the arguments


@pytest.mark.parametrize("delta", [
    [{"index": 0, "function": {"arguments": "{}"}}],  # a call that never said its id and name
    {"index": 0},
    [{"index": 0, "id": "c", "function": {"name": "f", "arguments": {"q": 1}}}],
])
def test_a_tool_call_delta_of_another_shape_is_refused(delta):
    chunk = {"choices": [{"index": 0, "delta": {"tool_calls": delta}}]}
    seen: list[httpx2.Request] = []
    adapter = adapter_answering(sse_answer(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"),
                                seen)

    with pytest.raises(ProviderError) as failed:
        list(adapter.stream(request(), TARGET))

    assert "did not have the expected shape" in failed.value.detail
    assert len(seen) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_sends_the_request_the_sdk_builds_with_its_own_body(stream: bool) -> None:
    """The request built once per client and reused: the same URL, headers in the same order,
    body and timeout as the SDK's own ``client.post`` sends, every time; its errors are the
    SDK's."""
    from tenant_runtime.gateway.providers.openai_compat import (
        CHAT_PATH,
        RAW_RESPONSE_HEADER,
        send_chat,
    )

    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        status = 429 if b"refuse" in request.content else 200
        return httpx2.Response(status, json={"error": {"message": "slow down", "type": "t",
                                                       "code": "rate_limit"}})

    client = openai.OpenAI(api_key="key", base_url="http://llm.internal/v1", max_retries=0,
                           timeout=7, http_client=httpx2.Client(
                               transport=httpx2.MockTransport(handler)))
    options = {"headers": {RAW_RESPONSE_HEADER: "stream"}} if stream else {}
    for text in ("hé \u2028 \"quoted\"", "second"):
        body = {"model": "m", "messages": [{"role": "user", "content": text}]}
        client.post(CHAT_PATH, body=body, cast_to=httpx2.Response,
                    options=options).close()  # type: ignore[arg-type]
        send_chat(client, body, stream=stream).close()
        sdk, ours = seen[-2], seen[-1]
        assert (ours.method, str(ours.url), ours.headers.raw, ours.content, ours.extensions) \
            == (sdk.method, str(sdk.url), sdk.headers.raw, sdk.content, sdk.extensions)
    with pytest.raises(openai.RateLimitError) as ours_error:
        send_chat(client, {"model": "refuse"}, stream=stream)
    with pytest.raises(openai.RateLimitError) as sdk_error:
        client.post(CHAT_PATH, body={"model": "refuse"}, cast_to=httpx2.Response,
                    options=options)  # type: ignore[arg-type]
    assert (ours_error.value.status_code, ours_error.value.code, str(ours_error.value)) == \
        (sdk_error.value.status_code, sdk_error.value.code, str(sdk_error.value))
