"""Anthropic-shaped images through ``/v1/messages`` with the official ``anthropic`` SDK: base64
and URL sources and an image inside a tool result reach Anthropic as Anthropic blocks and an
OpenAI-shaped route as ``image_url`` parts (the fake's recorded bodies say so), and under the
``aggressive`` profile, with no image policy set, images are refused before anything is sent."""

from __future__ import annotations

import anthropic
import pytest

from tests.control_plane.gateway.test_agent_traffic import PNG, events
from tests.control_plane.gateway.test_gateway_api import ant, set_settings

IMAGE_URL = "https://images.example.com/cat.png"
BASE64 = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
BY_URL = {"type": "image", "source": {"type": "url", "url": IMAGE_URL}}
SCREENSHOT = {"name": "screenshot", "description": "Take a screenshot.",
              "input_schema": {"type": "object", "properties": {}}}
IMAGES = [{"role": "user", "content": [{"type": "text", "text": "Compare these."}, BASE64,
                                       BY_URL]}]
TOOL_RESULT = [
    {"role": "user", "content": "Take a screenshot."},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                       "name": "screenshot", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                  "content": [{"type": "text", "text": "Here it is."},
                                              BASE64]}]}]


def test_images_reach_anthropic_as_anthropic_blocks(gw):
    with ant(gw) as client:
        client.messages.create(model="claude-haiku", max_tokens=50, messages=IMAGES)
        sent = gw.llm.received[-1].json()
        assert sent["messages"][0]["content"][1:] == [BASE64, BY_URL]
        client.messages.create(model="claude-haiku", max_tokens=50, messages=TOOL_RESULT,
                               tools=[SCREENSHOT])
        sent = gw.llm.received[-1].json()
    assert sent["messages"][2]["content"] == [{
        "type": "tool_result", "tool_use_id": "toolu_1",
        "content": [{"type": "text", "text": "Here it is."}, BASE64]}]


def test_anthropic_shaped_images_reach_an_openai_route_as_image_url_parts(gw):
    data_url = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    with ant(gw) as client:
        client.messages.create(model="gpt-4o-mini", max_tokens=50, messages=IMAGES)
        sent = gw.llm.received[-1].json()
        assert sent["messages"][-1] == {"role": "user", "content": [
            {"type": "text", "text": "Compare these."}, data_url,
            {"type": "image_url", "image_url": {"url": IMAGE_URL}}]}
        client.messages.create(model="gpt-4o-mini", max_tokens=50, messages=TOOL_RESULT,
                               tools=[SCREENSHOT])
        sent = gw.llm.received[-1].json()
    # a tool message carries text only: the result's image follows in a user message
    assert sent["messages"][-2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Here it is."},
        {"role": "user", "content": [data_url]}]


@pytest.mark.parametrize("model", ["claude-haiku", "gpt-4o-mini"])
def test_the_aggressive_profile_refuses_images_by_default(gw, model):
    set_settings(gw, redaction_profile="aggressive")  # no image policy set
    with ant(gw) as client:
        for messages, extra in ((IMAGES, {}), (TOOL_RESULT, {"tools": [SCREENSHOT]})):
            with pytest.raises(anthropic.PermissionDeniedError, match="images"):
                client.messages.create(model=model, max_tokens=50, messages=messages,
                                       **extra)
        assert gw.llm.received == []
        assert len(events(gw, "gateway.image_refused")) == 2
        set_settings(gw, image_policy="allow")  # the tenant's choice wins over the default
        client.messages.create(model=model, max_tokens=50, messages=IMAGES)
    assert PNG.encode() in gw.llm.received[-1].body
