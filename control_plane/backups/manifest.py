"""The signed manifest of a backup: what was backed up, the audit chain's head and last signed
checkpoint at that moment, the encrypted object's size and SHA-256, and which key wraps the
backup's data key.

It is signed with the checkpoint key of the chain it describes: a tenant's backup with the
tenant's Ed25519 checkpoint key (tenant_runtime/checkpoints.py), the control-plane backup with
the platform checkpoint key (control_plane/audit_checkpoints.py). The signature covers the
canonical bytes of every field but ``signature`` (UTF-8 JSON, sorted keys, separators
``(",", ":")``), the encoding of the checkpoints themselves. A restore checks the signature
against the public keys the platform holds for that chain, then the object's digest, before
anything is decrypted."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from control_plane.backups.exceptions import BackupUnreadable

FORMAT = "magistrate-backup/1"
MAX_MANIFEST_BYTES = 1 << 20


def canonical(document: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def sign(document: dict[str, Any], *, key_id: str, public_key: str,
         signer: Callable[[bytes], str]) -> bytes:
    """The manifest's bytes, with its signature."""
    signed = dict(document)
    signed["signature"] = {"key_id": key_id, "public_key": public_key,
                           "value": signer(canonical(document))}
    return json.dumps(signed, sort_keys=True, indent=1).encode("utf-8") + b"\n"


@dataclass(frozen=True)
class Manifest:
    document: dict[str, Any]

    @property
    def backup_id(self) -> str:
        return str(self.document["backup_id"])

    @property
    def sha256(self) -> str:
        return str(self.document["object"]["sha256"])

    @property
    def size(self) -> int:
        return int(self.document["object"]["size"])

    @property
    def key_id(self) -> str:
        return str(self.document["signature"]["key_id"])


def parse(raw: bytes, backup_id: str) -> Manifest:
    """The manifest, its shape checked (not yet its signature)."""
    try:
        document = json.loads(raw.decode("utf-8"))
        ok = (isinstance(document, dict) and document.get("format") == FORMAT
              and isinstance(document.get("object"), dict)
              and isinstance(document["object"].get("sha256"), str)
              and isinstance(document["object"].get("size"), int)
              and isinstance(document.get("signature"), dict)
              and isinstance(document["signature"].get("key_id"), str)
              and isinstance(document["signature"].get("value"), str))
    except (UnicodeDecodeError, ValueError):
        ok = False
    if not ok:
        raise BackupUnreadable(f"The manifest of backup {backup_id} is not a Magistrate backup "
                               "manifest; nothing was restored.")
    if document.get("backup_id") != backup_id:
        raise BackupUnreadable(f"The manifest stored for backup {backup_id} describes backup "
                               f"{document.get('backup_id')!r} (a swapped manifest); nothing "
                               "was restored.")
    return Manifest(document)


def verify(manifest: Manifest, known_keys: Mapping[str, str]) -> None:
    """Check the signature with the public key the platform holds under the manifest's key id
    (``known_keys``: key id -> base64 public key); BackupUnreadable otherwise."""
    public = known_keys.get(manifest.key_id)
    if public is None:
        raise BackupUnreadable(f"The manifest of backup {manifest.backup_id} is signed by key "
                               f"{manifest.key_id}, which is not a checkpoint key of this "
                               "chain; nothing was restored.")
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public, validate=True)).verify(
            base64.b64decode(manifest.document["signature"]["value"], validate=True),
            canonical(manifest.document))
    except (InvalidSignature, ValueError, binascii.Error):
        raise BackupUnreadable(f"The manifest of backup {manifest.backup_id} does not match "
                               "its signature (it was altered); nothing was restored.") from None
