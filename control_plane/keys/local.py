"""The ``local`` provider: AES-256-GCM key-encryption keys in files under
``$MAGISTRATE_HOME/keys`` (mode 0600). For development and tests only; production refuses it.

The key reference is the key's file name (letters, digits, ``-`` and ``_``). Deleting or
renaming the file is this provider's "revoke"."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from control_plane.keys.providers import KeyReferenceInvalid, KeyUnavailable

REF_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class LocalKeyProvider:
    name = "local"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def check_reference(self, key_ref: str) -> None:
        if not REF_PATTERN.fullmatch(key_ref):
            raise KeyReferenceInvalid("A local key reference is a file name of letters, digits, "
                                      "'-' and '_' (at most 64 characters).")

    def path(self, key_ref: str) -> Path:
        self.check_reference(key_ref)
        return self.folder / f"{key_ref}.key"

    def create_key(self, key_ref: str) -> Path:
        """Create the KEK file if it does not exist (what an operator does in a real KMS)."""
        path = self.path(key_ref)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(AESGCM.generate_key(bit_length=256))
        return path

    def _kek(self, key_ref: str) -> AESGCM:
        path = self.path(key_ref)
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            raise KeyUnavailable(self.name, f"key {key_ref!r} does not exist") from None
        except PermissionError:
            raise KeyUnavailable(self.name, f"key {key_ref!r} is not readable") from None
        if len(key) != 32:
            raise KeyUnavailable(self.name, f"key {key_ref!r} is not a 256-bit key")
        return AESGCM(key)

    def wrap(self, dek: bytes, *, tenant_id: str, key_ref: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._kek(key_ref).encrypt(nonce, dek, f"tenant:{tenant_id}".encode())

    def unwrap(self, wrapped: bytes, *, tenant_id: str, key_ref: str) -> bytes:
        try:
            return self._kek(key_ref).decrypt(wrapped[:12], wrapped[12:],
                                              f"tenant:{tenant_id}".encode())
        except InvalidTag:
            raise KeyUnavailable(self.name, "the wrapped key does not open with this key") \
                from None
