"""The tenant database's tables. Every column is classified ``plain``, ``pii`` or ``secret``
(``info={"classification": ...}``); ``pii`` and ``secret`` columns hold sealed bytes.
A test fails when a column is left unclassified."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

CLASSIFICATIONS = ("plain", "pii", "secret")
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
PLAIN = {"classification": "plain"}
PII = {"classification": "pii"}
SECRET = {"classification": "secret"}
NOW = text("now()")


class TenantBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


Row = TypeVar("Row", bound=TenantBase)


def single_row(s: Session, model: type[Row], **defaults: Any) -> Row:
    """The one row (id 1) of a settings table, created with ``defaults`` on first use. Two
    first requests at once both get it: the insert yields to the other's."""
    row = s.get(model, 1)
    if row is None:
        s.execute(insert(model).values(id=1, **defaults).on_conflict_do_nothing())
        row = s.get(model, 1)
        if row is None:
            raise LookupError(f"{model.__tablename__}: the settings row could not be created")
    return row


class AuditEvent(TenantBase):
    """The tenant's audit chain (the audit area fills in checkpoints, export and verification).
    The service role may only INSERT and SELECT here; a trigger refuses UPDATE and DELETE."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False,
                                     info=PLAIN)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), info=PLAIN)
    actor_type: Mapped[str] = mapped_column(String(20), info=PLAIN)
    actor_id: Mapped[str | None] = mapped_column(String(64), info=PLAIN)
    actor_name: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    event_type: Mapped[str] = mapped_column(String(100), info=PLAIN)
    target_type: Mapped[str | None] = mapped_column(String(50), info=PLAIN)
    target_id: Mapped[str | None] = mapped_column(String(64), info=PLAIN)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, info=PLAIN)
    prev_hash: Mapped[str] = mapped_column(String(64), info=PLAIN)
    chain_hash: Mapped[str] = mapped_column(String(64), info=PLAIN)

    __table_args__ = (
        # the timeline's filters, each walked newest first by seq (keyset pagination)
        Index("ix_audit_events_event_type_seq", "event_type", "seq"),
        Index("ix_audit_events_actor_name_seq", "actor_name", "seq"),
        Index("ix_audit_events_occurred_at", "occurred_at"),
    )


class ProviderCredential(TenantBase):
    """A credential for an LLM provider (API key, token), sealed; the gateway's routes use it."""

    __tablename__ = "provider_credentials"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    name: Mapped[str] = mapped_column(String(100), unique=True, info=PLAIN)
    provider: Mapped[str] = mapped_column(String(30), info=PLAIN)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary, info=SECRET)
    hint: Mapped[str] = mapped_column(String(8), info=PLAIN)  # last 4 characters, for display
    contact_email_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=PII)
    created_by: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)


class CheckpointKey(TenantBase):
    """The tenant's Ed25519 key that signs audit checkpoints. The public half is plain (shown on
    the dashboard, in every export, pinned by compliance teams); the raw 32-byte private half is
    sealed under the tenant's data key (row key: ``id``). At most one key is active (not
    retired) at a time; retired keys stay, so older checkpoints remain verifiable."""

    __tablename__ = "checkpoint_keys"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    key_id: Mapped[str] = mapped_column(String(16), unique=True, info=PLAIN)
    public_key: Mapped[str] = mapped_column(Text, info=PLAIN)  # raw 32 bytes, base64
    private_key_sealed: Mapped[bytes] = mapped_column(LargeBinary, info=SECRET)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)
    # what the key may sign: checkpoints and statements made from valid_from, before retired_at
    # (the application's clock, the one checkpoint times are written with)
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True), info=PLAIN)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), info=PLAIN)


class CheckpointKeyRotation(TenantBase):
    """"Key ``old_key_id`` retires at ``rotated_at``; ``new_key_id`` (``new_public_key``) takes
    over", signed by both keys (ops/AUDIT_FORMAT.md, section 2), so a verifier that pinned
    either one can follow the chain of keys to the other."""

    __tablename__ = "checkpoint_key_rotations"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    old_key_id: Mapped[str] = mapped_column(String(16), ForeignKey("checkpoint_keys.key_id"),
                                            info=PLAIN)
    new_key_id: Mapped[str] = mapped_column(String(16), ForeignKey("checkpoint_keys.key_id"),
                                            unique=True, info=PLAIN)
    new_public_key: Mapped[str] = mapped_column(Text, info=PLAIN)
    rotated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), info=PLAIN)
    signature: Mapped[str] = mapped_column(Text, info=PLAIN)  # by the old key, base64
    new_signature: Mapped[str] = mapped_column(Text, info=PLAIN)  # by the new key, base64


class KeyNotice(TenantBase):
    """A checkpoint key's public half, to send out of band when the key is made (or rotated
    in): ``webhook`` to the tenant's notification webhook, ``email`` to its compliance
    contacts (tenant_runtime/key_notices.py). Written in the key's transaction; retried until
    sent, ``skipped`` when there is nowhere to send it."""

    __tablename__ = "key_notices"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    key_id: Mapped[str] = mapped_column(String(16), ForeignKey("checkpoint_keys.key_id"),
                                        info=PLAIN)
    kind: Mapped[str] = mapped_column(String(20), info=PLAIN)  # webhook or email
    status: Mapped[str] = mapped_column(String(20), server_default="pending", info=PLAIN)
    attempts: Mapped[int] = mapped_column(server_default=text("0"), info=PLAIN)
    last_error: Mapped[str | None] = mapped_column(String(300), info=PLAIN)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), info=PLAIN)


class AuditCheckpoint(TenantBase):
    """A signed statement "the chain had reached ``seq`` with ``chain_hash`` at ``created_at``"
    (tenant_runtime/checkpoints.py). Append-only like ``audit_events``: a trigger refuses UPDATE
    and DELETE, and the service role may only INSERT and SELECT."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False,
                                     info=PLAIN)
    chain_hash: Mapped[str] = mapped_column(String(64), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), info=PLAIN)
    signature: Mapped[str] = mapped_column(Text, info=PLAIN)  # Ed25519, base64
    key_id: Mapped[str] = mapped_column(String(16), ForeignKey("checkpoint_keys.key_id"),
                                        info=PLAIN)


class AuditSettings(TenantBase):
    """One row: where checkpoints are sent as they are made (an HMAC-signed webhook to a copy
    the platform does not hold), and how long audit events are kept."""

    __tablename__ = "audit_settings"

    id: Mapped[int] = mapped_column(primary_key=True, info=PLAIN)
    webhook_url: Mapped[str | None] = mapped_column(String(500), info=PLAIN)
    webhook_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=SECRET)
    retention_days: Mapped[int] = mapped_column(server_default=text("396"), info=PLAIN)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)


class CheckpointDelivery(TenantBase):
    """A checkpoint's webhook delivery: retried until the receiver answers 2xx."""

    __tablename__ = "checkpoint_deliveries"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False,
                                     info=PLAIN)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), info=PLAIN)
    attempts: Mapped[int] = mapped_column(server_default=text("0"), info=PLAIN)
    last_error: Mapped[str | None] = mapped_column(String(300), info=PLAIN)


# --- the gateway --------------------------------------------------------------------------------


class GatewaySettings(TenantBase):
    """One row: the tenant's redaction profile, monthly spend cap and rate limits. Custom
    redaction terms are the tenant's own sensitive words, so they are sealed (row key ``id``)."""

    __tablename__ = "gateway_settings"

    id: Mapped[int] = mapped_column(primary_key=True, info=PLAIN)
    redaction_profile: Mapped[str] = mapped_column(String(20), server_default="standard",
                                                   info=PLAIN)
    custom_detectors: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'"),
                                                        info=PLAIN)
    custom_terms_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=PII)
    custom_patterns: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'"),
                                                       info=PLAIN)
    monthly_cap_micros: Mapped[int] = mapped_column(BigInteger,
                                                    server_default=text("100000000"),
                                                    info=PLAIN)  # $100 by default
    requests_per_minute: Mapped[int] = mapped_column(Integer, server_default=text("600"),
                                                     info=PLAIN)
    tokens_per_minute: Mapped[int] = mapped_column(Integer, server_default=text("400000"),
                                                   info=PLAIN)
    # [{"tool": glob, "models": [model names]}]: a tool matching the glob may be offered only
    # to the listed models (none listed: to no model); tools.py reads them
    tool_rules: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, server_default=text("'[]'"), info=PLAIN)
    image_policy: Mapped[str | None] = mapped_column(String(10), info=PLAIN)  # allow / refuse
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)
    # a new random value at every change of the gateway's configuration (settings, routes,
    # prices): the call path keeps a snapshot per process and rebuilds it when this differs
    config_version: Mapped[str] = mapped_column(
        String(36), server_default=text("gen_random_uuid()::text"), info=PLAIN)


class GatewayRoute(TenantBase):
    """A model name the tenant's programs use, mapped to a provider, its model id (an Azure
    deployment name), endpoint and credential. ``allowed`` puts it on the allowlist; a route
    that is not allowed can still serve as another route's fallback. ``fallbacks`` are the
    model names of other routes, tried in order when this one fails."""

    __tablename__ = "gateway_routes"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    model_name: Mapped[str] = mapped_column(String(100), unique=True, info=PLAIN)
    provider: Mapped[str] = mapped_column(String(20), info=PLAIN)
    provider_model: Mapped[str] = mapped_column(String(200), info=PLAIN)
    endpoint: Mapped[str | None] = mapped_column(String(500), info=PLAIN)
    api_version: Mapped[str | None] = mapped_column(String(40), info=PLAIN)
    region: Mapped[str | None] = mapped_column(String(40), info=PLAIN)
    credential_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("provider_credentials.id", ondelete="RESTRICT"), info=PLAIN)
    timeout_seconds: Mapped[float] = mapped_column(Float, server_default=text("60"), info=PLAIN)
    fallbacks: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'"),
                                                 info=PLAIN)
    allowed: Mapped[bool] = mapped_column(Boolean, server_default=text("true"), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)


class GatewayPrice(TenantBase):
    """The tenant's price for a provider model, in micro-dollars per million tokens; models
    without a row use the built-in defaults (tenant_runtime/gateway/pricing.py)."""

    __tablename__ = "gateway_prices"

    provider_model: Mapped[str] = mapped_column(String(200), primary_key=True, info=PLAIN)
    input_micros_per_mtok: Mapped[int] = mapped_column(BigInteger, info=PLAIN)
    output_micros_per_mtok: Mapped[int] = mapped_column(BigInteger, info=PLAIN)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)


class GatewaySpendMonth(TenantBase):
    """One calendar month (UTC) of the spend cap: how much of the cap it has allotted to its
    shards (always the sum of their allotments, changed only under this row's lock and never
    past the cap). What was spent and what calls in flight reserve is in the shards
    (``tenant_runtime/gateway/spend.py``)."""

    __tablename__ = "gateway_spend_months"

    month: Mapped[datetime] = mapped_column(Date, primary_key=True, info=PLAIN)
    allotted_micros: Mapped[int] = mapped_column(BigInteger, server_default=text("0"),
                                                 info=PLAIN)

    __table_args__ = (CheckConstraint("allotted_micros >= 0", name="not_negative"),)


class GatewaySpendShard(TenantBase):
    """One stripe of a month's spend: the part of the cap allotted to it, what calls in flight
    reserved on it and what was spent on it. A call reserves its worst case on one shard with
    one conditional UPDATE (spent + reserved + the new reservation must stay within the
    shard's allotment), so concurrent calls on different shards do not wait for each other,
    and none can overspend."""

    __tablename__ = "gateway_spend_shards"

    month: Mapped[datetime] = mapped_column(Date, ForeignKey("gateway_spend_months.month"),
                                            primary_key=True, info=PLAIN)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, info=PLAIN)
    allotted_micros: Mapped[int] = mapped_column(BigInteger, server_default=text("0"),
                                                 info=PLAIN)
    reserved_micros: Mapped[int] = mapped_column(BigInteger, server_default=text("0"),
                                                 info=PLAIN)
    spent_micros: Mapped[int] = mapped_column(BigInteger, server_default=text("0"), info=PLAIN)

    __table_args__ = (
        CheckConstraint("spent_micros >= 0 AND reserved_micros >= 0 AND allotted_micros >= 0",
                        name="not_negative"),
        CheckConstraint("shard >= 0", name="shard_number"),
    )


class GatewayCall(TenantBase):
    """One gateway call: counts, cost and outcome, never the prompt. A row is written with its
    reservation before the provider is called (``shard``: the spend shard it reserved on), and
    settled afterwards, on that shard. A call the platform makes for a job carries the job
    step's idempotency key and keeps its answer, sealed, only until that step has recorded it
    (``Gateway.complete_once``); no other answer is kept."""

    __tablename__ = "gateway_calls"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)
    month: Mapped[datetime] = mapped_column(Date, info=PLAIN)
    api_key_id: Mapped[str | None] = mapped_column(String(64), info=PLAIN)
    model_name: Mapped[str] = mapped_column(String(100), info=PLAIN)
    provider: Mapped[str | None] = mapped_column(String(20), info=PLAIN)
    provider_model: Mapped[str | None] = mapped_column(String(200), info=PLAIN)
    endpoint_kind: Mapped[str] = mapped_column(String(20), info=PLAIN)  # openai / anthropic
    stream: Mapped[bool] = mapped_column(Boolean, info=PLAIN)
    status: Mapped[str] = mapped_column(String(20), info=PLAIN)  # reserved, ok, error
    reserved_micros: Mapped[int] = mapped_column(BigInteger, server_default=text("0"),
                                                 info=PLAIN)
    shard: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"), info=PLAIN)
    cost_micros: Mapped[int] = mapped_column(BigInteger, server_default=text("0"), info=PLAIN)
    tokens_in: Mapped[int] = mapped_column(Integer, server_default=text("0"), info=PLAIN)
    tokens_out: Mapped[int] = mapped_column(Integer, server_default=text("0"), info=PLAIN)
    latency_ms: Mapped[int | None] = mapped_column(Integer, info=PLAIN)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"), info=PLAIN)
    redactions: Mapped[dict[str, int]] = mapped_column(JSONB, server_default=text("'{}'"),
                                                       info=PLAIN)
    error: Mapped[str | None] = mapped_column(String(300), info=PLAIN)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), info=PLAIN)
    answer_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=PII)

    __table_args__ = (
        Index("ix_gateway_calls_created_at", "created_at"),
        Index("ix_gateway_calls_idempotency_key", "idempotency_key",
              postgresql_where=text("idempotency_key IS NOT NULL")),
        Index("ix_gateway_calls_status_reserved", "status",
              postgresql_where=text("status = 'reserved'")),
    )


# Each later tenant area keeps its tables in its own module; importing them here puts every
# tenant table in TenantBase.metadata, which migrations, exports and key rotation walk.
from tenant_runtime.agents import models as _agents  # noqa: E402, F401
from tenant_runtime.approvals import models as _approvals  # noqa: E402, F401
from tenant_runtime.mcp import models as _mcp  # noqa: E402, F401
from tenant_runtime.minimization import models as _minimization  # noqa: E402, F401
from tenant_runtime.personas import models as _personas  # noqa: E402, F401
from tenant_runtime.recommendations import models as _recommendations  # noqa: E402, F401
from tenant_runtime.signals import models as _signals  # noqa: E402, F401
