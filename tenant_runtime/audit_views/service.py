"""The audit timeline: filters (event type, actor, date range) and keyset pagination on ``seq``,
newest first, so a page costs the same at row 10 and at row 1,000,000."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenant_runtime.models import AuditEvent

PAGE_SIZE = 50


@dataclass(frozen=True)
class TimelineFilter:
    event_type: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_seq: int | None = None


@dataclass(frozen=True)
class TimelinePage:
    events: list[AuditEvent]
    next_before_seq: int | None  # the cursor of the next (older) page, if any


def timeline(s: Session, f: TimelineFilter, *, page_size: int = PAGE_SIZE) -> TimelinePage:
    query = select(AuditEvent)
    if f.event_type:
        query = query.where(AuditEvent.event_type == f.event_type)
    if f.actor:
        query = query.where(AuditEvent.actor_name == f.actor)
    if f.since:
        query = query.where(AuditEvent.occurred_at >= f.since)
    if f.until:
        query = query.where(AuditEvent.occurred_at < f.until)
    if f.before_seq:
        query = query.where(AuditEvent.seq < f.before_seq)
    rows = list(s.scalars(query.order_by(AuditEvent.seq.desc()).limit(page_size + 1)))
    more = len(rows) > page_size
    rows = rows[:page_size]
    return TimelinePage(rows, rows[-1].seq if more and rows else None)


def event_types(s: Session) -> list[str]:
    """The distinct event types present (a skip scan over the (event_type, seq) index)."""
    found: list[str] = []
    current = s.scalar(select(AuditEvent.event_type).order_by(AuditEvent.event_type).limit(1))
    while current is not None and len(found) < 500:
        found.append(current)
        current = s.scalar(select(AuditEvent.event_type).where(AuditEvent.event_type > current)
                           .order_by(AuditEvent.event_type).limit(1))
    return found
