"""Audit jobs: "Verify now" recomputes a tenant's whole chain and checks its checkpoints."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from control_plane.jobs import JobKinds
from control_plane.models import Tenant
from control_plane.tenancy.connections import TenantConnections
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.context import Actor
from workers import runtime
from workers.runner import JobFailed, JobRun, handler


@handler(JobKinds.VERIFY_AUDIT)
def verify_audit(run: JobRun) -> dict[str, Any]:
    env = runtime.env()
    tenant_id = int(run.payload["tenant_id"])
    connections = TenantConnections(sealer=env.sealer, providers=env.key_providers,
                                    dek_cache=env.dek_cache)
    try:
        with run.session_factory() as s:
            tenant = s.get(Tenant, tenant_id)
            if tenant is None or tenant.state not in ("active", "suspended"):
                raise JobFailed("The tenant is not active.")
            ctx = connections.context(s, tenant, Actor("system"))
        with ctx.session() as ts, ts.begin():
            ts.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
            result = verify_tenant_chain(ts, tenant_id,
                                         lambda done, total: run.progress(done, total,
                                                                          "verifying"))
    finally:
        connections.close()
    return result.as_dict()
