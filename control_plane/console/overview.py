"""What the Overview tab of a tenant and the platform home show: a getting-started checklist
that ticks itself off from real state, spend against the cap, calls and errors per day,
pending approvals, agents by phase, audit chain health and key status. Reads only; a tenant
database that cannot be read leaves its figures out rather than failing the page."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.elements import ColumnElement

from control_plane.console.charts import SERIES_CSS, Series, bar_chart, cap_meter
from control_plane.db import utcnow
from control_plane.jobs import JobKinds
from control_plane.models import ApiKey, Job
from control_plane.tenancy.service import TenantAccess
from control_plane.web.services import Services
from tenant_runtime import permissions
from tenant_runtime.agents.models import Agent
from tenant_runtime.approvals.service import pending_count
from tenant_runtime.exceptions import TenantError
from tenant_runtime.gateway.spend import month_totals
from tenant_runtime.models import (
    AuditCheckpoint,
    AuditEvent,
    GatewayCall,
    GatewayRoute,
    GatewaySettings,
)

CHART_DAYS = 14
MICROS = 1_000_000


@dataclass(frozen=True)
class Step:
    label: str
    done: bool
    href: str
    hint: str


@dataclass
class TenantOverview:
    base_url: str
    checklist: Checklist | None = None
    spent_micros: int = 0
    reserved_micros: int = 0
    cap_micros: int = 0
    meter: Markup | None = None
    calls_chart: Markup | None = None
    spend_chart: Markup | None = None
    model_chart: Markup | None = None
    latency_chart: Markup | None = None
    calls_total: int = 0
    errors_total: int = 0
    pending_approvals: int = 0
    agents_by_phase: dict[str, int] = field(default_factory=dict)
    audit_seq: int | None = None
    last_checkpoint: datetime | None = None
    last_verification: Job | None = None
    active_keys: int = 0
    unreadable: str | None = None  # the sentence when the tenant database could not be read
    pages: frozenset[str] = frozenset()  # the tenant pages the member's role opens: links only

    @property
    def cap_percent(self) -> int:
        return int(self.spent_micros * 100 / self.cap_micros) if self.cap_micros else 0


def month_start(today: date) -> date:
    return today.replace(day=1)


def snippet_for(base_url: str, model: str) -> str:
    """The copy-paste first call: the official OpenAI SDK, only base_url and api_key changed."""
    return ("from openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{base_url.rstrip("/")}/v1", '
            'api_key="mg_…your key…")\n'
            f'answer = client.chat.completions.create(model="{model}", messages=[\n'
            '    {"role": "user", "content": "Say hello"}])\n'
            "print(answer.choices[0].message.content)\n")


def active_keys(s: Session, tenant_ids: list[int], now: datetime) -> dict[int, int]:
    """How many API keys each tenant has that are neither revoked nor expired."""
    rows = s.execute(select(ApiKey.tenant_id, func.count()).where(
        ApiKey.tenant_id.in_(tenant_ids), ApiKey.revoked_at.is_(None),
        (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > now)).group_by(ApiKey.tenant_id))
    return {int(tenant_id): int(n) for tenant_id, n in rows}


@dataclass(frozen=True)
class Checklist:
    """The getting-started checklist of one tenant, ticked off from real state."""
    steps: list[Step]
    model: str | None  # the first allowed model, for the snippet
    snippet: str | None

    @property
    def steps_done(self) -> int:
        return sum(step.done for step in self.steps)

    @property
    def next_step(self) -> Step | None:
        return next((step for step in self.steps if not step.done), None)


@dataclass(frozen=True)
class GatewayState:
    """What the checklist reads from a tenant's database."""
    routes: int = 0
    allowed_model: str | None = None
    answered_calls: int = 0


def read_gateway_state(ts: Session) -> GatewayState:
    routes = list(ts.scalars(select(GatewayRoute).order_by(GatewayRoute.id)))
    calls = int(ts.scalar(select(func.count()).select_from(GatewayCall)
                          .where(GatewayCall.status == "ok")) or 0)
    allowed = [r.model_name for r in routes if r.allowed]
    return GatewayState(len(routes), allowed[0] if allowed else None, calls)


def checklist(tenant_id: int, role: str, state: GatewayState, keys: int, *,
              base_url: str) -> Checklist:
    """The four steps (route → allowed model → key → first call), each linking where the
    member's role can do it (the Overview, where it cannot open the Gateway tab)."""
    base = f"/tenants/{tenant_id}"
    gateway = f"{base}/gateway" if permissions.allows(role, "gateway.view") else base
    steps = [
        Step("Add a provider route", state.routes > 0, gateway,
             "Map a model name your programs use to a provider and its credential."),
        Step("Allow a model", state.allowed_model is not None, gateway,
             "Put at least one route on the allowlist."),
        Step("Create an API key", keys > 0, f"{base}/settings",
             "A key with the gateway scope, for your program."),
        Step("Make a first call", state.answered_calls > 0, gateway,
             "Run the snippet below with your key."),
    ]
    model = state.allowed_model
    return Checklist(steps, model, snippet_for(base_url, model) if model else None)


def daily_totals(ts: Session, since: datetime) -> list[tuple[date, int, int, int]]:
    """(day, calls, errors, cost in micros) per UTC day since ``since``."""
    day = _day(GatewayCall.created_at)
    rows = ts.execute(
        select(day, func.count(),
               func.count().filter(GatewayCall.status == "error"),
               func.coalesce(func.sum(GatewayCall.cost_micros), 0))
        .where(GatewayCall.created_at >= since).group_by(day)).all()
    return [(d, int(n), int(e), int(c)) for d, n, e, c in rows]


MODEL_SERIES = 4  # the models with the most spend get a series each; the rest is "other models"
MODEL_NAME_SHOWN = 28
PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def _day(column: ColumnElement[datetime] | InstrumentedAttribute[datetime]
         ) -> ColumnElement[Any]:
    """The UTC day of a timestamp column."""
    return func.date(func.timezone("UTC", column))


def model_spend_chart(ts: Session, since: datetime, days: list[date],
                      labels: list[str]) -> Markup:
    """Spend per day, stacked by model: the ``MODEL_SERIES`` models with the most spend over
    the period, the others summed."""
    day = _day(GatewayCall.created_at)
    rows = ts.execute(select(day, GatewayCall.model_name,
                             func.coalesce(func.sum(GatewayCall.cost_micros), 0))
                      .where(GatewayCall.created_at >= since)
                      .group_by(day, GatewayCall.model_name)).all()
    totals: dict[str, int] = {}
    for _, model, cost in rows:
        totals[model] = totals.get(model, 0) + int(cost)
    top = sorted((m for m in totals if totals[m] > 0), key=lambda m: (-totals[m], m))
    named, rest = top[:MODEL_SERIES], set(top[MODEL_SERIES:])
    per: dict[str, dict[date, float]] = {m: {} for m in [*named, "other models"]}
    for d, model, cost in rows:
        key = model if model in named else ("other models" if model in rest else None)
        if key is not None:
            per[key][d] = per[key].get(d, 0.0) + int(cost) / MICROS
    series = [Series(name if len(name) <= MODEL_NAME_SHOWN
                     else name[:MODEL_NAME_SHOWN - 1] + "…", SERIES_CSS[i],
                     [per[name].get(d, 0.0) for d in days])
              for i, name in enumerate(per) if per[name] or name != "other models"]
    return bar_chart(f"Spend per day by model in US dollars, last {CHART_DAYS} days (UTC)",
                     labels, series or [Series("spend", "bar", [0.0] * len(days))],
                     prefix="$", stacked=True, testid="model-chart")


def latency_chart(ts: Session, since: datetime, days: list[date], labels: list[str]) -> Markup:
    """The answered calls' latency percentiles per day (p50, p95, p99), in milliseconds."""
    day = _day(GatewayCall.created_at)
    rows = ts.execute(select(day, *(func.percentile_cont(q).within_group(GatewayCall.latency_ms)
                                    for _, q in PERCENTILES))
                      .where(GatewayCall.created_at >= since, GatewayCall.status == "ok",
                             GatewayCall.latency_ms.is_not(None))
                      .group_by(day)).all()
    found = {r[0]: r[1:] for r in rows}
    return bar_chart(
        f"Latency of answered calls per day, p50, p95 and p99 in ms, last {CHART_DAYS} days "
        "(UTC)", labels,
        [Series(name, SERIES_CSS[i], [float(found[d][i]) if d in found else 0.0 for d in days])
         for i, (name, _) in enumerate(PERCENTILES)],
        unit=" ms", counts=True, testid="latency-chart")


def tenant_overview(s: Session, svc: Services, access: TenantAccess, *,
                    base_url: str) -> TenantOverview:
    tenant, role = access.tenant, access.role
    now = utcnow()
    keys = active_keys(s, [tenant.id], now).get(tenant.id, 0)
    last_verification = s.scalars(
        select(Job).where(Job.kind == JobKinds.VERIFY_AUDIT, Job.tenant_id == tenant.id)
        .order_by(Job.id.desc()).limit(1)).first()
    user_id = str(access.membership.user_id)
    state = GatewayState()
    view = TenantOverview(base_url=base_url,
                          active_keys=keys, last_verification=last_verification,
                          pages=frozenset(page.path for page in permissions.pages_for(role)))
    try:
        with Session(svc.tenant_connections.engine(tenant), expire_on_commit=False) as ts, \
                ts.begin():
            state = read_gateway_state(ts)
            settings = ts.scalars(select(GatewaySettings).limit(1)).first()
            view.spent_micros, view.reserved_micros = month_totals(ts, month_start(now.date()))
            view.cap_micros = settings.monthly_cap_micros if settings else 100 * MICROS
            first_day = (now - timedelta(days=CHART_DAYS - 1)).date()
            since = datetime.combine(first_day, datetime.min.time(), tzinfo=now.tzinfo)
            daily = {d: (n, e, c) for d, n, e, c in daily_totals(ts, since)}
            days = [first_day + timedelta(days=i) for i in range(CHART_DAYS)]
            labels = [d.strftime("%d %b") for d in days]
            view.calls_total = sum(n for n, _, _ in daily.values())
            view.errors_total = sum(e for _, e, _ in daily.values())
            view.calls_chart = bar_chart(
                f"Gateway calls and errors per day, last {CHART_DAYS} days (UTC)", labels,
                [Series("calls", "bar", [daily.get(d, (0, 0, 0))[0] for d in days]),
                 Series("errors", "bar err", [daily.get(d, (0, 0, 0))[1] for d in days])],
                counts=True, testid="calls-chart")
            view.spend_chart = bar_chart(
                f"Spend per day in US dollars, last {CHART_DAYS} days (UTC)", labels,
                [Series("spend", "bar", [daily.get(d, (0, 0, 0))[2] / MICROS for d in days])],
                prefix="$", testid="spend-chart")
            view.model_chart = model_spend_chart(ts, since, days, labels)
            view.latency_chart = latency_chart(ts, since, days, labels)
            view.meter = cap_meter(view.spent_micros, view.cap_micros)
            if user_id:
                view.pending_approvals = pending_count(ts, user_id=user_id, role=role)
            view.agents_by_phase = {phase: int(n) for phase, n in ts.execute(
                select(Agent.phase, func.count()).group_by(Agent.phase).order_by(Agent.phase))}
            view.audit_seq = ts.scalar(select(func.max(AuditEvent.seq)))
            view.last_checkpoint = ts.scalar(select(func.max(AuditCheckpoint.created_at)))
    except (SQLAlchemyError, TenantError):
        view.unreadable = ("This tenant's database could not be read just now; its figures "
                           "are left out.")
    view.checklist = checklist(tenant.id, role, state, keys, base_url=base_url)
    return view
