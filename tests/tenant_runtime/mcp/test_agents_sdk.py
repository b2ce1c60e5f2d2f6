"""An agent from the OpenAI Agents SDK (``openai-agents``, unchanged) uses Magistrate's MCP
endpoint as its MCP server (``MCPServerStreamableHttp`` with a tenant API key): its model (the
fake LLM provider of tests/fakes/llm, scripted) asks for a tool call, the call passes
Magistrate's policy and reaches the real upstream MCP server, and the agent's final answer
carries the upstream's result. A denied tool is not even offered to the model."""

from __future__ import annotations

import asyncio
import json

import pytest
from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from agents.mcp import MCPServerStreamableHttp
from openai import AsyncOpenAI

from tenant_runtime.mcp import service
from tests.fakes.llm import LLMServer, ToolCall
from tests.tenant_runtime.mcp.helpers import calls_of, decide, endpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
set_tracing_disabled(True)  # the Agents SDK would otherwise send traces to OpenAI


def run_agent(llm: LLMServer, url: str, key: str, prompt: str) -> tuple[str, list[str]]:
    async def run() -> tuple[str, list[str]]:
        async with MCPServerStreamableHttp(
                name="magistrate", params={"url": url,
                                           "headers": {"Authorization": f"Bearer {key}"},
                                           "timeout": 30},
                client_session_timeout_seconds=30) as tools, \
                AsyncOpenAI(base_url=f"{llm.base_url}/v1", api_key=llm.api_key,
                            max_retries=0) as client:
            offered = sorted(t.name for t in await tools.list_tools())
            agent = Agent(name="desk", instructions="You help the customer desk.",
                          mcp_servers=[tools],
                          model=OpenAIChatCompletionsModel(model="gpt-4o-mini",
                                                           openai_client=client))
            return str((await Runner.run(agent, prompt)).final_output), offered

    return asyncio.run(run())


def test_an_openai_agents_sdk_agent_calls_an_upstream_tool_through_magistrate(
        team, synced, base, key):
    decide(team, "search", "allowed")  # read-only: goes through in the agent's shadow phase
    with LLMServer() as llm:
        llm.script(ToolCall("crm__search", json.dumps({"query": "acme invoices"})))
        final, offered = run_agent(llm, endpoint(base, team), key,
                                   "Find the invoices of Acme.")
        sent = [json.loads(r.body) for r in llm.received
                if r.path.endswith("/chat/completions")]
    assert offered == ["crm__search"]  # denied tools are not offered to the model
    assert synced.called("search") == [{"query": "acme invoices"}]
    assert "results for acme invoices" in final
    # the model was offered the governed tool under its prefixed name
    assert [t["function"]["name"] for t in sent[0]["tools"]] == ["crm__search"]
    [event] = calls_of(team)
    assert event["outcome"] == "forwarded" and event["tool"] == "search"
    with team.system().session() as s:
        [row] = service.list_calls(s).rows
    assert row[0].outcome == "forwarded"


def test_an_agents_sdk_call_held_back_in_shadow_never_reaches_the_upstream(
        team, synced, base, key):
    decide(team, "send_email", "allowed")  # side-effecting: held back in shadow
    with LLMServer() as llm:
        llm.script(ToolCall("crm__send_email", json.dumps({"to": "a@example.com",
                                                           "body": "refund"})))
        final, _ = run_agent(llm, endpoint(base, team), key, "Tell the customer.")
    assert synced.calls == []
    assert "shadow" in final
    assert [c["outcome"] for c in calls_of(team)] == ["shadowed"]
