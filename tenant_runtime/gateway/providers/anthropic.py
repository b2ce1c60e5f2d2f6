"""The Anthropic Messages adapter, through the official ``anthropic`` SDK.

The request is rendered by render_anthropic.py (system prompts at the top, alternating turns,
tool_use / tool_result / image / document / thinking blocks, tools, tool_choice,
output_config, thinking) and the answer read back there. ``temperature``, ``top_p`` and
``top_k`` cannot be sent: anthropic 2.x speaks API version 2026-10-21, which removed the
sampling parameters (any value, even the default, is a 400), and the SDK no longer offers them;
features.py refuses a request that sets one for this provider (422 naming it), so none is
dropped. Stop reasons: end_turn and stop_sequence are "stop", max_tokens is "length", tool_use
"tool_calls", anything else (refusal, pause_turn, ...) "other".

Streams: a text_delta is a ``TextDelta``; a tool_use block opens a ``ToolCallStart`` (numbered
among the answer's tool calls from 0) whose input_json_delta fragments are ``ToolCallDelta``s (a
tool_use block without any is a call with arguments ``{}``, sent as one delta when it closes);
thinking_delta and signature_delta are ``ThinkingDelta`` and ``SignatureDelta``; a
redacted_thinking block is one ``RedactedThinking``.

``count_tokens`` asks ``/v1/messages/count_tokens`` what the request's input costs, with the same
retries and error classification as a call.

``acomplete``, ``astream`` and ``acount_tokens`` are the same calls on the event loop, through
``anthropic.AsyncAnthropic`` on ``outbound.async_http_client`` (one ``EventReader`` maps the
events of both streams); async clients are cached per event loop (clients.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any, TypeVar

import anthropic
import httpx2

from tenant_runtime import outbound
from tenant_runtime.gateway.content import Choice, RedactedThinking
from tenant_runtime.gateway.providers import render_anthropic as render
from tenant_runtime.gateway.providers import retry
from tenant_runtime.gateway.providers.base import (
    Completion,
    Finished,
    ProviderError,
    SignatureDelta,
    StreamEvent,
    Target,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from tenant_runtime.gateway.providers.clients import ClientCache, LoopClients
from tenant_runtime.redaction import RedactedRequest

ANTHROPIC_ENDPOINT = "https://api.anthropic.com"
# An error event inside a stream arrives on a 200 response; its type tells the status.
STREAM_ERROR_STATUSES = {"overloaded_error": 529, "api_error": 500, "rate_limit_error": 429,
                         "timeout_error": 504}
T = TypeVar("T")


class AnthropicAdapter:
    provider = "anthropic"

    def __init__(self, *, clients: ClientCache, async_clients: LoopClients | None = None,
                 policy: retry.RetryPolicy | None = None) -> None:
        self._clients = clients
        self._async_clients = LoopClients() if async_clients is None else async_clients
        self._policy = policy or retry.RetryPolicy()

    def complete(self, request: RedactedRequest, target: Target) -> Completion:
        how = self._retried(request, target)
        client, params = self._client(target), self._params(request, target)
        message, attempts = retry.call(*how, lambda: client.messages.create(**params))
        return _completion(message, attempts)

    def count_tokens(self, request: RedactedRequest, target: Target) -> int:
        """The input tokens ``request`` would cost on ``target``'s model."""
        how = self._retried(request, target)
        client = self._client(target)
        params = self._params(request, target, counting=True)
        counted, _ = retry.call(*how, lambda: client.messages.count_tokens(**params))
        return int(counted.input_tokens)

    async def acount_tokens(self, request: RedactedRequest, target: Target) -> int:
        """``count_tokens`` on the event loop, through ``anthropic.AsyncAnthropic``."""
        how, client = self._retried(request, target), self._async_client(target)
        params = self._params(request, target, counting=True)
        counted, _ = await retry.acall(*how, lambda: client.messages.count_tokens(**params))
        return int(counted.input_tokens)

    def stream(self, request: RedactedRequest, target: Target) -> Iterator[StreamEvent]:
        how = self._retried(request, target)
        return retry.stream(*how, partial(self._events, self._client(target),
                                          self._params(request, target)))

    async def acomplete(self, request: RedactedRequest, target: Target) -> Completion:
        """``complete`` on the event loop, through ``anthropic.AsyncAnthropic``."""
        how = self._retried(request, target)
        client, params = self._async_client(target), self._params(request, target)
        message, attempts = await retry.acall(*how, lambda: client.messages.create(**params))
        return _completion(message, attempts)

    def astream(self, request: RedactedRequest, target: Target) -> AsyncIterator[StreamEvent]:
        """``stream`` on the event loop, through ``anthropic.AsyncAnthropic``."""
        how = self._retried(request, target)
        return retry.astream(*how, partial(self._aevents, self._async_client(target),
                                           self._params(request, target)))

    def _retried(self, request: RedactedRequest, target: Target) -> retry.Plan:
        return retry.plan(self.provider, self._policy, classify, request, target)

    def _params(self, request: RedactedRequest, target: Target, *,
                counting: bool = False) -> dict[str, Any]:
        try:
            return render.params(request, target.model, counting=counting)
        except render.CannotSend as exc:
            raise ProviderError(self.provider, 0, str(exc), status=422) from None

    def _events(self, client: anthropic.Anthropic,
                params: dict[str, Any]) -> Iterator[StreamEvent]:
        reader = EventReader()
        with client.messages.create(**params, stream=True) as events:
            for event in events:
                yield from reader.events(event)
        yield reader.finished()

    async def _aevents(self, client: anthropic.AsyncAnthropic,
                       params: dict[str, Any]) -> AsyncIterator[StreamEvent]:
        reader = EventReader()
        async with await client.messages.create(**params, stream=True) as events:
            async for event in events:
                for mapped in reader.events(event):
                    yield mapped
        yield reader.finished()

    def _client(self, target: Target) -> anthropic.Anthropic:
        self._check(target)
        return self._clients.get(target, lambda: anthropic.Anthropic(
            **self._client_options(target),
            http_client=outbound.http_client(target.egress, timeout=target.timeout_seconds)))

    def _async_client(self, target: Target) -> anthropic.AsyncAnthropic:
        self._check(target)
        return self._async_clients.get(target, lambda: anthropic.AsyncAnthropic(
            **self._client_options(target),
            http_client=outbound.async_http_client(
                target.egress, timeout=httpx2.Timeout(target.timeout_seconds), lean=True)))

    def _check(self, target: Target) -> None:
        if not target.api_key:
            raise ProviderError(self.provider, 0, "the route has no API key")

    @staticmethod
    def _client_options(target: Target) -> dict[str, Any]:
        return {"api_key": target.api_key, "base_url": target.endpoint or ANTHROPIC_ENDPOINT,
                "max_retries": 0, "timeout": target.timeout_seconds,
                "open_telemetry": False}  # no spans that could carry request content


def _completion(message: Any, attempts: int) -> Completion:
    usage = Usage(message.usage.input_tokens, message.usage.output_tokens)
    choice = Choice(render.answer_blocks(message.content),
                    render.finish_reason(message.stop_reason))
    return Completion((choice,), usage, attempts)


class EventReader:
    """One streamed answer's events, mapped one at a time (for ``stream`` and ``astream``),
    then ``finished`` with the usage and stop reason."""

    def __init__(self) -> None:
        self.input_tokens = self.output_tokens = 0
        self.stop_reason: str | None = None
        self.calls = 0
        self.open_call: int | None = None  # the tool call of the open block, until a delta

    def events(self, event: Any) -> Iterator[StreamEvent]:
        if event.type == "message_start":
            self.input_tokens = event.message.usage.input_tokens
            self.output_tokens = event.message.usage.output_tokens
        elif event.type == "content_block_start":
            block = event.content_block
            if block.type == "tool_use":
                self.open_call = self.calls
                self.calls += 1
                yield ToolCallStart(self.open_call, block.id, block.name)
            elif block.type == "redacted_thinking":
                yield RedactedThinking(block.data)
            elif block.type == "text" and block.text:
                yield TextDelta(block.text)
            elif block.type == "thinking" and block.thinking:
                yield ThinkingDelta(block.thinking)
        elif event.type == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta" and delta.text:
                yield TextDelta(delta.text)
            elif delta.type == "input_json_delta" and delta.partial_json:
                yield ToolCallDelta(self.calls - 1, delta.partial_json)
                self.open_call = None
            elif delta.type == "thinking_delta" and delta.thinking:
                yield ThinkingDelta(delta.thinking)
            elif delta.type == "signature_delta" and delta.signature:
                yield SignatureDelta(delta.signature)
        elif event.type == "content_block_stop":
            if self.open_call is not None:  # a call without arguments: its input is {}
                yield ToolCallDelta(self.open_call, "{}")
            self.open_call = None
        elif event.type == "message_delta":
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            self.output_tokens = event.usage.output_tokens  # cumulative
            if event.usage.input_tokens is not None:
                self.input_tokens = event.usage.input_tokens

    def finished(self) -> Finished:
        return Finished(Usage(self.input_tokens, self.output_tokens),
                        render.finish_reason(self.stop_reason), attempts=0)


def classify(exc: BaseException, *, target: Target) -> retry.Failure | None:
    endpoint = target.endpoint or ANTHROPIC_ENDPOINT
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        if status < 400:  # an error event in a stream
            status = STREAM_ERROR_STATUSES.get(exc.type or "", 500)
        return retry.status_failure(status, exc.type,
                                    retry.parse_retry_after(exc.response.headers))
    if isinstance(exc, anthropic.APITimeoutError):
        return retry.timeout_failure(target.timeout_seconds)
    if isinstance(exc, anthropic.APIConnectionError):
        return retry.httpx_failure(exc.__cause__, endpoint, target.timeout_seconds)
    if isinstance(exc, httpx2.TransportError):
        return retry.httpx_failure(exc, endpoint, target.timeout_seconds)
    if isinstance(exc, anthropic.APIResponseValidationError):
        return retry.Failure("the provider's answer did not have the expected shape",
                             retryable=False, status=exc.status_code)
    if isinstance(exc, anthropic.AnthropicError):
        return retry.Failure(f"the Anthropic SDK refused the call ({type(exc).__name__})",
                             retryable=False)
    return None

