"""The teams page: k-anonymous team aggregates over signals, within the caller's persona
(``aggregates.py``), and for Owners the minimization settings (k, retention)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from tenant_runtime import permissions
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput, TenantNotFound
from tenant_runtime.minimization import aggregates, service
from tenant_runtime.minimization.aggregates import PERIOD_LABELS, PERIODS, AggregateQuery
from tenant_runtime.personas.scope import scope_for
from tenant_runtime.routing import TenantRoute


class SettingsForm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csrf_token: str = ""
    k_anonymity: str = Field(max_length=20)
    retention_days: str = Field(max_length=20)


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes / 60:.1f} h"
    return f"{minutes / 1440:.1f} days"


def _query(request: Request) -> AggregateQuery:
    """The page's filters from the query string; 422 with a sentence for a malformed one."""
    params = request.query_params
    period = params.get("period", "all") or "all"
    if period not in PERIODS:
        raise TenantInvalidInput(f"Choose a period among {', '.join(PERIODS)}.")
    raw_source = params.get("source", "").strip()
    source_id: int | None = None
    if raw_source:
        try:
            source_id = int(raw_source)
        except ValueError:
            raise TenantInvalidInput("The source filter takes a source's number, as the "
                                     "list offers.") from None
    team = params.get("team", "").strip() or None
    if team is not None and len(team) > 100:
        raise TenantInvalidInput("A team name has at most 100 characters.")
    return AggregateQuery(period, source_id, team)


def _page(request: Request, ctx: TenantContext, *, status_code: int = 200,
          query: AggregateQuery | None = None, **extra: object) -> Response:
    render = request.app.state.render
    if query is None:
        query = _query(request)
    with ctx.session() as s, s.begin():
        scope = scope_for(s, ctx.actor)
        sources = aggregates.visible_sources(s, scope)
        if query.source_id is not None and query.source_id not in {x.id for x in sources}:
            # a source out of the caller's scope is as absent as one that does not exist
            raise TenantNotFound("There is no such source.")
        settings = service.load_settings(s)
        report = aggregates.team_aggregates(aggregates.load_facts(s, scope), query,
                                            k=service.k_anonymity(s), now=datetime.now(UTC))
        context = {"report": report, "sources": sources, "periods": PERIOD_LABELS,
                   "duration_text": duration_text, "scoped": not scope.unrestricted,
                   "can_configure": permissions.allows(ctx.actor.role, "minimization.manage"),
                   "k_anonymity": settings.k_anonymity,
                   "retention_days": settings.retention_days, **extra}
    return render(request, "minimization/teams.html",  # type: ignore[no-any-return]
                  context, status_code=status_code)


def teams_page(request: Request, ctx: TenantContext) -> Response:
    return _page(request, ctx)


def update_settings(request: Request, ctx: TenantContext) -> Response:
    form: SettingsForm = request.state.form
    everything = AggregateQuery()
    try:
        change = service.parse_settings(form.k_anonymity, form.retention_days)
        with ctx.session() as s, s.begin():
            changed = service.do_update_settings(s, ctx, change)
    except TenantInvalidInput as exc:
        return _page(request, ctx, status_code=exc.status_code, query=everything,
                     error=exc.message, form=form)
    return _page(request, ctx, query=everything,
                 notice="Minimization settings saved." if changed else "Nothing changed.")


routes = [
    TenantRoute("/teams", teams_page, permission="aggregates.view"),
    TenantRoute("/teams/settings", update_settings, "POST", form=SettingsForm,
                permission="minimization.manage"),
]
