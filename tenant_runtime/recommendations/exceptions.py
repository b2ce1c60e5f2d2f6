"""Errors of the recommendation gate, each one HTTP status and one sentence.

    TenantError (tenant_runtime/exceptions.py)
    ├── TenantInvalidInput        422
    │   └── ImportRejected        422 a JSON import with rejected items; nothing was written
    └── RunInProgress             409 the task already has a run that has not finished
"""

from __future__ import annotations

from tenant_runtime.exceptions import TenantError, TenantInvalidInput


class ImportRejected(TenantInvalidInput):
    default_message = "The import was rejected; nothing was written."

    def __init__(self, message: str | None = None, *,
                 rejected: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.rejected = rejected or []  # (1-based item number, why)


class RunInProgress(TenantError):
    status_code = 409
    default_message = ("The panel is already judging this task; wait for its verdict before "
                       "running it again.")
