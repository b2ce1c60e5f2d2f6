"""The tenant's gateway configuration as the call path reads it: settings (one row, created
with defaults on first use), routes, the allowlist, and the redaction profile."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, func, select, update
from sqlalchemy.orm import Session

from tenant_runtime import driver
from tenant_runtime.context import TenantContext
from tenant_runtime.credentials.service import reveal_secret
from tenant_runtime.gateway import pricing, tools
from tenant_runtime.gateway.providers.base import Target
from tenant_runtime.models import GatewayRoute, GatewaySettings, single_row
from tenant_runtime.redaction import Profile

SETTINGS_TABLE = "gateway_settings"


def load_settings(s: Session) -> GatewaySettings:
    return single_row(s, GatewaySettings)


def custom_terms(ctx: TenantContext, settings: GatewaySettings) -> list[str]:
    if settings.custom_terms_sealed is None:
        return []
    terms: Any = json.loads(ctx.sealer.open_text(settings.custom_terms_sealed,
                                                 table=SETTINGS_TABLE,
                                                 column="custom_terms_sealed", row_key=1))
    return [str(term) for term in terms]


def seal_terms(ctx: TenantContext, terms: list[str]) -> bytes | None:
    if not terms:
        return None
    return ctx.sealer.seal(json.dumps(terms), table=SETTINGS_TABLE,
                           column="custom_terms_sealed", row_key=1)


def profile_of(ctx: TenantContext, settings: GatewaySettings) -> Profile:
    return Profile.from_settings(settings.redaction_profile, list(settings.custom_detectors),
                                 custom_terms(ctx, settings), list(settings.custom_patterns))


def route_for(s: Session, model_name: str) -> GatewayRoute | None:
    return s.scalars(select(GatewayRoute).where(GatewayRoute.model_name == model_name)).first()


def allowed_routes(s: Session) -> list[GatewayRoute]:
    return list(s.scalars(select(GatewayRoute).where(GatewayRoute.allowed)
                          .order_by(GatewayRoute.model_name)))


def routes_of_call(s: Session, route: GatewayRoute) -> list[GatewayRoute]:
    """The route, then its fallbacks in order: only other routes of this tenant, each once."""
    chain, seen = [route], {route.model_name}
    for name in route.fallbacks:
        fallback = route_for(s, name)
        if fallback is not None and fallback.model_name not in seen:
            chain.append(fallback)
            seen.add(fallback.model_name)
    return chain


def target_of(s: Session, ctx: TenantContext, route: GatewayRoute) -> Target:
    secret = reveal_secret(s, ctx, route.credential_id) if route.credential_id else None
    return Target(provider=route.provider, model=route.provider_model, endpoint=route.endpoint,
                  api_key=secret, timeout_seconds=route.timeout_seconds,
                  api_version=route.api_version, region=route.region, egress=ctx.egress)


# --- the call path's snapshot --------------------------------------------------------------


@dataclass(frozen=True)
class RouteEntry:
    """One route of a call, ready to use: its target (credential opened) and its price."""

    model_name: str
    provider: str
    endpoint: str | None
    has_credential: bool
    target: Target
    price: pricing.Price


@dataclass(frozen=True)
class GatewayConfig:
    """What the call path reads of a tenant's gateway configuration, at one version."""

    version: str
    monthly_cap_micros: int
    requests_per_minute: int
    tokens_per_minute: int
    profile: Profile
    allowed: frozenset[str]
    chains: dict[str, tuple[RouteEntry, ...]]  # model name → the route, then its fallbacks
    tool_rules: tuple[tools.ToolRule, ...] = ()
    images_allowed: bool = True


_snapshots: dict[int, GatewayConfig] = {}
_snapshots_lock = threading.Lock()


def bump(s: Session) -> None:
    """Mark the configuration changed (in the caller's transaction): every process rebuilds
    its snapshot on its next call, so a change takes effect at once."""
    load_settings(s)
    s.execute(update(GatewaySettings).where(GatewaySettings.id == 1)
              .values(config_version=func.gen_random_uuid().cast(String)))


def _build(s: Session, ctx: TenantContext, settings: GatewaySettings) -> GatewayConfig:
    routes = list(s.scalars(select(GatewayRoute)))
    entries = {r.model_name: RouteEntry(r.model_name, r.provider, r.endpoint,
                                        r.credential_id is not None, target_of(s, ctx, r),
                                        pricing.price_for(s, r.provider_model))
               for r in routes}
    chains = {r.model_name: tuple(entries[x.model_name] for x in routes_of_call(s, r))
              for r in routes}
    return GatewayConfig(settings.config_version, settings.monthly_cap_micros,
                         settings.requests_per_minute, settings.tokens_per_minute,
                         profile_of(ctx, settings),
                         frozenset(r.model_name for r in routes if r.allowed), chains,
                         tools.parse_rules(settings.tool_rules),
                         tools.images_allowed(settings.image_policy, settings.redaction_profile))


# The configuration's version (the gateway reads it in its reservation's statement)
VERSION = f"SELECT config_version FROM {SETTINGS_TABLE} WHERE id = 1"  # noqa: S608 - a constant


def held(ctx: TenantContext) -> GatewayConfig | None:
    """This process's snapshot of the tenant's configuration, at whatever version it was built
    (None: none yet); its user checks the version (the gateway's reservation does, in its own
    statement)."""
    with _snapshots_lock:
        found = _snapshots.get(ctx.tenant_id)
    if found is not None:
        ctx.sealer.ensure_available()  # it holds opened credentials: only while the key is
    return found


def cached(ctx: TenantContext, version: str | None) -> GatewayConfig | None:
    """This process's snapshot of the tenant's configuration when it is at ``version`` (read
    in the caller's transaction), else None: ``snapshot`` rebuilds it."""
    found = held(ctx)
    return found if found is not None and found.version == version else None


def snapshot(s: Session, ctx: TenantContext) -> GatewayConfig:
    """The tenant's configuration as of this transaction: one small query when nothing
    changed since this process last read it, a rebuild otherwise."""
    row = driver.one(s, VERSION)
    found = cached(ctx, row[0] if row is not None else None)
    if found is not None:
        return found
    fresh = _build(s, ctx, load_settings(s))
    with _snapshots_lock:
        if len(_snapshots) > 1000:
            _snapshots.clear()
        _snapshots[ctx.tenant_id] = fresh
    return fresh
