"""The audit timeline: filters (event type, actor, date range) and keyset pagination on ``seq``,
newest first, so a page costs the same at row 10 and at row 1,000,000."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
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


MAX_EVENT_TYPES = 500
_EVENT_TYPES = text("""
WITH RECURSIVE found(event_type) AS (
    (SELECT event_type FROM audit_events ORDER BY event_type LIMIT 1)
    UNION ALL
    SELECT (SELECT a.event_type FROM audit_events a WHERE a.event_type > found.event_type
            ORDER BY a.event_type LIMIT 1)
    FROM found WHERE found.event_type IS NOT NULL
)
SELECT event_type FROM found WHERE event_type IS NOT NULL LIMIT :limit
""")


def event_types(s: Session) -> list[str]:
    """The distinct event types present, at most ``MAX_EVENT_TYPES``: a skip scan over the
    (event_type, seq) index, each step the next type after the one before, in one statement
    (one round trip, where a query per type cost one each)."""
    return list(s.scalars(_EVENT_TYPES, {"limit": MAX_EVENT_TYPES}))

