"""The tenant's gateway page: spend this month against the cap (per model, per day), recent
calls, and for Owners and Admins the routes and allowlist, redaction profile and rate limits;
the spend cap and the price table are the Owner's. Every change is audited."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from tenant_runtime import permissions
from tenant_runtime.context import TenantContext
from tenant_runtime.credentials.service import list_credentials
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.gateway import admin, config, pricing, report, tools
from tenant_runtime.gateway.providers.base import PROVIDERS
from tenant_runtime.models import GatewayRoute
from tenant_runtime.redaction import DETECTORS, PROFILES
from tenant_runtime.routing import TenantRoute


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csrf_token: str = ""


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def _words(value: str) -> list[str]:
    return [word.strip() for word in value.replace(",", " ").split() if word.strip()]


def _usd_micros(value: str, what: str) -> int:
    try:
        amount = Decimal(value.strip().lstrip("$").replace(",", ""))
        if not amount.is_finite() or not 0 <= amount <= 10_000_000:
            raise InvalidOperation
        return int(amount * 1_000_000)
    except ArithmeticError:  # InvalidOperation, Overflow
        raise TenantInvalidInput(f"{what} must be an amount in US dollars from 0 to "
                                 "10,000,000, such as 250 or 99.50.") from None


class SettingsForm(_Form):
    redaction_profile: str = Field(max_length=20)
    custom_detectors: str = Field(default="", max_length=500)
    custom_terms: str = Field(default="", max_length=20_000)
    custom_patterns: str = Field(default="", max_length=10_000)
    requests_per_minute: int = Field(ge=1, le=1_000_000)
    tokens_per_minute: int = Field(ge=1, le=1_000_000_000)


class ToolPolicyForm(_Form):
    tool_rules: str = Field(default="", max_length=20_000)
    image_policy: Literal["default", "allow", "refuse"] = "default"


class CapForm(_Form):
    monthly_cap_usd: str = Field(max_length=30)


class RouteForm(_Form):
    model_name: str = Field(max_length=100)
    provider: str = Field(max_length=20)
    provider_model: str = Field(max_length=200)
    endpoint: str = Field(default="", max_length=500)
    api_version: str = Field(default="", max_length=40)
    region: str = Field(default="", max_length=40)
    credential_id: int | None = None
    # checked by the handler, so a bad value is answered beside the form with its values kept
    timeout_seconds: str = Field(default="60", max_length=30)
    fallbacks: str = Field(default="", max_length=1000)
    allowed: bool = False

    @field_validator("credential_id", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value

    def timeout(self) -> float:
        try:
            value = float(self.timeout_seconds.strip() or "60")
        except ValueError:
            value = -1.0
        if not 1 <= value <= 600:  # (NaN fails too)
            raise TenantInvalidInput("The timeout must be a number of seconds from 1 to 600.")
        return value


class PriceForm(_Form):
    provider_model: str = Field(max_length=200)
    input_usd_per_mtok: float = Field(ge=0, le=10_000)
    output_usd_per_mtok: float = Field(ge=0, le=10_000)


class EmptyForm(_Form):
    pass


def _page(request: Request, ctx: TenantContext, *, status_code: int = 200,
          **extra: object) -> Response:
    render = request.app.state.render
    manager = permissions.allows(ctx.actor.role, "gateway.manage")
    with ctx.session() as s, s.begin():
        settings = config.load_settings(s)
        routes = list(s.scalars(select(GatewayRoute).order_by(GatewayRoute.model_name)))
        route_prices = {r.provider_model: pricing.price_for(s, r.provider_model)
                        for r in routes}
        context = {
            "settings": settings, "routes": routes, "route_prices": route_prices,
            "tenant_prices": pricing.tenant_prices(s),
            "spend": report.spend_report(s, cap_micros=settings.monthly_cap_micros),
            "calls": report.recent_calls(s),
            "custom_terms": config.custom_terms(ctx, settings) if manager else [],
            "credentials": list_credentials(s, ctx) if manager else [],
            "providers": PROVIDERS, "profiles": PROFILES, "detectors": DETECTORS,
            "tool_rules_text": tools.rules_text(tools.parse_rules(settings.tool_rules)),
            "images_allowed": tools.images_allowed(settings.image_policy,
                                                   settings.redaction_profile),
            "role": ctx.actor.role, "dollars": lambda micros: f"${micros / 1e6:,.2f}",
            # a page rendered by a POST names its own address, so a reload does not post
            "page_url": f"/tenants/{ctx.tenant_id}/gateway" if request.method == "POST" else None,
            **extra}
    return render(request, "tenants/gateway.html",  # type: ignore[no-any-return]
                  context, status_code=status_code)


def gateway_page(request: Request, ctx: TenantContext) -> Response:
    return _page(request, ctx)


def _change(request: Request, ctx: TenantContext, apply: Callable[[Session], object],
            notice: str) -> Response:
    try:
        with ctx.session() as s, s.begin():
            apply(s)
    except TenantInvalidInput as exc:
        return _page(request, ctx, status_code=422, error=exc.message)
    return _page(request, ctx, notice=notice)


def update_settings(request: Request, ctx: TenantContext) -> Response:
    form: SettingsForm = request.state.form

    def apply(s: Session) -> None:
        current = config.load_settings(s)
        admin.update_settings(s, ctx, admin.SettingsChange(
            redaction_profile=form.redaction_profile.strip(),
            custom_detectors=_words(form.custom_detectors),
            custom_terms=_lines(form.custom_terms), custom_patterns=_lines(form.custom_patterns),
            monthly_cap_micros=current.monthly_cap_micros,
            requests_per_minute=form.requests_per_minute,
            tokens_per_minute=form.tokens_per_minute))

    return _change(request, ctx, apply, "Gateway settings saved.")


def update_tool_policy(request: Request, ctx: TenantContext) -> Response:
    form: ToolPolicyForm = request.state.form

    def apply(s: Session) -> None:
        admin.update_tool_policy(s, ctx, tools.parse_rules_text(form.tool_rules),
                                 None if form.image_policy == "default" else form.image_policy)

    try:
        with ctx.session() as s, s.begin():
            apply(s)
    except TenantInvalidInput as exc:
        return _page(request, ctx, status_code=422, tools_error=exc.message,
                     tools_form=form.model_dump(exclude={"csrf_token"}))
    return _page(request, ctx, notice="Tool rules and image policy saved.")


def update_cap(request: Request, ctx: TenantContext) -> Response:
    form: CapForm = request.state.form

    def apply(s: Session) -> None:
        current = config.load_settings(s)
        admin.update_settings(s, ctx, admin.SettingsChange(
            redaction_profile=current.redaction_profile,
            custom_detectors=list(current.custom_detectors),
            custom_terms=config.custom_terms(ctx, current),
            custom_patterns=list(current.custom_patterns),
            monthly_cap_micros=_usd_micros(form.monthly_cap_usd, "The monthly cap"),
            requests_per_minute=current.requests_per_minute,
            tokens_per_minute=current.tokens_per_minute))

    return _change(request, ctx, apply, "Monthly spend cap saved.")


def add_route(request: Request, ctx: TenantContext) -> Response:
    """Add a route. A refusal (a duplicate name, an endpoint the egress policy refuses, a bad
    timeout) is shown beside the form, which keeps what was typed."""
    form: RouteForm = request.state.form
    try:
        data = admin.RouteInput(
            model_name=form.model_name, provider=form.provider,
            provider_model=form.provider_model, endpoint=form.endpoint,
            api_version=form.api_version, region=form.region, credential_id=form.credential_id,
            timeout_seconds=form.timeout(), fallbacks=tuple(_words(form.fallbacks)),
            allowed=form.allowed)
        with ctx.session() as s, s.begin():
            admin.add_route(s, ctx, data)
    except TenantInvalidInput as exc:
        return _page(request, ctx, status_code=422, route_error=exc.message,
                     route_form=form.model_dump(exclude={"csrf_token"}))
    return _page(request, ctx, notice=f"Route {form.model_name.strip()} added.")


def _route_id(request: Request) -> int:
    return int(request.path_params["route_id"])


def allow_route(request: Request, ctx: TenantContext) -> Response:
    return _change(request, ctx, lambda s: admin.set_allowed(s, ctx, _route_id(request), True),
                   "The model is allowed.")


def disallow_route(request: Request, ctx: TenantContext) -> Response:
    return _change(request, ctx, lambda s: admin.set_allowed(s, ctx, _route_id(request), False),
                   "The model is no longer allowed.")


def delete_route(request: Request, ctx: TenantContext) -> Response:
    return _change(request, ctx, lambda s: admin.delete_route(s, ctx, _route_id(request)),
                   "Route deleted.")


def set_price(request: Request, ctx: TenantContext) -> Response:
    form: PriceForm = request.state.form
    return _change(request, ctx, lambda s: admin.set_price(
        s, ctx, form.provider_model, input_usd_per_mtok=form.input_usd_per_mtok,
        output_usd_per_mtok=form.output_usd_per_mtok), f"Price of {form.provider_model} saved.")


def remove_price(request: Request, ctx: TenantContext) -> Response:
    model = request.path_params["provider_model"]
    return _change(request, ctx, lambda s: admin.remove_price(s, ctx, model),
                   f"{model} is back on the default price.")


routes = [
    TenantRoute("/gateway", gateway_page, permission="gateway.view"),
    TenantRoute("/gateway/settings", update_settings, "POST", form=SettingsForm,
                permission="gateway.manage"),
    TenantRoute("/gateway/tools", update_tool_policy, "POST", form=ToolPolicyForm,
                permission="gateway.manage"),
    TenantRoute("/gateway/cap", update_cap, "POST", form=CapForm, permission="gateway.spend"),
    TenantRoute("/gateway/routes", add_route, "POST", form=RouteForm,
                permission="gateway.manage"),
    TenantRoute("/gateway/routes/{route_id:int}/allow", allow_route, "POST", form=EmptyForm,
                permission="gateway.manage"),
    TenantRoute("/gateway/routes/{route_id:int}/disallow", disallow_route, "POST",
                form=EmptyForm, permission="gateway.manage"),
    TenantRoute("/gateway/routes/{route_id:int}/delete", delete_route, "POST", form=EmptyForm,
                permission="gateway.manage"),
    TenantRoute("/gateway/prices", set_price, "POST", form=PriceForm,
                permission="gateway.spend"),
    TenantRoute("/gateway/prices/{provider_model:path}/delete", remove_price, "POST",
                form=EmptyForm, permission="gateway.spend"),
]
