"""The worst-case reservation counts what a call may cost beyond its text (docs/gateway.md,
"Spend cap and prices"): tool definitions as prompt text, each image as 2,500 tokens and ``n``
answers as ``n`` times ``max_tokens``; a call that fits without them is refused with 402 when
they push it over. Read from the call's row (``reserved_micros``), at a price of one micro-dollar
a token, so the reservation is the token bound itself."""

from __future__ import annotations

import json

import openai
import pytest

from tenant_runtime.gateway import admin
from tenant_runtime.gateway.pricing import IMAGE_TOKEN_BOUND
from tests.control_plane.gateway.conftest import GatewayEnv, calls
from tests.control_plane.gateway.test_agent_traffic import PNG
from tests.control_plane.gateway.test_gateway_api import oai, set_settings

TOOLS = [{"type": "function", "function": {
    "name": f"tool_{i}", "description": "Looks something up. " * 20,
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}
    for i in range(2)]
IMAGE = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
TEXT = {"type": "text", "text": "hi"}


def one_micro_a_token(env: GatewayEnv) -> None:
    with env.ctx.session() as s, s.begin():
        admin.set_price(s, env.ctx, "gpt-4o-mini", input_usd_per_mtok=1,
                        output_usd_per_mtok=1)


def reserved(env: GatewayEnv, **call) -> int:
    with oai(env) as client:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=100, **call)
    return calls(env)[-1].reserved_micros


def tool_tokens(tool: dict) -> int:
    """A tool definition's bound, as pricing.request_token_bound counts it: its JSON's bytes
    plus eight tokens of framing."""
    f = tool["function"]
    return len(json.dumps([f["name"], f["description"], f["parameters"]]).encode()) + 8


def test_the_reservation_grows_with_tools_images_and_n(gw):
    one_micro_a_token(gw)
    plain = reserved(gw, messages=[{"role": "user", "content": [TEXT]}])
    assert plain == 2 + 8 + 8 + 100  # "hi", its framing, the request's, max_tokens
    with_tools = reserved(gw, messages=[{"role": "user", "content": [TEXT]}], tools=TOOLS)
    assert with_tools - plain == sum(tool_tokens(t) for t in TOOLS)
    one_image = reserved(gw, messages=[{"role": "user", "content": [TEXT, IMAGE]}])
    two_images = reserved(gw, messages=[{"role": "user", "content": [TEXT, IMAGE, IMAGE]}])
    assert (one_image - plain, two_images - plain) == (IMAGE_TOKEN_BOUND, 2 * IMAGE_TOKEN_BOUND)
    three = reserved(gw, messages=[{"role": "user", "content": [TEXT]}], n=3)
    assert three - plain == 2 * 100
    assert [c.status for c in calls(gw)] == ["ok"] * 5  # each settled to its real cost


@pytest.mark.parametrize("extra", [
    {"tools": TOOLS}, {"messages": [{"role": "user", "content": [TEXT, IMAGE]}]}, {"n": 8}],
    ids=["tools", "image", "n"])
def test_what_pushes_the_worst_case_over_the_cap_is_refused_with_402(gw, extra):
    one_micro_a_token(gw)
    set_settings(gw, monthly_cap_micros=700)  # the plain call's 118 fits, with room to spare
    call = {"messages": [{"role": "user", "content": [TEXT]}], **extra}
    with oai(gw) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="gpt-4o-mini", max_tokens=100, **call)
        assert refused.value.status_code == 402
        assert "worst case" in refused.value.message
        assert gw.llm.received == []
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=100,
                                       messages=[{"role": "user", "content": [TEXT]}])
    assert [c.reserved_micros for c in calls(gw)] == [118]
