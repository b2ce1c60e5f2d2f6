"""Errors of the redaction module. Both are ``TenantInvalidInput`` (422): the gateway refuses
the call rather than send text it could not redact.

    TenantInvalidInput          (tenant_runtime.exceptions)
    └── RedactionTimeout        a tenant's custom pattern ran past its time bound on a text
"""

from __future__ import annotations

from tenant_runtime.exceptions import TenantInvalidInput


class RedactionTimeout(TenantInvalidInput):
    default_message = ("A custom redaction pattern took too long on this text, so nothing was "
                       "sent; simplify the pattern in the gateway's redaction settings.")

    def __init__(self, pattern: str, limit_ms: int) -> None:
        self.pattern = pattern
        super().__init__(f"The custom redaction pattern {pattern!r} took longer than {limit_ms} ms "
                         "on this text, so nothing was sent; simplify the pattern (avoid nested "
                         "repetition such as (a+)+) in the gateway's redaction settings.")
