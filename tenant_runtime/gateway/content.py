"""The provider-neutral content of a gateway call: the blocks a message is made of, the tools a
program offers a model, and what a model answers. Every drop-in API (OpenAI Chat Completions and
Responses, Anthropic Messages) is parsed into these, and every provider adapter (OpenAI-shaped,
Anthropic, Bedrock Converse) renders them into its own wire format and reads its answer back
into them: an OpenAI-shaped call routed to a Claude model keeps its tools, tool calls, tool
results and images, and the reverse.

    Text             text; redacted, restored
    Image            an https or data: URL, or base64 bytes with a media type; never scanned
                     (the tenant's image policy says whether images may leave at all)
    Document         Anthropic's document block (a PDF or plain text); plain text is redacted,
                     other sources are not scanned and follow the image policy
    ToolCall         a call the model made: id, tool name, arguments as JSON text; string values
                     inside the arguments are redacted and restored, keys are not
    ToolResult       what the program's tool answered to a call, as text and image blocks
    Thinking         a model's reasoning with the provider's signature; passed through unchanged
                     both ways (never redacted, never restored: the signature must stay valid,
                     and the text only ever holds what the model saw, placeholders included)
    RedactedThinking the provider's encrypted reasoning, passed through unchanged

Tool definitions (``Tool``) carry their JSON Schema; its ``description`` texts and string
``enum`` values are redacted like prompt text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Image:
    source: Literal["url", "base64"]
    data: str  # the URL (https: or data:), or the base64 bytes
    media_type: str | None = None  # for base64: image/png, image/jpeg, image/gif, image/webp
    detail: str | None = None  # OpenAI's low / high / auto


@dataclass(frozen=True)
class Document:
    source: Literal["text", "base64", "url"]
    data: str  # the text, the base64 bytes or the URL
    media_type: str | None = None  # text/plain, application/pdf
    title: str | None = None
    context: str | None = None


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    content: tuple[Text | Image, ...]
    is_error: bool = False


@dataclass(frozen=True)
class Thinking:
    text: str
    signature: str


@dataclass(frozen=True)
class RedactedThinking:
    data: str


Block = Text | Image | Document | ToolCall | ToolResult | Thinking | RedactedThinking


@dataclass(frozen=True)
class Tool:
    """A function tool: its name, what it does and its JSON Schema parameters."""

    name: str
    description: str | None = None
    parameters: JsonObject = field(default_factory=dict, hash=False)
    strict: bool | None = None


@dataclass(frozen=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None  # the tool, when mode is "tool"


@dataclass(frozen=True)
class OutputFormat:
    """Structured output: any JSON object, or one that fits ``schema``."""

    kind: Literal["json_object", "json_schema"]
    name: str | None = None
    schema: JsonObject | None = field(default=None, hash=False)
    strict: bool | None = None
    description: str | None = None


# --- answers ------------------------------------------------------------------------------

AnswerBlock = Text | ToolCall | Thinking | RedactedThinking


@dataclass(frozen=True)
class Choice:
    """One answer of the model (``n`` > 1 asks OpenAI-shaped providers for several)."""

    content: tuple[AnswerBlock, ...]
    finish_reason: str  # "stop", "length", "tool_calls" or "other"
    logprobs: Any = field(default=None, compare=False, hash=False)  # OpenAI's, as sent

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, Text))

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(b for b in self.content if isinstance(b, ToolCall))


def text_of(blocks: tuple[Block, ...] | str) -> str:
    """The text blocks of a content, joined by newlines (tool results' texts included)."""
    if isinstance(blocks, str):
        return blocks
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, Text):
            parts.append(block.text)
        elif isinstance(block, ToolResult):
            parts.extend(b.text for b in block.content if isinstance(b, Text))
    return "\n".join(parts)
