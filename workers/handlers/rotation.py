"""The key-rotation job (``rotate_tenant_key``): what ``magistrate keys rotate`` does, run by a
worker. Payload: ``tenant_id``, optionally ``new_key_ref`` and ``reencrypt`` (bool).

Both steps are idempotent per job: each records the job's id in its audit event and skips
itself when that event exists (``control_plane/tenancy/rotation.py``), and a re-encryption that
died part-way continues where it stopped. So a retried job makes one rotation: one
``key.rotated`` event, at most one new data-key version, every sealed value readable."""

from __future__ import annotations

from typing import Any

from control_plane.audit import Actor
from control_plane.exceptions import Conflict, MagistrateError
from control_plane.jobs import JobKinds
from control_plane.keys.providers import KeyUnavailable
from control_plane.models import Tenant
from control_plane.tenancy.connections import TenantConnections, egress_policy
from control_plane.tenancy.rotation import ROTATABLE_STATES, reencrypt, rewrap
from workers import runtime
from workers.runner import JobFailed, JobRun, handler


@handler(JobKinds.ROTATE_TENANT_KEY)
def rotate_tenant_key(run: JobRun) -> dict[str, Any]:
    env = runtime.env()
    tenant_id = int(run.payload["tenant_id"])
    new_key_ref = run.payload.get("new_key_ref")
    actor = Actor("system", None, f"key rotation job {run.job_id}")
    connections = TenantConnections(sealer=env.sealer, providers=env.key_providers,
                                    dek_cache=env.dek_cache, egress=egress_policy(env.settings))
    result: dict[str, Any] = {"tenant_id": tenant_id}
    try:
        with run.session_factory() as s, s.begin():
            tenant = s.get(Tenant, tenant_id)
            if tenant is None or tenant.state not in ROTATABLE_STATES:
                raise JobFailed("The tenant is not active or suspended; its keys were not "
                                "rotated.")
            wrapped = rewrap(s, tenant, env.key_providers,
                             new_key_ref=None if new_key_ref is None else str(new_key_ref),
                             actor=actor, job_id=run.job_id)
        result["rewrapped_versions"] = [v.version for v in wrapped.versions]
        run.progress(0, 0, "data key rewrapped")
        if run.payload.get("reencrypt"):
            report = reencrypt(run.session_factory, tenant_id, connections, actor=actor,
                               job_id=run.job_id,
                               progress=lambda done, total: run.progress(done, total,
                                                                         "re-encrypting"))
            result.update(to_version=report.to_version, rows_moved=report.rows_moved,
                          rows_failed=len(report.failed),
                          retired_versions=report.retired_versions)
    except KeyUnavailable as exc:
        # the customer's key cannot be used: retrying blindly will not help
        raise JobFailed(f"{exc}. Rows already moved stay moved; retry the job once the key "
                        "can be used and it continues where it stopped.") from None
    except Conflict as exc:
        # another rotation of this tenant holds the lock: try again later
        raise JobFailed(exc.message, retry=True) from None
    except MagistrateError as exc:
        raise JobFailed(exc.message) from None
    finally:
        connections.close()
    return result
