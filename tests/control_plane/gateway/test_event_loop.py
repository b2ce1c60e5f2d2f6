"""The gateway's calls on the web process's event loop (tenant_runtime/bridge.py): calls wait
for their provider together, through every provider's client, streaming or not; the provider
answers only once all of them are waiting (``answer_together``), so a call whose wait blocked
the loop would hold the others back and every one would be answered 503 after 15 s."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import anthropic
import pytest

from tests.control_plane.gateway.conftest import ROUTES, GatewayEnv
from tests.control_plane.gateway.test_gateway_api import PROMPT, ant, chat, oai

TOGETHER = 4


def _ask(gw: GatewayEnv, model: str, stream: bool) -> str:
    with oai(gw, max_retries=0) as client:
        if not stream:
            return chat(client, model).choices[0].message.content or ""
        pieces = chat(client, model, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", sorted(ROUTES))
def test_calls_wait_for_their_provider_together(gw: GatewayEnv, model: str, stream: bool
                                                ) -> None:
    gw.llm.answer_together(TOGETHER)
    with ThreadPoolExecutor(TOGETHER) as pool:
        answers = list(pool.map(lambda _: _ask(gw, model, stream), range(TOGETHER)))
    assert answers == [f"You said: {PROMPT}"] * TOGETHER


def test_anthropic_messages_wait_together_too(gw: GatewayEnv) -> None:
    gw.llm.answer_together(TOGETHER)

    def one(_: int) -> str:
        with ant(gw, max_retries=0) as client:
            message = client.messages.create(
                model="claude-haiku", max_tokens=300,
                messages=[{"role": "user", "content": PROMPT}])
            block = message.content[0]
            assert isinstance(block, anthropic.types.TextBlock)
            return block.text

    with ThreadPoolExecutor(TOGETHER) as pool:
        assert list(pool.map(one, range(TOGETHER))) == [f"You said: {PROMPT}"] * TOGETHER
