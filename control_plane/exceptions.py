"""The control plane's exceptions. Each maps to one HTTP status and one sentence for the user.

    MagistrateError
    ├── BadRequest            400
    ├── NotSignedIn           401 (pages redirect to sign-in)
    ├── Forbidden             403
    │   ├── CsrfRefused       403
    │   └── PasswordChangeRequired 403 (pages redirect to the account page)
    ├── NotFound              404 (also for another tenant's ids)
    ├── Conflict              409
    ├── Gone                  410
    ├── PayloadTooLarge       413
    ├── UnsupportedMediaType  415
    ├── InvalidInput          422
    │   └── UnstorableText    422 (a NUL, an unpaired surrogate or a control character)
    ├── RateLimited           429 (with Retry-After)
    └── ServiceUnavailable    503
"""

from __future__ import annotations


class MagistrateError(Exception):
    status_code = 500
    default_message = "Something went wrong on our side."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class BadRequest(MagistrateError):
    status_code = 400
    default_message = "The request could not be understood."


class NotSignedIn(MagistrateError):
    status_code = 401
    default_message = "Sign in to continue."


class Forbidden(MagistrateError):
    status_code = 403
    default_message = "You do not have permission to do that."


class CsrfRefused(Forbidden):
    default_message = ("The form was missing its security token or came from another site. "
                       "Reload the page and try again.")


class PasswordChangeRequired(Forbidden):
    default_message = "Choose a new password on your account page before continuing."


class UnsupportedMediaType(MagistrateError):
    status_code = 415
    default_message = ("Send this form as application/x-www-form-urlencoded or "
                       "multipart/form-data.")


class NotFound(MagistrateError):
    status_code = 404
    default_message = "There is nothing here."


class Conflict(MagistrateError):
    status_code = 409
    default_message = "That conflicts with the current state."


class Gone(MagistrateError):
    status_code = 410
    default_message = "This is no longer available."


class PayloadTooLarge(MagistrateError):
    status_code = 413
    default_message = "The request body is too large."


class InvalidInput(MagistrateError):
    status_code = 422
    default_message = "Some fields are not valid."


class UnstorableText(InvalidInput):
    """Text holding what cannot be stored, or a control character where a person types
    (tenant_runtime/text.py); the sentence names the field, never repeats the value."""

    default_message = "A field contains a character that cannot be stored; remove it."


class RateLimited(MagistrateError):
    status_code = 429
    default_message = "Too many attempts. Wait a little and try again."

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        self.retry_after = max(1, int(retry_after))
        super().__init__(message or f"Too many attempts. Try again in {self.retry_after} seconds.")


class ServiceUnavailable(MagistrateError):
    status_code = 503
    default_message = "A service Magistrate depends on is unavailable. Try again shortly."
