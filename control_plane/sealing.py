"""Sealing control-plane secrets (the TOTP seed, later tenant role passwords).

AES-256-GCM under a key derived (HKDF-SHA256) from ``MAGISTRATE_SECRET_KEY``; the associated data
names the table, column and row, so a ciphertext copied to another row does not open.
Layout: ``version (1 byte) | nonce (12 bytes) | ciphertext+tag``.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1


class SealError(Exception):
    """A sealed value does not open: wrong key, wrong row, or tampered bytes."""


class ControlSealer:
    def __init__(self, secret_key: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"magistrate-control-seal",
                   info=b"control-plane sealing v1").derive(secret_key.encode())
        self._aead = AESGCM(key)

    @staticmethod
    def _aad(table: str, column: str, row_key: str | int) -> bytes:
        return f"control|{table}|{column}|{row_key}|{VERSION}".encode()

    def seal(self, plaintext: bytes, *, table: str, column: str, row_key: str | int) -> bytes:
        nonce = os.urandom(12)
        return bytes([VERSION]) + nonce + self._aead.encrypt(
            nonce, plaintext, self._aad(table, column, row_key))

    def open(self, sealed: bytes, *, table: str, column: str, row_key: str | int) -> bytes:
        if len(sealed) < 29 or sealed[0] != VERSION:
            raise SealError("sealed value has an unknown format")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:],
                                      self._aad(table, column, row_key))
        except InvalidTag:
            raise SealError("sealed value does not open for this row") from None
