"""Sealed columns: AES-256-GCM under the tenant's data key.

Associated data is ``tenant | table | column | row key | key version``, so a ciphertext copied to
another row, column or tenant does not open. Layout of a sealed value:

    b"S1" | key version (4 bytes, big-endian) | nonce (12 bytes) | ciphertext + tag
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenant_runtime.exceptions import SealedValueRefused

MAGIC = b"S1"
HEADER = struct.Struct(">2sI")

# Gives the data key of a version; raises TenantKeyUnavailable when the KEK cannot be used.
DataKeySource = Callable[[int], bytes]


class TenantSealer:
    def __init__(self, tenant_id: str, current_version: int, key_for: DataKeySource) -> None:
        self.tenant_id = tenant_id
        self.current_version = current_version
        self._key_for = key_for

    def ensure_available(self) -> None:
        """Fail (TenantKeyUnavailable) unless the current data key can be had: what a cache of
        opened values calls on each use, so it stops when the customer's key is revoked, as
        soon as an uncached read would."""
        self._key_for(self.current_version)

    def _aad(self, table: str, column: str, row_key: str | int, version: int) -> bytes:
        return f"{self.tenant_id}|{table}|{column}|{row_key}|{version}".encode()

    def seal(self, plaintext: str | bytes, *, table: str, column: str,
             row_key: str | int, version: int | None = None) -> bytes:
        """Seal under the current data-key version, or ``version`` (a value moved to another
        tenant id keeps its version: control_plane/backups/copy.py)."""
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        version = self.current_version if version is None else version
        aead = AESGCM(self._key_for(version))
        nonce = os.urandom(12)
        return HEADER.pack(MAGIC, version) + nonce + aead.encrypt(
            nonce, data, self._aad(table, column, row_key, version))

    def open(self, sealed: bytes, *, table: str, column: str, row_key: str | int) -> bytes:
        if len(sealed) < HEADER.size + 12 + 16:
            raise SealedValueRefused("A sealed value is too short to be valid.")
        magic, version = HEADER.unpack_from(sealed)
        if magic != MAGIC:
            raise SealedValueRefused("A sealed value has an unknown format.")
        aead = AESGCM(self._key_for(version))
        body = sealed[HEADER.size:]
        try:
            return aead.decrypt(body[:12], body[12:],
                                self._aad(table, column, row_key, version))
        except InvalidTag:
            raise SealedValueRefused() from None

    def open_text(self, sealed: bytes, *, table: str, column: str, row_key: str | int) -> str:
        return self.open(sealed, table=table, column=column, row_key=row_key).decode()

    @staticmethod
    def version_of(sealed: bytes) -> int:
        return int(HEADER.unpack_from(sealed)[1])
