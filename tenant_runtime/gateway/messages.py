"""The provider-neutral shape of a chat call, as the gateway parses it from an OpenAI- or
Anthropic-shaped request (content.py holds the blocks). A ``ChatRequest`` holds the caller's text
as sent and never leaves the process: only the redaction module turns it into a
``RedactedRequest`` that adapters accept.

Tool results are blocks of a ``user`` message (Anthropic's and Bedrock's model); OpenAI's
``tool`` messages are parsed into them, and the OpenAI-shaped adapter writes them back as
``tool`` messages. Fields a provider cannot take are refused per route (features.py), never
dropped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tenant_runtime.gateway.content import (
    Block,
    OutputFormat,
    Text,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
    text_of,
)

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    role: str  # one of ROLES
    content: str | tuple[Block, ...]

    @property
    def blocks(self) -> tuple[Block, ...]:
        if isinstance(self.content, str):
            return (Text(self.content),) if self.content else ()
        return self.content

    @property
    def text(self) -> str:
        return text_of(self.content)


@dataclass(frozen=True)
class Sampling:
    """What tunes the sampling beyond temperature and top_p; None: not asked for."""

    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = field(default=None, hash=False)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    top_k: int | None = None
    reasoning_effort: str | None = None
    thinking: dict[str, Any] | None = field(default=None, hash=False)  # Anthropic's, as sent

    def asked(self) -> list[str]:
        """The names of the fields set, as the APIs spell them."""
        return [name for name in self.__dataclass_fields__
                if getattr(self, name) not in (None, False)]


@dataclass(frozen=True)
class ChatRequest:
    model: str  # the model name the tenant's program asked for, normalized (see allowlist)
    messages: tuple[ChatMessage, ...]  # system prompts are messages with role "system"
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    output: OutputFormat | None = None
    n: int = 1
    sampling: Sampling = Sampling()


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]
    dimensions: int | None = None
    encoding_format: str | None = None  # "float" (the default) or "base64"


def tool_history_problem(messages: tuple[ChatMessage, ...]) -> str | None:
    """What is wrong with a conversation's tool calls and results, as a sentence, or None.
    Every provider refuses the same two things, so the gateway refuses them first (422, before
    any spend): a tool result that answers no call of the assistant turn just before it, and
    an assistant turn's calls left without results when the conversation goes on."""
    called: set[str] = set()  # the calls of the last assistant turn, still to be answered
    for message in messages:
        if message.role == "system":
            continue
        results = [b.call_id for b in message.blocks if isinstance(b, ToolResult)]
        stray = [r for r in results if r not in called]
        if stray:
            return (f"A tool result answers the call {stray[0]!r}, which the assistant turn "
                    "just before it did not make; send each result right after the assistant "
                    "message whose tool call it answers.")
        unanswered = sorted(called - set(results))
        if unanswered:
            return (f"The assistant's tool call {unanswered[0]!r} has no result; send a tool "
                    "result for every tool call right after the assistant message that made "
                    "it.")
        called = ({b.id for b in message.blocks if isinstance(b, ToolCall)}
                  if message.role == "assistant" else set())
    return None
