"""The key providers a process can use, and the in-memory cache of unwrapped data keys.

Unwrapped DEKs live only in memory, for at most ``ttl_seconds`` and ``max_uses`` uses, so
steady-state reads make no KMS call while a revoked KEK stops working within the TTL. A failure
to unwrap is never cached and never falls back to anything: it raises ``KeyUnavailable``."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from control_plane.keys.local import LocalKeyProvider
from control_plane.keys.providers import KeyProvider, KeyUnavailable
from tenant_runtime import bridge
from tenant_runtime.observability import metrics

DEK_BYTES = 32


def new_data_key() -> bytes:
    return os.urandom(DEK_BYTES)


class KeyProviderRegistry(Mapping[str, KeyProvider]):
    """The providers of an installation, each built on first use: the KMS SDKs are heavy to
    import, and most processes only ever touch the one or two their tenants use."""

    def __init__(self, factories: dict[str, Callable[[], KeyProvider]]) -> None:
        self._factories = factories
        self._built: dict[str, KeyProvider] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> KeyProvider:
        with self._lock:
            if name not in self._built:
                self._built[name] = counted(self._factories[name]())
            return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)


def counted(provider: KeyProvider) -> KeyProvider:
    """``provider`` with each ``wrap`` and ``unwrap`` counted in ``magistrate_kms_calls``
    (by provider, operation and outcome). The methods are replaced on the instance, so the
    provider keeps its class (code that asks ``isinstance(p, LocalKeyProvider)`` still may)."""
    name = metrics.closed(provider.name, metrics.KMS_PROVIDERS)

    def counting(operation: str, call: Callable[..., bytes]) -> Callable[..., bytes]:
        def counted_call(*args: object, **kwargs: object) -> bytes:
            try:
                out = call(*args, **kwargs)
            except BaseException:
                metrics.KMS_CALLS.labels(name, operation, "error").inc()
                raise
            metrics.KMS_CALLS.labels(name, operation, "ok").inc()
            return out

        return counted_call

    for operation in ("wrap", "unwrap"):
        setattr(provider, operation, counting(operation, getattr(provider, operation)))
    return provider


def build_key_providers(*, home: Path, production: bool, aws_region: str,
                        aws_endpoint_url: str | None, gcp_endpoint: str | None
                        ) -> KeyProviderRegistry:
    """The providers of this installation. ``local`` exists only outside production."""

    def aws() -> KeyProvider:
        from control_plane.keys.aws import AwsKmsProvider

        return AwsKmsProvider(region=aws_region, endpoint_url=aws_endpoint_url)

    def azure() -> KeyProvider:
        from control_plane.keys.azure import AzureKeyVaultProvider

        return AzureKeyVaultProvider()

    def gcp() -> KeyProvider:
        from control_plane.keys.gcp import GcpKmsProvider

        return GcpKmsProvider(endpoint=gcp_endpoint)

    factories: dict[str, Callable[[], KeyProvider]] = {
        "aws-kms": aws, "azure-keyvault": azure, "gcp-kms": gcp}
    if not production:
        factories["local"] = lambda: LocalKeyProvider(home / "keys")
    return KeyProviderRegistry(factories)


@dataclass
class _Entry:
    key: bytes
    expires_at: float
    uses_left: int


class DataKeyCache:
    def __init__(self, *, ttl_seconds: float = 300.0, max_uses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_seconds
        self.max_uses = max_uses
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, int], _Entry] = {}

    def get(self, tenant_id: int, version: int, unwrap: Callable[[], bytes]) -> bytes:
        """The DEK of ``(tenant_id, version)``, unwrapping through the KMS when not cached."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get((tenant_id, version))
            if entry is not None and entry.expires_at > now and entry.uses_left > 0:
                entry.uses_left -= 1
                metrics.DATA_KEY_CACHE.labels("hit").inc()
                return entry.key
            self._entries.pop((tenant_id, version), None)
        metrics.DATA_KEY_CACHE.labels("miss").inc()
        # outside the lock: a slow KMS must not block other tenants; off the event loop when
        # the gateway's call path runs there (tenant_runtime/bridge.py)
        key = bridge.off_loop(unwrap)
        if len(key) != DEK_BYTES:
            raise KeyUnavailable("cache", "the unwrapped data key has the wrong length")
        with self._lock:
            self._entries[(tenant_id, version)] = _Entry(key, now + self.ttl, self.max_uses - 1)
        return key

    def forget(self, tenant_id: int) -> None:
        with self._lock:
            for k in [k for k in self._entries if k[0] == tenant_id]:
                del self._entries[k]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def provider_for(providers: Mapping[str, KeyProvider], name: str) -> KeyProvider:
    try:
        return providers[name]
    except KeyError:
        raise KeyUnavailable(name, "this key provider is not available on this "
                                   "installation") from None
