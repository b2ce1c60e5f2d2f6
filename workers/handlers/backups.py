"""Backup jobs (control_plane/backups/schedule.py records them): a tenant's daily backup
followed by its retention, the control plane's, and the monthly restore drill; and the restores
an Owner asks for on the tenant's Backups page (control_plane/backups/routes.py): as a new
tenant, and over the live tenant on an approved ``tenant.restore`` request."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from control_plane.audit import Actor
from control_plane.backups.destinations import configured, recorded_destination
from control_plane.backups.exceptions import BackupError
from control_plane.backups.replace import replace_tenant
from control_plane.backups.restore import drill_tenant
from control_plane.backups.restore_as import restore_as
from control_plane.backups.retention import prune
from control_plane.backups.service import backup_control, backup_tenant
from control_plane.exceptions import MagistrateError
from control_plane.jobs import JobKinds
from control_plane.models import Tenant
from control_plane.tenancy.connections import TenantConnections, egress_policy
from tenant_runtime.exceptions import TenantError
from workers import runtime
from workers.runner import JobFailed, JobRun, handler

ACTOR = Actor("system", None, "scheduled backup")


@contextmanager
def _connections() -> Iterator[TenantConnections]:
    env = runtime.env()
    connections = TenantConnections(sealer=env.sealer, providers=env.key_providers,
                                    dek_cache=env.dek_cache, egress=egress_policy(env.settings))
    try:
        yield connections
    finally:
        connections.close()


@handler(JobKinds.BACKUP_TENANT)
def backup_tenant_job(run: JobRun) -> dict[str, Any]:
    tenant_id = int(run.payload["tenant_id"])
    uri, opener = configured(runtime.env().settings)
    run.progress(0, 3, "dumping and encrypting")
    with _connections() as connections:
        try:
            done = backup_tenant(run.session_factory, connections, opener(uri), tenant_id,
                                 actor=ACTOR, monthly=bool(run.payload.get("monthly")))
        except BackupError as exc:
            raise JobFailed(exc.message) from None
    run.progress(2, 3, "published; applying retention")
    pruned = prune(run.session_factory, opener, tenant_id, actor=ACTOR)
    run.progress(3, 3, f"backup {done.backup_id} published, {len(pruned)} pruned")
    return {"backup_id": done.backup_id, "size": done.size, "pruned": pruned}


@handler(JobKinds.BACKUP_CONTROL)
def backup_control_job(run: JobRun) -> dict[str, Any]:
    env = runtime.env()
    uri, opener = configured(env.settings)
    run.progress(0, 2, "dumping and encrypting")
    try:
        done = backup_control(run.session_factory, env.database_url, env.sealer,
                              env.key_providers, opener(uri),
                              key_provider=env.settings.backup_key_provider
                              or env.settings.key_provider,
                              key_ref=env.settings.backup_key_ref, actor=ACTOR)
    except BackupError as exc:
        raise JobFailed(exc.message) from None
    pruned = prune(run.session_factory, opener, None, actor=ACTOR)
    run.progress(2, 2, f"backup {done.backup_id} published, {len(pruned)} pruned")
    return {"backup_id": done.backup_id, "size": done.size, "pruned": pruned}


@handler(JobKinds.BACKUP_DRILL)
def backup_drill_job(run: JobRun) -> dict[str, Any]:
    tenant_id = int(run.payload["tenant_id"])
    _, opener = configured(runtime.env().settings)
    with _connections() as connections:
        result = drill_tenant(run.session_factory, connections, opener, tenant_id,
                              actor=Actor("system", None, "scheduled drill"))
    run.progress(1, 1, "drill passed" if result.ok else f"drill failed: {result.reason}")
    # a failed drill is a result (audited, shown on the dashboard), not a job to retry
    return {"backup_id": result.backup_id, "ok": result.ok, "reason": result.reason}


def _slug(run: JobRun) -> str:
    with run.session_factory() as s:
        tenant = s.get(Tenant, int(run.payload["tenant_id"]))
        if tenant is None:
            raise JobFailed("The tenant no longer exists; nothing was restored.")
        return tenant.slug


@handler(JobKinds.RESTORE_TENANT_AS)
def restore_tenant_as_job(run: JobRun) -> dict[str, Any]:
    backup_id, new_slug = str(run.payload["backup_id"]), str(run.payload["new_slug"])
    slug = _slug(run)
    run.progress(0, 2, f"restoring backup {backup_id} as {new_slug}")
    with _connections() as connections:
        try:
            done = restore_as(run.session_factory, connections,
                              recorded_destination(run.session_factory, runtime.env().settings,
                                                   backup_id),
                              slug, backup_id, new_slug=new_slug,
                              requested_by=int(run.payload["requested_by"]))
        except MagistrateError as exc:  # a refusal: its sentence, not a retry
            raise JobFailed(exc.message) from None
    run.progress(2, 2, f"tenant {done.slug} (id {done.tenant_id}) restored from {backup_id}: "
                       f"{done.rows} rows, chain verified")
    return {"tenant_id": done.tenant_id, "slug": done.slug, "rows": done.rows,
            "restored_from_seq": done.restored_from_seq}


@handler(JobKinds.REPLACE_TENANT)
def replace_tenant_job(run: JobRun) -> dict[str, Any]:
    backup_id = str(run.payload["backup_id"])
    slug = _slug(run)
    run.progress(0, 2, f"restoring backup {backup_id}, then swapping it in")
    with _connections() as connections:
        try:
            done = replace_tenant(run.session_factory, connections,
                                  recorded_destination(run.session_factory,
                                                       runtime.env().settings, backup_id),
                                  slug, backup_id, approval_id=str(run.payload["approval_id"]),
                                  actor=Actor("system", None, "replace job"))
        except (MagistrateError, TenantError) as exc:
            raise JobFailed(exc.message) from None
    run.progress(2, 2, f"backup {backup_id} swapped in; the replaced database is retained as "
                       f"{done.retained}" if done.retained is not None else
                       f"backup {backup_id} restored into the missing database {done.database}")
    return {"backup_id": backup_id, "retained": done.retained, "rows": done.rows}
