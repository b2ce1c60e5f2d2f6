"""The aws-kms adapter, through the real boto3 SDK, against moto's KMS server
(tests/fakes/aws_kms.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

from control_plane.keys.aws import AwsKmsProvider
from control_plane.keys.providers import KeyReferenceInvalid, KeyUnavailable
from tests.fakes.aws_kms import FakeAwsKms, running_fake_aws_kms

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"


@pytest.fixture(scope="module")
def fake_kms() -> Iterator[FakeAwsKms]:
    with running_fake_aws_kms() as kms:
        yield kms


@pytest.fixture(scope="module")
def provider(fake_kms: FakeAwsKms) -> AwsKmsProvider:
    return AwsKmsProvider(region="us-east-1", endpoint_url=fake_kms.endpoint_url,
                          session=fake_kms.session)


@pytest.fixture
def key_id(fake_kms: FakeAwsKms) -> str:
    """A fresh KMS key per test, so disabling one cannot leak into another test."""
    return fake_kms.create_key()


@pytest.fixture
def dek() -> bytes:
    return os.urandom(32)


def test_round_trip_through_kms(provider: AwsKmsProvider, key_id: str, dek: bytes) -> None:
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_id)
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_id) == dek


def test_wrapped_blob_does_not_contain_the_dek(provider: AwsKmsProvider, key_id: str,
                                               dek: bytes) -> None:
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_id)
    assert isinstance(wrapped, bytes)
    assert dek not in wrapped
    assert dek.hex().encode() not in wrapped
    # Each wrap is freshly randomised: two wraps of one key never compare equal.
    assert provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_id) != wrapped


def test_key_arn_reference(provider: AwsKmsProvider, fake_kms: FakeAwsKms, key_id: str,
                           dek: bytes) -> None:
    arn = fake_kms.key_arn(key_id)
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=arn)
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_id) == dek


def test_alias_reference(provider: AwsKmsProvider, fake_kms: FakeAwsKms, key_id: str,
                         dek: bytes) -> None:
    alias = f"alias/magistrate/{key_id[:8]}"
    fake_kms.create_alias(alias, key_id)
    alias_arn = fake_kms.key_arn(key_id).replace(f"key/{key_id}", alias)

    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=alias)

    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=alias) == dek
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=alias_arn) == dek
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_id) == dek


def test_unknown_alias_is_unavailable(provider: AwsKmsProvider, dek: bytes) -> None:
    with pytest.raises(KeyUnavailable, match="NotFoundException"):
        provider.wrap(dek, tenant_id=TENANT_A, key_ref="alias/magistrate/never-created")


def test_other_tenant_cannot_unwrap(provider: AwsKmsProvider, key_id: str, dek: bytes) -> None:
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_id)

    with pytest.raises(KeyUnavailable) as excinfo:
        provider.unwrap(wrapped, tenant_id=TENANT_B, key_ref=key_id)

    assert excinfo.value.provider == "aws-kms"
    assert "InvalidCiphertextException" in str(excinfo.value)
    # The right tenant still opens it: the failure was the binding, not the blob.
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_id) == dek


def test_unwrap_with_another_key_fails(provider: AwsKmsProvider, fake_kms: FakeAwsKms,
                                       key_id: str, dek: bytes) -> None:
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_id)
    other_key = fake_kms.create_key()

    with pytest.raises(KeyUnavailable):
        provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=other_key)


@pytest.mark.parametrize("where", ["first byte", "middle", "last byte", "truncated"])
def test_tampered_blob_is_unavailable(provider: AwsKmsProvider, key_id: str, dek: bytes,
                                      where: str) -> None:
    wrapped = bytearray(provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_id))
    if where == "truncated":
        tampered = bytes(wrapped[:-1])
    else:
        index = {"first byte": 0, "middle": len(wrapped) // 2, "last byte": -1}[where]
        wrapped[index] ^= 0x01
        tampered = bytes(wrapped)

    with pytest.raises(KeyUnavailable):
        provider.unwrap(tampered, tenant_id=TENANT_A, key_ref=key_id)


def test_disabled_key_fails_closed_until_enabled(provider: AwsKmsProvider,
                                                 fake_kms: FakeAwsKms, key_id: str,
                                                 dek: bytes) -> None:
    wrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_id)
    fake_kms.disable_key(key_id)

    with pytest.raises(KeyUnavailable) as on_wrap:
        provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_id)
    with pytest.raises(KeyUnavailable) as on_unwrap:
        provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_id)

    for excinfo in (on_wrap, on_unwrap):
        message = str(excinfo.value)
        assert message.startswith("tenant key unavailable (aws-kms: ")
        assert "DisabledException" in message
        assert dek.hex() not in message

    fake_kms.enable_key(key_id)
    assert provider.unwrap(wrapped, tenant_id=TENANT_A, key_ref=key_id) == dek
    rewrapped = provider.wrap(dek, tenant_id=TENANT_A, key_ref=key_id)
    assert provider.unwrap(rewrapped, tenant_id=TENANT_A, key_ref=key_id) == dek


def test_unknown_key_is_unavailable(provider: AwsKmsProvider, dek: bytes) -> None:
    with pytest.raises(KeyUnavailable, match="NotFoundException"):
        provider.wrap(dek, tenant_id=TENANT_A, key_ref="11111111-2222-3333-4444-555555555555")


def test_unreachable_endpoint_is_unavailable_quickly(fake_kms: FakeAwsKms, dek: bytes,
                                                    refused_port: Callable[[], int]) -> None:
    nowhere = AwsKmsProvider(endpoint_url=f"http://127.0.0.1:{refused_port()}",
                             session=fake_kms.session)
    started = time.monotonic()

    with pytest.raises(KeyUnavailable, match="unreachable"):
        nowhere.wrap(dek, tenant_id=TENANT_A, key_ref="11111111-2222-3333-4444-555555555555")

    assert time.monotonic() - started < 5


VALID_REFERENCES = [
    "1234abcd-12ab-34cd-56ef-1234567890ab",
    "mrk-1234abcd12ab34cd56ef1234567890ab",
    "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "alias/magistrate-tenants",
    "alias/team/magistrate_tenants",
    "arn:aws:kms:eu-central-1:111122223333:alias/magistrate-tenants",
]

MALFORMED_REFERENCES = [
    "",
    "alias/",
    "alias/has space",
    "1234abcd",
    "key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "1234abcd-12ab-34cd-56ef-1234567890ab\n",
    "arn:aws:kms:us-east-1:1111:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:aws:s3:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:aws:kms:us-east-1:111122223333:key/not-a-key-id",
    "projects/p/locations/global/keyRings/r/cryptoKeys/k",
    "https://vault.vault.azure.net/keys/k",
]


@pytest.mark.parametrize("key_ref", VALID_REFERENCES)
def test_valid_references_are_accepted(provider: AwsKmsProvider, key_ref: str) -> None:
    provider.check_reference(key_ref)


@pytest.mark.parametrize("key_ref", MALFORMED_REFERENCES)
def test_malformed_references_are_rejected_before_any_call(
        fake_kms: FakeAwsKms, dek: bytes, key_ref: str, refused_port: Callable[[], int]) -> None:
    # An endpoint with nothing behind it: reaching the network would give KeyUnavailable.
    offline = AwsKmsProvider(endpoint_url=f"http://127.0.0.1:{refused_port()}",
                             session=fake_kms.session)

    with pytest.raises(KeyReferenceInvalid, match="alias name"):
        offline.check_reference(key_ref)
    with pytest.raises(KeyReferenceInvalid):
        offline.wrap(dek, tenant_id=TENANT_A, key_ref=key_ref)
    with pytest.raises(KeyReferenceInvalid):
        offline.unwrap(b"wrapped", tenant_id=TENANT_A, key_ref=key_ref)
