"""The recommendations area's tenant tables (TenantBase.metadata lists them through
tenant_runtime/models.py).

    tasks                     what operators want judged; the description is ``pii``
    recommendation_settings   one row: the panel, the Architect, the deliberator, thresholds
    recommendation_runs       one pass of the gate over a task: the Architect's analysis, the
                              deliberator's synthesis (both ``pii``: model text about the task),
                              the verdict and the gate's reasons (our own sentences)
    panel_votes               one row per panel model and run (unique: a retried vote job
                              cannot record a second vote); rationales are ``pii``

Sealed values use the row's ``id`` as their row key, like every sealed tenant column."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenant_runtime.models import NOW, PII, PLAIN, TenantBase


class Task(TenantBase):
    """A task an operator wants judged for automation. ``signals`` holds counts and ratios
    (recurrence, uniformity, handler consistency; ``schemas.TaskSignals``), ``tags`` short
    labels such as ``PHI`` or ``regulated``."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    title: Mapped[str] = mapped_column(String(200), info=PLAIN)
    description_sealed: Mapped[bytes] = mapped_column(LargeBinary, info=PII)
    team: Mapped[str] = mapped_column(String(100), server_default="", info=PLAIN)
    tags: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'"), info=PLAIN)
    signals: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"),
                                                    info=PLAIN)
    source: Mapped[str] = mapped_column(String(20), info=PLAIN)  # form, import, signals
    # a candidate task found by clustering signals (signals/clustering.py): its cluster, and
    # the sources whose signals fall in it (two or more: a cross-source confirmation)
    cluster_key: Mapped[str | None] = mapped_column(String(64), unique=True, info=PLAIN)
    confirmed_by: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'"),
                                                    info=PLAIN)
    created_by: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)


class RecommendationSettings(TenantBase):
    """One row (created with defaults on first use). An empty ``panel_models`` means "up to
    three allowed routes, from different providers where possible"; no Architect or
    deliberator means the panel's first model."""

    __tablename__ = "recommendation_settings"

    id: Mapped[int] = mapped_column(primary_key=True, info=PLAIN)
    panel_models: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'"),
                                                    info=PLAIN)
    architect_model: Mapped[str | None] = mapped_column(String(100), info=PLAIN)
    deliberator_model: Mapped[str | None] = mapped_column(String(100), info=PLAIN)
    min_cost_benefit: Mapped[int] = mapped_column(Integer, server_default=text("7"), info=PLAIN)
    max_customer_risk: Mapped[int] = mapped_column(Integer, server_default=text("3"),
                                                   info=PLAIN)
    max_human_sensitivity: Mapped[int] = mapped_column(Integer, server_default=text("4"),
                                                       info=PLAIN)
    min_compliance: Mapped[int] = mapped_column(Integer, server_default=text("7"), info=PLAIN)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)


class RecommendationRun(TenantBase):
    """One pass of the gate over a task. The panel, models and thresholds are copied from the
    settings when the run starts, so a later change does not rewrite how it was judged.
    ``state``: queued → voting → deliberating → done."""

    __tablename__ = "recommendation_runs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    task_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"),
                                         info=PLAIN)
    state: Mapped[str] = mapped_column(String(20), server_default="queued", info=PLAIN)
    panel_models: Mapped[list[str]] = mapped_column(JSONB, info=PLAIN)
    architect_model: Mapped[str | None] = mapped_column(String(100), info=PLAIN)
    deliberator_model: Mapped[str | None] = mapped_column(String(100), info=PLAIN)
    thresholds: Mapped[dict[str, int]] = mapped_column(JSONB, info=PLAIN)
    analysis_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=PII)
    analysis_error: Mapped[str | None] = mapped_column(String(300), info=PLAIN)
    synthesis_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=PII)
    synthesis_error: Mapped[str | None] = mapped_column(String(300), info=PLAIN)
    mode: Mapped[str | None] = mapped_column(String(20), info=PLAIN)  # panel, heuristic
    verdict: Mapped[str | None] = mapped_column(String(20), info=PLAIN)
    reasons: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'"), info=PLAIN)
    heuristic: Mapped[dict[str, Any] | None] = mapped_column(JSONB, info=PLAIN)
    requested_by: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), info=PLAIN)

    __table_args__ = (Index("ix_recommendation_runs_task_id_id", "task_id", "id"),)


class PanelVote(TenantBase):
    """One panel model's vote in a run: four scores 0–10, or an abstention with its reason
    (``unreachable``, ``refused``, ``spend_cap``, ``malformed``, ``error``)."""

    __tablename__ = "panel_votes"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("recommendation_runs.id", ondelete="CASCADE"), info=PLAIN)
    model_name: Mapped[str] = mapped_column(String(100), info=PLAIN)
    valid: Mapped[bool] = mapped_column(Boolean, info=PLAIN)
    abstention: Mapped[str | None] = mapped_column(String(20), info=PLAIN)
    abstention_detail: Mapped[str | None] = mapped_column(String(300), info=PLAIN)
    cost_benefit: Mapped[int | None] = mapped_column(Integer, info=PLAIN)
    human_sensitivity: Mapped[int | None] = mapped_column(Integer, info=PLAIN)
    customer_risk: Mapped[int | None] = mapped_column(Integer, info=PLAIN)
    compliance: Mapped[int | None] = mapped_column(Integer, info=PLAIN)
    rationales_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=PII)
    latency_ms: Mapped[int | None] = mapped_column(Integer, info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)

    __table_args__ = (UniqueConstraint("run_id", "model_name",
                                       name="uq_panel_votes_run_id_model_name"),)
