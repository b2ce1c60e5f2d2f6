"""Which adapter serves which provider, and the SDK clients they share.

``adapter_for(provider)`` answers one adapter per name of ``PROVIDERS``, with the sync calls
(``complete``, ``stream``) and the async ones (``acomplete``, ``astream``);
``embedding_adapter_for(provider)`` the adapter that embeds for it (the OpenAI-shaped providers
only: Anthropic and Bedrock serve no embeddings through these APIs); ``token_counter()`` the
Anthropic adapter, whose ``count_tokens`` answers ``/v1/messages/count_tokens``.

SDK clients are kept in ``CLIENTS`` (sync) and ``ASYNC_CLIENTS`` (async, one cache per event
loop): see clients.py. Every client is built through ``tenant_runtime.outbound`` (egress checked
at connect time, redirects refused).
"""

from __future__ import annotations

from tenant_runtime.gateway.providers.anthropic import AnthropicAdapter
from tenant_runtime.gateway.providers.base import PROVIDERS, EmbeddingAdapter, ProviderAdapter
from tenant_runtime.gateway.providers.bedrock import BedrockAdapter
from tenant_runtime.gateway.providers.clients import ClientCache, LoopClients, client_key
from tenant_runtime.gateway.providers.openai_compat import OpenAICompatAdapter

__all__ = ["ASYNC_CLIENTS", "CLIENTS", "ClientCache", "LoopClients",
           "aclose_clients", "adapter_for", "client_key", "close_clients",
           "embedding_adapter_for", "token_counter"]


CLIENTS = ClientCache()
ASYNC_CLIENTS = LoopClients()
_ADAPTERS: dict[str, ProviderAdapter] = {
    "openai": OpenAICompatAdapter("openai", clients=CLIENTS, async_clients=ASYNC_CLIENTS),
    "azure-openai": OpenAICompatAdapter("azure-openai", clients=CLIENTS,
                                        async_clients=ASYNC_CLIENTS),
    "on-prem": OpenAICompatAdapter("on-prem", clients=CLIENTS, async_clients=ASYNC_CLIENTS),
    "anthropic": AnthropicAdapter(clients=CLIENTS, async_clients=ASYNC_CLIENTS),
    "bedrock": BedrockAdapter(clients=CLIENTS),
}


def adapter_for(provider: str) -> ProviderAdapter:
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
    """Close the cached clients: every sync one, and the async ones of every loop that can be
    reached from here (clients.py, ``LoopClients.close``)."""
    CLIENTS.close()
    ASYNC_CLIENTS.close()


async def aclose_clients() -> None:
    """Close the running loop's async clients (at the app's shutdown, on its loop) and every
    sync one."""
    await ASYNC_CLIENTS.aclose()
    CLIENTS.close()
