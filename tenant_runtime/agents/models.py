"""The drive layer's tenant tables (TenantBase.metadata lists them through
tenant_runtime/models.py): agents and their shadow runs. What an agent proposed and what the
human did are free text, so both are ``pii`` and sealed (row key: the run's id)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    LargeBinary,
    String,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenant_runtime.models import NOW, PII, PLAIN, TenantBase


class Agent(TenantBase):
    """One agent per task taken forward. ``pending_request_id`` is the approval request of a
    promotion in flight (at most one at a time)."""

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    name: Mapped[str] = mapped_column(String(100), unique=True, info=PLAIN)
    task_id: Mapped[int | None] = mapped_column(BigInteger, info=PLAIN)
    phase: Mapped[str] = mapped_column(String(20), server_default="off", info=PLAIN)
    tools: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'"), info=PLAIN)
    credential_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("provider_credentials.id", ondelete="SET NULL"), info=PLAIN)
    pending_request_id: Mapped[str | None] = mapped_column(String(36), info=PLAIN)
    created_by: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)
    phase_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True),
                                                       server_default=NOW, info=PLAIN)

    __table_args__ = (
        CheckConstraint("phase IN ('off', 'shadow', 'assist', 'autonomous')", name="phase"),
    )


class ShadowRun(TenantBase):
    """The agent's proposed action beside the human's actual one, in the phase the agent was in,
    with whether they agreed and, where known, a ground-truth score from 0 to 1."""

    __tablename__ = "shadow_runs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    agent_id: Mapped[int] = mapped_column(BigInteger,
                                          ForeignKey("agents.id", ondelete="CASCADE"),
                                          info=PLAIN)
    phase: Mapped[str] = mapped_column(String(20), info=PLAIN)
    proposed_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=PII)
    actual_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=PII)
    agreed: Mapped[bool] = mapped_column(Boolean, info=PLAIN)
    ground_truth_score: Mapped[float | None] = mapped_column(Float, info=PLAIN)
    recorded_by: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)

    __table_args__ = (
        CheckConstraint("ground_truth_score IS NULL OR (ground_truth_score >= 0 AND "
                        "ground_truth_score <= 1)", name="score_range"),
        Index("ix_shadow_runs_agent_phase", "agent_id", "phase"),
    )
