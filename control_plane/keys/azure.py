"""The ``azure-keyvault`` provider: RSA-OAEP-256 ``wrap_key`` / ``unwrap_key`` with an Azure Key
Vault (or Managed HSM) RSA key, through azure-keyvault-keys' ``CryptographyClient``; credentials
come from azure-identity's ``DefaultAzureCredential`` unless one is given.

The key reference is the key identifier URL, ``https://<vault-host>/keys/<name>`` (the latest
version) or ``https://<vault-host>/keys/<name>/<version>`` (pinned).

What the SDK does, and what this module does about it:

* Given a key, ``CryptographyClient`` first GETs it and, holding the public key, wraps *locally*;
  only the unwrap (private key) runs in Key Vault. So wrap always asks Key Vault for the key:
  that resolves "latest" to a version, and lets us refuse a disabled key (Key Vault would still
  let its public key be used, and new data sealed under a key the tenant switched off is data
  nobody asked for). The identity therefore needs keys/get, wrapKey and unwrapKey ("Key Vault
  Crypto Service Encryption User").
* Key Vault unwraps with the version named in the URL, and with no version, the latest one: after
  a rotation that is the wrong key. So the wrapped bytes carry the versioned key id that wrapped
  them, ``AKV1 | u16 length | kid (UTF-8) | RSA-OAEP-256 ciphertext``, and unwrap uses that id
  (checked to name the same vault and key as the reference).
* Every Azure error (HTTP 401/403/404, unreachable vault, no credential, a challenge for another
  resource) becomes ``KeyUnavailable``; retries and timeouts are bounded so an unreachable vault
  fails within seconds.
"""

from __future__ import annotations

import re
import struct
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from control_plane.keys.providers import KeyReferenceInvalid, KeyUnavailable

# Key Vault object names: 1-127 letters, digits and dashes; versions are 32 hex digits in Key
# Vault (accepted more loosely here, the service is the judge of which versions exist).
KEY_PATH = re.compile(r"^/keys/(?P<name>[A-Za-z0-9-]{1,127})(?:/(?P<version>[A-Za-z0-9]{1,64}))?$")
REF_HINT = ("An Azure Key Vault key reference is the key identifier URL, "
            "https://<vault>.vault.azure.net/keys/<name> or .../keys/<name>/<version>")

MAGIC = b"AKV1"
KID_LENGTH = struct.Struct(">H")
ALGORITHM = KeyWrapAlgorithm.rsa_oaep_256

# azure-core pipeline options: two retries with short backoff (sleeps 0 s, then 1 s) and
# per-attempt timeouts, so an unreachable vault fails within seconds, not the 300 s default.
CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 2,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 2,
    "connection_timeout": 5,
    "read_timeout": 10,
}


@dataclass(frozen=True)
class KeyId:
    """A parsed key identifier URL."""

    vault_url: str
    name: str
    version: str | None

    @property
    def vault(self) -> str:
        """The vault's authority, compared case-insensitively and without the default port."""
        authority = urlsplit(self.vault_url).netloc.lower()
        return authority.removesuffix(":443")

    def same_key(self, other: KeyId) -> bool:
        return self.vault == other.vault and self.name.lower() == other.name.lower()


def parse_key_id(key_ref: str) -> KeyId:
    """Split a key identifier URL; raises KeyReferenceInvalid with what is wrong."""
    try:
        parts = urlsplit(key_ref)
        port = parts.port
    except ValueError:
        raise KeyReferenceInvalid(f"{REF_HINT}; this is not a URL.") from None
    if parts.scheme != "https":
        raise KeyReferenceInvalid(f"{REF_HINT}; it must start with https://.")
    if not parts.hostname or parts.username or parts.password or port == 0:
        raise KeyReferenceInvalid(f"{REF_HINT}; the vault host is missing or malformed.")
    if parts.query or parts.fragment or "?" in key_ref or "#" in key_ref:
        raise KeyReferenceInvalid(f"{REF_HINT}; it takes no query or fragment.")
    match = KEY_PATH.fullmatch(parts.path)
    if match is None:
        raise KeyReferenceInvalid(f"{REF_HINT}; the path must be /keys/<name> or "
                                  "/keys/<name>/<version> (letters, digits and dashes).")
    return KeyId(vault_url=f"https://{parts.netloc}", name=match["name"],
                 version=match["version"])


def pack(kid: str, encrypted_key: bytes) -> bytes:
    raw_kid = kid.encode()
    return MAGIC + KID_LENGTH.pack(len(raw_kid)) + raw_kid + encrypted_key


def unpack(wrapped: bytes) -> tuple[str, bytes]:
    """The key id and ciphertext of a wrapped key; ValueError when it is not in our format."""
    start = len(MAGIC) + KID_LENGTH.size
    if len(wrapped) <= start or not wrapped.startswith(MAGIC):
        raise ValueError("not an azure-keyvault wrapped key")
    (length,) = KID_LENGTH.unpack_from(wrapped, len(MAGIC))
    if len(wrapped) <= start + length:
        raise ValueError("truncated azure-keyvault wrapped key")
    return wrapped[start:start + length].decode(), wrapped[start + length:]


def describe(error: Exception) -> str:
    """A short reason, safe to show, naming the HTTP status and Key Vault's error code."""
    if isinstance(error, HttpResponseError) and error.status_code is not None:
        code = error.error.code if error.error is not None else None
        message = (error.error.message if error.error is not None else None) or ""
        if error.status_code == 403 and "disabled key" in message:
            return f"the key is disabled (HTTP 403 {code or 'Forbidden'})"
        reason = {401: "Key Vault refused the credential",
                  403: "access to the key was refused",
                  404: "the key or key version does not exist"}.get(error.status_code,
                                                                     "Key Vault refused the call")
        return f"{reason} (HTTP {error.status_code}{' ' + code if code else ''})"
    if isinstance(error, ClientAuthenticationError):
        return f"no access token for Key Vault ({type(error).__name__})"
    if isinstance(error, ServiceRequestError):
        return f"cannot reach Key Vault ({type(error).__name__})"
    if isinstance(error, ServiceResponseError):
        return f"Key Vault did not answer in time ({type(error).__name__})"
    if isinstance(error, AzureError):
        return f"Key Vault call failed ({type(error).__name__})"
    # ValueError from the SDK: a key outside its validity period, or an auth challenge naming a
    # resource that is not this vault's domain (the SDK then sends no token at all).
    first_sentence = str(error).split(". ")[0][:160]
    return f"{first_sentence} ({type(error).__name__})"


class AzureKeyVaultProvider:
    name = "azure-keyvault"

    def __init__(self, *, credential: TokenCredential | None = None,
                 connection_verify: str | bool = True,
                 verify_challenge_resource: bool = True) -> None:
        """``connection_verify`` is a CA bundle path (or False). ``verify_challenge_resource``
        makes the SDK refuse to send a token when the vault's auth challenge names a resource
        that is not a parent domain of the vault host; only tests against a local fake at
        127.0.0.1 turn it off."""
        self._credential = credential
        self._credential_lock = threading.Lock()
        self._options: dict[str, Any] = {
            **CLIENT_OPTIONS,
            "connection_verify": connection_verify,
            "verify_challenge_resource": verify_challenge_resource,
        }

    def _token_credential(self) -> TokenCredential:
        with self._credential_lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential  # slow import; only if used

                self._credential = DefaultAzureCredential()
            return self._credential

    def check_reference(self, key_ref: str) -> None:
        parse_key_id(key_ref)

    # RSA-OAEP has no associated data, so this provider cannot bind the tenant: ``tenant_id`` is
    # accepted for the contract and not used. The sealed data binds the tenant in its own AAD.
    def wrap(self, dek: bytes, *, tenant_id: str, key_ref: str) -> bytes:
        ref = parse_key_id(key_ref)
        credential = self._token_credential()
        try:
            with KeyClient(ref.vault_url, credential, **self._options) as keys:
                key = keys.get_key(ref.name, ref.version)
            if not key.properties.enabled:
                raise KeyUnavailable(self.name, "the key is disabled")
            with CryptographyClient(key, credential, **self._options) as crypto:
                result = crypto.wrap_key(ALGORITHM, dek)
        except (AzureError, ValueError, OSError) as exc:
            raise KeyUnavailable(self.name, describe(exc)) from None
        kid = result.key_id or ""
        try:
            used = parse_key_id(kid)
        except KeyReferenceInvalid:
            used = None
        if used is None or used.version is None or not used.same_key(ref):
            raise KeyUnavailable(self.name, "Key Vault did not name the key version it used")
        return pack(kid, result.encrypted_key)

    def unwrap(self, wrapped: bytes, *, tenant_id: str, key_ref: str) -> bytes:
        ref = parse_key_id(key_ref)
        try:
            kid, encrypted_key = unpack(wrapped)
            used = parse_key_id(kid)
        except (ValueError, UnicodeDecodeError):  # KeyReferenceInvalid is a ValueError
            raise KeyUnavailable(self.name, "the wrapped key is not in the azure-keyvault "
                                            "format") from None
        if used.version is None or not used.same_key(ref):
            raise KeyUnavailable(self.name, f"the wrapped key was made with another key "
                                            f"({used.name} in {used.vault})")
        credential = self._token_credential()
        try:
            with CryptographyClient(kid, credential, **self._options) as crypto:
                return crypto.unwrap_key(ALGORITHM, encrypted_key).key
        except (AzureError, ValueError, OSError) as exc:
            raise KeyUnavailable(self.name, describe(exc)) from None
