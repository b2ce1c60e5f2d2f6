"""The azure-keyvault provider through the real azure-keyvault-keys SDK, against a local fake of
the Key Vault keys REST API (tests/fakes/azure_keyvault.py) over HTTPS with its challenge auth.

The fake listens on 127.0.0.1, which is not a subdomain of the challenge's resource
(vault.azure.net), so these providers turn off the SDK's challenge-resource check; one test shows
that with the check on (the production default) the SDK sends no token to such a host."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from control_plane.keys.azure import AzureKeyVaultProvider, pack, unpack
from control_plane.keys.providers import KeyReferenceInvalid, KeyUnavailable
from tests.fakes.azure_keyvault import SCOPE, FakeAzureKeyVault, running_fake_azure_keyvault

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"


@pytest.fixture
def fake() -> Iterator[FakeAzureKeyVault]:
    with running_fake_azure_keyvault() as vault:
        yield vault


def provider_for(fake: FakeAzureKeyVault) -> AzureKeyVaultProvider:
    return AzureKeyVaultProvider(credential=fake.credential(), connection_verify=fake.ca_file,
                                 verify_challenge_resource=False)


@pytest.fixture
def provider(fake: FakeAzureKeyVault) -> AzureKeyVaultProvider:
    return provider_for(fake)


def oaep_calls(fake: FakeAzureKeyVault) -> list[tuple[str, str, str | None]]:
    return [call for call in fake.calls if call[0] == "POST"]


def test_round_trip_through_the_sdk(fake: FakeAzureKeyVault,
                                    provider: AzureKeyVaultProvider) -> None:
    ref = fake.create_key("kek-a")
    (version,) = fake.versions("kek-a")
    dek = os.urandom(32)

    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=ref)

    assert dek not in wrapped
    kid, encrypted = unpack(wrapped)
    assert kid == fake.kid("kek-a", version)
    assert len(encrypted) == 256  # one RSA-2048 block
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=ref) == dek
    # The unwrap ran in the vault, with RSA-OAEP-256: the fake opened, with SHA-256 OAEP and its
    # private key, what the SDK wrapped with the public key it fetched.
    assert oaep_calls(fake) == [("POST", f"/keys/kek-a/{version}/unwrapkey", "RSA-OAEP-256")]
    # Challenge auth: one 401 challenge, then a token for the vault's scope in the vault's tenant.
    assert fake.challenges == 1


def test_the_credential_is_asked_for_the_challenged_scope_and_tenant(
        fake: FakeAzureKeyVault) -> None:
    credential = fake.credential()
    provider = AzureKeyVaultProvider(credential=credential, connection_verify=fake.ca_file,
                                     verify_challenge_resource=False)
    ref = fake.create_key("kek-a")

    provider.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=ref)

    assert credential.requests
    assert set(credential.requests) == {((SCOPE,), fake.tenant_id)}


def test_old_wrapped_keys_unwrap_after_rotation_and_new_wraps_use_the_new_version(
        fake: FakeAzureKeyVault, provider: AzureKeyVaultProvider) -> None:
    ref = fake.create_key("kek-a")
    (v1,) = fake.versions("kek-a")
    old_dek, new_dek = os.urandom(32), os.urandom(32)
    old = provider.wrap(old_dek, tenant_id=TENANT_A, key_ref=ref)

    new_kid = fake.rotate_key("kek-a")
    v2 = fake.versions("kek-a")[1]
    assert new_kid == fake.kid("kek-a", v2)

    assert provider.unwrap(old, tenant_id=TENANT_A, key_ref=ref) == old_dek
    new = provider.wrap(new_dek, tenant_id=TENANT_A, key_ref=ref)
    assert unpack(new)[0] == new_kid
    assert provider.unwrap(new, tenant_id=TENANT_A, key_ref=ref) == new_dek
    assert [path for _, path, _ in oaep_calls(fake)] == [
        f"/keys/kek-a/{v1}/unwrapkey", f"/keys/kek-a/{v2}/unwrapkey"]


def test_a_versioned_reference_keeps_wrapping_with_its_version(
        fake: FakeAzureKeyVault, provider: AzureKeyVaultProvider) -> None:
    fake.create_key("kek-a")
    (v1,) = fake.versions("kek-a")
    pinned = fake.kid("kek-a", v1)
    fake.rotate_key("kek-a")

    wrapped = provider.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=pinned)

    assert unpack(wrapped)[0] == pinned


def test_a_disabled_key_is_unavailable_until_enabled(
        fake: FakeAzureKeyVault, provider: AzureKeyVaultProvider) -> None:
    ref = fake.create_key("kek-a")
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=ref)

    fake.disable_key("kek-a")
    with pytest.raises(KeyUnavailable, match="tenant key unavailable") as unwrapping:
        provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=ref)
    with pytest.raises(KeyUnavailable, match="tenant key unavailable") as wrapping:
        provider.wrap(dek, tenant_id=TENANT_A, key_ref=ref)
    for raised in (unwrapping.value, wrapping.value):
        assert raised.provider == "azure-keyvault"
        assert "disabled" in str(raised) and "403" in str(raised)

    fake.enable_key("kek-a")
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=ref) == dek
    assert provider.unwrap(provider.wrap(dek, tenant_id=TENANT_A, key_ref=ref),
                           tenant_id=TENANT_A, key_ref=ref) == dek


def test_revoked_access_is_unavailable_until_restored(
        fake: FakeAzureKeyVault, provider: AzureKeyVaultProvider) -> None:
    ref = fake.create_key("kek-a")
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=ref)

    fake.revoke_access()
    with pytest.raises(KeyUnavailable, match=r"refused \(HTTP 403 Forbidden\)"):
        provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=ref)
    with pytest.raises(KeyUnavailable, match=r"refused \(HTTP 403 Forbidden\)"):
        provider.wrap(dek, tenant_id=TENANT_A, key_ref=ref)

    fake.restore_access()
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=ref) == dek


def test_an_unknown_key_or_version_is_unavailable(
        fake: FakeAzureKeyVault, provider: AzureKeyVaultProvider) -> None:
    ref = fake.create_key("kek-a")
    wrapped = provider.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=ref)

    with pytest.raises(KeyUnavailable, match="HTTP 404 KeyNotFound"):
        provider.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=f"{fake.vault_url}/keys/nope")
    _, encrypted = unpack(wrapped)
    unknown_version = pack(fake.kid("kek-a", "0" * 32), encrypted)
    with pytest.raises(KeyUnavailable, match="HTTP 404 KeyNotFound"):
        provider.unwrap(unknown_version, tenant_id=TENANT_A, key_ref=ref)


def test_a_credential_the_vault_does_not_accept_is_unavailable(fake: FakeAzureKeyVault) -> None:
    ref = fake.create_key("kek-a")
    with running_fake_azure_keyvault() as other_vault:
        stranger = AzureKeyVaultProvider(credential=other_vault.credential(),
                                         connection_verify=fake.ca_file,
                                         verify_challenge_resource=False)
        with pytest.raises(KeyUnavailable, match="HTTP 401"):
            stranger.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=ref)
    assert fake.calls == []


def test_a_wrapped_key_opens_only_with_the_key_that_wrapped_it(
        fake: FakeAzureKeyVault, provider: AzureKeyVaultProvider) -> None:
    ref_a = fake.create_key("kek-a")
    ref_b = fake.create_key("kek-b")
    dek = os.urandom(32)
    wrapped_a = provider.wrap(dek, tenant_id=TENANT_A, key_ref=ref_a)
    calls_before = len(fake.calls)

    with pytest.raises(KeyUnavailable, match="made with another key"):
        provider.unwrap(wrapped_a, tenant_id=TENANT_B, key_ref=ref_b)
    assert len(fake.calls) == calls_before  # refused before asking the vault

    kid, encrypted = unpack(wrapped_a)
    damaged = pack(kid, encrypted[:-1] + bytes([encrypted[-1] ^ 1]))
    with pytest.raises(KeyUnavailable, match="HTTP 400 BadParameter"):
        provider.unwrap(damaged, tenant_id=TENANT_A, key_ref=ref_a)
    for garbage in (b"", b"AKV1", dek, b"AKV1\xff\xff" + b"x" * 10):
        with pytest.raises(KeyUnavailable, match="not in the azure-keyvault format"):
            provider.unwrap(garbage, tenant_id=TENANT_A, key_ref=ref_a)


def test_a_stopped_vault_is_unavailable_within_seconds(
        fake: FakeAzureKeyVault, provider: AzureKeyVaultProvider) -> None:
    ref = fake.create_key("kek-a")
    wrapped = provider.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=ref)
    fake.stop()

    started = time.monotonic()
    with pytest.raises(KeyUnavailable, match="cannot reach Key Vault"):
        provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=ref)
    with pytest.raises(KeyUnavailable, match="cannot reach Key Vault"):
        provider.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=ref)
    assert time.monotonic() - started < 8


def test_nothing_listening_is_unavailable_within_seconds(fake: FakeAzureKeyVault,
                                                         provider: AzureKeyVaultProvider) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused

        started = time.monotonic()
        with pytest.raises(KeyUnavailable, match="cannot reach Key Vault"):
            provider.wrap(os.urandom(32), tenant_id=TENANT_A,
                          key_ref=f"https://127.0.0.1:{port}/keys/kek-a")
    assert time.monotonic() - started < 4


def test_with_challenge_resource_verification_on_no_token_leaves_for_a_foreign_host(
        fake: FakeAzureKeyVault) -> None:
    credential = fake.credential()
    strict = AzureKeyVaultProvider(credential=credential, connection_verify=fake.ca_file)
    ref = fake.create_key("kek-a")

    with pytest.raises(KeyUnavailable, match="does not match the requested domain"):
        strict.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=ref)
    assert credential.requests == []
    assert fake.calls == []  # only the unauthenticated challenge request arrived
    assert fake.challenges == 1


@pytest.mark.parametrize("ref", [
    "https://magistrate.vault.azure.net/keys/tenant-a",
    "https://magistrate.vault.azure.net/keys/tenant-a/0123456789abcdef0123456789abcdef",
    "https://magistrate.managedhsm.azure.net/keys/tenant-a",
    "https://127.0.0.1:8443/keys/tenant-a",
])
def test_key_identifier_urls_are_valid_references(ref: str) -> None:
    AzureKeyVaultProvider(credential=None).check_reference(ref)


@pytest.mark.parametrize("ref", [
    "http://magistrate.vault.azure.net/keys/tenant-a",
    "https://magistrate.vault.azure.net/tenant-a",
    "https://magistrate.vault.azure.net/secrets/tenant-a",
    "https://magistrate.vault.azure.net/keys/",
    "https://magistrate.vault.azure.net/keys/tenant-a/v1/wrapkey",
    "https://magistrate.vault.azure.net/keys/tenant_a",
    "https://magistrate.vault.azure.net/keys/tenant-a?api-version=7.4",
    "https://user@magistrate.vault.azure.net/keys/tenant-a",
    "https:///keys/tenant-a",
    "magistrate.vault.azure.net/keys/tenant-a",
    "tenant-a",
    "",
])
def test_malformed_references_are_refused(ref: str) -> None:
    provider = AzureKeyVaultProvider()  # refused before any credential or network is needed
    with pytest.raises(KeyReferenceInvalid, match="key identifier URL"):
        provider.check_reference(ref)
    with pytest.raises(KeyReferenceInvalid):
        provider.wrap(os.urandom(32), tenant_id=TENANT_A, key_ref=ref)
    with pytest.raises(KeyReferenceInvalid):
        provider.unwrap(b"AKV1", tenant_id=TENANT_A, key_ref=ref)
