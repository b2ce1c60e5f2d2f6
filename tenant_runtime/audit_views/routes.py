"""The audit timeline page of a tenant (Owners, Admins and Compliance), and its filtered view
as CSV (``/audit/timeline.csv``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from tenant_runtime import audit_retention, tables
from tenant_runtime.audit_views import service
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.models import AuditSettings
from tenant_runtime.routing import TenantRoute

SORTS = ("newest", "oldest")


def _date(name: str, raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise TenantInvalidInput(f"'{name}' must be a date like 2026-11-25 or "
                                 f"2026-11-25T14:00.") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def parse_filter(request: Request) -> service.TimelineFilter:
    q = request.query_params
    unknown = set(q) - {"event_type", "actor", "since", "until", "before_seq", "after_seq",
                        "sort"}
    if unknown:
        raise TenantInvalidInput(f"Unknown filter '{sorted(unknown)[0]}'.")
    sort = tables.choice(q, "sort", SORTS, default="newest", what="The sort")
    return service.TimelineFilter(
        event_type=(q.get("event_type") or "").strip()[:100] or None,
        actor=(q.get("actor") or "").strip()[:320] or None,
        since=_date("since", q.get("since")), until=_date("until", q.get("until")),
        before_seq=_seq(q, "before_seq"), after_seq=_seq(q, "after_seq"),
        oldest_first=sort == "oldest")


def _seq(q: Mapping[str, str], name: str) -> int | None:
    raw = q.get(name) or None
    if raw is not None and (not raw.isdigit() or len(raw) > 18):
        raise TenantInvalidInput(f"'{name}' must be a positive whole number.")
    return int(raw) if raw else None


class AuditSettingsForm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csrf_token: str = ""
    webhook_url: str = Field(default="", max_length=500)
    retention_days: int = Field(ge=1, le=100_000)


def _page(request: Request, ctx: TenantContext, *, status_code: int = 200,
          **extra: object) -> Response:
    render = request.app.state.render
    f = parse_filter(request) if request.method == "GET" else service.TimelineFilter()
    with ctx.session() as s:
        page = service.timeline(s, f)
        types = service.event_types(s)
        settings = s.get(AuditSettings, 1)
    params = {k: v for k, v in request.query_params.items()
              if k not in ("before_seq", "after_seq") and v}
    return render(request, "tenants/audit.html",  # type: ignore[no-any-return]
                  {"page": page, "filter": f, "types": types, "params": params,
                   "tenant_id": ctx.tenant_id, "role": ctx.actor.role,
                   "webhook_url": settings.webhook_url if settings else None,
                   "retention_days": settings.retention_days if settings
                   else audit_retention.DEFAULT_RETENTION_DAYS, **extra},
                  status_code=status_code, partial="tenants/_audit_rows.html")


def timeline_page(request: Request, ctx: TenantContext) -> Response:
    return _page(request, ctx)


def timeline_download(request: Request, ctx: TenantContext) -> Response:
    f = parse_filter(request)
    with ctx.session() as s:
        body = service.timeline_csv(s, f)
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers=tables.csv_headers(f"tenant-{ctx.tenant_id}-audit-timeline.csv"))


def save_settings(request: Request, ctx: TenantContext) -> Response:
    form: AuditSettingsForm = request.state.form
    try:
        with ctx.session() as s, s.begin():
            secret = audit_retention.do_configure_audit(
                s, ctx, webhook_url=form.webhook_url or None,
                retention_days=form.retention_days)
    except TenantInvalidInput as exc:
        return _page(request, ctx, status_code=422, settings_error=exc.message)
    return _page(request, ctx, new_webhook_secret=secret, settings_notice="Saved.")


routes = [
    TenantRoute("/audit", timeline_page, permission="audit.view"),
    TenantRoute("/audit/timeline.csv", timeline_download, permission="audit.view"),
    TenantRoute("/audit/settings", save_settings, "POST", form=AuditSettingsForm,
                permission="audit.settings"),
]
