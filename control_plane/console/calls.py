"""The gateway's recent calls for the console: every call (answered, failed, in flight) and
every refusal (a model off the allowlist, a forbidden tool, a refused image, the spend cap),
newest first, with paging, filters, sorting and a CSV download. Reads ``gateway_calls`` and the
refusal events of the audit chain; it never writes, and the gateway's own code is not
involved."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, String, cast, func, literal, null, select, union_all
from sqlalchemy.orm import Session

from tenant_runtime import tables
from tenant_runtime.gateway.pricing import DEFAULT_PRICES
from tenant_runtime.gateway.service import GatewayEvents
from tenant_runtime.models import AuditEvent, GatewayCall, GatewayRoute

PAGE_SIZE = 50
STATUSES = ("ok", "error", "reserved", "refused")
SORTS = {"newest": "at DESC", "oldest": "at ASC", "cost": "cost DESC",
         "latency": "latency DESC"}
REFUSALS = {GatewayEvents.MODEL_REFUSED: "the model is not on the allowlist",
            GatewayEvents.TOOL_REFUSED: "a tool the tenant's tool rules forbid",
            GatewayEvents.IMAGE_REFUSED: "images, which the tenant's image policy refuses",
            GatewayEvents.SPEND_CAP_REACHED: "the monthly spend cap is reached"}
UNLISTED = "unlisted:"


@dataclass(frozen=True)
class CallFilter(tables.TableFilter):
    status: str = ""
    model: str = ""
    sort: str = "newest"
    page: int = 1

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> CallFilter:
        return cls(tables.choice(query, "status", STATUSES),
                   tables.text_filter(query, "model"),
                   tables.choice(query, "sort", tuple(SORTS), default="newest",
                                 what="The sort"),
                   tables.page_number(query))


@dataclass(frozen=True)
class CallRow:
    at: datetime
    status: str
    model: str
    model_note: str | None
    reason: str | None
    provider: str | None
    provider_model: str | None
    tokens_in: int
    tokens_out: int
    cost_micros: int
    latency_ms: int | None
    attempts: int
    api_key_id: str | None


@dataclass(frozen=True)
class CallPage:
    rows: list[CallRow]
    filter: CallFilter
    has_next: bool


def digest(name: str) -> str:
    """The gateway's digest of a model name that is no route (gateway/service.py)."""
    return hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:16]


def known_names(s: Session) -> dict[str, str]:
    """Digest → name for the names an unlisted request most likely used: the built-in price
    table's models and the tenant's routes (a route deleted or renamed since)."""
    names = set(DEFAULT_PRICES) | set(s.scalars(select(GatewayRoute.model_name)))
    names |= set(s.scalars(select(GatewayRoute.provider_model)))
    return {digest(name): name for name in names}


def explain_model(name: str, known: Mapping[str, str]) -> tuple[str, str | None]:
    """What to show for a stored model name: an unlisted one is kept in the chain only as a
    digest (the name could be anything a caller typed); say so, and name it when the digest
    is one of a known model's."""
    if not name.startswith(UNLISTED):
        return name, None
    found = known.get(name.removeprefix(UNLISTED))
    if found:
        return found, (f"not a route of this tenant; recognised from its digest "
                       f"{name.removeprefix(UNLISTED)[:8]}… as a known model name")
    return ("(a name that is no route)",
            f"the name asked for is not kept, only its digest {name.removeprefix(UNLISTED)[:8]}…;"
            " it matches no known model name, so it was probably a typo or a custom name")


def _union(f: CallFilter):  # type: ignore[no-untyped-def]  # a SQLAlchemy subquery
    calls = select(
        GatewayCall.created_at.label("at"), GatewayCall.status.label("status"),
        GatewayCall.model_name.label("model"), GatewayCall.error.label("reason"),
        GatewayCall.provider.label("provider"),
        GatewayCall.provider_model.label("provider_model"),
        GatewayCall.tokens_in.label("tokens_in"), GatewayCall.tokens_out.label("tokens_out"),
        GatewayCall.cost_micros.label("cost"), GatewayCall.latency_ms.label("latency"),
        GatewayCall.attempts.label("attempts"), GatewayCall.api_key_id.label("api_key_id"))
    refusals = select(
        AuditEvent.occurred_at.label("at"), literal("refused", String).label("status"),
        func.coalesce(AuditEvent.target_id, "").label("model"),
        AuditEvent.event_type.label("reason"), cast(null(), String).label("provider"),
        cast(null(), String).label("provider_model"), literal(0, Integer).label("tokens_in"),
        literal(0, Integer).label("tokens_out"), literal(0).label("cost"),
        cast(null(), Integer).label("latency"), literal(0, Integer).label("attempts"),
        AuditEvent.details["api_key_id"].astext.label("api_key_id"),
    ).where(AuditEvent.event_type.in_(tuple(REFUSALS)))
    if f.status == "refused":
        calls = calls.where(literal(False))
    elif f.status:
        calls = calls.where(GatewayCall.status == f.status)
        refusals = refusals.where(literal(False))
    return union_all(calls, refusals).subquery("c")


def _rows(s: Session, f: CallFilter, *, limit: int, offset: int) -> list[CallRow]:
    c = _union(f)
    order = {"newest": [c.c.at.desc()], "oldest": [c.c.at.asc()],
             "cost": [c.c.cost.desc(), c.c.at.desc()],
             "latency": [c.c.latency.desc().nulls_last(), c.c.at.desc()]}[f.sort]
    q = select(c).order_by(*order).limit(limit).offset(offset)
    if f.model:
        q = q.where(c.c.model.ilike(tables.like_pattern(f.model)))
    known = known_names(s)
    rows = []
    for r in s.execute(q).mappings():
        model, note = explain_model(r["model"], known)
        reason = REFUSALS.get(r["reason"], r["reason"]) if r["status"] == "refused" \
            else r["reason"]
        rows.append(CallRow(r["at"], r["status"], model, note, reason, r["provider"],
                            r["provider_model"], int(r["tokens_in"] or 0),
                            int(r["tokens_out"] or 0), int(r["cost"] or 0), r["latency"],
                            int(r["attempts"] or 0), r["api_key_id"]))
    return rows


def recent_calls(s: Session, f: CallFilter) -> CallPage:
    rows = _rows(s, f, limit=PAGE_SIZE + 1, offset=(f.page - 1) * PAGE_SIZE)
    return CallPage(rows[:PAGE_SIZE], f, len(rows) > PAGE_SIZE)


CSV_HEADER = ("time_utc", "status", "model", "model_note", "reason", "provider",
              "provider_model", "tokens_in", "tokens_out", "cost_usd", "latency_ms",
              "attempts", "api_key_id")


def calls_csv(s: Session, f: CallFilter) -> str:
    rows: Iterable[CallRow] = _rows(s, CallFilter(f.status, f.model, f.sort, 1),
                                    limit=tables.CSV_MAX_ROWS, offset=0)
    return tables.csv_text(CSV_HEADER, ((
        r.at.strftime("%Y-%m-%d %H:%M:%S"), r.status, r.model, r.model_note, r.reason,
        r.provider, r.provider_model, r.tokens_in, r.tokens_out,
        f"{r.cost_micros / 1_000_000:.6f}", r.latency_ms, r.attempts, r.api_key_id)
        for r in rows))
