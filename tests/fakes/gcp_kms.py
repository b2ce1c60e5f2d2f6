"""A local Cloud KMS that speaks the v1 REST protocol the google-cloud-kms REST transport uses,
for the two calls Magistrate makes:

    POST /v1/{name=projects/*/locations/*/keyRings/*/cryptoKeys/**}:encrypt
    POST /v1/{name=projects/*/locations/*/keyRings/*/cryptoKeys/**}:decrypt

Bodies are proto3 JSON (bytes base64, int64 checksums as strings). The cryptography is real: each
CryptoKeyVersion has its own AES-256-GCM key, the ciphertext carries the version id, and the AAD is
bound by GCM. Errors are Google JSON errors with the status the real service uses: disabled
version → 400 FAILED_PRECONDITION, unknown key → 404 NOT_FOUND, wrong AAD or damaged ciphertext
→ 400 INVALID_ARGUMENT, access revoked → 403 PERMISSION_DENIED.

The CRC32C here is a bitwise implementation written apart from the provider's table-driven one,
so a checksum bug in either shows up as a failed integrity check.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PATH = re.compile(r"^/v1/(?P<name>projects/[^/]+/locations/[^/]+/keyRings/[^/]+"
                  r"/cryptoKeys/[^/:]+):(?P<method>encrypt|decrypt)$")
MAGIC = b"FKMS"
HEADER = struct.Struct(">4sI")  # magic, version id; then the 12-byte nonce and GCM output
NONCE_SIZE = 12
PROTECTION_LEVEL_SOFTWARE = 1


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


class KmsError(Exception):
    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message


@dataclass
class KeyVersion:
    number: int
    aes_key: bytes = field(default_factory=lambda: AESGCM.generate_key(bit_length=256))
    enabled: bool = True


@dataclass
class CryptoKey:
    name: str
    versions: dict[int, KeyVersion] = field(default_factory=dict)
    primary: int = 0

    def add_version(self) -> KeyVersion:
        version = KeyVersion(number=len(self.versions) + 1)
        self.versions[version.number] = version
        self.primary = version.number
        return version

    def version_name(self, number: int) -> str:
        return f"{self.name}/cryptoKeyVersions/{number}"


class FakeGcpKms:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, CryptoKey] = {}
        self._access = True
        self._corrupt_responses = 0
        self.requests: list[tuple[str, bool]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host!s}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-gcp-kms",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    # ---- what an operator does in the console -------------------------------------------------

    def create_key(self, project: str = "p", location: str = "global", ring: str = "r", *,
                   key: str) -> str:
        name = f"projects/{project}/locations/{location}/keyRings/{ring}/cryptoKeys/{key}"
        with self._lock:
            crypto_key = CryptoKey(name=name)
            crypto_key.add_version()
            self._keys[name] = crypto_key
        return name

    def rotate_key(self, name: str) -> None:
        with self._lock:
            self._keys[name].add_version()

    def disable_key(self, name: str) -> None:
        with self._lock:
            key = self._keys[name]
            key.versions[key.primary].enabled = False

    def enable_key(self, name: str) -> None:
        with self._lock:
            key = self._keys[name]
            key.versions[key.primary].enabled = True

    def revoke_access(self) -> None:
        with self._lock:
            self._access = False

    def restore_access(self) -> None:
        with self._lock:
            self._access = True

    def corrupt_responses(self, count: int) -> None:
        """Flip a bit in the data of the next ``count`` successful responses, leaving their
        checksums as they were (a damaged response in transit)."""
        with self._lock:
            self._corrupt_responses = count

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ---- the service -----------------------------------------------------------------------

    def handle(self, path: str, body: dict[str, Any], numeric_enums: bool) -> dict[str, Any]:
        match = PATH.fullmatch(path)
        if match is None:
            raise KmsError(404, "NOT_FOUND", f"The requested URL {path} was not found.")
        name, method = unquote(match["name"]), match["method"]
        aad = _bytes_field(body, "additionalAuthenticatedData")
        with self._lock:
            self.requests.append((path, bool(aad)))
            if not self._access:
                permission = "useToEncrypt" if method == "encrypt" else "useToDecrypt"
                raise KmsError(403, "PERMISSION_DENIED",
                               f"Permission 'cloudkms.cryptoKeyVersions.{permission}' denied on "
                               f"resource '{name}' (or it may not exist).")
            key = self._keys.get(name)
            if key is None:
                raise KmsError(404, "NOT_FOUND", f"{name} not found.")
            _check_crc(body, "additionalAuthenticatedData", aad)
            if method == "encrypt":
                answer = self._encrypt(key, body, aad, numeric_enums)
            else:
                answer = self._decrypt(key, body, aad, numeric_enums)
            if self._corrupt_responses > 0:
                self._corrupt_responses -= 1
                field_name = "ciphertext" if method == "encrypt" else "plaintext"
                damaged = bytearray(base64.b64decode(answer[field_name]))
                damaged[-1] ^= 0x01
                answer[field_name] = base64.b64encode(bytes(damaged)).decode()
            return answer

    def _encrypt(self, key: CryptoKey, body: dict[str, Any], aad: bytes,
                 numeric_enums: bool) -> dict[str, Any]:
        plaintext = _bytes_field(body, "plaintext")
        if not plaintext:
            raise KmsError(400, "INVALID_ARGUMENT", "Plaintext is required.")
        _check_crc(body, "plaintext", plaintext)
        version = key.versions[key.primary]
        if not version.enabled:
            raise KmsError(400, "FAILED_PRECONDITION",
                           f"{key.version_name(version.number)} is not enabled, "
                           f"current state is: DISABLED.")
        nonce = os.urandom(NONCE_SIZE)
        ciphertext = (HEADER.pack(MAGIC, version.number) + nonce
                      + AESGCM(version.aes_key).encrypt(nonce, plaintext, aad))
        return {
            "name": key.version_name(version.number),
            "ciphertext": base64.b64encode(ciphertext).decode(),
            "ciphertextCrc32c": str(crc32c(ciphertext)),
            "verifiedPlaintextCrc32c": "plaintextCrc32c" in body,
            "verifiedAdditionalAuthenticatedDataCrc32c":
                "additionalAuthenticatedDataCrc32c" in body,
            "protectionLevel": PROTECTION_LEVEL_SOFTWARE if numeric_enums else "SOFTWARE",
        }

    def _decrypt(self, key: CryptoKey, body: dict[str, Any], aad: bytes,
                 numeric_enums: bool) -> dict[str, Any]:
        ciphertext = _bytes_field(body, "ciphertext")
        _check_crc(body, "ciphertext", ciphertext)
        undecryptable = KmsError(400, "INVALID_ARGUMENT",
                                 "Decryption failed: the ciphertext is invalid.")
        if len(ciphertext) < HEADER.size + NONCE_SIZE:
            raise undecryptable
        magic, number = HEADER.unpack_from(ciphertext)
        version = key.versions.get(number)
        if magic != MAGIC or version is None:
            raise undecryptable
        if not version.enabled:
            raise KmsError(400, "FAILED_PRECONDITION",
                           f"{key.version_name(number)} is not enabled, "
                           f"current state is: DISABLED.")
        nonce = ciphertext[HEADER.size:HEADER.size + NONCE_SIZE]
        try:
            plaintext = AESGCM(version.aes_key).decrypt(
                nonce, ciphertext[HEADER.size + NONCE_SIZE:], aad)
        except InvalidTag:
            raise KmsError(400, "INVALID_ARGUMENT", "Decryption failed: verify that 'name' "
                           "refers to the correct CryptoKey.") from None
        return {
            "plaintext": base64.b64encode(plaintext).decode(),
            "plaintextCrc32c": str(crc32c(plaintext)),
            "usedPrimary": number == key.primary,
            "protectionLevel": PROTECTION_LEVEL_SOFTWARE if numeric_enums else "SOFTWARE",
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server naming)
                url = urlsplit(self.path)
                # The SDK asks for numeric enums with ?$alt=json;enum-encoding=int
                numeric_enums = "enum-encoding=int" in unquote(url.query)
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    try:
                        body = json.loads(self.rfile.read(length) or b"{}")
                    except ValueError:
                        raise KmsError(400, "INVALID_ARGUMENT", "Invalid JSON payload.") \
                            from None
                    answer = fake.handle(url.path, body, numeric_enums)
                except KmsError as exc:
                    self._send(exc.code, {"error": {"code": exc.code, "message": exc.message,
                                                    "status": exc.status}})
                else:
                    self._send(200, answer)

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler


def _bytes_field(body: dict[str, Any], name: str) -> bytes:
    try:
        return base64.b64decode(body.get(name) or "", validate=True)
    except binascii.Error:
        raise KmsError(400, "INVALID_ARGUMENT",
                       f"Invalid value at '{name}' (TYPE_BYTES), Base64 decoding failed.") \
            from None


def _check_crc(body: dict[str, Any], name: str, data: bytes) -> None:
    field_name = f"{name}Crc32c"
    if field_name in body and int(body[field_name]) != crc32c(data):
        raise KmsError(400, "INVALID_ARGUMENT",
                       f"The checksum in field {field_name} did not match the data in field "
                       f"{name}.")


@contextmanager
def running_fake_gcp_kms() -> Iterator[FakeGcpKms]:
    fake = FakeGcpKms()
    try:
        yield fake
    finally:
        fake.stop()
