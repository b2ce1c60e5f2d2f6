"""Outbox job handlers. Each takes a ``JobRun`` and returns a JSON-safe summary; each is
idempotent, so a retried job produces one result."""

from __future__ import annotations

from typing import Any

from control_plane.jobs import JobKinds
from control_plane.keys.providers import KeyUnavailable
from control_plane.tenancy.provisioning import provision
from workers import runtime
from workers.runner import JobFailed, JobRun, handler


@handler(JobKinds.PROVISION_TENANT)
def provision_tenant(run: JobRun) -> dict[str, Any]:
    env = runtime.env()
    try:
        state = provision(run.session_factory, int(run.payload["tenant_id"]), sealer=env.sealer,
                          providers=env.key_providers, progress=run.progress)
    except KeyUnavailable as exc:
        # the customer's key cannot be used: retrying blindly will not help; an Owner retries
        raise JobFailed(str(exc)) from None
    return {"tenant_id": run.payload["tenant_id"], "state": state}


@handler(JobKinds.DELETE_TENANT)
def delete_tenant_job(run: JobRun) -> dict[str, Any]:
    from control_plane.backups.destinations import configured
    from control_plane.tenancy.deletion import delete_tenant

    env = runtime.env()
    outcome = delete_tenant(run.session_factory, int(run.payload["tenant_id"]),
                            sealer=env.sealer, progress=run.progress,
                            forget=env.dek_cache.forget,
                            backup_destination=configured(env.settings)[1])
    return {"tenant_id": run.payload["tenant_id"], "deletion": outcome}
