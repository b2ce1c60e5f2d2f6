"""The platform home's figures across the signed-in user's tenants: each tenant's
getting-started checklist, spend this month against the cap, and the approval requests waiting
for the user's decision.

Each figure is read under the rule of the tab it comes from (``across.visible_tenants``): the
checklist where the member's role opens the Overview (``tenant.view``), spend where it opens
the Gateway (``gateway.view``), requests where it opens Approvals (``approvals.view``). A
tenant that requires two-factor sign-in of a user without it is named, and nothing is read
from it; one whose database cannot be read is named, and the others still show."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from control_plane.console import across
from control_plane.console.overview import (
    Checklist,
    active_keys,
    checklist,
    read_gateway_state,
)
from control_plane.db import utcnow
from control_plane.models import User

WAITING_SHOWN = 10  # requests listed on the home; the global Approvals page has them all


@dataclass(frozen=True)
class SetupRow:
    tenant: across.Visible
    checklist: Checklist


@dataclass
class PlatformHome:
    setup: list[SetupRow] = field(default_factory=list)
    spend: list[across.GatewayRow] = field(default_factory=list)
    waiting: list[across.WaitingRow] = field(default_factory=list)
    waiting_total: int = 0
    locked: list[tuple[int, str]] = field(default_factory=list)
    unreadable: list[tuple[int, str]] = field(default_factory=list)
    more_tenants: bool = False

    @property
    def spent_micros(self) -> int:
        return sum(row.spent_micros for row in self.spend)

    @property
    def cap_micros(self) -> int:
        return sum(row.cap_micros for row in self.spend)


def _merge(names: list[tuple[int, str]], more: list[tuple[int, str]]) -> None:
    names.extend(entry for entry in more if entry not in names)


def platform_home(s: Session, user: User, tenant_engine: Callable[[Any], Engine], *,
                  base_url: str) -> PlatformHome:
    home = PlatformHome()
    overview = across.visible_tenants(s, user, "tenant.view", tenant_engine)
    keys = active_keys(s, [t.id for t in overview.tenants], utcnow())
    gateway = across.visible_tenants(s, user, "gateway.view", tenant_engine)
    approvals = across.visible_tenants(s, user, "approvals.view", tenant_engine)

    home.setup = across.per_tenant(overview, lambda ts, tenant: SetupRow(
        tenant, checklist(tenant.id, tenant.role, read_gateway_state(ts),
                          keys.get(tenant.id, 0), base_url=base_url)))
    home.spend = across.gateway_rows(gateway)
    waiting, summaries = across.approvals_rows(approvals, str(user.id))
    home.waiting = waiting[:WAITING_SHOWN]
    home.waiting_total = sum(summary.waiting_for_you for summary in summaries)
    for found in (overview, gateway, approvals):
        _merge(home.locked, found.locked)
        _merge(home.unreadable, found.unreadable)
        home.more_tenants |= found.more_tenants
    return home
