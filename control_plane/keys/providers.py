"""The key-provider contract. Each adapter wraps and unwraps a tenant's 256-bit data key with the
tenant's key-encryption key, through the provider's own SDK:

    local           a key file (mode 0600) under $MAGISTRATE_HOME; development only
    aws-kms         boto3 ``kms.encrypt`` / ``kms.decrypt``, encryption context = tenant id
    azure-keyvault  azure-keyvault-keys ``CryptographyClient.wrap_key`` / ``unwrap_key``,
                    RSA-OAEP-256, credentials from azure-identity
    gcp-kms         google-cloud-kms ``encrypt`` / ``decrypt`` with additional authenticated data

Any failure to use the KEK (revoked, disabled, access removed, unreachable) raises
``KeyUnavailable``: callers fail closed and never fall back to another key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class KeyUnavailable(Exception):
    """The tenant's key-encryption key cannot be used right now. ``str()`` is safe to show."""

    def __init__(self, provider: str, reason: str) -> None:
        self.provider = provider
        self.reason = reason
        super().__init__(f"tenant key unavailable ({provider}: {reason})")


class KeyReferenceInvalid(ValueError):
    """A key reference that cannot name a key of this provider; the message says what to fix."""


def tenant_context(tenant_id: str) -> dict[str, str]:
    """What binds a wrapped key to its tenant (AWS encryption context, GCP AAD)."""
    return {"magistrate:tenant": tenant_id}


class KeyProvider(Protocol):
    name: str

    def check_reference(self, key_ref: str) -> None:
        """Raise KeyReferenceInvalid when ``key_ref`` is malformed for this provider."""

    def wrap(self, dek: bytes, *, tenant_id: str, key_ref: str) -> bytes:
        """Encrypt ``dek`` under the KEK named by ``key_ref``; raises KeyUnavailable."""

    def unwrap(self, wrapped: bytes, *, tenant_id: str, key_ref: str) -> bytes:
        """Decrypt a wrapped DEK; raises KeyUnavailable (never returns a wrong key)."""


@dataclass(frozen=True)
class ProviderEndpoints:
    """Where the SDKs connect. Empty values mean the provider's public endpoints; tests and
    private deployments (VPC endpoints) set them."""

    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    gcp_endpoint: str | None = None
