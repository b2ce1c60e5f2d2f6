"""Every refusal the gateway audits appears in the console's table of calls with its reason:
the table reads the gateway's own list (``REFUSAL_KINDS``), so a new refusal kind cannot be
left out of it. Each kind is driven through the gateway with the official OpenAI SDK."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from control_plane.console import calls
from control_plane.models import User
from tenant_runtime.gateway.service import REFUSAL_KINDS, GatewayEvents
from tenant_runtime.observability import metrics
from tests.control_plane.gateway.test_agent_traffic import LOOKUP, PNG
from tests.control_plane.gateway.test_gateway_api import oai, set_settings
from tests.factories import sign_in

# the words an event type of a refusal carries (an allowlist miss, a rule, a cap)
REFUSAL_WORDS = re.compile(r"REFUSED|DENIED|CAP_REACHED|BLOCKED|REJECTED")


def test_the_calls_table_knows_every_refusal_event_the_gateway_has():
    events = {value for name, value in vars(GatewayEvents).items()
              if name.isupper() and REFUSAL_WORDS.search(name)}
    assert events == {kind.event for kind in REFUSAL_KINDS.values()}
    assert set(calls.REFUSALS) == events
    assert all(reason and reason == reason.strip() for reason in calls.REFUSALS.values())
    assert {kind.metric_reason for kind in REFUSAL_KINDS.values()} <= metrics.REFUSAL_REASONS


def test_each_refusal_kind_shows_in_the_calls_table_with_its_reason(gw, db):
    hi = [{"role": "user", "content": "hi"}]
    image = [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]
    set_settings(gw, tool_rules=[{"tool": "lookup_*", "models": []}], image_policy="refuse")
    with oai(gw, max_retries=0) as sdk:
        with pytest.raises(openai.PermissionDeniedError, match="allowlist"):
            sdk.chat.completions.create(model="gpt-4.1", messages=hi, max_tokens=20)
        with pytest.raises(openai.PermissionDeniedError, match="lookup_customer"):
            sdk.chat.completions.create(model="gpt-4o-mini", messages=hi, tools=[LOOKUP],
                                        max_tokens=20)
        with pytest.raises(openai.PermissionDeniedError, match="images"):
            sdk.chat.completions.create(model="gpt-4o-mini", messages=image, max_tokens=20)
        set_settings(gw, monthly_cap_micros=1)
        with pytest.raises(openai.APIStatusError) as capped:
            sdk.chat.completions.create(model="gpt-4o-mini", messages=hi, max_tokens=20)
        assert capped.value.status_code == 402
    assert gw.llm.received == []  # nothing refused reached the provider

    with db() as s:
        email = s.get(User, gw.owner_id).email
    with httpx.Client(base_url=gw.url) as web:
        sign_in(web, email)  # type: ignore[arg-type]  # the same calls as a TestClient's
        page = web.get(f"/tenants/{gw.tenant_id}/gateway/calls?status=refused")
        csv_text = web.get(f"/tenants/{gw.tenant_id}/gateway/calls.csv?status=refused").text
    assert page.status_code == 200
    rows = re.findall(r'<tr data-status="refused">(.*?)</tr>', page.text, re.S)
    assert len(rows) == len(REFUSAL_KINDS)
    shown = " ".join(rows).replace("&#39;", "'")
    for kind in REFUSAL_KINDS.values():
        assert kind.reason in shown, kind.event
    assert csv_text.count(",refused,") == len(REFUSAL_KINDS)
    for kind in REFUSAL_KINDS.values():
        assert kind.reason in csv_text, kind.event
