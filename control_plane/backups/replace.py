"""Restoring a tenant backup over the live tenant (``magistrate restore tenant SLUG --backup ID
--replace``), only with an approval through the tenant's ``tenant.restore`` gate.

``tenant.restore`` always needs an approval (tenant_runtime/approvals/gates.py, ``require``):
the first run opens the request (payload: the tenant and the backup) and changes nothing; an
approver of the tenant other than the requester decides it; the second run names it. In order:

    1. the approval is checked (approved by a decision, this tenant and backup, fresh, unused)
       before any work, so a refused run costs nothing;
    2. the backup is restored into a new database with every check of ``restore_tenant``
       (signature, digest, key, chain, row counts, sealed values): the live database is not
       touched until a verified copy exists;
    3. the approval is consumed (exactly once, recorded in the live chain as
       ``approval.executed``), and the live chain's head is read;
    4. the swap: the live database stops taking connections and its sessions end, then one
       transaction renames it to ``<db>_x<time>`` and the restored one to ``<db>``, so
       the tenant's database name names either the old or the restored data, never neither.
       Pooled connections to the old database are ended; the next request reconnects to the
       restored one;
    5. the replaced database is **retained**, closed to connections and to the tenant's app
       role, so what happened after the backup can still be examined; the operator drops it
       (ops/BACKUPS.md), and the tenant's deletion drops it with the tenant;
    6. the restored chain gets a ``backup.restored_over`` event naming the backup, the approval,
       the retained database and the replaced chain's head (the link between the two chains),
       and the platform chain a ``backup.replaced`` event.

A lost database: when the tenant's database no longer exists on its server (dropped, or the
server rebuilt), there is nothing live to overwrite and no chain to record an approval in, so
the gate does not apply: the backup is restored with every check (its manifest verified
against the public keys the control plane recorded, not the lost database) and the verified
database is renamed to the tenant's name. Both chains record it (``live_database_missing``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import psycopg
from psycopg import sql
from sqlalchemy.orm import Session, sessionmaker

from control_plane import audit
from control_plane.backups.destinations import Destination
from control_plane.backups.events import BackupEvents
from control_plane.backups.exceptions import BackupRefused
from control_plane.backups.restore import (
    check_member,
    drop_database,
    find_backup,
    restore_tenant,
)
from control_plane.models import BackupReplacement, Tenant
from control_plane.tenancy import database
from control_plane.tenancy.connections import TenantConnections
from control_plane.tenancy.provisioning import tenant_secrets
from tenant_runtime import audit as tenant_audit
from tenant_runtime.approvals import gates
from tenant_runtime.approvals.service import parse_request_id
from tenant_runtime.context import Actor as TenantActor
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantError

ACTION = "tenant.restore"
REPLACEABLE_STATES = ("active", "suspended")
REQUESTER_ROLES = ("Owner", "Admin")
SWAP_ATTEMPTS = 5


@dataclass(frozen=True)
class ReplaceResult:
    backup_id: str
    database: str
    retained: str | None  # None: the live database was missing, nothing was replaced
    approval_id: str | None
    rows: int
    audit_seq: int
    replaced_head: tuple[int, str]
    seconds: float


def _refuse_if_used(s: Session, approval_id: str) -> None:
    done = s.get(BackupReplacement, approval_id)
    if done is not None:
        raise BackupRefused(f"Approval request {done.approval_id} was already used at "
                            f"{done.created_at:%Y-%m-%d %H:%M:%S} UTC (backup {done.backup_id}); "
                            "each approval replaces the live database once. Nothing was "
                            "restored.")


def parse_approval(approval_id: str) -> str:
    """One spelling of a request id, so the control plane's single-use record cannot be
    dodged; or the refusal."""
    try:
        return str(parse_request_id(approval_id))
    except TenantError as exc:
        raise BackupRefused(f"{exc.message} Nothing was restored.") from None


def approval_payload(tenant_id: int, backup_id: str) -> dict[str, object]:
    return {"tenant_id": tenant_id, "backup_id": backup_id}


def _context(session_factory: sessionmaker[Session], connections: TenantConnections,
             slug: str, backup_id: str, actor: audit.Actor
             ) -> tuple[Session, Tenant, str, TenantContext]:
    s = session_factory()
    try:
        tenant, backup = find_backup(s, slug, backup_id)
        if tenant.state not in REPLACEABLE_STATES:
            raise BackupRefused(f"Tenant {tenant.slug} is {tenant.state}; only an active or "
                                "suspended tenant's database can be replaced.")
        ctx = connections.context(s, tenant, TenantActor("system", None,
                                                         actor.name or "restore"))
    except BaseException:
        s.close()  # the caller closes it only once it is returned
        raise
    return s, tenant, backup.id, ctx


def requester(s: Session, tenant: Tenant, user_id: int) -> TenantActor:
    """The member ``user_id`` as the requester of a replacement: an active Owner or Admin of
    the tenant, so that the gate's rules make someone else decide."""
    user, role = check_member(s, tenant, user_id, REQUESTER_ROLES,
                              doing="ask to replace its database. Nothing was requested")
    return TenantActor("user", str(user.id), user.email, role)


def request_replace(session_factory: sessionmaker[Session], connections: TenantConnections,
                    slug: str, backup_id: str, *, actor: audit.Actor,
                    requested_by: int | None = None) -> None:
    """Open the ``tenant.restore`` approval request; raises ``gates.ApprovalPending``. With
    ``requested_by`` (a user id: an Owner or Admin of the tenant) the request is that member's,
    and the gate refuses her own decision; without it, the requester is the command."""
    s, tenant, backup_id, ctx = _context(session_factory, connections, slug, backup_id, actor)
    with s:
        if requested_by is not None:
            ctx = replace(ctx, actor=requester(s, tenant, requested_by))
        gates.require(ctx, ACTION, approval_payload(tenant.id, backup_id))


def _head(ctx: TenantContext) -> tuple[int, str]:
    from sqlalchemy import select

    from tenant_runtime.models import AuditEvent

    with ctx.session() as ts:
        row = ts.execute(select(AuditEvent.seq, AuditEvent.chain_hash)
                         .order_by(AuditEvent.seq.desc()).limit(1)).first()
    return (int(row[0]), str(row[1])) if row else (0, "0" * 64)


def swap(admin_url: str, *, live: str, restored: str, retained: str, app: str) -> None:
    """Rename ``live`` to ``retained`` and ``restored`` to ``live`` in one transaction, after
    closing ``live`` to new connections and ending its sessions; the retained database stays
    closed, and the app role loses CONNECT on it. On failure the live database is reopened."""
    url = database.libpq_url(database.url_for(admin_url, database="postgres"))
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
            sql.Identifier(live)))
        try:
            for attempt in range(SWAP_ATTEMPTS):
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
                             ([live, restored],))
                try:
                    with conn.transaction():
                        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(live), sql.Identifier(retained)))
                        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(restored), sql.Identifier(live)))
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == SWAP_ATTEMPTS - 1:
                        raise
                    time.sleep(0.2)
        except BaseException:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                sql.Identifier(live)))
            raise
        with database.privileges_lock(conn):
            conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(
                sql.Identifier(retained), sql.Identifier(app)))


def check_approval(session_factory: sessionmaker[Session], connections: TenantConnections,
                   slug: str, backup_id: str, *, approval_id: str, actor: audit.Actor) -> str:
    """Step 1: the approval's id (one spelling) when it could be used now for this tenant and
    backup (decided, fresh, unused); else the sentence why not. Nothing is consumed."""
    approval_id = parse_approval(approval_id)
    s, tenant, backup_id, ctx = _context(session_factory, connections, slug, backup_id, actor)
    with s:
        _refuse_if_used(s, approval_id)
        try:
            gates.check_required(ctx, ACTION, approval_payload(tenant.id, backup_id),
                                 approval_id)
        except TenantError as exc:
            raise BackupRefused(f"{exc.message} Nothing was restored.") from None
    return approval_id


def live_database_missing(session_factory: sessionmaker[Session],
                          connections: TenantConnections, slug: str, backup_id: str) -> bool:
    """Whether tenant ``slug``'s database is gone from its server (dropped, or the server
    rebuilt): then ``--replace`` has nothing live to overwrite and no chain to hold an
    approval in (module docstring, "a lost database")."""
    with session_factory() as s:
        tenant, _ = find_backup(s, slug, backup_id)
        if tenant.state not in REPLACEABLE_STATES:
            raise BackupRefused(f"Tenant {tenant.slug} is {tenant.state}; only an active or "
                                "suspended tenant's database can be replaced.")
        admin_url, live = tenant_secrets(connections.sealer, tenant).admin_url, tenant.db_name
    url = database.libpq_url(database.url_for(admin_url, database="postgres"))
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        return not database.database_exists(conn, live)


def _replace_lost(session_factory: sessionmaker[Session], connections: TenantConnections,
                  destination: Destination, slug: str, backup_id: str, *,
                  actor: audit.Actor, started: float) -> ReplaceResult:
    """The tenant's database is missing: the verified restore takes its name (a rename that
    fails if a database of that name appeared meanwhile), with no approval to consume."""
    with session_factory() as s:
        tenant, backup = find_backup(s, slug, backup_id)
        tenant_id, live, backup_id = tenant.id, tenant.db_name, backup.id
        admin_url = tenant_secrets(connections.sealer, tenant).admin_url
    restored = restore_tenant(session_factory, connections, destination, slug, backup_id,
                              actor=actor)
    url = database.libpq_url(database.url_for(admin_url, database="postgres"))
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(restored.database), sql.Identifier(live)))
    except psycopg.errors.DuplicateDatabase:
        drop_database(admin_url, restored.database)
        raise BackupRefused(f"The database {live} of tenant {slug} appeared during the "
                            "restore; nothing was replaced (run the restore again, which then "
                            "needs an approval).") from None
    except BaseException:
        drop_database(admin_url, restored.database)
        raise
    connections.forget(tenant_id)
    details = {"backup_id": backup_id, "approval_id": None, "retained_database": None,
               "replaced_head": None, "live_database_missing": True, "rows": restored.rows}
    seq = restored.audit_seq
    with session_factory() as s:
        tenant_row = s.get(Tenant, tenant_id)
        if tenant_row is not None:
            ctx = connections.context(s, tenant_row, TenantActor("system", None,
                                                                 actor.name or "restore"))
            with ctx.session() as ts, ts.begin():
                seq = int(tenant_audit.record(ts, BackupEvents.RESTORED_OVER, actor=ctx.actor,
                                              target_type="tenant", target_id=str(tenant_id),
                                              details=details).seq)
    with session_factory() as s, s.begin():
        audit.record(s, BackupEvents.REPLACED, actor=actor, target_type="tenant",
                     target_id=tenant_id, details={**details, "database": live})
    return ReplaceResult(backup_id, live, None, None, restored.rows, seq, (0, "0" * 64),
                         time.monotonic() - started)


def replace_tenant(session_factory: sessionmaker[Session], connections: TenantConnections,
                   destination: Destination, slug: str, backup_id: str, *,
                   approval_id: str | None, actor: audit.Actor) -> ReplaceResult:
    """Restore ``backup_id`` over tenant ``slug``'s live database on the approval
    ``approval_id`` (module docstring); or, when that database is missing, into its name with
    no approval (nothing live is overwritten, and the chain that would hold one is gone)."""
    started = time.monotonic()
    if live_database_missing(session_factory, connections, slug, backup_id):
        return _replace_lost(session_factory, connections, destination, slug, backup_id,
                             actor=actor, started=started)
    if not approval_id:
        raise BackupRefused(f"Replacing the live database of tenant {slug} needs an approved "
                            "tenant.restore request; nothing was restored.")
    approval_id = check_approval(session_factory, connections, slug, backup_id,
                                 approval_id=approval_id, actor=actor)
    s, tenant, backup_id, ctx = _context(session_factory, connections, slug, backup_id, actor)
    with s:
        tenant_id, live, app = tenant.id, tenant.db_name, tenant.app_role
        admin_url = tenant_secrets(connections.sealer, tenant).admin_url
        payload = approval_payload(tenant_id, backup_id)
    restored = restore_tenant(session_factory, connections, destination, slug, backup_id,
                              actor=actor)
    retained = f"{live}_x{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}"
    try:
        with session_factory() as s, s.begin():
            tenant_row = s.get(Tenant, tenant_id, with_for_update=True)
            if tenant_row is None or tenant_row.state not in REPLACEABLE_STATES:
                raise BackupRefused(f"Tenant {slug} was deleted or changed state during the "
                                    "restore; its database was not replaced.")
            _refuse_if_used(s, approval_id)
            s.add(BackupReplacement(approval_id=approval_id, tenant_id=tenant_id,
                                    backup_id=backup_id, retained_database=retained))
            s.flush()  # the control plane's record of the single use, committed with the swap
            ctx = connections.context(s, tenant_row, ctx.actor)
            try:
                used = gates.consume_required(ctx, ACTION, payload, approval_id)
            except TenantError as exc:
                raise BackupRefused(f"{exc.message} The live database was not replaced."
                                    ) from None
            replaced_head = _head(ctx)
            connections.forget(tenant_id)
            swap(admin_url, live=live, restored=restored.database, retained=retained, app=app)
    except BaseException:
        drop_database(admin_url, restored.database)
        raise
    connections.forget(tenant_id)
    details = {"backup_id": backup_id, "approval_id": used, "retained_database": retained,
               "replaced_head": {"seq": replaced_head[0], "chain_hash": replaced_head[1]},
               "rows": restored.rows}
    seq = restored.audit_seq
    with session_factory() as s:
        tenant_row = s.get(Tenant, tenant_id)
        if tenant_row is not None:  # (a deletion meanwhile drops the restored database too)
            ctx = connections.context(s, tenant_row, ctx.actor)
            with ctx.session() as ts, ts.begin():
                event = tenant_audit.record(ts, BackupEvents.RESTORED_OVER, actor=ctx.actor,
                                            target_type="tenant", target_id=str(tenant_id),
                                            details=details)
                seq = int(event.seq)
    with session_factory() as s, s.begin():
        audit.record(s, BackupEvents.REPLACED, actor=actor, target_type="tenant",
                     target_id=tenant_id, details={**details, "database": live})
    return ReplaceResult(backup_id, live, retained, used, restored.rows, seq, replaced_head,
                         time.monotonic() - started)
