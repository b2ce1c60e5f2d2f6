"""What every provider adapter offers, and what it returns. An adapter takes only a
``RedactedRequest`` (tenant_runtime.redaction), so nothing unredacted can reach a provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from tenant_runtime.gateway.content import Choice, RedactedThinking, Text
from tenant_runtime.gateway.egress import EgressPolicy
from tenant_runtime.redaction import RedactedEmbedding, RedactedRequest

PROVIDERS = ("openai", "anthropic", "azure-openai", "bedrock", "on-prem")


@dataclass(frozen=True)
class Target:
    """Where one attempt goes: a route's provider, model and endpoint, with its credential
    opened from the sealed column only for the call."""

    provider: str  # one of PROVIDERS
    model: str  # the provider's model id; for azure-openai, the deployment name
    endpoint: str | None = None  # base URL; None: the provider's public endpoint
    api_key: str | None = field(default=None, repr=False)  # bedrock: "ACCESS_KEY_ID:SECRET"
    timeout_seconds: float = 60.0
    api_version: str | None = None  # azure-openai
    region: str | None = None  # bedrock
    # azure-openai without an API key: a callable returning an Entra ID bearer token
    azure_ad_token_provider: Callable[[], str] | None = field(default=None, repr=False)
    # where the call may connect (checked at connect time; the default allows no private
    # address): the tenant context's policy
    egress: EgressPolicy = EgressPolicy()


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:  # a provider that leaves a count out (None) reports 0
        for name in ("input_tokens", "output_tokens"):
            value: object = getattr(self, name)
            object.__setattr__(self, name, max(0, int(value)) if isinstance(value, int) else 0)


@dataclass(frozen=True)
class Completion:
    """A whole answer: one ``Choice`` per answer asked for (``n``), in order."""

    choices: tuple[Choice, ...]
    usage: Usage
    attempts: int

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""

    @property
    def finish_reason(self) -> str:
        return self.choices[0].finish_reason if self.choices else "other"


def text_completion(text: str, usage: Usage, finish_reason: str, attempts: int) -> Completion:
    return Completion((Choice((Text(text),) if text else (), finish_reason),), usage, attempts)


# A streamed answer is a sequence of these, ending in one ``Finished``. Blocks arrive in order:
# a text delta continues the current text block (or opens one), a ``ToolCallStart`` opens the
# tool call ``index`` (its position among the answer's tool calls, from 0), whose arguments come
# in ``ToolCallDelta`` fragments; thinking arrives as ``ThinkingDelta`` text, then its signature
# (``SignatureDelta``); ``RedactedThinking`` whole. Streams carry one choice.


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallDelta:
    index: int
    arguments: str


@dataclass(frozen=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True)
class SignatureDelta:
    signature: str


@dataclass(frozen=True)
class Finished:
    usage: Usage
    finish_reason: str  # "stop", "length", "tool_calls" or "other"
    attempts: int


StreamEvent = (TextDelta | ToolCallStart | ToolCallDelta | ThinkingDelta | SignatureDelta
               | RedactedThinking | Finished)


class ProviderError(Exception):
    """A provider call that failed for good: after its attempts, or at once when retrying
    cannot help (400, 401, 403, 404). The message names the provider and the attempts."""

    def __init__(self, provider: str, attempts: int, detail: str, *,
                 status: int | None = None) -> None:
        self.provider, self.attempts, self.detail, self.status = provider, attempts, detail, status
        noun = "attempt" if attempts == 1 else "attempts"
        super().__init__(f"{provider} failed after {attempts} {noun}: {detail}")


class Adapter(Protocol):
    def complete(self, request: RedactedRequest, target: Target) -> Completion: ...

    def stream(self, request: RedactedRequest, target: Target) -> Iterator[StreamEvent]: ...


class AsyncAdapter(Protocol):
    """The same calls on the event loop: the same answers, events, retries and errors."""

    async def acomplete(self, request: RedactedRequest, target: Target) -> Completion: ...

    def astream(self, request: RedactedRequest, target: Target) -> AsyncIterator[StreamEvent]:
        """An async generator: closing it early closes the provider's stream."""
        ...


class ProviderAdapter(Adapter, AsyncAdapter, Protocol):
    """What the registry answers for each provider: both."""


def require_redacted(request: object) -> None:
    """Every adapter's first line: nothing but a ``RedactedRequest`` reaches a provider."""
    if not isinstance(request, RedactedRequest | RedactedEmbedding):
        raise TypeError(f"Provider adapters accept only a RedactedRequest (built by "
                        f"tenant_runtime.redaction.redact_request), not {type(request).__name__}.")


@dataclass(frozen=True)
class Embeddings:
    """Embedding vectors, one per input in order: lists of floats, or base64 strings when the
    caller asked for ``encoding_format: base64``."""

    vectors: tuple[list[float] | str, ...]
    usage: Usage  # input tokens only
    attempts: int


class EmbeddingAdapter(Protocol):
    def embed(self, request: RedactedEmbedding, target: Target) -> Embeddings: ...

    async def aembed(self, request: RedactedEmbedding, target: Target) -> Embeddings: ...
