"""Changing a tenant's gateway configuration: settings (redaction profile, spend cap, rate
limits), routes and the allowlist, prices. Each change is validated, applied and audited in the
caller's transaction; audit details name the changed fields, never secret values or the
tenant's custom redaction terms."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput, TenantNotFound
from tenant_runtime.gateway import config, tools
from tenant_runtime.gateway.egress import check_route
from tenant_runtime.gateway.names import normalize_model_name
from tenant_runtime.gateway.providers.base import PROVIDERS
from tenant_runtime.gateway.service import GatewayEvents
from tenant_runtime.models import GatewayPrice, GatewayRoute, ProviderCredential
from tenant_runtime.redaction import PROFILES, Profile

MAX_CAP_MICROS = 10_000_000 * 1_000_000  # $10 million a month


@dataclass(frozen=True)
class SettingsChange:
    redaction_profile: str
    custom_detectors: list[str]
    custom_terms: list[str]
    custom_patterns: list[str]
    monthly_cap_micros: int
    requests_per_minute: int
    tokens_per_minute: int


def update_settings(s: Session, ctx: TenantContext, change: SettingsChange) -> list[str]:
    """Apply the change; returns the names of the fields that changed."""
    if change.redaction_profile not in PROFILES:
        raise TenantInvalidInput(f"The redaction profile must be one of {', '.join(PROFILES)}.")
    if not 0 <= change.monthly_cap_micros <= MAX_CAP_MICROS:
        raise TenantInvalidInput("The monthly cap must be between $0 and $10,000,000.")
    if not 1 <= change.requests_per_minute <= 1_000_000:
        raise TenantInvalidInput("Requests per minute must be between 1 and 1,000,000.")
    if not 1 <= change.tokens_per_minute <= 1_000_000_000:
        raise TenantInvalidInput("Tokens per minute must be between 1 and 1,000,000,000.")
    # the profile validates detectors, terms and patterns (a bad pattern is refused here)
    Profile.from_settings(change.redaction_profile, change.custom_detectors,
                          change.custom_terms, change.custom_patterns)
    row = config.load_settings(s)
    old_terms = config.custom_terms(ctx, row)
    changed = [name for name, old, new in (
        ("redaction_profile", row.redaction_profile, change.redaction_profile),
        ("custom_detectors", list(row.custom_detectors), change.custom_detectors),
        ("custom_terms", old_terms, change.custom_terms),
        ("custom_patterns", list(row.custom_patterns), change.custom_patterns),
        ("monthly_cap_micros", row.monthly_cap_micros, change.monthly_cap_micros),
        ("requests_per_minute", row.requests_per_minute, change.requests_per_minute),
        ("tokens_per_minute", row.tokens_per_minute, change.tokens_per_minute)) if old != new]
    if not changed:
        return []
    row.redaction_profile = change.redaction_profile
    row.custom_detectors = change.custom_detectors
    row.custom_terms_sealed = config.seal_terms(ctx, change.custom_terms)
    row.custom_patterns = change.custom_patterns
    row.monthly_cap_micros = change.monthly_cap_micros
    row.requests_per_minute = change.requests_per_minute
    row.tokens_per_minute = change.tokens_per_minute
    row.updated_at = datetime.now(UTC)
    details: dict[str, Any] = {"changed": changed}
    if "monthly_cap_micros" in changed:
        details["monthly_cap_micros"] = change.monthly_cap_micros
    if "redaction_profile" in changed:
        details["redaction_profile"] = change.redaction_profile
    config.bump(s)
    audit.record(s, GatewayEvents.SETTINGS_CHANGED, actor=ctx.actor,
                 target_type="gateway_settings", target_id=1, details=details)
    return changed


def update_tool_policy(s: Session, ctx: TenantContext, rules: tuple[tools.ToolRule, ...],
                       image_policy: str | None) -> list[str]:
    """Set the tenant's tool rules and image policy (None: the profile's default); returns
    the names of the fields that changed. The audit event lists the rules (tool globs and model
    names are a program's identifiers, never personal data)."""
    if image_policy is not None and image_policy not in tools.IMAGE_POLICIES:
        raise TenantInvalidInput("The image policy must be allow, refuse, or the profile's "
                                 "default.")
    stored = [{"tool": r.tool, "models": list(r.models)} for r in rules]
    row = config.load_settings(s)
    changed = [name for name, old, new in (("tool_rules", list(row.tool_rules), stored),
                                           ("image_policy", row.image_policy, image_policy))
               if old != new]
    if not changed:
        return []
    row.tool_rules, row.image_policy = stored, image_policy
    row.updated_at = datetime.now(UTC)
    config.bump(s)
    audit.record(s, GatewayEvents.SETTINGS_CHANGED, actor=ctx.actor,
                 target_type="gateway_settings", target_id=1,
                 details={"changed": changed, "tool_rules": stored[:50],
                          "image_policy": image_policy or "default"})
    return changed


@dataclass(frozen=True)
class RouteInput:
    model_name: str
    provider: str
    provider_model: str
    endpoint: str | None = None
    api_version: str | None = None
    region: str | None = None
    credential_id: int | None = None
    timeout_seconds: float = 60.0
    fallbacks: tuple[str, ...] = ()
    allowed: bool = True


def _endpoint(value: str | None) -> str | None:
    if not value:
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise TenantInvalidInput("The endpoint must be an http or https URL, such as "
                                 "https://my-resource.openai.azure.com.")
    return value.strip().rstrip("/")


def _validated(s: Session, ctx: TenantContext, data: RouteInput) -> dict[str, Any]:
    name = normalize_model_name(data.model_name)
    if name is None:
        raise TenantInvalidInput("The model name may use letters, digits and . _ : / @ + - "
                                 "(at most 100 characters).")
    if data.provider not in PROVIDERS:
        raise TenantInvalidInput(f"The provider must be one of {', '.join(PROVIDERS)}.")
    provider_model = data.provider_model.strip()
    if not provider_model or len(provider_model) > 200:
        raise TenantInvalidInput("Give the provider's model id (or the Azure deployment name).")
    endpoint = _endpoint(data.endpoint)
    if data.provider in ("azure-openai", "on-prem") and endpoint is None:
        raise TenantInvalidInput(f"A {data.provider} route needs its endpoint URL.")
    if data.provider == "azure-openai" and not data.api_version:
        raise TenantInvalidInput("An Azure OpenAI route needs its API version, such as "
                                 "2024-10-21.")
    if not 1 <= data.timeout_seconds <= 600:
        raise TenantInvalidInput("The timeout must be between 1 and 600 seconds.")
    if data.credential_id is not None:
        credential = s.get(ProviderCredential, data.credential_id)
        if credential is None:
            raise TenantInvalidInput("No such credential.")
        if credential.provider != data.provider:
            raise TenantInvalidInput(f"That credential is for {credential.provider}, not "
                                     f"{data.provider}.")
    elif data.provider in ("openai", "anthropic"):
        raise TenantInvalidInput(f"A {data.provider} route needs a credential (add one on the "
                                 "credentials page).")
    check_route(ctx.egress, provider=data.provider, endpoint=endpoint,
                has_credential=data.credential_id is not None)
    fallbacks = []
    for raw in data.fallbacks:
        fallback = normalize_model_name(raw)
        if fallback is None or fallback == name:
            raise TenantInvalidInput(f"Fallback {raw!r:.60} is not another model name.")
        if config.route_for(s, fallback) is None:
            raise TenantInvalidInput(f"Fallback {fallback!r} is not one of this tenant's routes; "
                                     "add it first.")
        fallbacks.append(fallback)
    return {"model_name": name, "provider": data.provider, "provider_model": provider_model,
            "endpoint": endpoint, "api_version": (data.api_version or "").strip() or None,
            "region": (data.region or "").strip() or None, "credential_id": data.credential_id,
            "timeout_seconds": data.timeout_seconds, "fallbacks": fallbacks,
            "allowed": data.allowed}


def add_route(s: Session, ctx: TenantContext, data: RouteInput) -> GatewayRoute:
    values = _validated(s, ctx, data)
    row = GatewayRoute(**values)
    try:
        with s.begin_nested():
            s.add(row)
            s.flush()
    except IntegrityError:
        raise TenantInvalidInput(f"There is already a route for {values['model_name']!r}.") \
            from None
    config.bump(s)
    audit.record(s, GatewayEvents.ROUTE_ADDED, actor=ctx.actor, target_type="gateway_route",
                 target_id=row.id, details={"model": row.model_name, "provider": row.provider,
                                            "allowed": row.allowed,
                                            "fallbacks": list(row.fallbacks)})
    return row


def _route(s: Session, route_id: int) -> GatewayRoute:
    row = s.get(GatewayRoute, route_id)
    if row is None:
        raise TenantNotFound("No such route.")
    return row


def set_allowed(s: Session, ctx: TenantContext, route_id: int, allowed: bool) -> None:
    row = _route(s, route_id)
    if row.allowed != allowed:
        row.allowed = allowed
        config.bump(s)
        audit.record(s, GatewayEvents.ROUTE_CHANGED, actor=ctx.actor,
                     target_type="gateway_route", target_id=row.id,
                     details={"model": row.model_name, "changed": ["allowed"],
                              "allowed": allowed})


def delete_route(s: Session, ctx: TenantContext, route_id: int) -> None:
    row = _route(s, route_id)
    users = [r.model_name for r in s.scalars(select(GatewayRoute).where(
        GatewayRoute.fallbacks.contains([row.model_name])))]
    if users:
        raise TenantInvalidInput(f"{row.model_name!r} is a fallback of {', '.join(users)}; "
                                 "remove it there first.")
    s.delete(row)
    config.bump(s)
    audit.record(s, GatewayEvents.ROUTE_DELETED, actor=ctx.actor, target_type="gateway_route",
                 target_id=route_id, details={"model": row.model_name})


def set_price(s: Session, ctx: TenantContext, provider_model: str, *,
              input_usd_per_mtok: float, output_usd_per_mtok: float) -> None:
    name = provider_model.strip()
    if not name or len(name) > 200:
        raise TenantInvalidInput("Name the provider's model id (at most 200 characters).")
    for value in (input_usd_per_mtok, output_usd_per_mtok):
        if not 0 <= value <= 10_000:
            raise TenantInvalidInput("Prices are US dollars per million tokens, from 0 to "
                                     "10,000.")
    row = s.get(GatewayPrice, name) or GatewayPrice(provider_model=name)
    row.input_micros_per_mtok = round(input_usd_per_mtok * 1_000_000)
    row.output_micros_per_mtok = round(output_usd_per_mtok * 1_000_000)
    row.updated_at = datetime.now(UTC)
    s.add(row)
    config.bump(s)
    audit.record(s, GatewayEvents.PRICE_SET, actor=ctx.actor, target_type="gateway_price",
                 target_id=name[:64],
                 details={"input_micros_per_mtok": row.input_micros_per_mtok,
                          "output_micros_per_mtok": row.output_micros_per_mtok})


def remove_price(s: Session, ctx: TenantContext, provider_model: str) -> None:
    row = s.get(GatewayPrice, provider_model)
    if row is None:
        raise TenantNotFound("No such price.")
    s.delete(row)
    config.bump(s)
    audit.record(s, GatewayEvents.PRICE_REMOVED, actor=ctx.actor, target_type="gateway_price",
                 target_id=provider_model[:64], details={})


def route_count(s: Session) -> int:
    return int(s.scalar(select(func.count()).select_from(GatewayRoute)) or 0)
