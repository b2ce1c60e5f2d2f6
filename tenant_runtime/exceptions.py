"""Errors raised inside a tenant. Each maps to one HTTP status and one sentence.

    TenantError
    ├── TenantKeyUnavailable    503 "tenant key unavailable": the customer's KEK cannot be used
    ├── SealedValueRefused      500 a ciphertext does not open for this row (tampering or a copy)
    ├── TenantNotFound          404
    ├── TenantInvalidInput      422
    │   ├── RedactionTimeout    422 a custom redaction pattern ran out of time (redaction/)
    │   └── EgressRefused       422 an address the egress policy refuses (gateway/egress.py)
    │       └── RedirectRefused     an upstream answered with a redirect, never followed
    ├── ModelRefused            403 a model off the allowlist (gateway/service.py)
    ├── ToolRefused             403 a tool the tenant's tool rules forbid (gateway/service.py)
    ├── ImagesRefused           403 images, where the tenant's image policy refuses them
    ├── SpendCapReached         402 the monthly AI spend cap (gateway/spend.py)
    └── ProvidersFailed         502 every provider attempt failed (gateway/service.py)
"""

from __future__ import annotations


class TenantError(Exception):
    status_code = 500
    default_message = "Something went wrong inside this tenant."

    def __init__(self, message: str | None = None, *,
                 details: dict[str, object] | None = None) -> None:
        self.message = message or self.default_message
        self.details = details  # what the refusal's audit event records beside the defaults
        super().__init__(self.message)


class TenantKeyUnavailable(TenantError):
    status_code = 503
    default_message = ("Tenant key unavailable: the customer-held key cannot be used right now "
                       "(revoked, disabled or unreachable). Nothing was read or written.")


class SealedValueRefused(TenantError):
    status_code = 500
    default_message = "A sealed value does not open for this row; it was refused."


class TenantNotFound(TenantError):
    status_code = 404
    default_message = "There is nothing here."


class TenantInvalidInput(TenantError):
    status_code = 422
    default_message = "Some fields are not valid."
