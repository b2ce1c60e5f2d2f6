"""Prices per model, in micro-dollars (millionths of a dollar) per million tokens, and the cost
of a call. A tenant's own price (``gateway_prices``) wins over the built-in default; a model
with neither is charged at ``UNKNOWN_MODEL_PRICE``, deliberately high, so an unpriced model
cannot run up spend the cap does not see."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenant_runtime.gateway.content import (
    Document,
    Image,
    RedactedThinking,
    Text,
    Thinking,
    ToolCall,
    ToolResult,
)
from tenant_runtime.models import GatewayPrice


@dataclass(frozen=True)
class Price:
    input_micros_per_mtok: int
    output_micros_per_mtok: int
    source: str = "default"  # "default", "tenant" or "unknown model"

    def cost_micros(self, tokens_in: int, tokens_out: int) -> int:
        """Rounded up, so many small calls cannot add up to less than they cost."""
        total = tokens_in * self.input_micros_per_mtok + tokens_out * self.output_micros_per_mtok
        return -(-total // 1_000_000)


def _usd(input_per_mtok: float, output_per_mtok: float) -> Price:
    return Price(round(input_per_mtok * 1_000_000), round(output_per_mtok * 1_000_000))


# List prices in US dollars per million tokens (input, output), November 2026.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": _usd(2.50, 10.00),
    "gpt-4o-mini": _usd(0.15, 0.60),
    "gpt-4.1": _usd(2.00, 8.00),
    "gpt-4.1-mini": _usd(0.40, 1.60),
    "gpt-4.1-nano": _usd(0.10, 0.40),
    "gpt-5": _usd(1.25, 10.00),
    "gpt-5-mini": _usd(0.25, 2.00),
    "o3": _usd(2.00, 8.00),
    "o4-mini": _usd(1.10, 4.40),
    "claude-opus-4-1": _usd(15.00, 75.00),
    "claude-sonnet-4-5": _usd(3.00, 15.00),
    "claude-sonnet-4": _usd(3.00, 15.00),
    "claude-haiku-4-5": _usd(1.00, 5.00),
    "claude-3-5-haiku": _usd(0.80, 4.00),
    "anthropic.claude-sonnet-4-5": _usd(3.00, 15.00),
    "anthropic.claude-haiku-4-5": _usd(1.00, 5.00),
    "amazon.nova-pro-v1:0": _usd(0.80, 3.20),
    "amazon.nova-lite-v1:0": _usd(0.06, 0.24),
    "meta.llama3-3-70b-instruct-v1:0": _usd(0.72, 0.72),
}
UNKNOWN_MODEL_PRICE = Price(30_000_000, 120_000_000, source="unknown model")


def default_price(provider_model: str) -> Price:
    """The built-in price of a model id; dated or regional variants (``gpt-4o-2024-08-06``,
    ``us.anthropic.claude-sonnet-4-5-20250929-v1:0``) take their family's price."""
    name = provider_model.strip().lower()
    for prefix in ("us.", "eu.", "apac.", "global."):
        name = name.removeprefix(prefix)
    best = max((known for known in DEFAULT_PRICES if name == known or name.startswith(known + "-")
                or name.startswith(known + ":")), key=len, default=None)
    return DEFAULT_PRICES[best] if best else UNKNOWN_MODEL_PRICE


def price_for(s: Session, provider_model: str) -> Price:
    row = s.get(GatewayPrice, provider_model)
    if row is not None:
        return Price(row.input_micros_per_mtok, row.output_micros_per_mtok, source="tenant")
    return default_price(provider_model)


def tenant_prices(s: Session) -> dict[str, Price]:
    return {row.provider_model: Price(row.input_micros_per_mtok, row.output_micros_per_mtok,
                                      source="tenant")
            for row in s.scalars(select(GatewayPrice).order_by(GatewayPrice.provider_model))}


def estimate_tokens(text_length: int) -> int:
    """A rough token count of a text of this many characters (about 3 a token), for what is
    only estimated: the output of a stream cut short, shown on the dashboard."""
    return text_length // 3 + 1


def prompt_token_bound(texts: Iterable[str]) -> int:
    """An upper bound of the prompt's tokens: byte-level tokenizers never make more than one
    token per UTF-8 byte, plus a few tokens of framing per message. Reservations and the
    tokens-per-minute limit use it, so the real usage cannot exceed what was reserved."""
    count, size = 0, 0
    for text in texts:
        count, size = count + 1, size + len(text.encode("utf-8"))
    return size + 8 * count + 8


# An upper bound of what one image costs in prompt tokens: OpenAI's largest tiling of a
# high-detail image (2048 x 768 px: 8 tiles of 170 plus 85, 1,445 tokens), its patch-based
# models' cap (1,536 patches, ~2,490 tokens) and Anthropic's ((width x height) / 750, at most
# ~1,600 tokens for images it does not scale down) all stay under it. A non-text document is
# bounded by the larger of this and one token per byte.
IMAGE_TOKEN_BOUND = 2_500


def request_token_bound(request: Any) -> int:
    """An upper bound of a chat request's prompt tokens (a ``ChatRequest`` or the
    ``RedactedRequest`` made of it): every text it sends (messages, tool calls and results,
    thinking, tool definitions and the output schema as JSON) and every image."""
    texts: list[str] = []
    extra = 0
    for message in request.messages:
        if isinstance(message.content, str):
            texts.append(message.content)
            continue
        for block in message.content:
            for part in (block.content if isinstance(block, ToolResult) else (block,)):
                if isinstance(part, Text):
                    texts.append(part.text)
                elif isinstance(part, ToolCall):
                    texts.append(part.name + part.arguments)
                elif isinstance(part, Thinking):
                    texts.append(part.text + part.signature)
                elif isinstance(part, RedactedThinking):
                    texts.append(part.data)
                elif isinstance(part, Document) and part.source == "text":
                    texts.append(part.data)
                elif isinstance(part, Document):
                    extra += max(IMAGE_TOKEN_BOUND, len(part.data) * 3 // 4)
                elif isinstance(part, Image):
                    extra += IMAGE_TOKEN_BOUND
    for tool in request.tools:
        texts.append(json.dumps([tool.name, tool.description, tool.parameters]))
    if request.output is not None:
        texts.append(json.dumps([request.output.name, request.output.description,
                                 request.output.schema]))
    return prompt_token_bound(texts) + extra
