"""Audit jobs: "Verify now" recomputes a tenant's whole chain and checks its checkpoints."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from control_plane.jobs import JobKinds
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.context import Actor
from workers.handlers.common import tenant_context
from workers.runner import JobRun, handler


@handler(JobKinds.VERIFY_AUDIT)
def verify_audit(run: JobRun) -> dict[str, Any]:
    tenant_id = int(run.payload["tenant_id"])
    with tenant_context(run.session_factory, tenant_id, Actor("system"),
                        states=("active", "suspended"),
                        refusal="The tenant is not active.") as ctx, \
            ctx.session() as ts, ts.begin():
        ts.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        result = verify_tenant_chain(ts, tenant_id,
                                     lambda done, total: run.progress(done, total, "verifying"))
    return result.as_dict()
