"""The audit timeline: filters (event type, actor, date range), newest or oldest first, and
keyset pagination on ``seq`` (``before_seq`` going back, ``after_seq`` going forward), so a
page costs the same at row 10 and at row 1,000,000. The CSV download is a view of the same
filtered rows for people; the verifiable export (JSON Lines) is elsewhere and unchanged."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, select, text
from sqlalchemy.orm import Session

from tenant_runtime import tables
from tenant_runtime.models import AuditEvent

PAGE_SIZE = 50


@dataclass(frozen=True)
class TimelineFilter:
    event_type: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_seq: int | None = None
    after_seq: int | None = None
    oldest_first: bool = False


@dataclass(frozen=True)
class TimelinePage:
    events: list[AuditEvent]
    next_seq: int | None  # the cursor of the next page, if any
    cursor: str  # its name: before_seq (newest first) or after_seq (oldest first)


def _filtered(f: TimelineFilter) -> Select[AuditEvent]:
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
    if f.after_seq:
        query = query.where(AuditEvent.seq > f.after_seq)
    return query.order_by(AuditEvent.seq.asc() if f.oldest_first else AuditEvent.seq.desc())


def timeline(s: Session, f: TimelineFilter, *, page_size: int = PAGE_SIZE) -> TimelinePage:
    rows = list(s.scalars(_filtered(f).limit(page_size + 1)))
    more = len(rows) > page_size
    rows = rows[:page_size]
    return TimelinePage(rows, rows[-1].seq if more and rows else None,
                        "after_seq" if f.oldest_first else "before_seq")


CSV_HEADER = ("seq", "occurred_at_utc", "event_type", "actor_type", "actor_id", "actor_name",
              "target_type", "target_id", "details", "chain_hash")


def timeline_csv(s: Session, f: TimelineFilter) -> str:
    """The filtered timeline (cursor ignored, at most ``tables.CSV_MAX_ROWS`` rows) as CSV."""
    whole = TimelineFilter(f.event_type, f.actor, f.since, f.until, None, None, f.oldest_first)
    rows = s.scalars(_filtered(whole).limit(tables.CSV_MAX_ROWS))
    return tables.csv_text(CSV_HEADER, ((
        e.seq, e.occurred_at.strftime("%Y-%m-%d %H:%M:%S"), e.event_type, e.actor_type,
        e.actor_id, e.actor_name, e.target_type, e.target_id,
        json.dumps(e.details, sort_keys=True, ensure_ascii=False), e.chain_hash)
        for e in rows))


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

