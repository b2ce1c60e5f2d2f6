"""Restoring a tenant backup as a new tenant (``magistrate restore tenant SLUG --backup ID --as
NEW_SLUG --requested-by EMAIL``; the console's "Restore as a new tenant").

The copy is a tenant of its own: a new row and id, a database and two roles of its own on the
server the normal placement picks, the source's key provider and key reference. Nothing of the
source changes. In order, refusing with one sentence at the first failure:

    1. the source tenant and backup exist (a tenant deleted at its owner's request has no
       backups left: the deleted sentence), the requester is an active Owner of the source,
       and the new slug is well formed and free;
    2. every data-key version of the source unwraps through the source's key-encryption key
       (revoked -> the key-unavailable sentence; nothing was created);
    3. the tenant row, its Owner, and its data keys: the same data keys, wrapped again by the
       same KEK under the new tenant's id (the wrap's encryption context on AWS, GCP and Azure),
       so revoking the source's KEK makes the copy unreadable too;
    4. the backup restored into the new database with every check of ``restore_checked``
       (signature, digest before decrypting, key, chain against the manifest's head and
       checkpoint, row counts, sealed checkpoint keys) against the source's id;
    5. every sealed value moved to the new tenant id (its associated data names the tenant), at
       its own data-key version, in one transaction;
    6. the copy's chain continues from the restored head with ``tenant.restored_from`` (source
       tenant id and slug, backup id, the manifest's head) and a checkpoint signed for the new
       id; the chain verifies (tenant_runtime/audit_lineage.py: the restored checkpoints verify
       for the source's id); the tenant becomes active and ``backup.restored_as`` is recorded.

A failure after step 3 drops the new database and roles and removes the tenant row. The whole
copy holds the new slug's advisory lock; a copy that died mid-way (a killed job) leaves a tenant
in ``provisioning`` without a provisioning job, which the next copy to that slug drops first.

Members: only the requester, as Owner. Nobody else's access is copied (the least privilege; an
Owner adds members as for any tenant); API keys live in the control plane and are not copied."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from control_plane import audit
from control_plane.backups.destinations import Destination
from control_plane.backups.events import BackupEvents
from control_plane.backups.exceptions import BackupRefused, RestoreCheckFailed
from control_plane.backups.restore import (
    RestoreTarget,
    check_member,
    find_backup,
    key_unavailable,
    read_source,
    restore_checked,
)
from control_plane.db import make_engine, make_session_factory, utcnow
from control_plane.exceptions import Conflict
from control_plane.keys.providers import KeyUnavailable
from control_plane.keys.registry import provider_for
from control_plane.models import Tenant, TenantKey, User
from control_plane.tenancy import database
from control_plane.tenancy.connections import TenantConnections
from control_plane.tenancy.provisioning import tenant_secrets
from control_plane.tenancy.rotation import sealed_tables
from control_plane.tenancy.service import add_tenant_row, check_new_slug, provisioning_job
from tenant_runtime import audit as tenant_audit
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.checkpoints import make_checkpoint
from tenant_runtime.context import Actor as TenantActor
from tenant_runtime.exceptions import TenantError
from tenant_runtime.sealing import TenantSealer

BATCH = 500
SLUG_LOCK = 74250  # advisory lock class; the second key is hashtext(the new slug)
COPYABLE_STATES = ("active", "suspended")


@dataclass(frozen=True)
class CopyResult:
    backup_id: str
    tenant_id: int
    slug: str
    database: str
    rows: int
    sealed_moved: int
    unreadable: int  # sealed values that did not open in the backup either (left as they were)
    restored_from_seq: int
    seconds: float


@dataclass(frozen=True)
class _Key:
    version: int
    provider: str
    key_ref: str
    dek: bytes
    retired: bool


def check_copy(s: Session, slug: str, backup_id: str, *, new_slug: str,
               requested_by: int) -> str:
    """Step 1 (module docstring): the normalised new slug, or the refusal."""
    source_tenant, _ = find_backup(s, slug, backup_id)
    if source_tenant.state not in COPYABLE_STATES:
        raise BackupRefused(f"Tenant {source_tenant.slug} is {source_tenant.state}; only an "
                            "active or suspended tenant's backups can be restored as a new "
                            "tenant.")
    check_member(s, source_tenant, requested_by, ("Owner",),
                 doing="restore its backup as a new tenant. Nothing was restored")
    return check_new_slug(s, new_slug)


def _source_keys(s: Session, connections: TenantConnections, tenant: Tenant) -> list[_Key]:
    keys = []
    for k in s.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant.id)
                       .order_by(TenantKey.version)):
        try:
            dek = provider_for(connections.providers, k.provider).unwrap(
                k.wrapped_dek, tenant_id=str(tenant.id), key_ref=k.key_ref)
        except KeyUnavailable as exc:
            raise key_unavailable(exc) from None
        keys.append(_Key(k.version, k.provider, k.key_ref, dek, k.retired_at is not None))
    if not keys:
        raise BackupRefused(f"Tenant {tenant.slug} has no data key; nothing was restored.")
    return keys


def rebind_sealed(rs: Session, source: TenantSealer, copy: TenantSealer) -> tuple[int, int]:
    """Seal every sealed value of the restored database again for the copy's tenant id, at
    its own version, in the caller's transaction: (values moved, values that did not open)."""
    moved = unreadable = 0
    for st in sealed_tables():
        after: Any = None
        while True:
            query = select(st.key, *st.columns).order_by(st.key).limit(BATCH)
            if after is not None:
                query = query.where(st.key > after)
            rows = rs.execute(query).all()
            if not rows:
                break
            for row in rows:
                values: dict[str, bytes] = {}
                for column, blob in zip(st.columns, row[1:], strict=True):
                    if blob is None:
                        continue
                    where = {"table": st.table.name, "column": column.name, "row_key": row[0]}
                    try:
                        plain = source.open(blob, **where)
                    except TenantError:
                        unreadable += 1
                        continue
                    values[column.name] = copy.seal(plain, **where,
                                                    version=TenantSealer.version_of(blob))
                if values:
                    rs.execute(st.table.update().where(st.key == row[0]).values(**values))
                    moved += len(values)
            after = rows[-1][0]
    return moved, unreadable


def _discard(session_factory: sessionmaker[Session], connections: TenantConnections,
             tenant_id: int) -> None:
    """Undo a copy that failed after its row was made: database, roles, row (and its keys)."""
    connections.forget(tenant_id)
    with session_factory() as s, s.begin():
        tenant = s.get(Tenant, tenant_id, with_for_update=True)
        if tenant is None:
            return
        secrets = tenant_secrets(connections.sealer, tenant)
        database.drop_tenant(secrets.admin_url, database=tenant.db_name,
                             owner=tenant.owner_role, app=tenant.app_role)
        s.delete(tenant)


def restore_as(session_factory: sessionmaker[Session], connections: TenantConnections,
               destination: Destination, slug: str, backup_id: str, *, new_slug: str,
               requested_by: int) -> CopyResult:
    """Restore ``backup_id`` of tenant ``slug`` as the new tenant ``new_slug``, for the
    source's Owner ``requested_by`` (a user id), who becomes the copy's only member."""
    with _slug_lock(session_factory, new_slug):
        _discard_leftover(session_factory, connections, new_slug)
        return _restore_as(session_factory, connections, destination, slug, backup_id,
                           new_slug=new_slug, requested_by=requested_by)


@contextmanager
def _slug_lock(session_factory: sessionmaker[Session], new_slug: str) -> Iterator[None]:
    """Hold the new slug's lock for the whole copy: a session-level advisory lock on a
    connection of its own, so a crash drops it with the connection."""
    params = {"lock": SLUG_LOCK, "slug": new_slug.strip().lower()}
    with session_factory() as s:
        conn = s.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        if not conn.scalar(text("SELECT pg_try_advisory_lock(CAST(:lock AS integer), "
                                "hashtext(:slug))"), params):
            raise Conflict(f"Another restore as {params['slug']} is running; wait for it to "
                           "finish.")
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(CAST(:lock AS integer), "
                              "hashtext(:slug))"), params)


def _discard_leftover(session_factory: sessionmaker[Session], connections: TenantConnections,
                      new_slug: str) -> None:
    """What a copy that died mid-way (a killed job) left: a tenant with the slug still in
    ``provisioning`` and no provisioning job (a tenant being created normally has one). Under
    the slug's lock no copy of it is running, so it is dropped and the copy starts again."""
    with session_factory() as s:
        tenant = s.scalars(select(Tenant).where(Tenant.slug == new_slug.strip().lower(),
                                                Tenant.state == "provisioning")).first()
        leftover = tenant is not None and provisioning_job(s, tenant) is None
        tenant_id = tenant.id if tenant is not None else None
    if leftover and tenant_id is not None:
        _discard(session_factory, connections, tenant_id)


def _restore_as(session_factory: sessionmaker[Session], connections: TenantConnections,
                destination: Destination, slug: str, backup_id: str, *, new_slug: str,
                requested_by: int) -> CopyResult:
    started = time.monotonic()
    with session_factory() as s:
        new_slug = check_copy(s, slug, backup_id, new_slug=new_slug, requested_by=requested_by)
        source_tenant, backup = find_backup(s, slug, backup_id)
        user = s.get_one(User, requested_by)
        user_id, email = user.id, user.email
        source = read_source(s, connections, source_tenant, backup)
        keys = _source_keys(s, connections, source_tenant)
        origin = {"source_tenant_id": source_tenant.id, "source_slug": source_tenant.slug,
                  "backup_id": source.backup_id}
        name = f"{source_tenant.name} (restored from {source.backup_id})"[:200]
        provider, key_ref = source_tenant.key_provider, source_tenant.key_ref
        require_mfa = source_tenant.require_mfa
    try:
        with session_factory() as s, s.begin():
            tenant = add_tenant_row(s, slug=new_slug, name=name, key_provider=provider,
                                    key_ref=key_ref, sealer=connections.sealer,
                                    owner=s.get_one(User, user_id))
            tenant.require_mfa = require_mfa
            for k in keys:
                try:
                    wrapped = provider_for(connections.providers, k.provider).wrap(
                        k.dek, tenant_id=str(tenant.id), key_ref=k.key_ref)
                except KeyUnavailable as exc:
                    raise key_unavailable(exc) from None
                s.add(TenantKey(tenant_id=tenant.id, version=k.version, provider=k.provider,
                                key_ref=k.key_ref, wrapped_dek=wrapped,
                                retired_at=utcnow() if k.retired else None))
            tenant_id = tenant.id
            secrets = tenant_secrets(connections.sealer, tenant)
            target = RestoreTarget(secrets.admin_url, tenant.db_name, tenant.owner_role,
                                   secrets.owner_password, tenant.app_role,
                                   secrets.app_password)
    except IntegrityError:  # the slug was taken meanwhile
        raise Conflict(f"A tenant with the slug {new_slug} already exists.") from None
    try:
        rows, doc = restore_checked(connections, destination, source, target)
        with session_factory() as s:
            tenant = s.get_one(Tenant, tenant_id)
            copy_sealer = connections.sealer_for(s, tenant)
        engine = make_engine(database.url_for(target.admin_url, database=target.name),
                             pool_size=1)
        try:
            with make_session_factory(engine)() as rs, rs.begin():
                moved, unreadable = rebind_sealed(rs, source.sealer, copy_sealer)
        finally:
            engine.dispose()
        head = doc["audit_head"]
        actor = TenantActor("user", str(user_id), email, "Owner")
        with session_factory() as s:
            ctx = connections.context(s, s.get_one(Tenant, tenant_id), actor)
        with ctx.session() as ts, ts.begin():
            event = tenant_audit.record(
                ts, BackupEvents.RESTORED_FROM, actor=actor, target_type="tenant",
                target_id=str(tenant_id),
                details={**origin, "manifest_head": head,
                         "last_checkpoint_seq": (doc.get("last_checkpoint") or {}).get("seq"),
                         "sealed_values_moved": moved, "unreadable_values": unreadable})
            restored_from_seq = int(event.seq)
            make_checkpoint(ts, ctx, force=True)
        with ctx.session() as ts:
            verified = verify_tenant_chain(ts, tenant_id)
        if not verified.ok:
            raise RestoreCheckFailed(f"The copy's audit chain does not verify after the "
                                     f"restore ({verified.problem}).")
    except BaseException:
        _discard(session_factory, connections, tenant_id)
        raise
    seconds = time.monotonic() - started
    with session_factory() as s, s.begin():
        tenant = s.get_one(Tenant, tenant_id, with_for_update=True)
        tenant.state = "active"
        audit.record(s, BackupEvents.RESTORED_AS, actor=audit.Actor.user(user_id, email),
                     target_type="tenant", target_id=tenant_id,
                     details={**origin, "slug": new_slug, "database": target.name,
                              "rows": rows, "manifest_head": head,
                              "restored_from_seq": restored_from_seq})
    return CopyResult(source.backup_id, tenant_id, new_slug, target.name, rows, moved,
                      unreadable, restored_from_seq, seconds)
