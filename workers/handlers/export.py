"""The tenant export job: open the tenant's context, write the zip, record its name.

The zip is named after the job, so a retried job (its worker died) leaves one file, not one per
attempt; only the attempt that finishes under its lease has its file recorded on the job."""

from __future__ import annotations

from typing import Any

from control_plane.jobs import JobKinds
from control_plane.tenancy.export import EXPORTABLE_STATES, build_export, read_manifest
from tenant_runtime.context import Actor
from tenant_runtime.exceptions import SealedValueRefused, TenantKeyUnavailable
from workers import runtime
from workers.handlers.common import tenant_context
from workers.runner import JobFailed, JobRun, handler


@handler(JobKinds.EXPORT_TENANT)
def export_tenant(run: JobRun) -> dict[str, Any]:
    env = runtime.env()
    actor = Actor("user", str(run.payload.get("requested_by")), None, "export")
    try:
        with tenant_context(run.session_factory, int(run.payload["tenant_id"]), actor,
                            states=EXPORTABLE_STATES,
                            refusal="The tenant is no longer active or suspended; nothing was "
                                    "exported.") as ctx:
            path = build_export(ctx, out_dir=env.settings.home / "exports",
                                progress=run.progress, job_id=run.job_id)
    except TenantKeyUnavailable as exc:
        # the customer's key cannot be used: retrying blindly will not help
        raise JobFailed(str(exc)) from None
    except SealedValueRefused as exc:
        raise JobFailed(f"{exc} The export was stopped; nothing was written.") from None
    rows = sum(int(f["rows"]) for f in read_manifest(path)["files"].values())
    return {"file": path.name, "rows": rows}
