"""The governed MCP tables (TenantBase.metadata lists them through tenant_runtime/models.py).

An upstream's credential (a bearer token, a custom header's value, or the client secret or
private key of OAuth client credentials) is ``secret`` and sealed (row key: the upstream's id);
an OAuth client's id, scope, token endpoint and authentication method are plain. A tool's
description and schema are what the upstream says of itself, shown to Admins;
``pinned_digest`` is the digest of name, description, schema and annotations an Admin decided
on, ``seen_digest`` the latest the upstream announced: when they
differ on a decided tool, the tool is quarantined."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenant_runtime.models import NOW, PLAIN, SECRET, TenantBase

POLICIES = ("allowed", "denied", "restricted")
REDACTION_MODES = ("internal", "external")
CREDENTIAL_KINDS = ("none", "bearer", "header", "oauth")
OAUTH_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")


class McpUpstream(TenantBase):
    __tablename__ = "mcp_upstreams"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    name: Mapped[str] = mapped_column(String(32), unique=True, info=PLAIN)
    url: Mapped[str] = mapped_column(String(2000), info=PLAIN)
    credential_kind: Mapped[str] = mapped_column(String(10), server_default="none", info=PLAIN)
    header_name: Mapped[str | None] = mapped_column(String(100), info=PLAIN)
    credential_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=SECRET)
    oauth_client_id: Mapped[str | None] = mapped_column(String(255), info=PLAIN)
    oauth_scope: Mapped[str | None] = mapped_column(String(1000), info=PLAIN)
    oauth_token_endpoint: Mapped[str | None] = mapped_column(String(2000), info=PLAIN)
    oauth_auth_method: Mapped[str | None] = mapped_column(String(20), info=PLAIN)
    redaction: Mapped[str] = mapped_column(String(10), server_default="internal", info=PLAIN)
    new_tools: Mapped[str] = mapped_column(String(10), server_default="denied", info=PLAIN)
    created_by: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)
    synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), info=PLAIN)

    __table_args__ = (
        CheckConstraint("credential_kind IN ('none', 'bearer', 'header', 'oauth')",
                        name="credential_kind"),
        CheckConstraint("oauth_auth_method IS NULL OR oauth_auth_method IN "
                        "('client_secret_basic', 'client_secret_post', 'private_key_jwt')",
                        name="oauth_auth_method"),
        CheckConstraint("redaction IN ('internal', 'external')", name="redaction"),
        CheckConstraint("new_tools IN ('allowed', 'denied', 'restricted')", name="new_tools"),
    )


class McpTool(TenantBase):
    """One tool of one upstream, as the catalogue decides it. ``quarantined``: the upstream
    changed a decided tool (hidden and refused until an Admin decides again)."""

    __tablename__ = "mcp_tools"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    upstream_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("mcp_upstreams.id", ondelete="CASCADE"), info=PLAIN)
    name: Mapped[str] = mapped_column(String(128), info=PLAIN)
    description: Mapped[str] = mapped_column(Text, server_default="", info=PLAIN)
    input_schema: Mapped[dict[str, Any]] = mapped_column(JSONB, info=PLAIN)
    annotations: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"),
                                                        info=PLAIN)
    policy: Mapped[str] = mapped_column(String(12), server_default="denied", info=PLAIN)
    action_class: Mapped[str | None] = mapped_column(String(100), info=PLAIN)
    side_effecting: Mapped[bool] = mapped_column(Boolean, server_default=text("true"),
                                                 info=PLAIN)
    side_effecting_override: Mapped[bool] = mapped_column(Boolean, server_default=text("false"),
                                                          info=PLAIN)
    pinned_digest: Mapped[str | None] = mapped_column(String(64), info=PLAIN)
    seen_digest: Mapped[str] = mapped_column(String(64), info=PLAIN)
    quarantined: Mapped[bool] = mapped_column(Boolean, server_default=text("false"),
                                              info=PLAIN)
    flags: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'"), info=PLAIN)
    decided_by: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)

    __table_args__ = (
        UniqueConstraint("upstream_id", "name", name="uq_mcp_tools_upstream_name"),
        CheckConstraint("policy IN ('allowed', 'denied', 'restricted')", name="policy"),
    )


class McpClient(TenantBase):
    """An API key (of the control plane) acting as an agent of the drive layer at the MCP
    endpoint; created on the key's first MCP request."""

    __tablename__ = "mcp_clients"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    api_key_id: Mapped[int] = mapped_column(BigInteger, unique=True, info=PLAIN)
    agent_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("agents.id", ondelete="CASCADE"), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)


CALL_KINDS = ("tool", "resource", "prompt", "completion")


class McpCall(TenantBase):
    """One request an agent made at the MCP endpoint (a tool call, a resource read, a prompt
    get, a completion), for the history page: who, what, how it ended, how long it took, which
    approval it used. Never its arguments or its result: ``arguments_digest`` only (the audit
    event has the same facts, hash-chained)."""

    __tablename__ = "mcp_calls"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                         info=PLAIN)
    agent_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("agents.id", ondelete="SET NULL"), info=PLAIN)
    api_key_id: Mapped[int | None] = mapped_column(BigInteger, info=PLAIN)
    kind: Mapped[str] = mapped_column(String(10), server_default="tool", info=PLAIN)
    upstream: Mapped[str | None] = mapped_column(String(32), info=PLAIN)
    name: Mapped[str] = mapped_column(String(2000), info=PLAIN)
    outcome: Mapped[str] = mapped_column(String(32), info=PLAIN)
    latency_ms: Mapped[int | None] = mapped_column(BigInteger, info=PLAIN)
    approval_id: Mapped[str | None] = mapped_column(String(64), info=PLAIN)
    arguments_digest: Mapped[str] = mapped_column(String(64), info=PLAIN)

    __table_args__ = (
        CheckConstraint("kind IN ('tool', 'resource', 'prompt', 'completion')", name="kind"),
        Index("ix_mcp_calls_agent_at", "agent_id", "at"),
        Index("ix_mcp_calls_at", "at"),
    )
