"""Every drop-in endpoint of the gateway goes through the same governance (``Gateway.admit``):
the allowlist, the tool rules, the image policy and the rate limit refuse a request the same way
on chat, responses, messages, count_tokens and embeddings, streamed or not, and nothing of a
refused request reaches the provider (the fake's recorded requests stay empty). The table of
endpoints is checked against the app's routes, so a new endpoint must be added here."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import anthropic
import openai
import pytest
from starlette.routing import Route

from control_plane.gateway.ratelimit import Counted, GatewayRateLimiter
from control_plane.web.app import build_app
from tenant_runtime import bridge
from tests.control_plane.gateway.conftest import GatewayEnv
from tests.control_plane.gateway.test_agent_traffic import PNG, events
from tests.control_plane.gateway.test_gateway_api import ant, fresh_minute, oai, set_settings

FORBIDDEN = "delete_everything"
SCHEMA = {"type": "object", "properties": {"what": {"type": "string"}}}
DATA_URL = f"data:image/png;base64,{PNG}"


def _chat(env: GatewayEnv, model: str, what: str, stream: bool) -> None:
    content: object = "hi"
    extra: dict[str, object] = {}
    if what == "tool":
        extra["tools"] = [{"type": "function", "function": {"name": FORBIDDEN,
                                                            "parameters": SCHEMA}}]
    if what == "image":
        content = [{"type": "text", "text": "What is this?"},
                   {"type": "image_url", "image_url": {"url": DATA_URL}}]
    with oai(env, max_retries=0) as client:
        answer = client.chat.completions.create(
            model=model, max_tokens=50, messages=[{"role": "user", "content": content}],
            stream=stream, **extra)
        if stream:
            list(answer)


def _responses(env: GatewayEnv, model: str, what: str, stream: bool) -> None:
    content: object = "hi"
    extra: dict[str, object] = {}
    if what == "tool":
        extra["tools"] = [{"type": "function", "name": FORBIDDEN, "parameters": SCHEMA,
                           "strict": False}]
    if what == "image":
        content = [{"role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": DATA_URL, "detail": "auto"}]}]
    with oai(env, max_retries=0) as client:
        answer = client.responses.create(model=model, input=content, max_output_tokens=50,
                                         stream=stream, **extra)
        if stream:
            list(answer)


def _anthropic_parts(what: str) -> tuple[list[dict[str, object]], dict[str, object]]:
    content: object = "hi"
    extra: dict[str, object] = {}
    if what == "tool":
        extra["tools"] = [{"name": FORBIDDEN, "input_schema": SCHEMA}]
    if what == "image":
        content = [{"type": "text", "text": "What is this?"},
                   {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                "data": PNG}}]
    return [{"role": "user", "content": content}], extra


def _messages(env: GatewayEnv, model: str, what: str, stream: bool) -> None:
    messages, extra = _anthropic_parts(what)
    with ant(env, max_retries=0) as client:
        answer = client.messages.create(model=model, max_tokens=50, messages=messages,
                                        stream=stream, **extra)
        if stream:
            list(answer)


def _count_tokens(env: GatewayEnv, model: str, what: str, stream: bool) -> None:
    messages, extra = _anthropic_parts(what)
    with ant(env, max_retries=0) as client:
        client.messages.count_tokens(model=model, messages=messages, **extra)


def _embeddings(env: GatewayEnv, model: str, what: str, stream: bool) -> None:
    with oai(env, max_retries=0) as client:
        client.embeddings.create(model=model, input="hi")


@dataclass(frozen=True)
class Endpoint:
    path: str
    send: Callable[[GatewayEnv, str, str, bool], None]
    model: str  # an allowed model the endpoint serves
    sdk: str  # "openai" or "anthropic": whose exceptions it raises
    streams: bool  # has a streaming variant
    chat: bool  # takes tools and images


ENDPOINTS = {
    "/v1/chat/completions": Endpoint("/v1/chat/completions", _chat, "gpt-4o-mini", "openai",
                                     True, True),
    "/v1/responses": Endpoint("/v1/responses", _responses, "gpt-4o-mini", "openai", True,
                              True),
    "/v1/messages": Endpoint("/v1/messages", _messages, "claude-haiku", "anthropic", True,
                             True),
    "/v1/messages/count_tokens": Endpoint("/v1/messages/count_tokens", _count_tokens,
                                          "claude-haiku", "anthropic", False, True),
    "/v1/embeddings": Endpoint("/v1/embeddings", _embeddings, "gpt-4o-mini", "openai", False,
                               False),
}
CASES = [(path, stream) for path, e in ENDPOINTS.items()
         for stream in ((False, True) if e.streams else (False,))]
IDS = [f"{path}{' stream' if stream else ''}" for path, stream in CASES]


def _error(endpoint: Endpoint, status: int) -> type[Exception]:
    sdk = openai if endpoint.sdk == "openai" else anthropic
    return {403: sdk.PermissionDeniedError, 429: sdk.RateLimitError}[status]


def test_every_post_endpoint_of_the_app_is_in_the_table(services):
    posted = {route.path for route in build_app(services).routes
              if isinstance(route, Route) and route.path.startswith("/v1/")
              and "POST" in (route.methods or ())}
    assert posted == set(ENDPOINTS)


@pytest.mark.parametrize(("path", "stream"), CASES, ids=IDS)
def test_every_endpoint_refuses_what_governance_refuses_and_sends_nothing(gw, services, path,
                                                                         stream):
    endpoint = ENDPOINTS[path]
    with pytest.raises(_error(endpoint, 403), match="not on this tenant's allowlist"):
        endpoint.send(gw, "gpt-4.1", "plain", stream)
    (model_refused,) = events(gw, "gateway.model_refused")
    assert (model_refused.details["reason"], model_refused.details["scope_denial"]) == (
        "model_not_allowed", True)
    if endpoint.chat:
        set_settings(gw, tool_rules=[{"tool": "delete_*", "models": []}],
                     image_policy="refuse")
        with pytest.raises(_error(endpoint, 403), match=FORBIDDEN):
            endpoint.send(gw, endpoint.model, "tool", stream)
        refused = events(gw, "gateway.tool_refused")
        assert len(refused) == 1 and refused[0].details["tools"] == [FORBIDDEN]
        # findable as a scope denial, like a model off the allowlist
        assert (refused[0].details["reason"], refused[0].details["scope_denial"]) == (
            "tool_not_allowed", True)
        with pytest.raises(_error(endpoint, 403), match="images"):
            endpoint.send(gw, endpoint.model, "image", stream)
        (image_refused,) = events(gw, "gateway.image_refused")
        assert (image_refused.details["reason"], image_refused.details["scope_denial"]) == (
            "images_not_allowed", False)
    fresh_minute()
    set_settings(gw, requests_per_minute=1)
    # the minute's one request is used already
    GatewayRateLimiter(services.redis).check(gw.tenant_id, tokens=1, requests_per_minute=10**6,
                                             tokens_per_minute=10**9)
    with pytest.raises(_error(endpoint, 429), match="limit of 1 requests per minute"):
        endpoint.send(gw, endpoint.model, "plain", stream)
    # over the limit and off the allowlist: the rate limit's refusal comes first, and no other
    # refusal is audited
    with pytest.raises(_error(endpoint, 429), match="limit of 1 requests per minute"):
        endpoint.send(gw, "gpt-4.1", "plain", stream)
    assert len(events(gw, "gateway.model_refused")) == 1
    assert gw.llm.received == []  # nothing of a refused request left
    set_settings(gw, requests_per_minute=600, image_policy="allow")
    endpoint.send(gw, endpoint.model, "image" if endpoint.chat else "plain", stream)
    assert len(gw.llm.received) == 1  # the same endpoint answers once allowed
    if endpoint.chat:
        assert PNG.encode() in gw.llm.received[0].body


def _limited_call(env: GatewayEnv, path: str, size: int) -> None:
    """A call of ``/v1/responses`` or ``/v1/embeddings`` whose token bound grows with ``size``."""
    with oai(env, max_retries=0) as client:
        if path == "/v1/responses":
            client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=size)
        else:
            client.embeddings.create(model="gpt-4o-mini", input="x" * size)


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/embeddings"])
def test_requests_per_minute_answer_429_with_retry_after(gw, path):
    fresh_minute()
    set_settings(gw, requests_per_minute=2)
    _limited_call(gw, path, 10)
    _limited_call(gw, path, 10)
    with pytest.raises(openai.RateLimitError) as limited:
        _limited_call(gw, path, 10)
    assert "limit of 2 requests per minute is reached" in limited.value.message
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 61
    assert len(gw.llm.received) == 2


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/embeddings"])
def test_token_limits_answer_429_and_an_impossible_request_400(gw, path):
    fresh_minute()
    # a call of size 10 is bounded by at most 28 tokens ("hi" and 10 to write; ten characters to
    # embed; framing): one fits in 50 a minute, two do not
    set_settings(gw, requests_per_minute=100, tokens_per_minute=50)
    _limited_call(gw, path, 10)
    with pytest.raises(openai.RateLimitError) as limited:
        _limited_call(gw, path, 10)
    assert "50 tokens per minute" in limited.value.message
    with pytest.raises(openai.BadRequestError) as never:  # could never fit in a minute
        _limited_call(gw, path, 500)
    assert "more than the tenant's limit of 50 tokens per minute" in never.value.message
    assert len(gw.llm.received) == 1


def test_on_the_event_loop_the_count_is_sent_before_it_is_judged(services):
    """The rate limit's count leaves for Redis when it is begun, and is awaited only when it
    is judged: the Redis round trip overlaps the admission's other steps. Here the loop is held
    (a blocking wait) between the two, so the count can only have reached Redis if it was
    written before ``begin`` returned."""
    limiter = GatewayRateLimiter(services.redis)
    tenant_id, now = 900_000 + secrets.randbelow(99_999), time.time()
    key = f"magistrate:rl:gw:{tenant_id}:{int(now // 60)}:req"
    seen: list[int | None] = []

    def admit() -> Counted:
        counted = limiter.begin(tenant_id, tokens=5, now=now)
        deadline = time.monotonic() + 5
        while services.redis.get(key) is None and time.monotonic() < deadline:
            time.sleep(0.001)  # blocks the loop: the count is not sent from here on
        value = services.redis.get(key)
        seen.append(None if value is None else int(value))
        return counted()

    async def on_the_loop() -> Counted:
        try:
            return await bridge.run(admit)
        finally:
            await limiter.aclose()

    counted = asyncio.run(on_the_loop())
    assert seen == [1]
    assert (counted.requests, counted.tokens) == (1, 5)
    assert limiter.degraded is False
