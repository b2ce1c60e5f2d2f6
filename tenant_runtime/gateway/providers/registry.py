"""Which adapter serves which provider, and the SDK clients they share.

``adapter_for(provider)`` answers one adapter per name of ``PROVIDERS``;
``embedding_adapter_for(provider)`` the adapter that embeds for it (the OpenAI-shaped providers
only: Anthropic and Bedrock serve no embeddings through these APIs); ``token_counter()`` the
Anthropic adapter, whose ``count_tokens`` answers ``/v1/messages/count_tokens``.

SDK clients are kept in a ``ClientCache`` keyed by ``client_key(target)`` (provider, endpoint, a
SHA-256 fingerprint of the credential, never the credential, API version, region, timeout and
egress policy), so a busy gateway reuses connection pools instead of building a client per
call. Every client is built
through ``tenant_runtime.outbound`` (egress checked at connect time, redirects refused).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

from tenant_runtime.gateway.providers.anthropic import AnthropicAdapter
from tenant_runtime.gateway.providers.base import PROVIDERS, Adapter, EmbeddingAdapter, Target
from tenant_runtime.gateway.providers.bedrock import BedrockAdapter
from tenant_runtime.gateway.providers.openai_compat import OpenAICompatAdapter

C = TypeVar("C")


def client_key(target: Target) -> tuple[Hashable, ...]:
    fingerprint = (hashlib.sha256(target.api_key.encode()).hexdigest()
                   if target.api_key is not None else None)
    # A token provider is told apart by identity: the cached client holds a reference to it, so
    # its id cannot be reused by another object while the entry lives.
    token_provider = id(target.azure_ad_token_provider) if target.azure_ad_token_provider else None
    return (target.provider, target.endpoint, fingerprint, target.api_version, target.region,
            target.timeout_seconds, token_provider, target.egress)


class ClientCache:
    """A small, thread-safe LRU of SDK clients. An evicted client is not closed here (a call in
    another thread may still be using it); the SDKs close their pools when it is collected."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._clients: OrderedDict[tuple[Hashable, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, target: Target, build: Callable[[], C]) -> C:
        key = client_key(target)
        with self._lock:
            if key in self._clients:
                self._clients.move_to_end(key)
                return cast(C, self._clients[key])
        client = build()  # outside the lock: building a boto3 client takes a while
        with self._lock:
            if key in self._clients:  # another thread built one meanwhile: keep the first
                self._clients.move_to_end(key)
                _close(client)
                return cast(C, self._clients[key])
            self._clients[key] = client
            while len(self._clients) > self._size:
                self._clients.popitem(last=False)
            return client

    def __len__(self) -> int:
        with self._lock:
            return len(self._clients)

    def close(self) -> None:
        """Close every cached client (at shutdown, and in tests)."""
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            _close(client)


def _close(client: object) -> None:
    close = getattr(client, "close", None)
    if callable(close):
        close()


CLIENTS = ClientCache()
_ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAICompatAdapter("openai", clients=CLIENTS),
    "azure-openai": OpenAICompatAdapter("azure-openai", clients=CLIENTS),
    "on-prem": OpenAICompatAdapter("on-prem", clients=CLIENTS),
    "anthropic": AnthropicAdapter(clients=CLIENTS),
    "bedrock": BedrockAdapter(clients=CLIENTS),
}


def adapter_for(provider: str) -> Adapter:
    try:
        return _ADAPTERS[provider]
    except KeyError:
        raise ValueError(f"Unknown provider {provider!r}; expected one of "
                         f"{', '.join(PROVIDERS)}.") from None


def embedding_adapter_for(provider: str) -> EmbeddingAdapter:
    adapter = adapter_for(provider)
    if not isinstance(adapter, OpenAICompatAdapter):
        raise ValueError(f"{provider} serves no embeddings; an embeddings route must be "
                         "openai, azure-openai or on-prem.")
    return adapter


def token_counter() -> AnthropicAdapter:
    adapter = _ADAPTERS["anthropic"]
    assert isinstance(adapter, AnthropicAdapter)  # noqa: S101 - built just above
    return adapter


def close_clients() -> None:
    CLIENTS.close()


async def aclose_loop_clients() -> None:
    """Close the async SDK clients made on the running event loop (TEMP until merge)."""
