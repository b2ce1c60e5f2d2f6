"""The tenant export job: open the tenant's context, write the zip, record its name.

A retried job writes a new zip (the name carries the time); only the attempt that finishes under
its lease has its file recorded on the job."""

from __future__ import annotations

from typing import Any

from control_plane.jobs import JobKinds
from control_plane.models import Tenant
from control_plane.tenancy.connections import TenantConnections
from control_plane.tenancy.export import EXPORTABLE_STATES, build_export, read_manifest
from tenant_runtime.context import Actor
from tenant_runtime.exceptions import SealedValueRefused, TenantKeyUnavailable
from workers import runtime
from workers.runner import JobFailed, JobRun, handler


@handler(JobKinds.EXPORT_TENANT)
def export_tenant(run: JobRun) -> dict[str, Any]:
    env = runtime.env()
    tenant_id = int(run.payload["tenant_id"])
    connections = TenantConnections(sealer=env.sealer, providers=env.key_providers,
                                    dek_cache=env.dek_cache)
    try:
        with run.session_factory() as s:
            tenant = s.get(Tenant, tenant_id)
            if tenant is None or tenant.state not in EXPORTABLE_STATES:
                raise JobFailed("The tenant is no longer active or suspended; nothing was "
                                "exported.")
            actor = Actor("user", str(run.payload.get("requested_by")), None, "export")
            ctx = connections.context(s, tenant, actor)
        path = build_export(ctx, out_dir=env.settings.home / "exports", progress=run.progress)
    except TenantKeyUnavailable as exc:
        # the customer's key cannot be used: retrying blindly will not help
        raise JobFailed(str(exc)) from None
    except SealedValueRefused as exc:
        raise JobFailed(f"{exc} The export was stopped; nothing was written.") from None
    finally:
        connections.close()
    rows = sum(int(f["rows"]) for f in read_manifest(path)["files"].values())
    return {"file": path.name, "rows": rows}
