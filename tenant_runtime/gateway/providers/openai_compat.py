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
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import httpx2
import openai
from azure.core.exceptions import AzureError
from openai.types.chat import ChatCompletionMessageParam

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
        response, attempts = retry.call(
            self.provider, self._policy, partial(classify, target=target),
            lambda: client.chat.completions.create(**self._params(request, target)))
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content or "") if choice else ""
        usage = (Usage(response.usage.prompt_tokens, response.usage.completion_tokens)
                 if response.usage else estimate_usage(request, text))
        finish = FINISH_REASONS.get(choice.finish_reason if choice else "", "other")
        return Completion(text, usage, finish, attempts)

    def stream(self, request: RedactedRequest, target: Target) -> Iterator[StreamEvent]:
        require_redacted(request)
        client = self._client(target)
        return retry.stream(self.provider, self._policy, partial(classify, target=target),
                            lambda: self._events(client, request, target))

    def _events(self, client: openai.OpenAI, request: RedactedRequest,
                target: Target) -> Iterator[StreamEvent]:
        chunks = client.chat.completions.create(**self._params(request, target), stream=True,
                                                stream_options={"include_usage": True})
        usage, finish, text = None, None, []
        with chunks:
            for chunk in chunks:
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    if choice.delta is not None and choice.delta.content:
                        text.append(choice.delta.content)
                        yield TextDelta(choice.delta.content)
                    if choice.finish_reason:
                        finish = choice.finish_reason
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
            max_retries=0, timeout=target.timeout_seconds))


def _azure_client(target: Target) -> openai.AzureOpenAI:
    assert target.endpoint is not None  # noqa: S101 - checked by the caller
    common: dict[str, Any] = {"azure_endpoint": target.endpoint,
                              "api_version": target.api_version, "max_retries": 0,
                              "timeout": target.timeout_seconds}
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

