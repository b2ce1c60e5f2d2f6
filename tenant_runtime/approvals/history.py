"""The approvals history: requests that are no longer waiting (approved, rejected, executed,
expired) — who asked, who decided, the decision, when, the action class — with a status and an
action-class filter, sorting, paging and a CSV download. Reads only."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, not_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from tenant_runtime import tables
from tenant_runtime.approvals.models import ApprovalDecision, ApprovalRequest
from tenant_runtime.approvals.service import display_state

PAGE_SIZE = 50
STATUSES = ("approved", "rejected", "executed", "expired")
SORTS = ("newest", "oldest", "action")


@dataclass(frozen=True)
class HistoryFilter(tables.TableFilter):
    status: str = ""
    action: str = ""
    sort: str = "newest"
    page: int = 1

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> HistoryFilter:
        return cls(tables.choice(query, "status", STATUSES),
                   tables.text_filter(query, "action"),
                   tables.choice(query, "sort", SORTS, default="newest", what="The sort"),
                   tables.page_number(query))


@dataclass(frozen=True)
class Decider:
    name: str
    role: str | None
    approve: bool


@dataclass(frozen=True)
class HistoryRow:
    id: uuid.UUID
    action: str
    asked_by: str
    via: str
    asked_at: datetime
    decided_at: datetime  # the decision, or the expiry for an expired request
    status: str
    restricted: bool
    deciders: list[Decider]

    @property
    def decided_by(self) -> str:
        if not self.restricted:
            return "nobody: not restricted, approved at once"
        if not self.deciders:
            return "nobody"
        return ", ".join(f"{d.name} ({'approved' if d.approve else 'rejected'})"
                         for d in self.deciders)


@dataclass(frozen=True)
class HistoryPage:
    rows: list[HistoryRow]
    filter: HistoryFilter
    has_next: bool


def _when() -> ColumnElement[Any]:
    return func.coalesce(ApprovalRequest.decided_at, ApprovalRequest.expires_at)


def _status_clause(status: str, now: datetime) -> ColumnElement[bool]:
    r = ApprovalRequest
    open_ = r.state.in_(("pending", "approved"))
    return {
        "": not_(and_(r.state == "pending", r.expires_at > now)),
        "expired": and_(open_, r.expires_at <= now),
        "approved": and_(r.state == "approved", r.expires_at > now),
        "rejected": r.state == "rejected",
        "executed": r.state == "executed",
    }[status]


def _rows(s: Session, f: HistoryFilter, now: datetime, *, limit: int,
          offset: int) -> list[HistoryRow]:
    order = {"newest": [_when().desc(), ApprovalRequest.id],
             "oldest": [_when().asc(), ApprovalRequest.id],
             "action": [ApprovalRequest.action, _when().desc()]}[f.sort]
    query = select(ApprovalRequest).where(_status_clause(f.status, now))
    if f.action:
        query = query.where(ApprovalRequest.action == f.action)
    requests = list(s.scalars(query.order_by(*order).limit(limit).offset(offset)))
    deciders: dict[uuid.UUID, list[Decider]] = {}
    if requests:
        for d in s.scalars(select(ApprovalDecision).where(
                ApprovalDecision.request_id.in_([r.id for r in requests]))
                .order_by(ApprovalDecision.decided_at, ApprovalDecision.id)):
            deciders.setdefault(d.request_id, []).append(
                Decider(d.approver_name or d.approver_id, d.approver_role, d.approve))
    return [HistoryRow(r.id, r.action, r.requested_by_name or r.requested_by_type, r.via,
                       r.created_at, r.decided_at or r.expires_at, display_state(r, now),
                       r.restricted, deciders.get(r.id, [])) for r in requests]


def history(s: Session, f: HistoryFilter, now: datetime) -> HistoryPage:
    rows = _rows(s, f, now, limit=PAGE_SIZE + 1, offset=(f.page - 1) * PAGE_SIZE)
    return HistoryPage(rows[:PAGE_SIZE], f, len(rows) > PAGE_SIZE)


def action_names(s: Session) -> list[str]:
    """The actions asked for so far (the filter's choices)."""
    return list(s.scalars(select(ApprovalRequest.action).distinct()
                          .order_by(ApprovalRequest.action)))


CSV_HEADER = ("asked_at_utc", "action", "asked_by", "via", "status", "decided_at_utc",
              "decided_by", "request_id")


def history_csv(s: Session, f: HistoryFilter, now: datetime) -> str:
    rows = _rows(s, HistoryFilter(f.status, f.action, f.sort, 1), now,
                 limit=tables.CSV_MAX_ROWS, offset=0)
    return tables.csv_text(CSV_HEADER, ((
        r.asked_at.strftime("%Y-%m-%d %H:%M:%S"), r.action, r.asked_by, r.via, r.status,
        r.decided_at.strftime("%Y-%m-%d %H:%M:%S"), r.decided_by, r.id) for r in rows))

