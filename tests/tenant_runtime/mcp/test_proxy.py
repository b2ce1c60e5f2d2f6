"""Resources, resource templates and prompts proxied from the upstreams (URIs and names mapped
per upstream), progress relayed, the protocol-version header checked, and the tool-call
history page: the official SDK client at Magistrate's endpoint, in front of a real upstream
(the SDK's MCPServer) that records what reaches it."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError
from sqlalchemy import select
from starlette.testclient import TestClient

from control_plane.web.app import build_app
from tenant_runtime.mcp import service
from tenant_runtime.mcp.models import McpCall
from tenant_runtime.models import AuditEvent
from tests.factories import sign_in
from tests.tenant_runtime.mcp.helpers import (
    call,
    decide,
    endpoint,
    mcp_client,
    register,
    run,
    set_phase,
    text_of,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def events(team, event_type: str) -> list[dict[str, Any]]:
    with team.system().session() as s:
        return [e.details for e in s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == event_type).order_by(AuditEvent.seq))]


def test_resources_are_listed_under_their_upstream_and_read_through_it(team, synced, base,
                                                                       key):
    async def exchange():
        async with mcp_client(endpoint(base, team), key) as session:
            assert session.initialize_result.capabilities.resources is not None
            listed = (await session.list_resources()).resources
            templates = (await session.list_resource_templates()).resource_templates
            read = await session.read_resource("magistrate://crm/crm://customers/readme")
            filled = await session.read_resource("magistrate://crm/crm://customers/42")
            return listed, templates, read, filled

    listed, templates, read, filled = run(exchange)
    assert [(r.uri, r.name) for r in listed] == [
        ("magistrate://crm/crm://customers/readme", "crm__readme")]
    assert [(t.uri_template, t.name) for t in templates] == [
        ("magistrate://crm/crm://customers/{customer_id}", "crm__customer")]
    assert read.contents[0].text == "One record per customer."
    assert filled.contents[0].text == "customer 42: Jane Doe"
    assert synced.called("resource:customer") == [{"customer_id": "42"}]
    [first, second] = events(team, service.McpEvents.RESOURCE_READ)
    assert first["resource"] == "crm://customers/readme" and first["outcome"] == "forwarded"
    assert len(first["result_digest"]) == 64 and len(first["arguments_digest"]) == 64
    assert "Jane Doe" not in json.dumps(events(team, service.McpEvents.RESOURCE_READ))
    # Magistrate's credential went to the upstream, never the client's key
    assert not any(key in json.dumps(h) for h in synced.headers)


def test_two_upstreams_offering_the_same_uri_do_not_collide(team, upstream, base, key):
    register(team, upstream, name="crm")
    register(team, upstream, name="crm-eu")

    async def exchange():
        async with mcp_client(endpoint(base, team), key) as session:
            return sorted(r.uri for r in (await session.list_resources()).resources), \
                sorted(p.name for p in (await session.list_prompts()).prompts)

    uris, prompts = run(exchange)
    assert uris == ["magistrate://crm-eu/crm://customers/readme",
                    "magistrate://crm/crm://customers/readme"]
    assert prompts == ["crm-eu__summarize", "crm__summarize"]


def test_a_prompt_to_an_external_upstream_goes_redacted_and_comes_back_restored(
        team, upstream, base, key):
    register(team, upstream, redaction="external")

    async def exchange():
        async with mcp_client(endpoint(base, team), key) as session:
            [prompt] = (await session.list_prompts()).prompts
            got = await session.get_prompt(prompt.name, {"customer": "jane.doe@example.com"})
            return prompt, got

    prompt, got = run(exchange)
    assert prompt.name == "crm__summarize" and prompt.arguments[0].name == "customer"
    assert upstream.called("prompt:summarize") == [{"customer": "[EMAIL_1]"}]
    assert got.messages[0].content.text == "Summarize the records of jane.doe@example.com."
    [event] = events(team, service.McpEvents.PROMPT_GOT)
    assert event["prompt"] == "summarize" and event["redacted"] == 1
    assert "jane.doe" not in json.dumps(event)


def test_unknown_resources_and_an_agent_that_is_off_never_reach_the_upstream(
        team, synced, base, key):
    async def read(uri: str) -> str:
        async with mcp_client(endpoint(base, team), key) as session:
            with pytest.raises(MCPError) as caught:
                await session.read_resource(uri)
            return caught.value.message

    assert "no resource" in run(read, "nope://customers/readme")  # no upstream offers it
    assert "no resource" in run(read, "magistrate://nope/crm://customers/readme")
    set_phase(team, "off")
    assert "is off" in run(read, "magistrate://crm/crm://customers/readme")
    assert synced.called("resource:readme") == []
    assert [e["outcome"] for e in events(team, service.McpEvents.RESOURCE_READ)] == [
        "unknown_tool", "unknown_tool", "agent_off"]


def test_progress_of_an_upstream_tool_reaches_the_agent(team, synced, base, key):
    decide(team, "export", "allowed")
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async def exchange() -> types.CallToolResult:
        async with mcp_client(endpoint(base, team), key) as session:
            return await session.call_tool("crm__export", {}, progress_callback=on_progress)

    result = run(exchange)
    assert text_of(result) == "exported"
    assert seen == [(1, 3, "part 1 of 3"), (2, 3, "part 2 of 3"), (3, 3, "part 3 of 3")]


def test_an_unknown_protocol_version_is_answered_400(team, base, key):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Authorization": f"Bearer {key}",
               "Accept": "application/json, text/event-stream"}
    bad = httpx2.post(endpoint(base, team), json=body,
                      headers={**headers, "MCP-Protocol-Version": "1999-01-01"})
    assert bad.status_code == 400 and "2025-06-18" in bad.json()["error"]
    initialize = {"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "probe", "version": "1"}}}
    good = httpx2.post(endpoint(base, team), json=initialize,
                       headers={**headers, "MCP-Protocol-Version": "2025-06-18"})
    assert good.status_code == 200, good.text
    assert good.headers["mcp-session-id"]


def test_the_history_lists_calls_per_agent_a_page_at_a_time(services, team, synced, base,
                                                            key):
    decide(team, "search", "allowed")
    for n in range(3):
        run(call, endpoint(base, team), key, "crm__search", {"query": f"secret {n}"})
    with team.system().session() as s:
        first = service.list_calls(s, limit=2)
        assert [c.outcome for c, _ in first.rows] == ["forwarded", "forwarded"]
        assert first.next_before_id is not None
        rest = service.list_calls(s, limit=2, before_id=first.next_before_id)
        assert len(rest.rows) == 1 and rest.next_before_id is None
        agent_id = first.rows[0][0].agent_id
        assert len(service.list_calls(s, agent_id=agent_id).rows) == 3
        assert service.list_calls(s, agent_id=agent_id + 1000).rows == []
        [client] = service.connected_clients(s)
        assert client.calls_24h == 3 and client.agent_id == agent_id
        assert "secret" not in json.dumps([c.arguments_digest for c in s.scalars(
            select(McpCall))])
    web = TestClient(build_app(services), base_url="http://testserver")
    sign_in(web, team.users["viewer"].email)  # Viewers do not see the tools area
    assert web.get(f"/tenants/{team.tenant_id}/mcp/calls").status_code == 403
    web = TestClient(build_app(services), base_url="http://testserver")
    sign_in(web, team.users["compliance"].email)
    page = web.get(f"/tenants/{team.tenant_id}/mcp/calls?agent={agent_id}")
    assert page.status_code == 200
    assert page.text.count("<code>search</code>") == 3 and "desk-agent" in page.text
    assert "secret" not in page.text
    bad = web.get(f"/tenants/{team.tenant_id}/mcp/calls?before_id=x")
    assert bad.status_code == 422 and "before_id" in bad.text



def test_completions_come_from_the_upstream_that_offers_the_prompt_or_template(
        team, upstream, base, key):
    register(team, upstream, redaction="external")
    url = endpoint(base, team)

    async def exchange():
        async with mcp_client(url, key) as session:
            assert session.initialize_result.capabilities.completions is not None
            full = await session.complete(types.PromptReference(name="crm__summarize"),
                                          {"name": "customer", "value": "Ja"})
            bare = await session.complete(types.PromptReference(name="summarize"),
                                          {"name": "customer", "value": "J"})
            template = await session.complete(
                types.ResourceTemplateReference(uri="magistrate://crm/crm://customers/{customer_id}"),
                {"name": "customer_id", "value": "4"})
            typed = await session.complete(types.PromptReference(name="summarize"),
                                           {"name": "customer", "value": "jane@example.com"})
            return full, bare, template, typed

    full, bare, template, typed = run(exchange)
    assert full.completion.values == ["Jane Doe", "Jane Roe"]
    assert bare.completion.values == ["Jane Doe", "Jane Roe", "John Smith"]
    assert template.completion.values == ["41", "42"]
    assert typed.completion.values == []
    # the external upstream got what was typed redacted
    assert upstream.called("completion")[-1] == {"customer": "[EMAIL_1]"}
    recorded = events(team, service.McpEvents.COMPLETION_ASKED)
    assert [(e["ref"], e["outcome"]) for e in recorded] == [
        ("summarize", "forwarded"), ("summarize", "forwarded"),
        ("crm://customers/{customer_id}", "forwarded"), ("summarize", "forwarded")]
    assert "jane@example.com" not in json.dumps(recorded)
    set_phase(team, "off")

    async def refused() -> str:
        async with mcp_client(url, key) as session:
            with pytest.raises(MCPError) as caught:
                await session.complete(types.PromptReference(name="summarize"),
                                       {"name": "customer", "value": "J"})
            return caught.value.message

    assert "is off" in run(refused)
    assert len(upstream.called("completion")) == 4
    with team.system().session() as s:
        kinds = [c.kind for c in s.scalars(select(McpCall).order_by(McpCall.id))]
    assert kinds == ["completion"] * 5
