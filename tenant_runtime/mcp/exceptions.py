"""Errors of the governed MCP area; each maps to one HTTP status and one sentence.

    TenantError
    ├── UpstreamAuthFailed        503 no token from the upstream's authorization server
    ├── TenantNotFound            404
    │   └── UpstreamNotFound          no such upstream (or another tenant's)
    └── TenantInvalidInput        422
        ├── UpstreamInvalid           a registration that cannot be saved
        └── UpstreamUnreachable       the upstream did not answer as an MCP server
"""

from __future__ import annotations

from tenant_runtime.exceptions import TenantError, TenantInvalidInput, TenantNotFound


class UpstreamNotFound(TenantNotFound):
    default_message = "No such MCP upstream."


class UpstreamInvalid(TenantInvalidInput):
    pass


class UpstreamUnreachable(TenantInvalidInput):
    pass


class UpstreamAuthFailed(TenantError):
    """The upstream wants an OAuth token and its authorization server gave none (refused the
    client credentials, or could not be found): the upstream is unavailable until an Admin
    fixes its credential, so 503, with a sentence naming the server and its reason."""

    status_code = 503
    default_message = "The upstream's authorization server gave Magistrate no token."
