"""The personas area's tenant tables (TenantBase.metadata lists them through
tenant_runtime/models.py).

    personas              a name, the teams and the sources (by id) its members may see
    persona_assignments   which member (control-plane user id) holds which persona; a member
                          with several sees the union of their scopes"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tenant_runtime.models import NOW, PLAIN, TenantBase


class Persona(TenantBase):
    __tablename__ = "personas"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, info=PLAIN)
    name: Mapped[str] = mapped_column(String(100), unique=True, info=PLAIN)
    teams: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'"), info=PLAIN)
    source_ids: Mapped[list[int | str]] = mapped_column(JSONB, server_default=text("'[]'"),
                                                  info=PLAIN)
    created_by: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                 info=PLAIN)


class PersonaAssignment(TenantBase):
    __tablename__ = "persona_assignments"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True, info=PLAIN)
    persona_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("personas.id", ondelete="CASCADE"), primary_key=True,
        info=PLAIN)
    assigned_by: Mapped[str | None] = mapped_column(String(320), info=PLAIN)
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=NOW,
                                                  info=PLAIN)
