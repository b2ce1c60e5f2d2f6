"""KMS calls and data-key cache look-ups are counted where every process makes them: the
providers the registry builds, and the cache."""

from __future__ import annotations

import pytest

from control_plane.keys.local import LocalKeyProvider
from control_plane.keys.providers import KeyUnavailable
from control_plane.keys.registry import DataKeyCache, build_key_providers, new_data_key
from tenant_runtime.observability import metrics


def count(*labels: str) -> float:
    metric = metrics.DATA_KEY_CACHE if len(labels) == 1 else metrics.KMS_CALLS
    return metric.labels(*labels)._value.get()


def test_the_registry_counts_wraps_and_unwraps_by_outcome(tmp_path):
    providers = build_key_providers(home=tmp_path, production=False, aws_region="us-east-1",
                                    aws_endpoint_url=None, gcp_endpoint=None)
    local = providers["local"]
    assert isinstance(local, LocalKeyProvider)  # still its own class
    local.create_key("dev")
    before = {k: count("local", *k) for k in (("wrap", "ok"), ("unwrap", "ok"),
                                              ("unwrap", "error"))}
    dek = new_data_key()
    wrapped = local.wrap(dek, tenant_id="7", key_ref="dev")
    assert local.unwrap(wrapped, tenant_id="7", key_ref="dev") == dek
    with pytest.raises(KeyUnavailable):
        local.unwrap(wrapped, tenant_id="8", key_ref="dev")  # another tenant's context
    assert count("local", "wrap", "ok") == before[("wrap", "ok")] + 1
    assert count("local", "unwrap", "ok") == before[("unwrap", "ok")] + 1
    assert count("local", "unwrap", "error") == before[("unwrap", "error")] + 1


def test_the_cache_counts_hits_and_misses():
    cache = DataKeyCache(ttl_seconds=60, max_uses=2)
    hits, misses = count("hit"), count("miss")
    key = new_data_key()
    for _ in range(3):  # miss, hit, then the uses are spent: miss again
        assert cache.get(1, 1, lambda: key) == key
    assert (count("hit") - hits, count("miss") - misses) == (1, 2)
