"""The provider adapters, each through its real SDK against the local protocol fake
(tests/fakes/llm_servers.py): answers, usage, finish reasons, what goes on the wire, retries and
the errors an operator reads."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace

import pytest

from tenant_runtime.gateway.egress import EgressPolicy
from tenant_runtime.gateway.messages import ChatMessage, ChatRequest
from tenant_runtime.gateway.providers.anthropic import AnthropicAdapter
from tenant_runtime.gateway.providers.base import (
    PROVIDERS,
    Finished,
    ProviderError,
    Target,
    TextDelta,
    Usage,
    text_completion,
)
from tenant_runtime.gateway.providers.bedrock import BedrockAdapter
from tenant_runtime.gateway.providers.openai_compat import OpenAICompatAdapter
from tenant_runtime.gateway.providers.registry import ClientCache, adapter_for, client_key
from tenant_runtime.gateway.providers.retry import RetryPolicy, parse_retry_after
from tenant_runtime.redaction import Profile, redact_request
from tests.fakes.llm_servers import LLMServer, tokens_for

SYSTEM = "Be brief."
PROMPT = "Summarize the meeting notes from Tuesday"
ANSWER = "You said: " + PROMPT
USAGE = Usage(tokens_for(len(SYSTEM) + len(PROMPT)), tokens_for(len(ANSWER)))
MODELS = {"openai": "gpt-4o-mini", "on-prem": "llama-3.1-8b-instruct",
          "azure-openai": "my-gpt-deployment", "anthropic": "claude-sonnet-5-5",
          "bedrock": "anthropic.claude-3-haiku-20240307-v1:0"}
HTTPX_SDKS = ("openai", "azure-openai", "anthropic")  # one of each SDK family and then some
LOOPBACK = EgressPolicy.parse(ambient_identity=False, private_networks=("127.0.0.0/8",))


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(hang_seconds=3) as fake:
        yield fake


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def adapters(sleeps) -> Iterator[dict]:
    clients = ClientCache()
    policy = RetryPolicy(sleep=sleeps.append, base_delay=0.01, max_delay=0.04)
    yield {"openai": OpenAICompatAdapter("openai", clients=clients, policy=policy),
           "on-prem": OpenAICompatAdapter("on-prem", clients=clients, policy=policy),
           "azure-openai": OpenAICompatAdapter("azure-openai", clients=clients, policy=policy),
           "anthropic": AnthropicAdapter(clients=clients, policy=policy),
           "bedrock": BedrockAdapter(clients=clients, policy=policy),
           "clients": clients}
    clients.close()


def target_for(server: LLMServer, provider: str, **changes) -> Target:
    base = server.base_url
    target = {
        "openai": Target("openai", MODELS["openai"], f"{base}/v1", server.api_key),
        "on-prem": Target("on-prem", MODELS["on-prem"], f"{base}/v1", server.api_key),
        "azure-openai": Target("azure-openai", MODELS["azure-openai"], base, server.api_key,
                               api_version="2024-10-21"),
        "anthropic": Target("anthropic", MODELS["anthropic"], base, server.api_key),
        "bedrock": Target("bedrock", MODELS["bedrock"], base,
                          f"{server.aws_access_key_id}:fake-secret-access-key",
                          region="eu-central-1"),
    }[provider]
    return replace(target, **{"timeout_seconds": 5.0, "egress": LOOPBACK, **changes})


def redacted(*messages: tuple[str, str], max_tokens: int = 100, **fields):
    chat = ChatRequest(model="any", messages=tuple(ChatMessage(r, c) for r, c in messages),
                       max_tokens=max_tokens, **fields)
    request, _ = redact_request(chat, Profile.named("off"))
    return request


def request(**fields):
    return redacted(("system", SYSTEM), ("user", PROMPT), **fields)


def collect(events: Iterator) -> tuple[list[str], Finished]:
    events = list(events)
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    assert isinstance(events[-1], Finished)
    return [e.text for e in events[:-1]], events[-1]


# -- answers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_complete(server, adapters, provider):
    completion = adapters[provider].complete(request(), target_for(server, provider))

    assert completion == text_completion(ANSWER, USAGE, "stop", attempts=1)
    (sent,) = server.received
    assert PROMPT.encode() in sent.body


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream(server, adapters, provider):
    pieces, finished = collect(adapters[provider].stream(request(), target_for(server, provider)))

    assert "".join(pieces) == ANSWER
    assert len(pieces) == len(ANSWER) // 3 + 1  # the fake's 3-character pieces, passed on as is
    assert finished == Finished(USAGE, "stop", attempts=1)
    assert len(server.received) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_answer_cut_by_max_tokens_finishes_with_length(server, adapters, provider):
    completion = adapters[provider].complete(request(max_tokens=3),
                                             target_for(server, provider))
    _, finished = collect(adapters[provider].stream(request(max_tokens=3),
                                                    target_for(server, provider)))

    assert (completion.text, completion.finish_reason) == (ANSWER[:11], "length")
    assert completion.usage.output_tokens == 3
    assert finished.finish_reason == "length"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stop_sequences_reach_the_provider(server, adapters, provider):
    completion = adapters[provider].complete(request(stop=("meeting",)),
                                             target_for(server, provider))

    assert completion.text == "You said: Summarize the "
    assert completion.finish_reason == "stop"


# -- what goes on the wire ------------------------------------------------------------------

def test_openai_wire_request(server, adapters):
    adapters["openai"].complete(request(temperature=0.2, top_p=0.9, stop=("END",)),
                                target_for(server, "openai"))
    collect(adapters["openai"].stream(request(), target_for(server, "openai")))

    plain, streamed = [r.json() for r in server.received]
    assert plain["model"] == "gpt-4o-mini"
    assert plain["messages"] == [{"role": "system", "content": SYSTEM},
                                 {"role": "user", "content": PROMPT}]
    assert (plain["max_completion_tokens"], plain["temperature"], plain["top_p"],
            plain["stop"]) == (100, 0.2, 0.9, ["END"])
    assert "max_tokens" not in plain and "stream" not in plain
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}
    assert server.received[0].headers["authorization"] == f"Bearer {server.api_key}"


def test_on_prem_sends_max_tokens(server, adapters):
    adapters["on-prem"].complete(request(), target_for(server, "on-prem"))

    (sent,) = server.received
    assert sent.json()["max_tokens"] == 100
    assert "max_completion_tokens" not in sent.json()


def test_anthropic_puts_system_prompts_at_the_top(server, adapters):
    adapters["anthropic"].complete(
        redacted(("system", SYSTEM), ("user", PROMPT), ("assistant", "Noted."),
                 ("system", "Answer in English."), ("user", "And Wednesday?")),
        target_for(server, "anthropic"))

    (sent,) = server.received
    body = sent.json()
    assert body["system"] == SYSTEM + "\n\nAnswer in English."
    assert body["messages"] == [{"role": "user", "content": PROMPT},
                                {"role": "assistant", "content": "Noted."},
                                {"role": "user", "content": "And Wednesday?"}]
    assert body["max_tokens"] == 100
    assert sent.headers["anthropic-version"]


@pytest.mark.parametrize("field", ["temperature", "top_p"])
def test_anthropic_refuses_sampling_parameters_rather_than_drop_them(server, adapters, field):
    # API version 2026-10-21 answers 400 to any of them: nothing is sent, nothing dropped
    with pytest.raises(ProviderError, match=f"{field} cannot be sent") as caught:
        adapters["anthropic"].complete(redacted(("user", PROMPT), **{field: 0.3}),
                                       target_for(server, "anthropic"))
    assert (caught.value.attempts, caught.value.status) == (0, 422)
    assert server.received == []


def test_bedrock_puts_system_prompts_in_the_system_list(server, adapters):
    adapters["bedrock"].complete(
        redacted(("system", SYSTEM), ("system", "Answer in English."), ("user", PROMPT),
                 temperature=0.3, top_p=0.5, stop=("END",)),
        target_for(server, "bedrock"))

    (sent,) = server.received
    body = sent.json()
    assert body["system"] == [{"text": SYSTEM}, {"text": "Answer in English."}]
    assert body["messages"] == [{"role": "user", "content": [{"text": PROMPT}]}]
    assert body["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.3, "topP": 0.5,
                                       "stopSequences": ["END"]}
    assert sent.path == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    assert (f"Credential={server.aws_access_key_id}/" in sent.headers["authorization"]
            and "/eu-central-1/bedrock/aws4_request" in sent.headers["authorization"])


def test_bedrock_stream_is_decoded_from_the_event_stream_through_boto3(server, adapters):
    pieces, finished = collect(adapters["bedrock"].stream(
        redacted(("user", "Hello there"), max_tokens=50), target_for(server, "bedrock")))

    assert pieces == ["You", " sa", "id:", " He", "llo", " th", "ere"]
    assert finished == Finished(Usage(tokens_for(11), tokens_for(21)), "stop", attempts=1)
    assert server.received[0].path.endswith("/converse-stream")


def test_azure_with_an_api_key(server, adapters):
    adapters["azure-openai"].complete(request(), target_for(server, "azure-openai"))

    (sent,) = server.received
    assert sent.path == ("/openai/deployments/my-gpt-deployment/chat/completions"
                         "?api-version=2024-10-21")
    assert sent.headers["api-key"] == server.api_key
    assert "authorization" not in sent.headers


def test_azure_with_a_token_provider(server, adapters):
    calls = []

    def token() -> str:
        calls.append(1)
        return server.azure_token

    target = target_for(server, "azure-openai", api_key=None, azure_ad_token_provider=token)
    completion = adapters["azure-openai"].complete(request(), target)
    _, finished = collect(adapters["azure-openai"].stream(request(), target))

    assert completion.text == ANSWER and finished.attempts == 1
    assert [r.headers["authorization"] for r in server.received] == [
        f"Bearer {server.azure_token}"] * 2
    assert all("api-key" not in r.headers for r in server.received)
    assert calls


# -- the invariant: only a RedactedRequest reaches a provider ------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_anything_but_a_redacted_request_is_refused(server, adapters, provider):
    chat = ChatRequest(model="any", messages=(ChatMessage("user", PROMPT),), max_tokens=10)
    real = request()
    lookalike = SimpleNamespace(**{name: getattr(real, name) for name in (
        "model", "messages", "max_tokens", "temperature", "top_p", "stop", "stream", "counts")})
    target = target_for(server, provider)

    for wrong in (chat, lookalike, None):
        with pytest.raises(TypeError, match="only a RedactedRequest"):
            adapters[provider].complete(wrong, target)
        with pytest.raises(TypeError, match="only a RedactedRequest"):
            adapters[provider].stream(wrong, target)
    assert server.received == []


# -- retries --------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_503_then_success_takes_two_attempts(server, adapters, sleeps, provider):
    server.fail_next(503)
    completion = adapters[provider].complete(request(), target_for(server, provider))

    assert (completion.text, completion.attempts) == (ANSWER, 2)
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.01
    assert len(server.received) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_that_fails_before_its_first_text_is_retried(server, adapters, provider):
    server.fail_next(502)
    pieces, finished = collect(adapters[provider].stream(request(), target_for(server, provider)))

    assert "".join(pieces) == ANSWER
    assert finished.attempts == 2


@pytest.mark.parametrize("provider", ["openai", "azure-openai", "anthropic", "bedrock"])
def test_429_retry_after_is_honoured(server, adapters, sleeps, provider):
    server.fail_next((429, 7))
    completion = adapters[provider].complete(request(), target_for(server, provider))

    assert completion.attempts == 2
    assert sleeps == [7.0]


def test_a_retry_after_beyond_the_cap_fails_at_once(server, adapters, sleeps):
    server.fail_next((429, 60))
    with pytest.raises(ProviderError) as err:
        adapters["openai"].complete(request(), target_for(server, "openai"))

    assert err.value.attempts == 1 and err.value.status == 429 and sleeps == []
    assert str(err.value) == (
        "openai failed after 1 attempt: HTTP 429 from the provider (Too Many Requests, "
        "rate_limit_exceeded); it asked to wait 60 s, longer than the 20 s this gateway waits")


def test_anthropic_overloaded_529_is_retried(server, adapters):
    server.fail_next(529)
    completion = adapters["anthropic"].complete(request(), target_for(server, "anthropic"))

    assert completion.attempts == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_three_500s_fail_for_good(server, adapters, sleeps, provider):
    server.fail_next(500, 500, 500, 500)
    with pytest.raises(ProviderError) as err:
        adapters[provider].complete(request(), target_for(server, provider))

    assert err.value.provider == provider
    assert err.value.attempts == 3 and err.value.status == 500
    assert str(err.value).startswith(f"{provider} failed after 3 attempts: HTTP 500 from the "
                                     "provider (Internal Server Error")
    assert len(server.received) == 3
    assert len(sleeps) == 2 and sleeps[0] <= 0.01 and sleeps[1] <= 0.02


@pytest.mark.parametrize("provider", PROVIDERS)
def test_400_is_not_retried(server, adapters, sleeps, provider):
    server.fail_next(400)
    with pytest.raises(ProviderError) as err:
        adapters[provider].complete(request(), target_for(server, provider))

    assert (err.value.attempts, err.value.status) == (1, 400)
    assert "HTTP 400 from the provider (Bad Request" in str(err.value)
    assert sleeps == [] and len(server.received) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_wrong_key_is_not_retried_and_never_shown(server, adapters, provider):
    wrong = ("AKIDWRONGWRONG:very-secret-value" if provider == "bedrock"
             else "sk-very-secret-value")
    with pytest.raises(ProviderError) as err:
        adapters[provider].complete(request(), target_for(server, provider, api_key=wrong))

    assert err.value.attempts == 1 and err.value.status in (401, 403)
    assert "very-secret-value" not in str(err.value) + repr(err.value)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "bedrock"])
def test_a_timeout_is_retried(server, adapters, provider):
    target = target_for(server, provider, timeout_seconds=0.5)
    server.fail_next("timeout")
    assert adapters[provider].complete(request(), target).attempts == 2

    server.fail_next("timeout", "timeout", "timeout")
    with pytest.raises(ProviderError) as err:
        adapters[provider].complete(request(), target)
    assert str(err.value) == f"{provider} failed after 3 attempts: timed out after 0.5 s"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_reset_connection_is_retried(server, adapters, provider):
    server.fail_next("reset")
    assert adapters[provider].complete(request(), target_for(server, provider)).attempts == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_answer_cut_short_is_retried(server, adapters, provider):
    server.fail_next("cut")
    completion = adapters[provider].complete(request(), target_for(server, provider))

    assert (completion.text, completion.attempts) == (ANSWER, 2)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_connection_refused_is_a_clear_error(adapters, provider):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = LLMServer()
    closed.base_url = f"http://127.0.0.1:{port}"
    target = target_for(closed, provider)

    with pytest.raises(ProviderError) as err:
        adapters[provider].complete(request(), target)

    assert err.value.attempts == 3
    assert err.value.detail == f"could not connect to {target.endpoint}"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_that_breaks_midway_is_not_retried(server, adapters, provider):
    server.fail_next("cut")
    events = adapters[provider].stream(request(), target_for(server, provider))

    assert next(events) == TextDelta(ANSWER[:3])
    with pytest.raises(ProviderError) as err:
        list(events)
    assert err.value.attempts == 1
    assert "the answer stream broke off after it had started" in err.value.detail
    assert len(server.received) == 1


# -- configuration, clients, registry -------------------------------------------------------

def test_routes_missing_what_they_need_fail_clearly(server, adapters):
    cases = [("openai", {"api_key": None}, "the route has no API key"),
             ("anthropic", {"api_key": None}, "the route has no API key"),
             ("on-prem", {"endpoint": None}, "the route needs the server's endpoint"),
             ("azure-openai", {"api_version": None}, "an endpoint and an API version"),
             ("bedrock", {"api_key": "no-colon"}, "ACCESS_KEY_ID:SECRET_ACCESS_KEY")]
    for provider, changes, words in cases:
        with pytest.raises(ProviderError, match=words) as err:
            adapters[provider].complete(request(), target_for(server, provider, **changes))
        assert err.value.attempts == 0
    assert server.received == []


def test_sdk_clients_are_reused_per_endpoint_and_key(server, adapters):
    clients = adapters["clients"]
    adapters["openai"].complete(request(), target_for(server, "openai"))
    adapters["openai"].complete(request(), target_for(server, "openai"))
    assert len(clients) == 1
    adapters["anthropic"].complete(request(), target_for(server, "anthropic"))
    with pytest.raises(ProviderError):
        adapters["openai"].complete(request(), target_for(server, "openai", api_key="other"))
    assert len(clients) == 3

    key = client_key(target_for(server, "openai"))
    assert server.api_key not in repr(key)


def test_the_client_cache_is_bounded():
    cache = ClientCache(size=2)
    built = [cache.get(Target("openai", "m", f"http://h{i}"), object) for i in range(3)]

    assert len(cache) == 2
    assert cache.get(Target("openai", "m", "http://h2"), object) is built[2]
    assert cache.get(Target("openai", "m", "http://h0"), object) is not built[0]


def test_every_provider_has_an_adapter():
    assert isinstance(adapter_for("on-prem"), OpenAICompatAdapter)
    assert isinstance(adapter_for("anthropic"), AnthropicAdapter)
    assert isinstance(adapter_for("bedrock"), BedrockAdapter)
    for provider in PROVIDERS:
        assert callable(adapter_for(provider).complete)
    with pytest.raises(ValueError, match="Unknown provider 'gemini'"):
        adapter_for("gemini")


def test_retry_after_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
