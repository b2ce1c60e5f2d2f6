"""The provider-neutral shape of a chat call, as the gateway parses it from an OpenAI- or
Anthropic-shaped request. A ``ChatRequest`` holds the caller's text as sent and never leaves the
process: only the redaction module turns it into a ``RedactedRequest`` that adapters accept."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    role: str  # one of ROLES
    content: str


@dataclass(frozen=True)
class ChatRequest:
    model: str  # the model name the tenant's program asked for, normalized (see allowlist)
    messages: tuple[ChatMessage, ...]  # system prompts are messages with role "system"
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
