"""The backups package's exceptions; each carries one sentence for the operator.

    BackupError                  (a MagistrateError: the CLI prints its sentence)
    ├── BackupRefused            the request cannot be done as asked (bad id, live database, ...)
    ├── BackupUnreadable         the object or manifest fails a check: digest, signature,
    │                            authentication of a chunk, truncation
    ├── BackupKeyUnavailable     the key that wraps the backup's data key cannot be used
    │                            (revoked, disabled, unreachable), or was destroyed
    └── RestoreCheckFailed       the restored database does not match the manifest
"""

from __future__ import annotations

from control_plane.exceptions import MagistrateError


class BackupError(MagistrateError):
    status_code = 400
    default_message = "The backup could not be made or read."


class BackupRefused(BackupError):
    status_code = 409


class BackupUnreadable(BackupError):
    status_code = 422


class BackupKeyUnavailable(BackupError):
    status_code = 503


class RestoreCheckFailed(BackupError):
    status_code = 422
