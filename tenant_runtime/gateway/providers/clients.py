"""The SDK clients the adapters share, so a busy gateway reuses connection pools instead of
building a client per call.

``ClientCache`` keeps the sync clients, keyed by ``client_key(target)`` (provider, endpoint, a
SHA-256 fingerprint of the credential, never the credential, API version, region, timeout and
egress policy). ``LoopClients`` keeps the async ones (``openai.AsyncOpenAI``,
``anthropic.AsyncAnthropic``): their connection pools belong to the event loop that made them,
so each running loop has its own ``ClientCache`` and a client is never used on another loop. A
loop's clients are closed on that loop when it shuts down (``asyncio.run`` and anyio cancel the
tasks left: a sleeping task per loop closes them then), by ``aclose()`` on the loop, or from
another thread by ``close()``; a loop found closed is forgotten. asyncio loops only (uvicorn's,
anyio's asyncio backend). As in the sync cache, a client evicted from a loop's LRU (more than
``size`` routes on one loop) is not closed, as a call may still be using it: its connections
close when it is collected."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

from tenant_runtime.gateway.providers.base import Target

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

    def _take(self) -> list[Any]:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        return clients

    def close(self) -> None:
        """Close every cached client (at shutdown, and in tests)."""
        for client in self._take():
            _close(client)

    async def aclose(self) -> None:
        """Close every cached async client, on the loop that made them."""
        for client in self._take():
            closed = client.close()
            if inspect.isawaitable(closed):
                await closed


def _close(client: object) -> None:
    close = getattr(client, "close", None)
    if callable(close):
        close()


class LoopClients:
    """A ``ClientCache`` per running event loop, for async SDK clients."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._caches: dict[asyncio.AbstractEventLoop, ClientCache] = {}
        self._lock = threading.Lock()

    def get(self, target: Target, build: Callable[[], C]) -> C:
        """The running loop's client for ``target`` (called on that loop)."""
        loop = asyncio.get_running_loop()
        cache = self._caches.get(loop)
        if cache is None:
            cache = self._cache_for(loop)
        return cache.get(target, build)

    def _cache_for(self, loop: asyncio.AbstractEventLoop) -> ClientCache:
        with self._lock:
            for old in [old for old in self._caches if old.is_closed()]:
                del self._caches[old]  # its clients cannot be closed any more: let them go
            cache = self._caches.get(loop)
            if cache is None:
                cache = self._caches[loop] = ClientCache(self._size)
                keeper = loop.create_task(self._close_at_shutdown(loop, cache))
                _keepers.add(keeper)
                keeper.add_done_callback(_keepers.discard)
            return cache

    async def _close_at_shutdown(self, loop: asyncio.AbstractEventLoop,
                                 cache: ClientCache) -> None:
        try:
            await asyncio.Event().wait()  # nothing sets it: the loop's shutdown cancels it
        finally:
            with self._lock:
                if self._caches.get(loop) is cache:
                    del self._caches[loop]
            await cache.aclose()

    def held(self) -> int:
        """How many clients the running loop holds."""
        cache = self._caches.get(asyncio.get_running_loop())
        return len(cache) if cache is not None else 0

    def loops(self) -> int:
        """How many loops have clients here."""
        with self._lock:
            return len(self._caches)

    async def aclose(self) -> None:
        """Close the running loop's clients (at the app's shutdown, on its loop)."""
        with self._lock:
            cache = self._caches.get(asyncio.get_running_loop())
        if cache is not None:
            await cache.aclose()

    def close(self, wait: float = 5.0) -> None:
        """Close what can be closed from here: the clients of a loop running in another thread
        (waiting up to ``wait`` seconds), or of a loop not running; the current thread's running
        loop gets a task that closes them."""
        with self._lock:
            caches = list(self._caches.items())
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, cache in caches:
            if loop.is_closed():
                continue
            if loop is current:
                task = loop.create_task(cache.aclose())
                _keepers.add(task)
                task.add_done_callback(_keepers.discard)
            elif loop.is_running():
                closing = asyncio.run_coroutine_threadsafe(cache.aclose(), loop)
                with contextlib.suppress(Exception):
                    closing.result(wait)
            else:
                loop.run_until_complete(cache.aclose())


_keepers: set[asyncio.Task[Any]] = set()  # a task is only weakly held by its loop
