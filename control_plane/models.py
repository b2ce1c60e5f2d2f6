"""Control-plane tables: users, memberships, sessions, API keys, tenants, the platform audit chain.

Secrets are never stored in plaintext: passwords as Argon2id hashes, session tokens, backup codes
and API keys as SHA-256 digests, the TOTP seed sealed under a key derived from the secret key.
"""

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
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from control_plane.db import Base

ROLES = ("Owner", "Admin", "Operator", "Approver", "Compliance", "Viewer")
TENANT_STATES = ("provisioning", "active", "suspended", "deleted")

NOW = text("now()")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(Text)
    is_owner: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    must_change_password: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    mfa_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    mfa_enabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the last TOTP time step accepted: a code is never accepted twice
    mfa_last_step: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    password_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True),
                                                          server_default=NOW)
    deactivated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (CheckConstraint("email = lower(email)", name="email_lowercase"),)

    @property
    def mfa_enabled(self) -> bool:
        return self.mfa_enabled_at is not None


class BackupCode(Base):
    __tablename__ = "backup_codes"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DbServer(Base):
    """A Postgres server that holds tenant databases. The admin URL (a role with CREATEDB and
    CREATEROLE) is sealed; host and port are kept plain for display and placement."""

    __tablename__ = "db_servers"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    admin_url_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column()
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20), server_default=text("'provisioning'"))
    db_server_id: Mapped[int | None] = mapped_column(ForeignKey("db_servers.id"), index=True)
    key_provider: Mapped[str] = mapped_column(String(20), server_default=text("'local'"))
    key_ref: Mapped[str] = mapped_column(String(500), server_default=text("''"))
    owner_password_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    app_password_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    suspended_reason: Mapped[str | None] = mapped_column(String(500))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)

    db_server: Mapped[DbServer | None] = relationship()

    __table_args__ = (
        CheckConstraint(
            "state IN ('provisioning', 'active', 'suspended', 'deleted')", name="state_known"
        ),
        CheckConstraint("slug ~ '^[a-z][a-z0-9-]{1,62}$'", name="slug_format"),
    )

    @property
    def db_name(self) -> str:
        return f"magistrate_t_{self.id}"

    @property
    def owner_role(self) -> str:
        return f"magistrate_t_{self.id}_owner"

    @property
    def app_role(self) -> str:
        return f"magistrate_t_{self.id}_app"


class TenantKey(Base):
    """One version of a tenant's data key, stored only wrapped by the tenant's KEK."""

    __tablename__ = "tenant_keys"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column()
    provider: Mapped[str] = mapped_column(String(20))
    key_ref: Mapped[str] = mapped_column(String(500))
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("tenant_id", "version", name="uq_tenant_keys_version"),)


class TenantTombstone(Base):
    """What remains of a deleted tenant: who deleted it, when and why. Nothing else."""

    __tablename__ = "tenant_tombstones"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    slug: Mapped[str] = mapped_column(String(63))
    deleted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    deleted_by_email: Mapped[str | None] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(1000))
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


class Job(Base):
    """The outbox: a job is recorded in the same transaction as the change that asks for it,
    dispatched to RQ after commit, run under a lease with a fencing token."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    state: Mapped[str] = mapped_column(String(20), server_default=text("'pending'"))
    tenant_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(server_default=text("5"))
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    fencing_token: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    progress: Mapped[int] = mapped_column(server_default=text("0"))
    progress_total: Mapped[int] = mapped_column(server_default=text("0"))
    progress_note: Mapped[str | None] = mapped_column(String(300))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(
            "state IN ('pending', 'dispatched', 'running', 'succeeded', 'failed')",
            name="state_known",
        ),
        Index("ix_jobs_state", "state"),
    )


class Membership(Base):
    __tablename__ = "memberships"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)

    user: Mapped[User] = relationship()
    tenant: Mapped[Tenant] = relationship()

    __table_args__ = (
        UniqueConstraint("user_id", "tenant_id", name="uq_memberships_user_tenant"),
        CheckConstraint(
            "role IN ('Owner', 'Admin', 'Operator', 'Approver', 'Compliance', 'Viewer')",
            name="role_known",
        ),
    )


class WebSession(Base):
    """A signed-in browser. The cookie carries the token; only its SHA-256 is stored."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    host: Mapped[str] = mapped_column(String(255))
    mfa_pending: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    user: Mapped[User] = relationship()

    __table_args__ = (Index("ix_web_sessions_expires_at", "expires_at"),)


class ApiKey(Base):
    """A tenant's API key for the gateway and JSON API. Only the SHA-256 of the secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # what the key may be used for (control_plane/tenancy/api_keys.py SCOPES), chosen at creation
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(40)), server_default=text("'{}'"))


class PlatformAuditHead(Base):
    """One row: the head of the platform audit chain, locked by each writer."""

    __tablename__ = "platform_audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    chain_hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class PlatformAuditEvent(Base):
    __tablename__ = "platform_audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor_type: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[str | None] = mapped_column(String(64))
    actor_name: Mapped[str | None] = mapped_column(String(320))
    event_type: Mapped[str] = mapped_column(String(100), index=True)
    target_type: Mapped[str | None] = mapped_column(String(50))
    target_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB)
    prev_hash: Mapped[str] = mapped_column(String(64))
    chain_hash: Mapped[str] = mapped_column(String(64))


class PlatformCheckpointKey(Base):
    """The platform's Ed25519 key that signs checkpoints of the platform audit chain and its
    export statements (control_plane/audit_checkpoints.py). The private half is sealed under
    the control-plane sealing key (row key: ``key_id``)."""

    __tablename__ = "platform_checkpoint_keys"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16), unique=True)
    public_key: Mapped[str] = mapped_column(Text)
    private_key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PlatformCheckpoint(Base):
    """A signed statement "the platform chain had reached ``seq`` with ``chain_hash`` at
    ``created_at``", encoded as a tenant's checkpoint with tenant id 0."""

    __tablename__ = "platform_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    chain_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    signature: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(16),
                                        ForeignKey("platform_checkpoint_keys.key_id"))
