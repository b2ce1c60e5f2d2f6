"""The adapters' async calls (``acomplete``, ``astream``) against their sync ones, through the
real SDKs (``openai.AsyncOpenAI``, ``AsyncAzureOpenAI``, ``anthropic.AsyncAnthropic``, boto3 in
a worker thread) and the local protocol fake: each scenario runs once sync and once async, each
on a fresh fake and fresh adapters, and must give the same answer, the same events, the same
error sentence, the same attempts, waits and requests. Each async call runs on its own event
loop (``anyio.run``), as the tests' HTTP clients may run each request, so the async clients'
per-loop cache is exercised across dead loops throughout."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import anyio.to_thread
import pytest
from anyio.from_thread import start_blocking_portal
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tenant_runtime.gateway.content import ToolCall
from tenant_runtime.gateway.egress import EgressPolicy
from tenant_runtime.gateway.messages import ChatMessage, ChatRequest, EmbeddingRequest
from tenant_runtime.gateway.providers.anthropic import AnthropicAdapter
from tenant_runtime.gateway.providers.base import (
    PROVIDERS,
    Finished,
    ProviderError,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    text_completion,
)
from tenant_runtime.gateway.providers.bedrock import BedrockAdapter, events_in_thread
from tenant_runtime.gateway.providers.clients import ClientCache, LoopClients
from tenant_runtime.gateway.providers.openai_compat import OpenAICompatAdapter
from tenant_runtime.gateway.providers.registry import (
    adapter_for,
    embedding_adapter_for,
    token_counter,
)
from tenant_runtime.gateway.providers.retry import RetryPolicy
from tenant_runtime.redaction import Profile, redact_embedding
from tests.fakes.llm import LLMServer, Reply, vector
from tests.fakes.llm import ToolCall as Scripted
from tests.fakes.redirects import REFUSED_HOST, Redirector, Trap
from tests.tenant_runtime.gateway.test_provider_agents import TIME, WEATHER, redacted
from tests.tenant_runtime.gateway.test_providers import ANSWER, USAGE, request, target_for

MODES = ("sync", "async")
CLOSED = EgressPolicy()


@dataclass
class Run:
    """One scenario's run in one mode: its adapters and what it gave."""

    mode: str
    server: LLMServer
    adapter: Any
    async_clients: LoopClients
    sleeps: list[float] = field(default_factory=list)

    def complete(self, req: Any, target: Any) -> Any:
        """The Completion, or the ProviderError's (sentence, attempts, status)."""
        try:
            if self.mode == "sync":
                return self.adapter.complete(req, target)
            return anyio.run(self.adapter.acomplete, req, target)
        except ProviderError as error:
            return str(error), error.attempts, error.status

    def stream(self, req: Any, target: Any) -> tuple[list[Any], Any]:
        """The events, and the ProviderError's (sentence, attempts, status) that ended them."""
        events: list[Any] = []

        async def collect() -> None:
            async for event in self.adapter.astream(req, target):
                events.append(event)

        try:
            if self.mode == "sync":
                events.extend(self.adapter.stream(req, target))
            else:
                anyio.run(collect)
        except ProviderError as error:
            return events, (str(error), error.attempts, error.status)
        return events, None


def build(mode: str, provider: str, server: LLMServer) -> Run:
    clients, async_clients = ClientCache(), LoopClients()
    run = Run(mode, server, None, async_clients)
    policy = RetryPolicy(sleep=run.sleeps.append, base_delay=0.01, max_delay=0.04)
    if provider == "anthropic":
        run.adapter = AnthropicAdapter(clients=clients, async_clients=async_clients,
                                       policy=policy)
    elif provider == "bedrock":
        run.adapter = BedrockAdapter(clients=clients, policy=policy)
    else:
        run.adapter = OpenAICompatAdapter(provider, clients=clients,
                                          async_clients=async_clients, policy=policy)
    return run


def both(provider: str, scenario: Callable[[Run], Any], **server_options: Any) -> Any:
    """``scenario`` sync and async, each on a fresh fake; asserts they gave the same, the fake
    received the same number of requests and the retries waited the same, and returns what
    the sync run gave."""
    results = []
    for mode in MODES:
        with LLMServer(hang_seconds=3, **server_options) as server:
            run = build(mode, provider, server)
            try:
                given = scenario(run)
            finally:
                run.adapter._clients.close()
            results.append((given, len(server.received), run.sleeps, run.async_clients.loops()))
    (sync, sync_received, sync_sleeps, _), (async_, async_received, async_sleeps, loops) = results
    assert async_ == sync
    assert async_received == sync_received
    assert len(async_sleeps) == len(sync_sleeps)
    assert loops == 0  # every loop's clients were closed and forgotten when it ended
    return sync


def waits(run: Run) -> list[float | str]:
    """The retries' waits: a Retry-After as asked, a backoff (random) as "backoff"."""
    assert all(0 <= s <= 0.04 or s == 7.0 for s in run.sleeps)
    return [s if s == 7.0 else "backoff" for s in run.sleeps]


def ask_weather(**fields: Any) -> Any:
    return redacted(ChatRequest(model="any", messages=(ChatMessage("user", "Weather?"),),
                                max_tokens=200, tools=(WEATHER, TIME), **fields))


# -- answers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_plain_answer_and_its_stream(provider):
    def scenario(run: Run) -> Any:
        target = target_for(run.server, provider)
        return run.complete(request(), target), run.stream(request(), target)

    completion, (events, error) = both(provider, scenario)

    assert completion == text_completion(ANSWER, USAGE, "stop", attempts=1)
    assert error is None and "".join(e.text for e in events[:-1]) == ANSWER
    assert events[-1] == Finished(USAGE, "stop", attempts=1)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_calls_answered_and_streamed(provider):
    arguments = '{"city": "Zürich", "days": 3}'

    def scenario(run: Run) -> Any:
        target = target_for(run.server, provider)
        for _ in range(2):
            run.server.script(Reply("Ok.", (Scripted("get_weather", arguments),
                                            Scripted("get_time", "{}"))))
        return run.complete(ask_weather(), target), run.stream(ask_weather(stream=True), target)

    completion, (events, error) = both(provider, scenario)

    first, second = completion.choices[0].tool_calls
    assert (first.name, json.loads(first.arguments)) == ("get_weather", json.loads(arguments))
    assert (second.name, second.arguments) == ("get_time", "{}")
    assert completion.finish_reason == "tool_calls"
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [(s.index, s.name) for s in starts] == [(0, "get_weather"), (1, "get_time")]
    assert len([e for e in events if isinstance(e, ToolCallDelta) and e.index == 0]) > 3
    assert error is None and events[-1].finish_reason == "tool_calls"
    assert all(isinstance(b, ToolCall) for b in completion.choices[0].tool_calls)


# -- retries and failures -----------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_429_and_a_500_are_retried_until_success(provider):
    def scenario(run: Run) -> Any:
        target = target_for(run.server, provider)
        run.server.fail_next((429, 7), 500)
        completion = run.complete(request(), target)
        run.server.fail_next(502)
        return completion, run.stream(request(), target), waits(run)

    completion, (events, error), sleeps = both(provider, scenario)

    assert (completion.text, completion.attempts) == (ANSWER, 3)
    assert error is None and events[-1].attempts == 2
    assert sleeps == [7.0, "backoff", "backoff"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_three_500s_fail_for_good_with_the_same_sentence(provider):
    def scenario(run: Run) -> Any:
        run.server.fail_next(500, 500, 500)
        return run.complete(request(), target_for(run.server, provider))

    sentence, attempts, status = both(provider, scenario)

    assert sentence.startswith(f"{provider} failed after 3 attempts: HTTP 500 from the provider")
    assert (attempts, status) == (3, 500)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_400_is_not_retried(provider):
    def scenario(run: Run) -> Any:
        target = target_for(run.server, provider)
        run.server.fail_next(400)
        failed = run.complete(request(), target)
        run.server.fail_next(400)
        return failed, run.stream(request(), target), waits(run)

    (sentence, attempts, status), (events, streamed), sleeps = both(provider, scenario)

    assert "HTTP 400 from the provider (Bad Request" in sentence
    assert (attempts, status) == (1, 400) and sleeps == []
    assert events == [] and streamed == (sentence, 1, 400)


def test_a_retry_after_beyond_the_cap_fails_at_once():
    def scenario(run: Run) -> Any:
        run.server.fail_next((429, 60))
        return run.complete(request(), target_for(run.server, "openai")), waits(run)

    assert both("openai", scenario) == ((
        "openai failed after 1 attempt: HTTP 429 from the provider (Too Many Requests, "
        "rate_limit_exceeded); it asked to wait 60 s, longer than the 20 s this gateway waits",
        1, 429), [])


@pytest.mark.parametrize("provider", ["openai", "anthropic", "bedrock"])
def test_a_timeout_is_retried(provider):
    def scenario(run: Run) -> Any:
        run.server.fail_next("timeout", "timeout", "timeout")
        return run.complete(request(), target_for(run.server, provider, timeout_seconds=0.5))

    assert both(provider, scenario) == (
        f"{provider} failed after 3 attempts: timed out after 0.5 s", 3, None)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_that_breaks_off_after_it_started_is_not_retried(provider):
    def scenario(run: Run) -> Any:
        run.server.fail_next("cut")
        return run.stream(request(), target_for(run.server, provider))

    events, (sentence, attempts, _) = both(provider, scenario)

    assert events[0] == TextDelta(ANSWER[:3]) and not isinstance(events[-1], Finished)
    assert "the answer stream broke off after it had started" in sentence and attempts == 1


# -- egress -------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_refused_address_is_refused_at_connect_time(provider):
    def scenario(run: Run) -> Any:
        target = target_for(run.server, provider, egress=CLOSED)
        return run.complete(request(), target), run.stream(request(), target)

    (sentence, attempts, _), (events, streamed) = both(provider, scenario)

    assert "the egress policy refused the connection" in sentence and attempts == 1
    assert "resolves to 127.0.0.1, a private or loopback address" in sentence
    assert events == [] and streamed[0] == sentence


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_redirect_is_not_followed(provider):
    results = []
    with Trap() as trap, Redirector(307, trap.url("/v1/steal?token=abc")) as upstream:
        for mode in MODES:
            run = build(mode, provider, LLMServer())
            run.server.base_url = upstream.base_url
            target = target_for(run.server, provider)
            results.append((run.complete(request(), target), run.stream(request(), target)))
            run.adapter._clients.close()
        assert len(upstream.requests) == 4  # one a call: a redirect is not retried
    assert (trap.connections, trap.data) == (0, b"")
    assert results[1] == results[0]
    (sentence, attempts, status), (events, streamed) = results[0]
    assert (f"the provider answered with a redirect to http://{REFUSED_HOST}:{trap.port}"
            "/v1/steal, which Magistrate does not follow") in sentence
    assert (attempts, status) == (1, 307) and "token=abc" not in sentence
    assert events == [] and streamed == (sentence, 1, 307)


# -- the async side alone -----------------------------------------------------------------------

def test_the_registry_answers_adapters_with_both_kinds_of_calls():
    for provider in PROVIDERS:
        adapter = adapter_for(provider)
        assert callable(adapter.complete) and callable(adapter.stream)
        assert asyncio.iscoroutinefunction(adapter.acomplete) and callable(adapter.astream)
    for provider in ("openai", "azure-openai", "on-prem"):
        assert asyncio.iscoroutinefunction(embedding_adapter_for(provider).aembed)
    assert asyncio.iscoroutinefunction(token_counter().acount_tokens)


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(hang_seconds=3) as fake:
        yield fake


def test_async_clients_are_per_loop_reused_within_it_and_closed_with_it(server):
    run = build("async", "openai", server)
    target = target_for(server, "openai")
    made = []

    async def twice() -> None:
        for _ in range(2):
            await run.adapter.acomplete(request(), target)
            made.append(run.adapter._async_client(target))
        assert run.async_clients.held() == 1

    anyio.run(twice)
    anyio.run(twice)

    first, again, second, _ = made
    assert first is again and second is not first  # never reused on another loop
    assert first.is_closed() and second.is_closed()
    assert run.async_clients.loops() == 0 and len(server.received) == 4


def test_loops_running_at_once_in_two_threads_get_their_own_clients(server):
    run = build("async", "anthropic", server)
    target = target_for(server, "anthropic")
    made: list[Any] = []
    both_made = threading.Barrier(2, timeout=10)

    def in_thread() -> None:
        async def call() -> None:
            await run.adapter.acomplete(request(), target)
            made.append(run.adapter._async_client(target))
            await anyio.to_thread.run_sync(both_made.wait)

        anyio.run(call)

    threads = [threading.Thread(target=in_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(made) == 2 and made[0] is not made[1]
    assert all(client.is_closed() for client in made)


def test_azure_token_provider_is_called_off_the_event_loop(server):
    run = build("async", "azure-openai", server)
    threads = []

    def token() -> str:
        threads.append(threading.get_ident())
        return server.azure_token

    target = target_for(server, "azure-openai", api_key=None, azure_ad_token_provider=token)

    async def call() -> tuple[Any, int]:
        completion = await run.adapter.acomplete(request(), target)
        return completion, threading.get_ident()

    completion, loop_thread = anyio.run(call)
    events, error = run.stream(request(), target)

    assert completion.text == ANSWER and error is None and events[-1].attempts == 1
    assert [r.headers["authorization"] for r in server.received] == [
        f"Bearer {server.azure_token}"] * 2
    assert len(threads) == 2 and loop_thread not in threads


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_closed_early_lets_the_next_call_through(server, provider):
    run = build("async", provider, server)
    target = target_for(server, provider)

    async def first_then_close() -> Any:
        events = run.adapter.astream(request(), target)
        first = await anext(events)
        await events.aclose()
        return first, await run.adapter.acomplete(request(), target)

    first, completion = anyio.run(first_then_close)

    assert first == TextDelta(ANSWER[:3])
    assert replace(completion, attempts=1) == text_completion(ANSWER, USAGE, "stop", 1)
    assert len(server.received) == 2


def test_each_request_of_a_test_client_on_its_own_loop_gets_a_client_closed_with_it(server):
    run = build("async", "on-prem", server)
    target = target_for(server, "on-prem")
    made = []

    async def endpoint(_request: Any) -> PlainTextResponse:
        completion = await run.adapter.acomplete(request(), target)
        made.append(run.adapter._async_client(target))
        return PlainTextResponse(completion.text)

    app = Starlette(routes=[Route("/", endpoint)])
    client = TestClient(app)  # not entered: each request runs on a new event loop
    answers = [client.get("/").text for _ in range(2)]

    assert answers == [ANSWER, ANSWER]
    assert made[0] is not made[1] and all(c.is_closed() for c in made)
    assert run.async_clients.loops() == 0


def test_close_clients_closes_those_of_a_loop_running_in_another_thread(server):
    run = build("async", "anthropic", server)
    target = target_for(server, "anthropic")

    async def call() -> Any:
        await run.adapter.acomplete(request(), target)
        return run.adapter._async_client(target)

    with start_blocking_portal() as portal:
        made = portal.call(call)
        assert not made.is_closed()
        run.async_clients.close()
        assert made.is_closed()
        assert portal.call(call) is not made  # the loop's next call builds another


def test_a_bedrock_stream_closed_early_closes_the_sync_stream_in_its_thread():
    release, closed = threading.Event(), threading.Event()

    def events() -> Iterator[Any]:
        try:
            yield TextDelta("a")
            yield TextDelta("b")
            release.wait(10)
            yield TextDelta("c")
            yield Finished(USAGE, "stop", attempts=0)
        finally:
            closed.set()

    async def two_then_close() -> list[Any]:
        stream = events_in_thread(events)
        two = [await anext(stream), await anext(stream)]
        await stream.aclose()
        release.set()
        await anyio.to_thread.run_sync(closed.wait, 10)
        return two

    assert anyio.run(two_then_close) == [TextDelta("a"), TextDelta("b")]
    assert closed.is_set()


@pytest.mark.parametrize("provider", ["openai", "azure-openai", "on-prem"])
def test_embeddings_retried_and_refused_alike(provider):
    embedding = redact_embedding(EmbeddingRequest("any", ("first text", "second, longer text"),
                                                  dimensions=8), Profile.named("off"))

    def scenario(run: Run) -> Any:
        target = target_for(run.server, provider, model="text-embedding-3-small")
        embed = run.adapter.embed if run.mode == "sync" else (
            lambda *args: anyio.run(run.adapter.aembed, *args))
        run.server.fail_next(503)
        answer = embed(embedding, target)
        run.server.fail_next(400)
        with pytest.raises(ProviderError) as failed:
            embed(embedding, target)
        return answer, str(failed.value), run.server.received[0].json()

    answer, sentence, sent = both(provider, scenario)

    assert answer.vectors == (vector("first text", 8), vector("second, longer text", 8))
    assert answer.attempts == 2
    assert sentence.startswith(f"{provider} failed after 1 attempt: HTTP 400")
    assert sent["input"] == ["first text", "second, longer text"] and sent["dimensions"] == 8


def test_anthropic_token_counts_alike():
    def scenario(run: Run) -> Any:
        count = run.adapter.count_tokens if run.mode == "sync" else (
            lambda *args: anyio.run(run.adapter.acount_tokens, *args))
        run.server.fail_next(529)
        return count(ask_weather(), target_for(run.server, "anthropic")), waits(run)

    counted, sleeps = both("anthropic", scenario)

    assert counted > 0 and sleeps == ["backoff"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_routes_missing_what_they_need_and_unredacted_requests_are_refused_alike(provider):
    missing = {"openai": {"api_key": None}, "anthropic": {"api_key": None},
               "on-prem": {"endpoint": None}, "azure-openai": {"api_version": None},
               "bedrock": {"api_key": "no-colon"}}[provider]
    chat = ChatRequest(model="any", messages=(ChatMessage("user", "Hi"),), max_tokens=10)

    def scenario(run: Run) -> Any:
        # a stream is refused when it is asked for, before it is iterated, in both modes
        stream = run.adapter.stream if run.mode == "sync" else run.adapter.astream
        complete = run.adapter.complete if run.mode == "sync" else (
            lambda *args: anyio.run(run.adapter.acomplete, *args))
        refused = []
        for call in (complete, stream):
            with pytest.raises(ProviderError) as failed:
                call(request(), target_for(run.server, provider, **missing))
            with pytest.raises(TypeError, match="only a RedactedRequest") as wrong:
                call(chat, target_for(run.server, provider))
            refused.append((str(failed.value), failed.value.attempts, str(wrong.value)))
        return refused

    complete, stream = both(provider, scenario)

    assert complete == stream and complete[1] == 0
