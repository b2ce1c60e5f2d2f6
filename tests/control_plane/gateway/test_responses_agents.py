"""The OpenAI Agents SDK (``openai-agents``), unchanged but for its client's base URL and key,
runs a tool-using task through the gateway's ``/v1/responses`` against the fake provider, with
personal data in the user's prompt and in the tool's result: the tool gets the original
values, the agent's final answer has them back, and no provider wire sees them."""

from __future__ import annotations

import asyncio

import pytest
from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool
from openai import AsyncOpenAI

from tests.control_plane.gateway.conftest import calls
from tests.control_plane.gateway.test_gateway_api import PII, PROMPT, assert_no_pii, wire

RECORD = f"{PII['person']}, {PII['email']}, card {PII['card']}: account in good standing."


def run_agent(gw, model: str, *, stream: bool = False) -> str:
    """The agent's task, run to its end; its client closed when it ends."""

    async def run() -> str:
        async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=gw.key) as client:
            agent = Agent(name="Support", instructions="You are terse.",
                          tools=[lookup_customer],
                          model=OpenAIResponsesModel(model=model, openai_client=client))
            config = RunConfig(tracing_disabled=True)
            if not stream:
                return str((await Runner.run(agent, PROMPT, run_config=config)).final_output)
            streamed = Runner.run_streamed(agent, PROMPT, run_config=config)
            async for _ in streamed.stream_events():
                pass
            return str(streamed.final_output)

    return asyncio.run(run())


ASKED: list[str] = []


@function_tool
def lookup_customer(query: str) -> str:
    """Find a customer's record by what the user said about them."""
    ASKED.append(query)
    return RECORD


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_agents_sdk_tool_loop_goes_through_the_responses_api(gw, model, stream):
    ASKED.clear()
    assert run_agent(gw, model, stream=stream) == f"Tool said: {RECORD}"
    assert ASKED == [PROMPT]  # the tool received the original values
    assert_no_pii(wire(gw))
    assert [(r.status, r.stream) for r in calls(gw)] == [("ok", stream), ("ok", stream)]
