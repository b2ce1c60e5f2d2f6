"""The minimization area's tenant tables (TenantBase.metadata lists them through
tenant_runtime/models.py).

    minimization_settings   one row: the stakeholder-extraction master switch (off by default),
                            the k of k-anonymity (never below 3), how long observations and
                            signals are kept, and the key that pseudonymizes people
    observations            what an extractor learned from a source about a task or team: a
                            summary of at most 240 characters, enforced by a CHECK on the sealed
                            bytes (see ``SUMMARY_MAX_CHARS``)

A summary is sealed as UTF-32-LE, four bytes per character whatever the text, so the sealed
value's length says exactly how many characters it holds, and the database can refuse a longer
one: even raw SQL cannot store more than 240 characters (a value that is not a sealed summary
does not open either)."""

from __future__ import annotations

from datetime import datetime

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
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from tenant_runtime.models import NOW, PII, PLAIN, SECRET, TenantBase

SUMMARY_MAX_CHARS = 240
SUMMARY_ENCODING = "utf-32-le"  # four bytes per character: length is a character count
SEALED_OVERHEAD = 6 + 12 + 16  # tenant_runtime/sealing.py: header, nonce, GCM tag
SUMMARY_MAX_SEALED_BYTES = SEALED_OVERHEAD + 4 * SUMMARY_MAX_CHARS  # 994
K_ANONYMITY_FLOOR = 3
DEFAULT_RETENTION_DAYS = 396  # 13 months


class MinimizationSettings(TenantBase):
    """One row (``single_row``). ``stakeholder_extraction`` is the tenant-wide master switch:
    while it is off, no extractor writes an observation, whatever the sources' grants say.
    ``pseudonym_key_sealed`` is a random 32-byte HMAC key, made on first use: people in signals
    are kept only as ``HMAC(key, identity)``, enough to count distinct people and never enough
    to name them."""

    __tablename__ = "minimization_settings"

    id: Mapped[int] = mapped_column(primary_key=True, info=PLAIN)
    stakeholder_extraction: Mapped[bool] = mapped_column(Boolean, server_default=text("false"),
                                                         info=PLAIN)
    k_anonymity: Mapped[int] = mapped_column(Integer, server_default=text("3"), info=PLAIN)
    retention_days: Mapped[int] = mapped_column(Integer, server_default=text("396"),
                                                info=PLAIN)
    pseudonym_key_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, info=SECRET)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)

    __table_args__ = (
        CheckConstraint("k_anonymity >= 3", name="k_at_least_3"),
        CheckConstraint("retention_days BETWEEN 1 AND 3660", name="retention_range"),
    )


class Observation(TenantBase):
    """What an extractor learned from a source about a task or a team. ``dropped_chars`` counts
    what the extractor cut to fit the cap (at a word boundary)."""

    __tablename__ = "observations"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    source_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("sources.id", ondelete="CASCADE"), info=PLAIN)
    signal_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("signals.id", ondelete="CASCADE"), info=PLAIN)
    task_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("tasks.id", ondelete="SET NULL"), info=PLAIN)
    team: Mapped[str] = mapped_column(String(100), server_default="", info=PLAIN)
    summary_sealed: Mapped[bytes] = mapped_column(LargeBinary, info=PII)
    dropped_chars: Mapped[int] = mapped_column(Integer, server_default=text("0"), info=PLAIN)
    extractor: Mapped[str] = mapped_column(String(50), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)

    __table_args__ = (
        CheckConstraint(f"octet_length(summary_sealed) <= {SUMMARY_MAX_SEALED_BYTES}",
                        name="summary_at_most_240_chars"),
        CheckConstraint("dropped_chars >= 0", name="dropped_not_negative"),
        Index("ix_observations_created_at", "created_at"),
        Index("ix_observations_team", "team"),
    )
