"""The ``TenantContext``: everything tenant code may use, built once per request or job at the
edge by the control plane. Tenant code reaches data only through it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from tenant_runtime.gateway.egress import EgressPolicy
from tenant_runtime.sealing import TenantSealer


@dataclass(frozen=True)
class Actor:
    """Who acts: a user (id, display name), an API key, or the system. An API key acts for
    the person who created it: ``on_behalf_of`` is that user's id and ``role`` their current
    role in the tenant, and every approval rule treats the key as that person."""

    type: str
    id: str | None = None
    name: str | None = None
    role: str | None = None
    on_behalf_of: str | None = None
    on_behalf_of_name: str | None = None


@dataclass(frozen=True)
class TenantContext:
    tenant_id: int
    slug: str
    session_factory: sessionmaker[Session]
    sealer: TenantSealer
    actor: Actor
    egress: EgressPolicy = EgressPolicy()  # where the gateway's routes may reach

    def session(self) -> Session:
        return self.session_factory()
