"""The authorization server's refusals.

    OAuthError                      an OAuth error response: ``error`` code, sentence, status
    ├── InvalidRequest (400)        a parameter missing, repeated or malformed
    ├── InvalidClient (401)         no such client
    ├── InvalidGrant (400)          a code or refresh token that is wrong, used, expired or
    │                               bound to something else (verifier, redirect URI, resource)
    ├── InvalidTarget (400)         the ``resource`` is missing or not an MCP endpoint here
    ├── InvalidRedirectUri (400)    registration: a redirect URI we will not send codes to
    └── InvalidClientMetadata (400) registration or metadata document: another field

Each carries the sentence that says what to fix (``description``), answered as RFC 6749's
``error_description``. Before a redirect URI is known good, an error is shown to the person on
a page, never sent to an unchecked redirect URI."""

from __future__ import annotations


class OAuthError(Exception):
    error = "invalid_request"
    status_code = 400

    def __init__(self, description: str) -> None:
        self.description = description
        super().__init__(description)

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    error = "invalid_client"
    status_code = 401


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class InvalidTarget(OAuthError):
    error = "invalid_target"


class InvalidRedirectUri(OAuthError):
    error = "invalid_redirect_uri"


class InvalidClientMetadata(OAuthError):
    error = "invalid_client_metadata"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"
