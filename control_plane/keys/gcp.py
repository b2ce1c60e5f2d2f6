"""The ``gcp-kms`` provider: Cloud KMS symmetric ``encrypt`` / ``decrypt`` through the
google-cloud-kms SDK, with the tenant bound as additional authenticated data (AAD).

The key reference is a CryptoKey resource name,
``projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>``, without a version: Cloud KMS
encrypts with the primary version and finds the version for decrypt inside the ciphertext, so
rotation needs nothing from us and old wrapped keys keep opening.

Every call sends CRC32C checksums of what it sends and checks the ones that come back, as Google
asks of clients (https://cloud.google.com/kms/docs/data-integrity-guidelines); a response that
fails the check is discarded and the call retried a limited number of times.

Production uses Google's endpoint, Application Default Credentials and gRPC. Tests point the REST
transport at a local fake: ``endpoint="http://127.0.0.1:PORT"`` with ``transport="rest"``;
the REST transport keeps an explicit ``http://`` scheme in ``api_endpoint`` (its ``url_scheme``
only applies to endpoints given without one).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable

import requests
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from google.cloud import kms_v1
from google.protobuf import json_format

from control_plane.keys.providers import KeyReferenceInvalid, KeyUnavailable, tenant_context

REF_PATTERN = re.compile(
    r"^projects/[a-z0-9][a-z0-9.:-]{0,62}"
    r"/locations/[a-z0-9][a-z0-9-]{0,62}"
    r"/keyRings/[A-Za-z0-9_-]{1,63}"
    r"/cryptoKeys/[A-Za-z0-9_-]{1,63}$"
)
TRANSPORTS = ("grpc", "rest")

# Each attempt may take CALL_TIMEOUT seconds; UNAVAILABLE and DEADLINE_EXCEEDED are retried with
# backoff until RETRY_BUDGET seconds have passed, so an unreachable KMS fails within ~10 seconds.
CALL_TIMEOUT = 5.0
RETRY_BUDGET = 5.0
RETRY = api_retry.Retry(
    initial=0.1,
    maximum=1.0,
    multiplier=2.0,
    predicate=api_retry.if_exception_type(
        api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded
    ),
    timeout=RETRY_BUDGET,
)
# Google: on a checksum mismatch "discard the response and perform a limited number of retries".
INTEGRITY_ATTEMPTS = 3

# What the caller may read in KeyUnavailable, by gRPC status name (REST errors carry it in JSON).
STATUS_REASONS = {
    "PERMISSION_DENIED": "access to the key is denied",
    "UNAUTHENTICATED": "the KMS did not accept our credentials",
    "NOT_FOUND": "the key does not exist",
    "FAILED_PRECONDITION": "the key version is disabled or destroyed",
    "INVALID_ARGUMENT": "the KMS rejected the request: wrong key or tenant, or damaged data",
    "UNAVAILABLE": "the KMS is unreachable",
    "DEADLINE_EXCEEDED": "the KMS did not answer in time",
    "RESOURCE_EXHAUSTED": "the KMS quota is exhausted",
}


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum Cloud KMS uses for its integrity fields.

    Pure Python because ``google-crc32c`` is not among the project's dependencies; Magistrate only
    checksums 32-byte keys and their short wrappings, so speed does not matter here."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def tenant_aad(tenant_id: str) -> bytes:
    """The AAD for a tenant: ``tenant_context`` as canonical JSON (sorted keys, no spaces)."""
    return json.dumps(tenant_context(tenant_id), sort_keys=True, separators=(",", ":")).encode()


class _IntegrityError(Exception):
    """A response failed its CRC32C checks; retried, then reported as KeyUnavailable."""


class GcpKmsProvider:
    name = "gcp-kms"

    def __init__(self, *, endpoint: str | None = None, credentials: Credentials | None = None,
                 transport: str = "grpc") -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        self.endpoint = endpoint
        self.credentials = credentials
        self.transport = transport
        self._client: kms_v1.KeyManagementServiceClient | None = None
        self._client_lock = threading.Lock()

    def check_reference(self, key_ref: str) -> None:
        if "/cryptoKeyVersions/" in key_ref:
            raise KeyReferenceInvalid(
                "A gcp-kms key reference names a CryptoKey, not a version: drop the "
                "'/cryptoKeyVersions/...' part (Cloud KMS picks the version itself).")
        if not REF_PATTERN.fullmatch(key_ref):
            raise KeyReferenceInvalid(
                "A gcp-kms key reference is a CryptoKey resource name: "
                "projects/<project>/locations/<location>/keyRings/<ring>/cryptoKeys/<key>.")

    def client(self) -> kms_v1.KeyManagementServiceClient:
        """The SDK client, created on first use (so importing or configuring needs no
        credentials) and shared afterwards."""
        with self._client_lock:
            if self._client is None:
                options = ClientOptions(api_endpoint=self.endpoint) if self.endpoint else None
                self._client = kms_v1.KeyManagementServiceClient(
                    credentials=self.credentials, transport=self.transport,
                    client_options=options)
            return self._client

    def close(self) -> None:
        """Close the SDK's connections (the gRPC channel or HTTP session), if any were opened."""
        with self._client_lock:
            if self._client is not None:
                # The SDK leaves transport.close() unannotated.
                self._client.transport.close()  # type: ignore[no-untyped-call]
                self._client = None

    def wrap(self, dek: bytes, *, tenant_id: str, key_ref: str) -> bytes:
        self.check_reference(key_ref)
        aad = tenant_aad(tenant_id)
        request = {
            "name": key_ref,
            "plaintext": dek,
            "additional_authenticated_data": aad,
            "plaintext_crc32c": crc32c(dek),
            "additional_authenticated_data_crc32c": crc32c(aad),
        }

        def attempt() -> bytes:
            response = self.client().encrypt(request=request, retry=RETRY, timeout=CALL_TIMEOUT)
            if not response.verified_plaintext_crc32c:
                raise _IntegrityError("the KMS did not verify the plaintext checksum")
            if not response.verified_additional_authenticated_data_crc32c:
                raise _IntegrityError("the KMS did not verify the AAD checksum")
            if response.ciphertext_crc32c != crc32c(response.ciphertext):
                raise _IntegrityError("the ciphertext checksum does not match")
            if not response.name.startswith(key_ref + "/cryptoKeyVersions/"):
                raise _IntegrityError("the KMS encrypted with a key other than the one asked for")
            return bytes(response.ciphertext)

        return self._call(attempt)

    def unwrap(self, wrapped: bytes, *, tenant_id: str, key_ref: str) -> bytes:
        self.check_reference(key_ref)
        aad = tenant_aad(tenant_id)
        request = {
            "name": key_ref,
            "ciphertext": wrapped,
            "additional_authenticated_data": aad,
            "ciphertext_crc32c": crc32c(wrapped),
            "additional_authenticated_data_crc32c": crc32c(aad),
        }

        def attempt() -> bytes:
            response = self.client().decrypt(request=request, retry=RETRY, timeout=CALL_TIMEOUT)
            if response.plaintext_crc32c != crc32c(response.plaintext):
                raise _IntegrityError("the plaintext checksum does not match")
            return bytes(response.plaintext)

        return self._call(attempt)

    def _call(self, attempt: Callable[[], bytes]) -> bytes:
        """Run ``attempt`` (one SDK call and its checks), retrying integrity failures a few
        times; every SDK, auth or transport error becomes KeyUnavailable."""
        integrity_failure = ""
        for _ in range(INTEGRITY_ATTEMPTS):
            try:
                return attempt()
            except _IntegrityError as exc:
                integrity_failure = str(exc)
            except api_exceptions.RetryError as exc:
                cause = exc.cause
                detail = f", last error {type(cause).__name__}" if cause is not None else ""
                raise KeyUnavailable(
                    self.name, f"the KMS did not answer in time (RetryError{detail})") from None
            except api_exceptions.GoogleAPICallError as exc:
                raise KeyUnavailable(self.name, _call_error_reason(exc)) from None
            except api_exceptions.GoogleAPIError as exc:
                raise KeyUnavailable(self.name, f"the KMS call failed ({type(exc).__name__})") \
                    from None
            except auth_exceptions.GoogleAuthError as exc:
                raise KeyUnavailable(self.name, f"no usable Google credentials "
                                                f"({type(exc).__name__})") from None
            except requests.RequestException as exc:
                raise KeyUnavailable(self.name, f"the KMS is unreachable "
                                                f"({type(exc).__name__})") from None
            except json_format.ParseError:
                raise KeyUnavailable(self.name, "the KMS sent a response we cannot read "
                                                "(ParseError)") from None
        raise KeyUnavailable(self.name, f"integrity check failed {INTEGRITY_ATTEMPTS} times: "
                                        f"{integrity_failure}")


def _status_name(exc: api_exceptions.GoogleAPICallError) -> str:
    """The gRPC status name of an SDK error. gRPC errors carry it; REST errors are classed by
    HTTP status only (403 is ``Forbidden``, 400 ``BadRequest``), so read the JSON body's
    ``error.status``, as the Google JSON error format puts it there."""
    if exc.grpc_status_code is not None:
        return str(exc.grpc_status_code.name)
    response = exc.response
    if isinstance(response, requests.Response):
        try:
            status = response.json().get("error", {}).get("status")
        except (ValueError, AttributeError):
            status = None
        if isinstance(status, str) and status.isupper():
            return status
    return f"HTTP {exc.code}" if exc.code is not None else "no status"


def _call_error_reason(exc: api_exceptions.GoogleAPICallError) -> str:
    status = _status_name(exc)
    reason = STATUS_REASONS.get(status, "the KMS call failed")
    return f"{reason} ({type(exc).__name__}, {status})"
