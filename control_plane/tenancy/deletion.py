"""Deleting a tenant. Deleted means gone: the request records a tombstone (who, when, why) and
queues a job; the job drops the tenant's database and both roles, destroys every wrapped data
key (its backups' too: crypto-shred) and the backups' encrypted objects and manifests at their
destinations, and removes the tenant's rows from the control plane. Each step is idempotent."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from control_plane import audit
from control_plane.db import utcnow
from control_plane.exceptions import Forbidden, InvalidInput
from control_plane.jobs import JobKinds, enqueue_job
from control_plane.models import (
    ApiKey,
    Backup,
    DbServer,
    Job,
    Membership,
    Tenant,
    TenantKey,
    TenantTombstone,
    User,
)
from control_plane.sealing import ControlSealer
from control_plane.tenancy import database
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.servers import admin_url
from control_plane.tenancy.service import TenantAccess, actor_of
from tenant_runtime import permissions

if TYPE_CHECKING:
    from control_plane.backups.destinations import Destination


def do_request_deletion(s: Session, access: TenantAccess, *, confirm_slug: str, reason: str,
                        acting_user: User) -> Job:
    tenant = access.tenant
    if not permissions.allows(access.role, "tenant.lifecycle"):
        raise Forbidden("Only an Owner of this tenant can delete it.")
    if confirm_slug.strip() != tenant.slug:
        raise InvalidInput(f"Type the tenant's slug ({tenant.slug}) exactly to confirm.")
    reason = reason.strip()
    if not reason:
        raise InvalidInput("Say why the tenant is being deleted; the reason is kept.")
    tenant.state = "deleted"
    tenant.updated_at = utcnow()
    s.add(TenantTombstone(tenant_id=tenant.id, slug=tenant.slug, deleted_by=acting_user.id,
                          deleted_by_email=acting_user.email, reason=reason[:1000]))
    audit.record(s, TenantEvents.DELETION_REQUESTED, actor=actor_of(acting_user),
                 target_type="tenant", target_id=tenant.id, details={"slug": tenant.slug})
    return enqueue_job(s, JobKinds.DELETE_TENANT, {"tenant_id": tenant.id},
                       idempotency_key=f"delete:{tenant.id}", tenant_id=tenant.id,
                       created_by=acting_user.id, progress_total=3)


def delete_tenant(session_factory: sessionmaker[Session], tenant_id: int, *,
                  sealer: ControlSealer, progress: Callable[[int, int, str], None],
                  forget: Callable[[int], None] | None = None,
                  backup_destination: Callable[[str], Destination] | None = None) -> str:
    """Drop everything of a tenant whose deletion was requested; returns what happened.
    ``backup_destination`` opens a backup's recorded destination, so its objects are deleted
    there too (without it only the wrapped keys are destroyed, which already makes them
    unreadable)."""
    from control_plane.backups.retention import destroy_objects

    with session_factory() as s:
        tenant = s.get(Tenant, tenant_id)
        if tenant is None:
            return "already deleted"
        if tenant.state != "deleted":
            return f"not deleted: the tenant is {tenant.state}"
        server = s.get(DbServer, tenant.db_server_id) if tenant.db_server_id else None
        url = admin_url(sealer, server) if server else None
        names = (tenant.db_name, tenant.owner_role, tenant.app_role)
    if forget is not None:
        forget(tenant_id)
    if url is not None:
        database.drop_tenant(url, database=names[0], owner=names[1], app=names[2])
    progress(1, 3, "database and roles dropped")
    with session_factory() as s:
        stored = [(r.id, r.destination) for r in s.execute(
            select(Backup.id, Backup.destination).where(Backup.tenant_id == tenant_id))]
    objects = destroy_objects(backup_destination, tenant_id, stored)
    with session_factory() as s, s.begin():
        destroyed = len(s.scalars(select(TenantKey.id).where(TenantKey.tenant_id == tenant_id))
                        .all())
        s.execute(delete(TenantKey).where(TenantKey.tenant_id == tenant_id))
        # its backups' wrapped data keys too: every backup of the tenant is crypto-shredded
        shredded = len(s.scalars(select(Backup.id).where(Backup.tenant_id == tenant_id)).all())
        s.execute(delete(Backup).where(Backup.tenant_id == tenant_id))
        s.execute(delete(ApiKey).where(ApiKey.tenant_id == tenant_id))
        s.execute(delete(Membership).where(Membership.tenant_id == tenant_id))
    progress(2, 3, "wrapped data keys destroyed")
    with session_factory() as s, s.begin():
        tenant = s.get(Tenant, tenant_id, with_for_update=True)
        if tenant is not None:
            slug = tenant.slug
            s.delete(tenant)
            audit.record(s, TenantEvents.DELETED, actor=audit.SYSTEM, target_type="tenant",
                         target_id=tenant_id, details={"slug": slug,
                                                       "data_keys_destroyed": destroyed,
                                                       "backups_destroyed": shredded,
                                                       "backup_objects_deleted": objects.deleted,
                                                       "backup_objects_kept_locked":
                                                           objects.kept})
    progress(3, 3, "tenant removed")
    return "deleted"
