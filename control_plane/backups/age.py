"""age recipients for the control-plane backup (``pyrage``), the alternative to the platform
key provider: the backup's data key is age-encrypted to the operator's X25519 recipients
(``age1…``), so only a holder of a matching identity (``AGE-SECRET-KEY-1…``, kept offline) can
restore it, even with the platform's own keys lost. The wrapped key travels in the manifest, as
the provider-wrapped one does; the object itself stays AES-256-GCM under that data key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyrage
from pyrage import x25519

from control_plane.backups.exceptions import BackupKeyUnavailable, BackupRefused

PROVIDER = "age"


def parse_recipients(raw: Sequence[str]) -> list[x25519.Recipient]:
    """Each ``age1…`` recipient; BackupRefused naming the first that is not one."""
    found: list[x25519.Recipient] = []
    for text in raw:
        text = text.strip()
        try:
            found.append(x25519.Recipient.from_str(text))
        except (ValueError, pyrage.RecipientError):
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise BackupRefused(f"{shown!r} is not an age X25519 recipient (age1...); no "
                                "backup was made.") from None
    if not found:
        raise BackupRefused("Give at least one age recipient (age1...); no backup was made.")
    return found


def wrap(dek: bytes, recipients: Sequence[str]) -> bytes:
    return bytes(pyrage.encrypt(dek, list(parse_recipients(recipients))))


def read_identities(path: Path) -> list[x25519.Identity]:
    """The ``AGE-SECRET-KEY-1…`` lines of an age identity file (comments and blank lines
    skipped); BackupKeyUnavailable when it cannot be read or holds none."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupKeyUnavailable(f"The age identity file {path} cannot be read "
                                   f"({getattr(exc, 'strerror', None) or exc}); nothing was "
                                   "restored.") from None
    found: list[x25519.Identity] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(x25519.Identity.from_str(line))
        except (ValueError, pyrage.IdentityError):
            raise BackupKeyUnavailable(f"The age identity file {path} holds a line that is not "
                                       "an age X25519 identity (AGE-SECRET-KEY-1...); nothing "
                                       "was restored.") from None
    if not found:
        raise BackupKeyUnavailable(f"The age identity file {path} holds no identity; nothing "
                                   "was restored.")
    return found


def unwrap(wrapped: bytes, identities: Sequence[x25519.Identity], *, where: Path) -> bytes:
    try:
        return bytes(pyrage.decrypt(wrapped, list(identities)))
    except pyrage.DecryptError:
        raise BackupKeyUnavailable(f"No identity in {where} is one of this backup's age "
                                   "recipients; the backup cannot be decrypted and nothing "
                                   "was restored.") from None
