"""The signals area's tenant tables (TenantBase.metadata lists them through
tenant_runtime/models.py).

    sources          where signals come from (a CloudWatch account, a Jira project, a GitHub
                     repository, a log stream), each with its own grant: nothing is ingested
                     from a source without one, and refusals are counted
    signal_imports   one upload or ``magistrate signals import`` run: progress, counts and the
                     rejected rows with the reason for each
    signals          one alarm, issue, workflow run or log line, minimized: the title is sealed
                     (``pii``); clustering uses ``template`` (the title redacted and with its
                     numbers and ids masked); the person who handled it is only a pseudonym

Sealed values use the row's ``id`` as their row key, like every sealed tenant column."""

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
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenant_runtime.models import NOW, PII, PLAIN, TenantBase

SOURCE_KINDS = ("cloudwatch", "jira", "github_actions", "logs")


class Source(TenantBase):
    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    name: Mapped[str] = mapped_column(String(100), unique=True, info=PLAIN)
    kind: Mapped[str] = mapped_column(String(30), info=PLAIN)
    granted: Mapped[bool] = mapped_column(Boolean, server_default=text("false"), info=PLAIN)
    granted_by: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    granted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), info=PLAIN)
    refused_count: Mapped[int] = mapped_column(Integer, server_default=text("0"), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)

    __table_args__ = (
        CheckConstraint("kind IN ('cloudwatch', 'jira', 'github_actions', 'logs')",
                        name="kind"),
    )


class SignalImport(TenantBase):
    """``state``: running → done, or failed (the file could not be read as a whole: nothing of
    it was written). ``rejects`` lists up to 1,000 rejected rows as ``{"row", "reason"}``."""

    __tablename__ = "signal_imports"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    source_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("sources.id", ondelete="CASCADE"), info=PLAIN)
    filename: Mapped[str] = mapped_column(String(255), info=PLAIN)
    file_format: Mapped[str] = mapped_column(String(10), info=PLAIN)  # json, jsonl, csv
    state: Mapped[str] = mapped_column(String(20), server_default="running", info=PLAIN)
    bytes_total: Mapped[int] = mapped_column(BigInteger, server_default=text("0"), info=PLAIN)
    bytes_read: Mapped[int] = mapped_column(BigInteger, server_default=text("0"), info=PLAIN)
    rows_imported: Mapped[int] = mapped_column(Integer, server_default=text("0"), info=PLAIN)
    rows_duplicate: Mapped[int] = mapped_column(Integer, server_default=text("0"), info=PLAIN)
    rows_rejected: Mapped[int] = mapped_column(Integer, server_default=text("0"), info=PLAIN)
    rejects: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'"),
                                                          info=PLAIN)
    error: Mapped[str | None] = mapped_column(String(500), info=PLAIN)
    created_by: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), info=PLAIN)


class Signal(TenantBase):
    """``person_ref`` is ``HMAC(pseudonym key, identity)`` truncated to 32 hex digits: it
    counts distinct people (k-anonymity) and cannot be turned back into a name without the
    sealed key. ``cluster_key`` groups signals into candidate tasks (signals/clustering.py)."""

    __tablename__ = "signals"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    source_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("sources.id", ondelete="CASCADE"), info=PLAIN)
    import_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("signal_imports.id", ondelete="SET NULL"), info=PLAIN)
    external_id: Mapped[str] = mapped_column(String(200), info=PLAIN)
    kind: Mapped[str] = mapped_column(String(30), info=PLAIN)
    title_sealed: Mapped[bytes] = mapped_column(LargeBinary, info=PII)
    template: Mapped[str] = mapped_column(String(300), info=PLAIN)
    team: Mapped[str] = mapped_column(String(100), server_default="", info=PLAIN)
    person_ref: Mapped[str | None] = mapped_column(String(32), info=PLAIN)
    outcome: Mapped[str | None] = mapped_column(String(50), info=PLAIN)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), info=PLAIN)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), info=PLAIN)
    cluster_key: Mapped[str | None] = mapped_column(String(64), info=PLAIN)
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                  info=PLAIN)

    __table_args__ = (
        UniqueConstraint("source_id", "external_id", name="uq_signals_source_id_external_id"),
        Index("ix_signals_occurred_at", "occurred_at"),
        Index("ix_signals_cluster_key", "cluster_key"),
        Index("ix_signals_team", "team"),
    )
