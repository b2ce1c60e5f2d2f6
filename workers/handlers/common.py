"""What several handlers share: the TenantContext of the tenant a job is about."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from control_plane.models import Tenant
from control_plane.tenancy.connections import TenantConnections, egress_policy
from tenant_runtime.context import Actor, TenantContext
from workers import runtime
from workers.runner import JobFailed


@contextmanager
def tenant_context(session_factory: sessionmaker[Session], tenant_id: int, actor: Actor, *,
                   states: tuple[str, ...], refusal: str) -> Iterator[TenantContext]:
    """The tenant's context for one job, its engine closed afterwards; JobFailed(refusal) when
    the tenant is gone or not in one of ``states``."""
    env = runtime.env()
    connections = TenantConnections(sealer=env.sealer, providers=env.key_providers,
                                    dek_cache=env.dek_cache, egress=egress_policy(env.settings))
    try:
        with session_factory() as s:
            tenant = s.get(Tenant, tenant_id)
            if tenant is None or tenant.state not in states:
                raise JobFailed(refusal)
            ctx = connections.context(s, tenant, actor)
        yield ctx
    finally:
        connections.close()
