"""The Anthropic Messages adapter, through the official ``anthropic`` SDK.

System messages go to the top-level ``system`` parameter (joined with blank lines), the others
stay messages. ``temperature`` and ``top_p`` are not sent: anthropic 2.x speaks API version
2026-10-21, which removed the sampling parameters (any value, even the default, is a 400), and
the SDK no longer offers them. Stop reasons: end_turn and stop_sequence are "stop", max_tokens is
"length", anything else (refusal, pause_turn, ...) "other".
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, cast

import anthropic
import httpx2
from anthropic.types import MessageParam

from tenant_runtime import outbound
from tenant_runtime.gateway.providers import retry
from tenant_runtime.gateway.providers.base import (
    Completion,
    Finished,
    ProviderError,
    StreamEvent,
    Target,
    TextDelta,
    Usage,
    require_redacted,
)
from tenant_runtime.redaction import RedactedRequest

if TYPE_CHECKING:
    from tenant_runtime.gateway.providers.registry import ClientCache

ANTHROPIC_ENDPOINT = "https://api.anthropic.com"
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
# An error event inside a stream arrives on a 200 response; its type tells the status.
STREAM_ERROR_STATUSES = {"overloaded_error": 529, "api_error": 500, "rate_limit_error": 429,
                         "timeout_error": 504}


class AnthropicAdapter:
    provider = "anthropic"

    def __init__(self, *, clients: ClientCache, policy: retry.RetryPolicy | None = None) -> None:
        self._clients = clients
        self._policy = policy or retry.RetryPolicy()

    def complete(self, request: RedactedRequest, target: Target) -> Completion:
        require_redacted(request)
        client = self._client(target)
        system, messages = _split(request)
        message, attempts = retry.call(
            self.provider, self._policy, partial(classify, target=target),
            lambda: client.messages.create(
                model=target.model, max_tokens=request.max_tokens, messages=messages,
                system=system or anthropic.omit,
                stop_sequences=list(request.stop) or anthropic.omit))
        text = "".join(block.text for block in message.content if block.type == "text")
        usage = Usage(message.usage.input_tokens, message.usage.output_tokens)
        return Completion(text, usage, FINISH_REASONS.get(message.stop_reason or "", "other"),
                          attempts)

    def stream(self, request: RedactedRequest, target: Target) -> Iterator[StreamEvent]:
        require_redacted(request)
        client = self._client(target)
        return retry.stream(self.provider, self._policy, partial(classify, target=target),
                            lambda: self._events(client, request, target))

    def _events(self, client: anthropic.Anthropic, request: RedactedRequest,
                target: Target) -> Iterator[StreamEvent]:
        system, messages = _split(request)
        events = client.messages.create(
            model=target.model, max_tokens=request.max_tokens, messages=messages,
            system=system or anthropic.omit, stop_sequences=list(request.stop) or anthropic.omit,
            stream=True)
        input_tokens = output_tokens = 0
        stop_reason: str | None = None
        with events:
            for event in events:
                if event.type == "message_start":
                    input_tokens = event.message.usage.input_tokens
                    output_tokens = event.message.usage.output_tokens
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    if event.delta.text:
                        yield TextDelta(event.delta.text)
                elif event.type == "message_delta":
                    stop_reason = event.delta.stop_reason or stop_reason
                    output_tokens = event.usage.output_tokens  # cumulative
                    if event.usage.input_tokens is not None:
                        input_tokens = event.usage.input_tokens
        yield Finished(Usage(input_tokens, output_tokens),
                       FINISH_REASONS.get(stop_reason or "", "other"), attempts=0)

    def _client(self, target: Target) -> anthropic.Anthropic:
        if not target.api_key:
            raise ProviderError(self.provider, 0, "the route has no API key")
        return self._clients.get(target, lambda: anthropic.Anthropic(
            api_key=target.api_key, base_url=target.endpoint or ANTHROPIC_ENDPOINT,
            max_retries=0, timeout=target.timeout_seconds,
            http_client=outbound.http_client(target.egress, timeout=target.timeout_seconds),
            open_telemetry=False))  # no spans that could carry request content


def _split(request: RedactedRequest) -> tuple[str, list[MessageParam]]:
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    messages = [cast(MessageParam, {"role": m.role, "content": m.content})
                for m in request.messages if m.role != "system"]
    return system, messages


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

