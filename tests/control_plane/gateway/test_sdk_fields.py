"""Which fields of the official SDKs the gateway takes (docs/gateway.md): the ones
that may carry personal data and do not change the answer are accepted and never reach the
provider; the ones that would change the answer and are not supported are refused with 422,
which the SDKs raise as ``UnprocessableEntityError`` with our sentence, and never retry."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.control_plane.gateway.conftest import GatewayEnv

MARKER = "jane.doe.4821"  # in every accepted, never-forwarded field


def oai(env: GatewayEnv) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{env.url}/v1", api_key=env.key)


def ant(env: GatewayEnv) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=env.url, api_key=env.key)


def test_fields_that_carry_personal_data_are_accepted_and_not_forwarded(gw):
    with oai(gw) as client:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", max_completion_tokens=50, temperature=0.2, top_p=0.9,
            stop=["zzz"], n=1, user=MARKER, safety_identifier=MARKER,
            metadata={"ticket": MARKER}, prompt_cache_key=MARKER, store=False,
            messages=[{"role": "developer", "content": "Be terse."},
                      {"role": "user", "content": "Hi there", "name": MARKER}])
        assert answer.choices[0].message.content == "You said: Hi there"
    with ant(gw) as client:
        message = client.messages.create(
            model="claude-haiku", max_tokens=50, metadata={"user_id": MARKER},
            system=[{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": "Hi there"}])
        assert message.content[0].text == "You said: Hi there"
    assert len(gw.llm.received) == 2
    for request in gw.llm.received:
        assert MARKER.encode() not in request.body and b"cache_control" not in request.body
        assert not {"user", "safety_identifier", "metadata", "name", "prompt_cache_key",
                    "store"} & set(request.json())


def test_store_true_is_refused_with_a_sentence(gw):
    with oai(gw) as client, pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", store=True,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.body["param"] == "store"
    assert "does not ask providers to keep completions" in refused.value.message
    assert gw.llm.received == []


@pytest.mark.parametrize(("field", "value"), [
    ("audio", {"voice": "alloy", "format": "wav"}), ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}), ("web_search_options", {}),
    ("verbosity", "low"),
])
def test_openai_fields_that_would_change_the_answer_are_refused_with_422(gw, field, value):
    with oai(gw) as client, pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "Hi"}],
                                       **{field: value})
    assert refused.value.status_code == 422
    assert refused.value.body["param"] == field
    assert f"Unrecognized request argument supplied: {field}" in refused.value.message
    assert gw.llm.received == []


@pytest.mark.parametrize(("field", "value"), [
    ("mcp_servers", [{"type": "url", "url": "https://x.example", "name": "x"}]),
    ("container", "c1"), ("service_tier", "auto"),
])
def test_anthropic_fields_that_would_change_the_answer_are_refused_with_422(gw, field, value):
    with ant(gw) as client, pytest.raises(anthropic.UnprocessableEntityError) as refused:
        client.messages.create(model="claude-haiku", max_tokens=10,
                               messages=[{"role": "user", "content": "Hi"}],
                               extra_body={field: value})
    assert refused.value.status_code == 422
    assert refused.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": refused.value.body["error"]["message"]}}
    assert field in refused.value.body["error"]["message"]
    assert gw.llm.received == []
