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
    # members must have two-factor sign-in to open the tenant's pages (tenancy/mfa_policy.py)
    require_mfa: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # members sign in with single sign-on only, but for the named break-glass Owner
    # (identity/policy.py); ``sso_provider_id`` names the provider's button to use
    sso_required: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    sso_break_glass_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))
    sso_provider_id: Mapped[int | None] = mapped_column(
        ForeignKey("identity_providers.id", ondelete="SET NULL"))
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
    # set when a provider's group mapping gave this role: the mapping may change or remove it
    # at the next sign-in; a membership given by hand (NULL) is never touched by a mapping
    sso_provider_id: Mapped[int | None] = mapped_column(
        ForeignKey("identity_providers.id", ondelete="SET NULL"))

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
    # a session from single sign-on: the provider, the subject and the provider's session id
    # (``sid``), which a back-channel logout token names
    sso_provider_id: Mapped[int | None] = mapped_column(
        ForeignKey("identity_providers.id", ondelete="SET NULL"))
    sso_subject: Mapped[str | None] = mapped_column(String(255))
    sso_sid: Mapped[str | None] = mapped_column(String(255))
    # the provider's ID token showed a second factor its configuration accepts (amr/acr)
    mfa_by_provider: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))

    user: Mapped[User] = relationship()

    __table_args__ = (Index("ix_web_sessions_expires_at", "expires_at"),
                      Index("ix_web_sessions_sso", "sso_provider_id", "sso_subject"))


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


class Backup(Base):
    """One published backup (control_plane/backups/): where its encrypted object and signed
    manifest are, and its data key wrapped by the tenant's key-encryption key (for the
    control-plane backup: by the platform backup key). Deleting ``wrapped_key`` crypto-shreds
    the backup, which is what a tenant's deletion does; the manifest never holds the key of a
    tenant backup. ``tenant_id`` is None for a control-plane backup."""

    __tablename__ = "backups"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    tenant_slug: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    destination: Mapped[str] = mapped_column(String(1000))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    key_provider: Mapped[str] = mapped_column(String(20))
    key_ref: Mapped[str] = mapped_column(String(500))
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    monthly: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    drill_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    drill_ok: Mapped[bool | None] = mapped_column(Boolean)
    drill_detail: Mapped[str | None] = mapped_column(String(1000))


class BackupReplacement(Base):
    """A backup restored over a live tenant database (control_plane/backups/replace.py), keyed
    by the ``tenant.restore`` approval it consumed: the approval's single use outlives the
    tenant database it was recorded in (the restored one may hold an older copy of the same
    request), and the retained database is named for the operator."""

    __tablename__ = "backup_replacements"

    approval_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    backup_id: Mapped[str] = mapped_column(String(40))
    retained_database: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


class BackupSigningKey(Base):
    """A tenant checkpoint key's public half, recorded when a backup signed by it is made
    (control_plane/backups/service.py): a restore verifies the manifest against these, held by
    the control plane, so it needs neither the backup's word nor the tenant's live database
    (which may be the thing lost). Public keys only."""

    __tablename__ = "backup_signing_keys"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


class IdentityProvider(Base):
    """An OpenID Connect provider Owners configured for single sign-on (control_plane/identity).
    The client secret is sealed (row key: ``name``). ``group_roles`` maps the values of
    ``groups_claim`` to tenant roles: ``[{"group": ..., "tenant_id": ..., "role": ...}]``."""

    __tablename__ = "identity_providers"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    discovery_url: Mapped[str] = mapped_column(String(1000))
    issuer: Mapped[str] = mapped_column(String(1000))
    client_id: Mapped[str] = mapped_column(String(500))
    client_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    allowed_domains: Mapped[list[str]] = mapped_column(ARRAY(String(253)),
                                                       server_default=text("'{}'"))
    # an unknown subject: an account without tenant roles (True) or a refusal (False)
    create_accounts: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    groups_claim: Mapped[str | None] = mapped_column(String(100))
    group_roles: Mapped[list[dict[str, Any]]] = mapped_column(JSONB,
                                                              server_default=text("'[]'"))
    # the ID token's amr/acr can stand for the second factor (else TOTP is still asked)
    trust_idp_mfa: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # which ``amr`` values (RFC 8176; empty: oidc.MFA_AMR) and ``acr`` values (empty: none)
    # stand for a second factor when trust_idp_mfa is on
    mfa_amr_values: Mapped[list[str]] = mapped_column(ARRAY(String(40)),
                                                      server_default=text("'{}'"))
    mfa_acr_values: Mapped[list[str]] = mapped_column(ARRAY(String(200)),
                                                      server_default=text("'{}'"))
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)


class ExternalIdentity(Base):
    """A provider's stable subject (``iss`` + ``sub``) bound to one local account."""

    __tablename__ = "external_identities"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    provider_id: Mapped[int] = mapped_column(
        ForeignKey("identity_providers.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(1000))
    subject: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    groups: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    last_sign_in_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    user: Mapped[User] = relationship()

    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_external_identities_sub"),)


class SsoAuthorization(Base):
    """One sign-in in flight: the ``state`` (its SHA-256), ``nonce`` and PKCE verifier, bound to
    the browser that started it; consumed once. A subject waiting to be linked to an existing
    account keeps its row (``link_*``) until the account proves its password."""

    __tablename__ = "sso_authorizations"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    browser_hash: Mapped[str] = mapped_column(String(64))
    provider_id: Mapped[int] = mapped_column(
        ForeignKey("identity_providers.id", ondelete="CASCADE"))
    nonce: Mapped[str] = mapped_column(String(100))
    code_verifier_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    next_path: Mapped[str] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    link_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    link_claims: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class SsoPolicy(Base):
    """One row: whether password sign-in is refused (single sign-on required), and the named
    break-glass Owner who keeps password + TOTP."""

    __tablename__ = "sso_policy"

    id: Mapped[int] = mapped_column(primary_key=True)
    sso_required: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    break_glass_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))

    break_glass_user: Mapped[User | None] = relationship()

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class SsoUsedToken(Base):
    """An ID or logout token's ``jti``, or a sign-in's ``nonce``, already taken (SHA-256 of
    kind, issuer and value): a second presentation is a replay. Kept until the token would
    have expired anyway."""

    __tablename__ = "sso_used_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ScimToken(Base):
    """A SCIM bearer token an Owner created for one identity provider (scope ``scim``): only
    its SHA-256 is kept; shown once; revocable. Its label is the audit actor of what it does."""

    __tablename__ = "scim_tokens"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    provider_id: Mapped[int] = mapped_column(
        ForeignKey("identity_providers.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(40)), server_default=text("'{scim}'"))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    provider: Mapped[IdentityProvider] = relationship()


class ScimGroup(Base):
    """A group the provider pushes over SCIM; its members get the roles the provider's group
    mapping gives its ``display_name``."""

    __tablename__ = "scim_groups"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    provider_id: Mapped[int] = mapped_column(
        ForeignKey("identity_providers.id", ondelete="CASCADE"))
    display_name: Mapped[str] = mapped_column(String(255))
    external_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)

    __table_args__ = (UniqueConstraint("provider_id", "display_name",
                                       name="uq_scim_groups_name"),)


class ScimGroupMember(Base):
    __tablename__ = "scim_group_members"

    group_id: Mapped[int] = mapped_column(ForeignKey("scim_groups.id", ondelete="CASCADE"),
                                          primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True, index=True)


class ScimUser(Base):
    """An account a provider's SCIM client provisioned (its SCIM view), with its
    ``externalId``. A SCIM DELETE deactivates the account and removes this row."""

    __tablename__ = "scim_users"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    provider_id: Mapped[int] = mapped_column(
        ForeignKey("identity_providers.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str | None] = mapped_column(String(255))
    # the provider's userName: usually the e-mail (then the account's e-mail), else the account
    # takes the primary of ``emails``
    user_name: Mapped[str] = mapped_column(String(320))
    # the e-mail addresses as the provider sent them (value, type, primary)
    emails: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW)

    __table_args__ = (UniqueConstraint("provider_id", "user_name", name="uq_scim_users_name"),)


# the MCP authorization server's tables live with their package; importing them here registers
# them wherever the control models are loaded (migrations' comparison included)
from control_plane.mcp_oauth import models as _mcp_oauth_models  # noqa: E402, F401
