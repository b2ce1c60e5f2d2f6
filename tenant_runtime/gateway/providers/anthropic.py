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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

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
    require_redacted,
)
from tenant_runtime.redaction import RedactedRequest

if TYPE_CHECKING:
    from tenant_runtime.gateway.providers.registry import ClientCache

ANTHROPIC_ENDPOINT = "https://api.anthropic.com"
# An error event inside a stream arrives on a 200 response; its type tells the status.
STREAM_ERROR_STATUSES = {"overloaded_error": 529, "api_error": 500, "rate_limit_error": 429,
                         "timeout_error": 504}
T = TypeVar("T")


class AnthropicAdapter:
    provider = "anthropic"

    def __init__(self, *, clients: ClientCache, policy: retry.RetryPolicy | None = None) -> None:
        self._clients = clients
        self._policy = policy or retry.RetryPolicy()

    def complete(self, request: RedactedRequest, target: Target) -> Completion:
        require_redacted(request)
        client = self._client(target)
        params = self._params(request, target)
        message, attempts = self._call(target, lambda: client.messages.create(**params))
        usage = Usage(message.usage.input_tokens, message.usage.output_tokens)
        choice = Choice(render.answer_blocks(message.content),
                        render.finish_reason(message.stop_reason))
        return Completion((choice,), usage, attempts)

    def count_tokens(self, request: RedactedRequest, target: Target) -> int:
        """The input tokens ``request`` would cost on ``target``'s model."""
        require_redacted(request)
        client = self._client(target)
        params = self._params(request, target, counting=True)
        counted, _ = self._call(target, lambda: client.messages.count_tokens(**params))
        return int(counted.input_tokens)

    def stream(self, request: RedactedRequest, target: Target) -> Iterator[StreamEvent]:
        require_redacted(request)
        client = self._client(target)
        params = self._params(request, target)
        return retry.stream(self.provider, self._policy, partial(classify, target=target),
                            lambda: self._events(client, params))

    def _call(self, target: Target, call: Callable[[], T]) -> tuple[T, int]:
        return retry.call(self.provider, self._policy, partial(classify, target=target), call)

    def _params(self, request: RedactedRequest, target: Target, *,
                counting: bool = False) -> dict[str, Any]:
        try:
            return render.params(request, target.model, counting=counting)
        except render.CannotSend as exc:
            raise ProviderError(self.provider, 0, str(exc), status=422) from None

    def _events(self, client: anthropic.Anthropic,
                params: dict[str, Any]) -> Iterator[StreamEvent]:
        events = client.messages.create(**params, stream=True)
        input_tokens = output_tokens = 0
        stop_reason: str | None = None
        calls = 0
        open_call: int | None = None  # the tool call of the open block, until a delta arrives
        with events:
            for event in events:
                if event.type == "message_start":
                    input_tokens = event.message.usage.input_tokens
                    output_tokens = event.message.usage.output_tokens
                elif event.type == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use":
                        open_call = calls
                        calls += 1
                        yield ToolCallStart(open_call, block.id, block.name)
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
                        yield ToolCallDelta(calls - 1, delta.partial_json)
                        open_call = None
                    elif delta.type == "thinking_delta" and delta.thinking:
                        yield ThinkingDelta(delta.thinking)
                    elif delta.type == "signature_delta" and delta.signature:
                        yield SignatureDelta(delta.signature)
                elif event.type == "content_block_stop":
                    if open_call is not None:  # a call without arguments: its input is {}
                        yield ToolCallDelta(open_call, "{}")
                    open_call = None
                elif event.type == "message_delta":
                    stop_reason = event.delta.stop_reason or stop_reason
                    output_tokens = event.usage.output_tokens  # cumulative
                    if event.usage.input_tokens is not None:
                        input_tokens = event.usage.input_tokens
        yield Finished(Usage(input_tokens, output_tokens), render.finish_reason(stop_reason),
                       attempts=0)

    def _client(self, target: Target) -> anthropic.Anthropic:
        if not target.api_key:
            raise ProviderError(self.provider, 0, "the route has no API key")
        return self._clients.get(target, lambda: anthropic.Anthropic(
            api_key=target.api_key, base_url=target.endpoint or ANTHROPIC_ENDPOINT,
            max_retries=0, timeout=target.timeout_seconds,
            http_client=outbound.http_client(target.egress, timeout=target.timeout_seconds),
            open_telemetry=False))  # no spans that could carry request content


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

