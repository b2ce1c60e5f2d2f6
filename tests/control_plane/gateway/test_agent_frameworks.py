"""Agent frameworks from PyPI, unchanged but for base URL and key, run full tool loops through
the gateway: LangChain (``langchain-openai``, ``langchain-anthropic``) and the OpenAI Agents SDK
(``openai-agents``).

Every loop is the same three model calls over two tools, with personal data in the user's
prompt and in a tool's result:

1. the user asks to look up ``EMAIL`` / ``PHONE`` and mail the invoice; the model (scripted)
   calls ``lookup_customer`` with the user's text, written with the placeholders it was shown;
2. the tool answers with the customer's billing address ``BILLING`` and mobile ``MOBILE``;
   the model (scripted) calls ``send_email`` with the placeholders it was shown for them;
3. the tool answers ``Sent to BILLING``; the fake's own rule for a tool-results turn answers
   ``Tool said: Sent to BILLING``.

The tools must receive the originals, the final answer carries ``BILLING`` restored, the fake
provider's recorded bytes hold none of the four values, and each model call is one
``gateway.call`` audit event counting the tool calls it made."""

from __future__ import annotations

import asyncio
import json

import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI

from tests.control_plane.gateway.conftest import GatewayEnv
from tests.control_plane.gateway.test_agent_traffic import events
from tests.fakes.llm import ToolCall

set_tracing_disabled(True)  # the Agents SDK would otherwise send traces to OpenAI

EMAIL = "ann.obrien@example.com"
PHONE = "415-555-0188"
BILLING = "billing.obrien@example.org"
MOBILE = "650-555-0142"
PII = (EMAIL, PHONE, BILLING, MOBILE)
PROMPT = f"Look up the customer {EMAIL} (phone {PHONE}) and e-mail them their invoice."
LOOKUP_RESULT = f"Customer Ann: billing {BILLING}, mobile {MOBILE}"
SENT_RESULT = f"Sent to {BILLING}"
# The calls the model makes, written with the placeholders it is shown: the prompt's values are
# the first of their kind, the tool result's the second (numbered by first appearance in the
# conversation, which every call resends).
LOOKUP_CALL = ToolCall("lookup_customer", json.dumps(
    {"query": "Look up the customer [EMAIL_1] (phone [PHONE_1]) and e-mail them their invoice."}))
SEND_EMAIL_CALL = ToolCall("send_email", json.dumps(
    {"to": "[EMAIL_2]", "body": "Your invoice. Questions? Call [PHONE_2]."}))
FINAL = f"Tool said: {SENT_RESULT}"


class Toolbox:
    """The two tools' behaviour, recording the arguments each call received."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str]]] = []

    def lookup_customer(self, query: str) -> str:
        self.received.append(("lookup_customer", {"query": query}))
        return LOOKUP_RESULT

    def send_email(self, to: str, body: str) -> str:
        self.received.append(("send_email", {"to": to, "body": body}))
        return f"Sent to {to}"

    def assert_got_the_originals(self) -> None:
        assert self.received == [
            ("lookup_customer", {"query": PROMPT}),
            ("send_email", {"to": BILLING, "body": f"Your invoice. Questions? Call {MOBILE}."}),
        ]


def langchain_tools(box: Toolbox) -> list:
    @tool
    def lookup_customer(query: str) -> str:
        """Find a customer by e-mail or phone."""
        return box.lookup_customer(query)

    @tool
    def send_email(to: str, body: str) -> str:
        """Send an e-mail to a customer."""
        return box.send_email(to, body)

    return [lookup_customer, send_email]


def agents_tools(box: Toolbox) -> list:
    @function_tool
    def lookup_customer(query: str) -> str:
        """Find a customer by e-mail or phone."""
        return box.lookup_customer(query)

    @function_tool
    def send_email(to: str, body: str) -> str:
        """Send an e-mail to a customer."""
        return box.send_email(to, body)

    return [lookup_customer, send_email]


def assert_governed(env: GatewayEnv, *, model_calls: int = 3) -> None:
    sent = b"".join(r.body for r in env.llm.received).decode("utf-8", "replace")
    for value in PII:
        assert value not in sent, f"{value!r} reached the provider"
    assert len(env.llm.received) == model_calls
    calls = events(env, "gateway.call")
    assert len(calls) == model_calls
    assert [e.details.get("tool_calls") for e in calls] == [
        {"lookup_customer": 1}, {"send_email": 1}, None]
    assert all(e.details["outcome"] == "ok" and e.details["tools_offered"] == 2 for e in calls)
    assert [e.details["redactions"].get("EMAIL", 0) > 0 for e in calls] == [True] * 3


def run_langchain_loop(llm, box: Toolbox) -> str:
    """The loop an application writes around ``bind_tools``: call, run the tools asked for,
    send their results, until the model answers in text."""
    tools = {t.name: t for t in langchain_tools(box)}
    bound = llm.bind_tools(list(tools.values()))
    history: list = [HumanMessage(PROMPT)]
    for _ in range(5):
        answer = bound.invoke(history)
        history.append(answer)
        if not answer.tool_calls:
            return answer.text
        for call in answer.tool_calls:
            output = tools[call["name"]].invoke(call["args"])
            history.append(ToolMessage(output, tool_call_id=call["id"]))
    raise AssertionError("the loop did not end")


# -- LangChain ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku", "nova-lite"])
def test_langchain_openai_tool_loop(gw, model):
    box = Toolbox()
    gw.llm.script(LOOKUP_CALL, SEND_EMAIL_CALL)
    llm = ChatOpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, model=model, max_tokens=300,
                     max_retries=0)
    answer = run_langchain_loop(llm, box)
    assert answer == FINAL
    box.assert_got_the_originals()
    assert_governed(gw)


@pytest.mark.parametrize("model", ["claude-haiku", "gpt-4o-mini"])
def test_langchain_anthropic_tool_loop(gw, model):
    box = Toolbox()
    gw.llm.script(LOOKUP_CALL, SEND_EMAIL_CALL)
    llm = ChatAnthropic(base_url=gw.url, api_key=gw.key, model=model, max_tokens=300,
                        max_retries=0)
    answer = run_langchain_loop(llm, box)
    assert answer == FINAL
    box.assert_got_the_originals()
    assert_governed(gw)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
def test_langchain_streams_a_tool_call_restored(gw, model):
    gw.llm.chunk_size = 2  # placeholders split across argument fragments
    llm = ChatOpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, model=model, max_tokens=300,
                     max_retries=0, stream_usage=True)
    bound = llm.bind_tools(langchain_tools(Toolbox()))
    chunks = list(bound.stream([HumanMessage(PROMPT)]))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert sum(1 for c in chunks if c.tool_call_chunks) > 2  # the arguments came in pieces
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    assert [(c["name"], c["args"]) for c in whole.tool_calls] == [
        ("lookup_customer", {"query": PROMPT})]
    sent = b"".join(r.body for r in gw.llm.received).decode()
    assert EMAIL not in sent and PHONE not in sent
    [call] = events(gw, "gateway.call")
    assert call.details["tool_calls"] == {"lookup_customer": 1} and call.details["stream"]


# -- OpenAI Agents SDK -------------------------------------------------------------------------

def run_agent(gw: GatewayEnv, box: Toolbox, model_class, model: str, *,
              streamed: bool = False) -> str:
    """``Runner.run`` (or ``run_streamed``) with the SDK's model over an ``AsyncOpenAI`` client
    pointed at the gateway, closed at the end."""

    async def run() -> str:
        async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=gw.key,
                               max_retries=0) as client:
            agent = Agent(name="billing", instructions="You help the billing team.",
                          tools=agents_tools(box),
                          model=model_class(model=model, openai_client=client))
            if not streamed:
                return (await Runner.run(agent, PROMPT)).final_output
            run = Runner.run_streamed(agent, PROMPT)
            async for _ in run.stream_events():
                pass
            return run.final_output

    return asyncio.run(run())


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku", "nova-lite"])
def test_openai_agents_sdk_chat_completions_loop(gw, model):
    box = Toolbox()
    gw.llm.script(LOOKUP_CALL, SEND_EMAIL_CALL)
    assert run_agent(gw, box, OpenAIChatCompletionsModel, model) == FINAL
    box.assert_got_the_originals()
    assert_governed(gw)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
def test_openai_agents_sdk_streamed_run(gw, model):
    gw.llm.chunk_size = 2  # placeholders split across argument fragments
    box = Toolbox()
    gw.llm.script(LOOKUP_CALL, SEND_EMAIL_CALL)
    assert run_agent(gw, box, OpenAIChatCompletionsModel, model, streamed=True) == FINAL
    box.assert_got_the_originals()
    assert_governed(gw)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
def test_openai_agents_sdk_default_responses_model_loop(gw, model):
    box = Toolbox()
    gw.llm.script(LOOKUP_CALL, SEND_EMAIL_CALL)
    assert run_agent(gw, box, OpenAIResponsesModel, model) == FINAL
    box.assert_got_the_originals()
    assert_governed(gw)
