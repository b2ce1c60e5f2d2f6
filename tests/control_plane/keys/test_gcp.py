"""The gcp-kms provider through the real google-cloud-kms SDK (REST transport) against the local
Cloud KMS fake in tests/fakes/gcp_kms.py. Nothing of ours or of the SDK is patched."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
from google.auth.credentials import AnonymousCredentials

from control_plane.keys.gcp import INTEGRITY_ATTEMPTS, GcpKmsProvider, crc32c
from control_plane.keys.providers import KeyReferenceInvalid, KeyUnavailable
from tests.fakes.gcp_kms import FakeGcpKms, running_fake_gcp_kms

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"


@pytest.fixture
def fake() -> Iterator[FakeGcpKms]:
    with running_fake_gcp_kms() as server:
        yield server


def make_provider(endpoint: str, transport: str = "rest") -> GcpKmsProvider:
    return GcpKmsProvider(endpoint=endpoint, credentials=AnonymousCredentials(),
                          transport=transport)


@pytest.fixture
def provider(fake: FakeGcpKms) -> Iterator[GcpKmsProvider]:
    kms = make_provider(fake.endpoint)
    yield kms
    kms.close()


@pytest.fixture
def key_ref(fake: FakeGcpKms) -> str:
    return fake.create_key(key="tenant-keys")


def test_crc32c_matches_the_castagnoli_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_round_trip_binds_the_tenant_as_aad(fake: FakeGcpKms, provider: GcpKmsProvider,
                                            key_ref: str) -> None:
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_ref)

    assert dek not in wrapped
    assert len(wrapped) > len(dek)
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_ref) == dek
    prefix = f"/v1/{key_ref}"
    assert fake.requests == [(f"{prefix}:encrypt", True), (f"{prefix}:decrypt", True)]


def test_another_tenant_cannot_unwrap(provider: GcpKmsProvider, key_ref: str) -> None:
    wrapped = provider.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=key_ref)

    with pytest.raises(KeyUnavailable) as caught:
        provider.unwrap(wrapped, tenant_id=TENANT_B, key_ref=key_ref)
    assert "INVALID_ARGUMENT" in str(caught.value)


def test_another_key_cannot_unwrap(fake: FakeGcpKms, provider: GcpKmsProvider,
                                   key_ref: str) -> None:
    other = fake.create_key(key="other-tenant-keys")
    wrapped = provider.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=key_ref)

    with pytest.raises(KeyUnavailable):
        provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=other)


def test_tampered_ciphertext_does_not_unwrap(provider: GcpKmsProvider, key_ref: str) -> None:
    wrapped = bytearray(provider.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=key_ref))
    wrapped[-1] ^= 0x80

    with pytest.raises(KeyUnavailable):
        provider.unwrap(bytes(wrapped), tenant_id=TENANT_A, key_ref=key_ref)


def test_old_wrapped_keys_unwrap_after_rotation(fake: FakeGcpKms, provider: GcpKmsProvider,
                                                key_ref: str) -> None:
    old_dek, new_dek = os.urandom(32), os.urandom(32)
    old = provider.wrap(old_dek, tenant_id=TENANT_A, key_ref=key_ref)
    fake.rotate_key(key_ref)
    new = provider.wrap(new_dek, tenant_id=TENANT_A, key_ref=key_ref)

    assert provider.unwrap(old, tenant_id=TENANT_A, key_ref=key_ref) == old_dek
    assert provider.unwrap(new, tenant_id=TENANT_A, key_ref=key_ref) == new_dek


def test_disabled_key_is_unavailable_until_enabled(fake: FakeGcpKms, provider: GcpKmsProvider,
                                                   key_ref: str) -> None:
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_ref)
    fake.disable_key(key_ref)

    with pytest.raises(KeyUnavailable) as on_wrap:
        provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_ref)
    with pytest.raises(KeyUnavailable) as on_unwrap:
        provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_ref)
    for caught in (on_wrap, on_unwrap):
        assert "tenant key unavailable" in str(caught.value)
        assert "FAILED_PRECONDITION" in str(caught.value)
        assert caught.value.provider == "gcp-kms"

    fake.enable_key(key_ref)
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_ref) == dek


def test_revoked_access_is_unavailable_until_restored(fake: FakeGcpKms,
                                                      provider: GcpKmsProvider,
                                                      key_ref: str) -> None:
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_ref)
    fake.revoke_access()

    with pytest.raises(KeyUnavailable) as caught:
        provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_ref)
    assert "access to the key is denied" in str(caught.value)
    assert "PERMISSION_DENIED" in str(caught.value)

    fake.restore_access()
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_ref) == dek


def test_unknown_key_is_unavailable(provider: GcpKmsProvider) -> None:
    with pytest.raises(KeyUnavailable) as caught:
        provider.wrap(os.urandom(32), tenant_id=TENANT_A,
                      key_ref="projects/p/locations/global/keyRings/r/cryptoKeys/missing")
    assert "the key does not exist" in str(caught.value)


def test_a_damaged_response_is_discarded_and_retried(fake: FakeGcpKms,
                                                     provider: GcpKmsProvider,
                                                     key_ref: str) -> None:
    dek = os.urandom(32)
    fake.corrupt_responses(1)
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_ref)
    fake.corrupt_responses(1)
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_ref) == dek
    assert len(fake.requests) == 4


def test_persistently_damaged_responses_are_unavailable(fake: FakeGcpKms,
                                                        provider: GcpKmsProvider,
                                                        key_ref: str) -> None:
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_ref)
    fake.corrupt_responses(2 * INTEGRITY_ATTEMPTS)

    with pytest.raises(KeyUnavailable, match="ciphertext checksum does not match"):
        provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_ref)
    with pytest.raises(KeyUnavailable, match="plaintext checksum does not match"):
        provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_ref)


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_nothing_listening_is_unavailable_within_seconds(
        transport: str, refused_port: Callable[[], int]) -> None:
    port = refused_port()
    endpoint = f"http://127.0.0.1:{port}" if transport == "rest" else f"127.0.0.1:{port}"
    kms = make_provider(endpoint, transport)
    started = time.monotonic()
    try:
        with pytest.raises(KeyUnavailable, match="gcp-kms"):
            kms.wrap(os.urandom(32), tenant_id=TENANT_A,
                     key_ref="projects/p/locations/global/keyRings/r/cryptoKeys/k")
    finally:
        kms.close()
    # gRPC retries UNAVAILABLE within the provider's 5-second budget; REST fails at once.
    assert time.monotonic() - started < 12


@pytest.mark.parametrize("key_ref", [
    "",
    "tenant-keys",
    "projects/p/locations/global/keyRings/r",
    "projects/p/locations/global/keyRings/r/cryptoKeys/",
    "projects/p/locations/global/keyRings/r/cryptoKeys/k/",
    "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
    "/projects/p/locations/global/keyRings/r/cryptoKeys/k",
    "projects/p/locations/global/keyRings/r/cryptoKeys/k\n",
    "projects/p/locations/global/keyRings/r/cryptoKeys/k?x=1",
    "arn:aws:kms:us-east-1:111122223333:key/1234abcd",
])
def test_malformed_references_are_refused_before_any_call(fake: FakeGcpKms,
                                                          provider: GcpKmsProvider,
                                                          key_ref: str) -> None:
    with pytest.raises(KeyReferenceInvalid, match="projects/|CryptoKey"):
        provider.check_reference(key_ref)
    with pytest.raises(KeyReferenceInvalid):
        provider.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=key_ref)
    assert fake.requests == []


def test_well_formed_reference_is_accepted(provider: GcpKmsProvider) -> None:
    provider.check_reference(
        "projects/magistrate-prod/locations/europe-west1/keyRings/tenants/cryptoKeys/acme_01")


def test_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        GcpKmsProvider(transport="http")
