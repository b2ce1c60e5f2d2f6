"""The Chat Completions adapter, through the official ``openai`` SDK, for three providers:

- ``openai``: api.openai.com (or ``target.endpoint``); the API key is required.
- ``azure-openai``: ``openai.AzureOpenAI`` at ``target.endpoint`` with ``target.api_version``;
  ``target.model`` is the deployment name. Authenticated by ``target.api_key`` (``api-key``
  header), else ``target.azure_ad_token_provider``, else an Entra ID token from
  ``azure.identity.DefaultAzureCredential`` (managed identity, workload identity, ...).
- ``on-prem``: any OpenAI-compatible server (vLLM, Ollama, LM Studio, TGI, ...) at
  ``target.endpoint`` (required); the key is optional.

The answer limit goes out as ``max_completion_tokens`` to OpenAI and Azure OpenAI (the SDK marks
``max_tokens`` deprecated, and reasoning models refuse it) and as ``max_tokens`` to on-prem
servers, which do not all know the newer name. Streams ask for a final usage chunk
(``stream_options.include_usage``); a server that sends no usage gets an estimate (characters /
4), so spend is never settled at zero.

The SDK is the client (its request building, authentication, Azure deployment URLs, errors and
connection pool), but its answers are read as plain JSON: ``client.post(..., cast_to=
httpx2.Response)`` instead of ``client.chat.completions.create``, which would build pydantic
models of the request and of the answer (of every streamed chunk too), costing more CPU than the
rest of a gateway call's path. The few fields read are checked here; an answer of another shape
is refused like the SDK's own ``APIResponseValidationError``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import httpx2
import openai
from azure.core.exceptions import AzureError
from openai.types.chat import ChatCompletionMessageParam

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

OPENAI_ENDPOINT = "https://api.openai.com/v1"
AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
# On-prem servers without authentication still need some key for the SDK (vLLM's docs use this).
NO_KEY = "EMPTY"
CHAT_PATH = "/chat/completions"
# The SDK's header (openai._constants) asking it to return a response with its body unread.
RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"
FINISH_REASONS = {"stop": "stop", "length": "length"}


class OpenAICompatAdapter:
    def __init__(self, provider: str, *, clients: ClientCache,
                 policy: retry.RetryPolicy | None = None) -> None:
        if provider not in ("openai", "azure-openai", "on-prem"):
            raise ValueError(f"OpenAICompatAdapter does not serve {provider!r}.")
        self.provider = provider
        self._clients = clients
        self._policy = policy or retry.RetryPolicy()

    def complete(self, request: RedactedRequest, target: Target) -> Completion:
        require_redacted(request)
        client = self._client(target)
        body = self._params(request, target)

        def post() -> Completion:
            response = client.post(CHAT_PATH, body=body, cast_to=httpx2.Response)
            return parse_completion(response, request)

        answer, attempts = retry.call(self.provider, self._policy,
                                      partial(classify, target=target), post)
        return replace(answer, attempts=attempts)

    def stream(self, request: RedactedRequest, target: Target) -> Iterator[StreamEvent]:
        require_redacted(request)
        client = self._client(target)
        return retry.stream(self.provider, self._policy, partial(classify, target=target),
                            lambda: self._events(client, request, target))

    def _events(self, client: openai.OpenAI, request: RedactedRequest,
                target: Target) -> Iterator[StreamEvent]:
        # the SDK's own way to hand back a streaming response unread (with_streaming_response)
        response = client.post(CHAT_PATH, cast_to=httpx2.Response, body={
            **self._params(request, target), "stream": True,
            "stream_options": {"include_usage": True}},
            options={"headers": {RAW_RESPONSE_HEADER: "stream"}})
        usage, finish, text, done = None, None, [], False
        try:
            for data in sse_data(response.iter_lines()):
                # read to the end, past [DONE], as the SDK does: a response closed before its
                # end closes its connection too, and the next call would open another
                if done or data.startswith("[DONE]"):
                    done = True
                    continue
                chunk = _json_object(response, data)
                if chunk.get("error"):
                    raise openai.APIError("The provider reported an error in the stream.",
                                          response.request, body=chunk["error"])
                if isinstance(chunk.get("usage"), dict):
                    usage = _usage(chunk["usage"])
                for choice in _list(response, chunk.get("choices")):
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta")
                    content = delta.get("content") if isinstance(delta, dict) else None
                    if content:
                        if not isinstance(content, str):
                            raise _bad_shape(response, chunk)
                        text.append(content)
                        yield TextDelta(content)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        finally:
            response.close()
        yield Finished(usage or estimate_usage(request, "".join(text)),
                       FINISH_REASONS.get(finish or "", "other"), attempts=0)

    def _params(self, request: RedactedRequest, target: Target) -> dict[str, Any]:
        messages = [cast(ChatCompletionMessageParam, {"role": m.role, "content": m.content})
                    for m in request.messages]
        params: dict[str, Any] = {"model": target.model, "messages": messages}
        limit = "max_tokens" if self.provider == "on-prem" else "max_completion_tokens"
        params[limit] = request.max_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if request.stop:
            params["stop"] = list(request.stop)
        return params

    def _client(self, target: Target) -> openai.OpenAI:
        if self.provider == "azure-openai":
            if not target.endpoint or not target.api_version:
                raise ProviderError(self.provider, 0, "the route needs an endpoint and an API "
                                                      "version for Azure OpenAI")
            return self._clients.get(target, partial(_azure_client, target))
        if self.provider == "on-prem" and not target.endpoint:
            raise ProviderError(self.provider, 0, "the route needs the server's endpoint")
        if self.provider == "openai" and not target.api_key:
            raise ProviderError(self.provider, 0, "the route has no API key")
        return self._clients.get(target, lambda: openai.OpenAI(
            api_key=target.api_key or NO_KEY, base_url=target.endpoint or OPENAI_ENDPOINT,
            max_retries=0, timeout=target.timeout_seconds,
            http_client=outbound.http_client(target.egress, timeout=target.timeout_seconds)))


def _azure_client(target: Target) -> openai.AzureOpenAI:
    assert target.endpoint is not None  # noqa: S101 - checked by the caller
    common: dict[str, Any] = {"azure_endpoint": target.endpoint,
                              "api_version": target.api_version, "max_retries": 0,
                              "timeout": target.timeout_seconds,
                              "http_client": outbound.http_client(
                                  target.egress, timeout=target.timeout_seconds)}
    if target.api_key:
        return openai.AzureOpenAI(api_key=target.api_key, **common)
    return openai.AzureOpenAI(
        azure_ad_token_provider=target.azure_ad_token_provider or _default_token_provider(),
        **common)


_default_provider: Callable[[], str] | None = None
_default_provider_lock = threading.Lock()


def _default_token_provider() -> Callable[[], str]:
    """One Entra ID token provider per process, from the default credential chain."""
    global _default_provider
    with _default_provider_lock:
        if _default_provider is None:
            from azure.identity import DefaultAzureCredential, get_bearer_token_provider

            _default_provider = get_bearer_token_provider(DefaultAzureCredential(), AZURE_SCOPE)
        return _default_provider


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event (its ``data:`` lines joined), in order."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
    if data:
        yield "\n".join(data)


def _bad_shape(response: httpx2.Response, body: object) -> openai.APIResponseValidationError:
    return openai.APIResponseValidationError(response, body, message="The provider's answer "
                                             "did not have the expected shape.")


def _json_object(response: httpx2.Response, text: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        raise _bad_shape(response, None) from None
    if not isinstance(data, dict):
        raise _bad_shape(response, data)
    return data


def _list(response: httpx2.Response, value: object) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad_shape(response, value)
    return value


def _usage(usage: dict[str, Any]) -> Usage:
    return Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))  # type: ignore[arg-type]


def parse_completion(response: httpx2.Response, request: RedactedRequest) -> Completion:
    """A chat completion's text, usage and finish reason, read from its JSON."""
    data = _json_object(response, response.content)
    choices = _list(response, data.get("choices"))
    choice = choices[0] if choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(choice, dict) or not isinstance(text, str | None):
        raise _bad_shape(response, data)
    text = text or ""
    usage = _usage(data["usage"]) if isinstance(data.get("usage"), dict) \
        else estimate_usage(request, text)
    finish = FINISH_REASONS.get(choice.get("finish_reason") or "", "other")
    return Completion(text, usage, finish, attempts=0)


def estimate_usage(request: RedactedRequest, answer: str) -> Usage:
    """For servers that report no usage: about four characters a token."""
    characters = sum(len(m.content) for m in request.messages)
    return Usage(characters // 4 + 1, len(answer) // 4 + 1)


def classify(exc: BaseException, *, target: Target) -> retry.Failure | None:
    endpoint = target.endpoint or OPENAI_ENDPOINT
    if isinstance(exc, openai.APIStatusError):
        return retry.status_failure(exc.status_code, exc.code or exc.type,
                                    retry.parse_retry_after(exc.response.headers))
    if isinstance(exc, openai.APITimeoutError):
        return retry.timeout_failure(target.timeout_seconds)
    if isinstance(exc, openai.APIConnectionError):
        return retry.httpx_failure(exc.__cause__, endpoint, target.timeout_seconds)
    if isinstance(exc, httpx2.TransportError):
        return retry.httpx_failure(exc, endpoint, target.timeout_seconds)
    if isinstance(exc, openai.APIResponseValidationError):
        return retry.Failure("the provider's answer did not have the expected shape",
                             retryable=False, status=exc.status_code)
    if isinstance(exc, AzureError):  # the Entra ID token provider could not get a token
        return retry.Failure(f"Azure sign-in failed ({type(exc).__name__}): check the route's "
                             "managed identity, or give the route an API key", retryable=False)
    if isinstance(exc, openai.OpenAIError):
        return retry.Failure(f"the OpenAI SDK refused the call ({type(exc).__name__})",
                             retryable=False)
    return None

