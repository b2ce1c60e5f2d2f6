"""The encrypted object of a backup: AES-256-GCM in authenticated chunks, so a dump of any size
is encrypted as it is written and decrypted as it is read, and no chunk can be altered, dropped,
reordered, or the object cut short, without the reader noticing.

Layout (all integers big-endian):

    b"MGBK0001"  | nonce prefix (8 random bytes)
    then chunks:   flags+length (4 bytes: bit 31 = last chunk, bits 0-30 = ciphertext length)
                   | ciphertext (plaintext of at most CHUNK bytes, then the 16-byte tag)

Chunk ``i``'s nonce is ``prefix | i`` (4 bytes); its associated data is
``backup id | i (8 bytes) | last flag (1 byte)``, so a chunk moved to another position or to
another backup, or a non-last chunk presented as the last one, does not open. A reader that
reaches the end of the object before a chunk flagged last says the object is truncated.

The data key is fresh per backup (never reused), so a random 64-bit prefix with a 32-bit
counter never repeats a nonce under one key."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from control_plane.backups.exceptions import BackupUnreadable

MAGIC = b"MGBK0001"
CHUNK = 1 << 20
LAST = 1 << 31
TAG = 16
_LEN = struct.Struct(">I")


def _aad(backup_id: str, index: int, last: bool) -> bytes:
    return backup_id.encode() + struct.pack(">QB", index, 1 if last else 0)


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= 1 << 32:
        raise ValueError("a backup object has at most 2**32 chunks")
    return prefix + struct.pack(">I", index)


class EnvelopeWriter:
    """Encrypts what is written to it, chunk by chunk, into ``out``; ``close()`` writes the last
    chunk. ``written`` counts the encrypted bytes."""

    def __init__(self, out: IO[bytes], key: bytes, backup_id: str) -> None:
        self._out = out
        self._aead = AESGCM(key)
        self._id = backup_id
        self._prefix = os.urandom(8)
        self._buffer = bytearray()
        self._index = 0
        self.written = 0
        self._emit(MAGIC + self._prefix)

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)

    def _chunk(self, plaintext: bytes | memoryview, last: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._prefix, self._index), plaintext,
                                    _aad(self._id, self._index, last))
        self._emit(_LEN.pack(len(sealed) | (LAST if last else 0)))
        self._emit(sealed)
        self._index += 1

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) <= CHUNK:  # keep at least one byte back for the last chunk
            return
        done = 0
        with memoryview(self._buffer) as view:  # no copy of the plaintext per chunk
            while len(self._buffer) - done > CHUNK:
                self._chunk(view[done:done + CHUNK], False)
                done += CHUNK
        del self._buffer[:done]

    def close(self) -> None:
        self._chunk(bytes(self._buffer), True)
        self._buffer.clear()


def read_exactly(source: IO[bytes], n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        part = source.read(n)
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def decrypt_chunks(source: IO[bytes], key: bytes, backup_id: str) -> Iterator[bytes]:
    """The plaintext of an object, chunk by chunk; BackupUnreadable at the first chunk that
    does not open, or when the object ends before its last chunk (or goes on after it)."""
    head = read_exactly(source, len(MAGIC) + 8)
    if len(head) < len(MAGIC) + 8 or head[:len(MAGIC)] != MAGIC:
        raise BackupUnreadable("The backup object is not a Magistrate backup (its header is "
                               "wrong); nothing was restored.")
    prefix = head[len(MAGIC):]
    aead = AESGCM(key)
    index = 0
    while True:
        raw = read_exactly(source, 4)
        if len(raw) < 4:
            raise BackupUnreadable("The backup object is truncated: it ends before its last "
                                   "chunk; nothing was restored.")
        (word,) = _LEN.unpack(raw)
        last, length = bool(word & LAST), word & ~LAST
        if length < TAG or length > CHUNK + TAG:
            raise BackupUnreadable(f"The backup object is damaged at chunk {index} (impossible "
                                   "length); nothing was restored.")
        sealed = read_exactly(source, length)
        if len(sealed) < length:
            raise BackupUnreadable("The backup object is truncated: it ends inside chunk "
                                   f"{index}; nothing was restored.")
        try:
            yield aead.decrypt(_nonce(prefix, index), sealed, _aad(backup_id, index, last))
        except InvalidTag:
            raise BackupUnreadable(f"The backup object was altered: chunk {index} fails its "
                                   "authentication; nothing was restored.") from None
        index += 1
        if last:
            if source.read(1):
                raise BackupUnreadable("The backup object has bytes after its last chunk; "
                                       "nothing was restored.")
            return
