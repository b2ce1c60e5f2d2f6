"""Sampling fields are sent to a provider that takes them and refused (422 naming the field and
the provider) where it cannot, never dropped: Anthropic's API version 2026-10-21 (the one the
``anthropic`` 2.x SDK speaks) answers 400 to ``temperature``, ``top_p`` and ``top_k``; Bedrock
takes ``top_k`` for Anthropic's models as an additional model request field."""

from __future__ import annotations

import anthropic
import openai
import pytest
from sqlalchemy import select

from tenant_runtime.gateway import admin
from tenant_runtime.models import GatewayRoute
from tests.control_plane.gateway.conftest import GatewayEnv
from tests.control_plane.gateway.test_agent_traffic import PNG
from tests.control_plane.gateway.test_gateway_api import ant, oai

HI = [{"role": "user", "content": "hi"}]


def add_bedrock_claude(env: GatewayEnv) -> None:
    with env.ctx.session() as s, s.begin():
        nova = s.scalars(select(GatewayRoute).where(GatewayRoute.model_name == "nova-lite")).one()
        admin.add_route(s, env.ctx, admin.RouteInput(
            model_name="claude-bedrock", provider="bedrock",
            provider_model="us.anthropic.claude-haiku-4-5-20251001-v1:0",
            endpoint=env.llm.base_url, region="us-east-1", credential_id=nova.credential_id,
            timeout_seconds=1.5, allowed=True))


@pytest.mark.parametrize(("field", "value"), [("temperature", 0.2), ("top_p", 0.9)])
def test_temperature_and_top_p_are_refused_towards_anthropic_and_sent_elsewhere(gw, field,
                                                                              value):
    with oai(gw) as client:
        with pytest.raises(openai.UnprocessableEntityError,
                           match=f"anthropic, which cannot take {field}"):
            client.chat.completions.create(model="claude-haiku", max_tokens=20, messages=HI,
                                           **{field: value})
        with pytest.raises(openai.UnprocessableEntityError,
                           match=f"anthropic, which cannot take {field}"):
            client.responses.create(model="claude-haiku", max_output_tokens=20, input="hi",
                                    **{field: value})
    with ant(gw) as client, pytest.raises(anthropic.UnprocessableEntityError,
                                          match=f"anthropic, which cannot take {field}"):
        client.messages.create(model="claude-haiku", max_tokens=20, messages=HI,
                               extra_body={field: value})
    assert gw.llm.received == []
    with ant(gw) as client:  # the same field to providers that take it: on the wire
        client.messages.create(model="gpt-4o-mini", max_tokens=20, messages=HI,
                               extra_body={field: value})
        assert gw.llm.received[-1].json()[field] == value
        client.messages.create(model="nova-lite", max_tokens=20, messages=HI,
                               extra_body={field: value})
        bedrock_name = {"temperature": "temperature", "top_p": "topP"}[field]
        assert gw.llm.received[-1].json()["inferenceConfig"][bedrock_name] == value


def test_top_k_goes_where_it_is_taken_and_is_refused_naming_the_provider_elsewhere(gw):
    add_bedrock_claude(gw)
    with ant(gw) as client:
        for model, provider in (("claude-haiku", "anthropic"), ("gpt-4o-mini", "openai"),
                                ("nova-lite", "bedrock")):
            with pytest.raises(anthropic.UnprocessableEntityError,
                               match=f"{provider}, which cannot take top_k"):
                client.messages.create(model=model, max_tokens=20, messages=HI,
                                       extra_body={"top_k": 5})
        assert gw.llm.received == []
        answer = client.messages.create(model="claude-bedrock", max_tokens=20, messages=HI,
                                        extra_body={"top_k": 5, "temperature": 0.3})
        assert answer.content[0].text == "You said: hi"
        sent = gw.llm.received[-1].json()
        assert sent["additionalModelRequestFields"] == {"top_k": 5}
        assert sent["inferenceConfig"]["temperature"] == 0.3
        client.messages.create(model="llama-onprem", max_tokens=20, messages=HI,
                               extra_body={"top_k": 5})
        assert gw.llm.received[-1].json()["top_k"] == 5


def test_an_image_detail_only_openai_takes_is_refused_elsewhere_naming_it(gw):
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}",
                                                "detail": "high"}}
    content = [{"type": "text", "text": "What is this?"}, image]
    with oai(gw) as client:
        for model, provider in (("claude-haiku", "anthropic"), ("nova-lite", "bedrock")):
            with pytest.raises(openai.UnprocessableEntityError,
                               match=f"{provider}, which cannot take image_url.detail"):
                client.chat.completions.create(model=model, max_tokens=20,
                                               messages=[{"role": "user", "content": content}])
        assert gw.llm.received == []
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=20,
                                       messages=[{"role": "user", "content": content}])
        assert gw.llm.received[-1].json()["messages"][0]["content"][1] == image
        auto = [content[0], {"type": "image_url", "image_url": {
            "url": f"data:image/png;base64,{PNG}", "detail": "auto"}}]
        client.chat.completions.create(model="claude-haiku", max_tokens=20,
                                       messages=[{"role": "user", "content": auto}])
    assert gw.llm.received[-1].json()["messages"][0]["content"][1]["type"] == "image"
