"""Magistrate as the OAuth 2.1 authorization server of its tenants' MCP endpoints (the MCP
specification's authorization section): metadata (RFC 9728, RFC 8414), client registration
(RFC 7591, and Client ID Metadata Documents), the authorization code flow with PKCE S256 and
audience-bound tokens (RFC 8707), the consent page, rotated refresh tokens with reuse detection,
and the grants page.

- ``models.py``: clients, grants, codes and tokens (digests only) in the control database;
- ``clients.py``: who a ``client_id`` is (a registered client, or a metadata document fetched
  through the checked outbound client);
- ``service.py``: grants, codes and tokens: every state change audited on the platform chain;
- ``bearer.py``: the one place the MCP endpoint turns a bearer credential into a caller;
- ``routes.py``: the HTTP endpoints and the dashboard pages."""
