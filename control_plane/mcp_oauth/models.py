"""OAuth clients, grants, authorization codes and tokens of the MCP authorization server.

A token or code is never stored: only the SHA-256 of it (``*_hash``), as for API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, String, Text, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.db import Base

NOW = text("now()")


class OAuthClient(Base):
    """A client registered by Dynamic Client Registration (RFC 7591): public (no secret), its
    redirect URIs fixed at registration. Clients identified by a metadata document (an https
    ``client_id``) are not stored: their document is fetched (clients.py)."""

    __tablename__ = "mcp_oauth_clients"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    client_name: Mapped[str] = mapped_column(String(200))
    redirect_uris: Mapped[list[str]] = mapped_column(ARRAY(Text))
    client_uri: Mapped[str | None] = mapped_column(String(2000))
    registered_from: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


class OAuthGrant(Base):
    """A member's consent: this client may act, at this tenant's MCP endpoint (``resource``),
    as this agent (an agent of the tenant's drive layer, ``agent_id``), with the member's
    current rights and never more. Revoked: every token of it stops working at once."""

    __tablename__ = "mcp_oauth_grants"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(String(2000))
    client_name: Mapped[str] = mapped_column(String(200))
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    resource: Mapped[str] = mapped_column(String(2000))
    scope: Mapped[str] = mapped_column(String(200))
    agent_id: Mapped[int] = mapped_column(BigInteger)
    agent_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_reason: Mapped[str | None] = mapped_column(String(100))


class OAuthCode(Base):
    """An authorization code: single use, short-lived, bound to the client, its redirect URI,
    the PKCE challenge (S256) and the resource."""

    __tablename__ = "mcp_oauth_codes"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("mcp_oauth_grants.id", ondelete="CASCADE"),
                                          index=True)
    code_challenge: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OAuthToken(Base):
    """An access token (``kind`` access, at most an hour) or a refresh token (``kind``
    refresh, used once: ``used_at`` is set when it is exchanged)."""

    __tablename__ = "mcp_oauth_tokens"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("mcp_oauth_grants.id", ondelete="CASCADE"),
                                          index=True)
    kind: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

