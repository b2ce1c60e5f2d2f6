"""The ``aws-kms`` provider: a tenant's data key is wrapped with ``kms.encrypt`` and unwrapped with
``kms.decrypt`` under a customer-managed KMS key, with the tenant id as encryption context, so a
wrapped key only opens for the tenant it was made for.

The key reference names the KMS key in one of the forms KMS itself accepts: a key id, a key ARN,
an alias name (``alias/...``) or an alias ARN. Disabling the key, scheduling its deletion or
removing Magistrate's access in the key policy is this provider's "revoke"; every such refusal,
and every network failure, is ``KeyUnavailable``.
"""

from __future__ import annotations

import re
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from control_plane.keys.providers import KeyReferenceInvalid, KeyUnavailable, tenant_context

# Fail fast: a tenant request waits on this call, and one retry covers a dropped connection.
CLIENT_CONFIG = Config(connect_timeout=3, read_timeout=10,
                       retries={"max_attempts": 2, "mode": "standard"})

_HEX = "[0-9a-fA-F]"
_KEY_ID = rf"(?:{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}|mrk-{_HEX}{{32}})"
_ALIAS = r"alias/[A-Za-z0-9/_-]{1,250}"
_ARN_PREFIX = r"arn:aws(?:-[a-z]+)*:kms:[a-z]{2}(?:-[a-z]+)+-\d:\d{12}:"
REF_PATTERN = re.compile(rf"{_ARN_PREFIX}(?:key/{_KEY_ID}|{_ALIAS})|{_ALIAS}|{_KEY_ID}")

# What an operator should look at, by AWS error code. Unknown codes are reported as they are.
_REASONS = {
    "DisabledException": "the KMS key is disabled",
    "KMSInvalidStateException": "the KMS key is not in a usable state (pending deletion or import)",
    "NotFoundException": "the KMS key does not exist in this account and region",
    "AccessDeniedException": "access to the KMS key was denied",
    "InvalidCiphertextException": "the wrapped key is damaged or belongs to another tenant",
    "IncorrectKeyException": "the wrapped key was made with a different KMS key",
    "KeyUnavailableException": "AWS KMS cannot reach the key material right now",
    "DependencyTimeoutException": "AWS KMS timed out",
    "KMSInternalException": "AWS KMS had an internal error",
    "UnrecognizedClientException": "the AWS credentials are not valid",
    "InvalidSignatureException": "the AWS credentials are not valid",
    "ExpiredTokenException": "the AWS credentials have expired",
    "ThrottlingException": "AWS KMS is throttling requests",
}


class AwsKmsProvider:
    name = "aws-kms"

    def __init__(self, *, region: str = "us-east-1", endpoint_url: str | None = None,
                 session: boto3.session.Session | None = None) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        session = session if session is not None else boto3.session.Session()
        # Clients are thread-safe; sessions are not, so the client is made once, here.
        self._client: Any = session.client("kms", region_name=region,
                                           endpoint_url=endpoint_url, config=CLIENT_CONFIG)

    def check_reference(self, key_ref: str) -> None:
        if not REF_PATTERN.fullmatch(key_ref):
            raise KeyReferenceInvalid(
                "An AWS KMS key reference is a key id (1234abcd-12ab-34cd-56ef-1234567890ab), "
                "a key ARN (arn:aws:kms:<region>:<account>:key/<key id>), an alias name "
                "(alias/<name>) or an alias ARN (arn:aws:kms:<region>:<account>:alias/<name>).")

    def wrap(self, dek: bytes, *, tenant_id: str, key_ref: str) -> bytes:
        self.check_reference(key_ref)
        try:
            response = self._client.encrypt(KeyId=key_ref, Plaintext=dek,
                                            EncryptionContext=tenant_context(tenant_id))
        except (ClientError, BotoCoreError) as exc:
            raise KeyUnavailable(self.name, _reason("encrypt", exc)) from None
        return bytes(response["CiphertextBlob"])

    def unwrap(self, wrapped: bytes, *, tenant_id: str, key_ref: str) -> bytes:
        self.check_reference(key_ref)
        try:
            response = self._client.decrypt(CiphertextBlob=wrapped, KeyId=key_ref,
                                            EncryptionContext=tenant_context(tenant_id))
        except (ClientError, BotoCoreError) as exc:
            raise KeyUnavailable(self.name, _reason("decrypt", exc)) from None
        return bytes(response["Plaintext"])


def _reason(operation: str, exc: ClientError | BotoCoreError) -> str:
    """A short sentence naming the AWS error code. Built from our own words only: AWS messages
    and botocore's parameter errors can quote the request, and the request holds the data key
    (which is also why the callers raise ``from None``)."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
        explanation = _REASONS.get(code, "AWS KMS refused the request")
        return f"{operation} failed with {code}: {explanation}"
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return f"{operation} failed: AWS KMS endpoint unreachable ({type(exc).__name__})"
    if isinstance(exc, ReadTimeoutError):
        return f"{operation} failed: AWS KMS did not answer in time (ReadTimeoutError)"
    if isinstance(exc, NoCredentialsError):
        return f"{operation} failed: no AWS credentials are configured (NoCredentialsError)"
    return f"{operation} failed: {type(exc).__name__}"
