"""Restoring a tenant backup into a new database, and the restore drill.

``restore_tenant`` never writes over a live database: it creates ``magistrate_t_<id>_r<time>``
(the drill: ``…_d<time>``) on the tenant's server, owned by the tenant's own roles (re-created
with their sealed passwords when missing) with the provisioning grants. In order, refusing with
one sentence at the first failure and dropping the new database when it exists:

    1. the backup record exists and still holds its wrapped key (a deleted tenant's are
       destroyed with it);
    2. the manifest is the one of this backup and its signature verifies against a checkpoint
       key of the tenant's chain, as the control plane recorded it (``signing_keys``: the
       tenant's live database is not needed, it may be the thing lost);
    3. the encrypted object's size and SHA-256 match the manifest (before any decryption);
    4. the data key unwraps through the tenant's key-encryption key (revoked -> the
       key-unavailable sentence);
    5. ``pg_restore`` (one transaction) of the decrypted stream, through a pipe;
    6. the restored chain verifies link by link and checkpoint by checkpoint, its head and last
       checkpoint are the manifest's, every table has the manifest's row count;
    7. a backup of an older tenant schema (the manifest's ``schema_version``) is upgraded to
       this code's head by the tenant migrations (a revision this code does not know, from a
       newer version, is refused at step 2, before anything is decrypted);
    8. one value of every sealed column that has one opens with the tenant's data key."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import psycopg
from psycopg import sql
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from control_plane import audit
from control_plane.backups import dump, manifest
from control_plane.backups.destinations import Destination, scope_of
from control_plane.backups.envelope import decrypt_chunks
from control_plane.backups.events import BackupEvents
from control_plane.backups.exceptions import (
    BackupError,
    BackupKeyUnavailable,
    BackupRefused,
    BackupUnreadable,
    RestoreCheckFailed,
)
from control_plane.db import make_engine, make_session_factory
from control_plane.keys.providers import KeyUnavailable
from control_plane.keys.registry import provider_for
from control_plane.migrations import head_revision, known_revisions, upgrade_tenant
from control_plane.models import Backup, BackupSigningKey, Membership, Tenant, TenantTombstone, User
from control_plane.tenancy import database
from control_plane.tenancy.connections import TenantConnections
from control_plane.tenancy.provisioning import tenant_secrets
from control_plane.tenancy.rotation import sealed_tables
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.exceptions import TenantError
from tenant_runtime.models import AuditCheckpoint, AuditEvent, CheckpointKey
from tenant_runtime.sealing import TenantSealer

log = logging.getLogger("magistrate.backups")

# opens one sealed value: (sealed, table, column, row key) -> plaintext
SealedOpener = Callable[[bytes, str, str, int], bytes]


@dataclass(frozen=True)
class RestoreResult:
    backup_id: str
    database: str
    rows: int
    audit_seq: int
    seconds: float
    upgraded_from: str | None = None  # the backup's older tenant schema revision, if any


def deleted_sentence(slug: str) -> str:
    return (f"Tenant {slug} was deleted at its owner's request; its backups were destroyed "
            "with it (their data keys no longer exist and their objects were deleted) and "
            "cannot be restored.")


def find_backup(s: Session, slug: str, backup_id: str) -> tuple[Tenant, Backup]:
    """The live tenant ``slug`` and its backup ``backup_id``, or the sentence saying why not."""
    slug = slug.strip().lower()
    tenant = s.scalars(select(Tenant).where(Tenant.slug == slug)).first()
    if tenant is None or tenant.state == "deleted":
        if tenant is not None or s.scalars(select(TenantTombstone).where(
                TenantTombstone.slug == slug)).first() is not None:
            raise BackupRefused(deleted_sentence(slug))
        raise BackupRefused(f"No tenant has the slug {slug!r}.")
    backup = s.get(Backup, backup_id.strip())
    if backup is None or backup.tenant_id != tenant.id:
        raise BackupRefused(f"Tenant {slug} has no backup with the id {backup_id!r} "
                            "(`magistrate backup list --tenant SLUG` lists them).")
    if backup.wrapped_key is None:
        raise BackupRefused(f"Backup {backup.id} was destroyed (its data key no longer exists).")
    return tenant, backup


def check_member(s: Session, tenant: Tenant, user_id: int, roles: tuple[str, ...], *,
                 doing: str) -> tuple[User, str]:
    """The active account ``user_id`` and its role, if that role in ``tenant`` is one of
    ``roles``; else the refusal (``doing``: what only they may do, and what did not happen)."""
    user = s.get(User, user_id)
    role = s.scalar(select(Membership.role).where(Membership.tenant_id == tenant.id,
                                                  Membership.user_id == user_id))
    if user is None or not user.is_active or role not in roles:
        who = user.email if user is not None else f"account {user_id}"
        raise BackupRefused(f"{who} is not an active {' or '.join(roles)} of tenant "
                            f"{tenant.slug}; only they may {doing}.")
    return user, str(role)


def digest_of(fh: IO[bytes]) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    while True:
        block = fh.read(1 << 20)
        if not block:
            break
        h.update(block)
        size += len(block)
    fh.seek(0)
    return size, h.hexdigest()


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(database.libpq_url(database.url_for(admin_url, database="postgres")),
                         autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def _create(admin_url: str, name: str, owner: str, app: str) -> int:
    with psycopg.connect(database.libpq_url(database.url_for(admin_url, database="postgres")),
                         autocommit=True, connect_timeout=10) as conn:
        if database.database_exists(conn, name):
            raise BackupRefused(f"The database {name} exists already; nothing was restored.")
        db = sql.Identifier(name)
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
            db, sql.Identifier(owner)))
        with database.privileges_lock(conn):
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}, {}").format(
                db, sql.Identifier(owner), sql.Identifier(app)))
        return dump.server_major(conn)


def schema_to_upgrade(doc: Mapping[str, object], backup_id: str) -> str | None:
    """The backup's tenant schema revision when it is older than this code's (the restored
    database is then upgraded before use), None when it is the current one; a revision this
    code does not know (a newer version of Magistrate made the backup) is refused."""
    revision = doc.get("schema_version")
    if revision == head_revision("tenant"):
        return None
    if not isinstance(revision, str) or revision not in known_revisions("tenant"):
        raise BackupRefused(f"Backup {backup_id} was made at tenant schema revision "
                            f"{revision!r}, which this version of Magistrate does not know (a "
                            "newer version made it); restore it with that version or a newer "
                            "one. Nothing was restored.")
    return revision


def check_restored(s: Session, tenant_id: int, doc: Mapping[str, object]) -> int:
    """The checks of step 6 on the restored database as it was backed up (before any schema
    upgrade), but the sealed sample; returns the rows restored."""
    result = verify_tenant_chain(s, tenant_id)
    if not result.ok:
        raise RestoreCheckFailed(f"The restored audit chain does not verify ({result.problem}).")
    head = doc["audit_head"]
    if not isinstance(head, dict):
        raise RestoreCheckFailed("The manifest has no audit head.")
    got = s.execute(select(AuditEvent.seq, AuditEvent.chain_hash)
                    .order_by(AuditEvent.seq.desc()).limit(1)).first()
    got_head = (int(got[0]), str(got[1])) if got else (0, "0" * 64)
    if got_head != (head["seq"], head["chain_hash"]):
        raise RestoreCheckFailed(f"The restored audit chain ends at seq {got_head[0]}, the "
                                 f"manifest says {head['seq']}.")
    checkpoint = doc.get("last_checkpoint")
    if isinstance(checkpoint, dict):
        last = s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc())
                         .limit(1)).first()
        if last is None or (last.seq, last.chain_hash, last.signature) != (
                checkpoint["seq"], checkpoint["chain_hash"], checkpoint["signature"]):
            raise RestoreCheckFailed("The restored last checkpoint is not the manifest's.")
    conn = s.connection().connection.driver_connection
    counts = dump.count_rows(conn)  # type: ignore[arg-type]
    wanted = doc["row_counts"]
    if not isinstance(wanted, dict):
        raise RestoreCheckFailed("The manifest has no row counts.")
    if counts != wanted:
        diff = sorted(t for t in set(counts) | set(wanted) if counts.get(t) != wanted.get(t))
        raise RestoreCheckFailed(f"Row counts differ from the manifest in {', '.join(diff)}.")
    return sum(counts.values())


def open_sealed_sample(s: Session, open_sealed: SealedOpener) -> int:
    """Open one value of every sealed column that has one (the first row by key), so a data
    key that does not open a column's values is found whichever column it is; returns how
    many were opened. RestoreCheckFailed names the first column whose value does not open."""
    opened = 0
    for st in sealed_tables():
        for column in st.columns:
            row = s.execute(select(st.key, column).where(column.is_not(None))
                            .order_by(st.key).limit(1)).first()
            if row is None:
                continue
            try:
                open_sealed(row[1], st.table.name, column.name, row[0])
            except TenantError as exc:
                raise RestoreCheckFailed(
                    f"A sealed value of the restored database does not open with the tenant's "
                    f"data key ({st.table.name}.{column.name}, row {row[0]}: {exc.message})."
                ) from None
            opened += 1
    return opened


@dataclass(frozen=True)
class RestoreSource:
    """What a restore reads of the backup's tenant before any work (one control-plane read)."""

    tenant_id: int
    backup_id: str
    wrapped: bytes
    provider: str
    key_ref: str
    recorded: tuple[int, str]  # the backup record's size and SHA-256
    known_keys: dict[str, str]  # the tenant's checkpoint keys: id -> public key
    sealer: TenantSealer  # opens the backup's sealed values (the source tenant's data keys)


@dataclass(frozen=True)
class RestoreTarget:
    """Where a restore writes: a new database on a server, owned by a tenant's roles."""

    admin_url: str
    name: str
    owner: str
    owner_password: str
    app: str
    app_password: str


def read_source(s: Session, connections: TenantConnections, tenant: Tenant,
                backup: Backup) -> RestoreSource:
    if backup.wrapped_key is None:
        raise BackupRefused(f"Backup {backup.id} was destroyed (its data key no longer exists).")
    known = signing_keys(s, connections, tenant)
    return RestoreSource(tenant.id, backup.id, backup.wrapped_key, backup.key_provider,
                         backup.key_ref, (backup.size_bytes, backup.sha256), known,
                         connections.sealer_for(s, tenant))


def signing_keys(s: Session, connections: TenantConnections, tenant: Tenant) -> dict[str, str]:
    """The public checkpoint keys a manifest of ``tenant`` may be signed with: those the
    control plane recorded with its backups, trusted because the control plane holds them,
    so a tenant whose live database is lost can still be restored. Only for a tenant none of
    whose backups recorded them (backups made before migration 0016) are they read from the
    live database."""
    known = {k.key_id: k.public_key for k in s.scalars(
        select(BackupSigningKey).where(BackupSigningKey.tenant_id == tenant.id))}
    if known:
        return known
    try:
        with connections.session_factory(tenant)() as ts:
            return {k.key_id: k.public_key for k in ts.scalars(select(CheckpointKey))}
    except (SQLAlchemyError, psycopg.Error):
        raise BackupRefused(f"The control plane has no record of tenant {tenant.slug}'s "
                            "checkpoint keys (its backups predate that record) and its live "
                            "database cannot be read, so no manifest of it can be verified; "
                            "nothing was restored.") from None


def key_unavailable(exc: KeyUnavailable) -> BackupKeyUnavailable:
    return BackupKeyUnavailable(
        f"Tenant key unavailable: the customer-held key cannot be used ({exc.provider}: "
        f"{exc.reason}); the backup cannot be decrypted and nothing was restored.")


def restore_checked(connections: TenantConnections, destination: Destination,
                    source: RestoreSource, target: RestoreTarget) -> tuple[int, dict[str, Any]]:
    """Steps 2 to 6 (module docstring) into ``target``: the rows restored and the manifest.
    Any failure drops the new database and raises the sentence saying why."""
    backup_id = source.backup_id
    scope = scope_of(source.tenant_id)
    found = manifest.parse(destination.read_manifest(scope, backup_id), backup_id)
    manifest.verify(found, source.known_keys)
    doc = found.document
    if doc.get("tenant_id") != source.tenant_id or (found.size, found.sha256) != source.recorded:
        raise BackupUnreadable(f"The manifest of backup {backup_id} does not describe the "
                               "backup the platform recorded; nothing was restored.")
    older_schema = schema_to_upgrade(doc, backup_id)
    with destination.open_object(scope, backup_id) as fh:
        size, digest = digest_of(fh)
        if (size, digest) != (found.size, found.sha256):
            raise BackupUnreadable(f"The encrypted object of backup {backup_id} does not match "
                                   f"its manifest (size {size} vs {found.size}, or its SHA-256 "
                                   "differs); nothing was decrypted or restored.")
        try:
            key = provider_for(connections.providers, source.provider).unwrap(
                source.wrapped, tenant_id=str(source.tenant_id), key_ref=source.key_ref)
        except KeyUnavailable as exc:
            raise key_unavailable(exc) from None
        database.ensure_roles(target.admin_url, owner=target.owner,
                              owner_password=target.owner_password, app=target.app,
                              app_password=target.app_password)
        major = _create(target.admin_url, target.name, target.owner, target.app)
        try:
            dump.run_restore(target.admin_url, target.name, target.owner, major,
                             decrypt_chunks(fh, key, backup_id))
        except BaseException:
            drop_database(target.admin_url, target.name)
            raise
    try:
        database.apply_privileges(target.admin_url, database=target.name, owner=target.owner,
                                  app=target.app)
        engine = make_engine(database.url_for(target.admin_url, database=target.name),
                             pool_size=1)
        try:
            with make_session_factory(engine)() as rs:
                rows = check_restored(rs, source.tenant_id, doc)
            if older_schema is not None:
                upgrade_restored(target)
            with make_session_factory(engine)() as rs:
                def open_sealed(sealed: bytes, table: str, column: str, row_key: int) -> bytes:
                    return source.sealer.open(sealed, table=table, column=column,
                                              row_key=row_key)

                open_sealed_sample(rs, open_sealed)
        finally:
            engine.dispose()
    except TenantError as exc:
        drop_database(target.admin_url, target.name)
        raise RestoreCheckFailed(f"Sealed values of the restored database do not open "
                                 f"({exc.message}); the new database was dropped.") from None
    except BackupError as exc:
        drop_database(target.admin_url, target.name)
        raise RestoreCheckFailed(f"{exc.message} The new database was dropped.") from None
    except BaseException:
        drop_database(target.admin_url, target.name)
        raise
    return rows, doc


def upgrade_restored(target: RestoreTarget) -> None:
    """Bring a database restored from a backup of an older schema to this code's head: the
    tenant migrations, run as the tenant's owner as for every tenant database, then the
    provisioning grants again for the tables they made."""
    url = database.url_for(target.admin_url, database=target.name, user=target.owner,
                           password=target.owner_password)
    try:
        reached = upgrade_tenant(url)
    except Exception as exc:  # noqa: BLE001 - a migration's failure becomes the refusal
        raise RestoreCheckFailed(f"The restored database could not be upgraded to the current "
                                 f"tenant schema ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:300]}).") from None
    if reached != head_revision("tenant"):
        raise RestoreCheckFailed(f"The restored database was upgraded to {reached}, not to the "
                                 "current tenant schema.")
    database.apply_privileges(target.admin_url, database=target.name, owner=target.owner,
                              app=target.app)


def restore_tenant(session_factory: sessionmaker[Session], connections: TenantConnections,
                   destination: Destination, slug: str, backup_id: str, *,
                   actor: audit.Actor, drill: bool = False) -> RestoreResult:
    """Restore ``backup_id`` of tenant ``slug`` into a new database (module docstring). The
    drill (``drill=True``) drops the database after the checks and records the result."""
    started = time.monotonic()
    with session_factory() as s:
        tenant, backup = find_backup(s, slug, backup_id)
        source = read_source(s, connections, tenant, backup)
        secrets = tenant_secrets(connections.sealer, tenant)
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        target = RestoreTarget(secrets.admin_url, f"{tenant.db_name}_{'d' if drill else 'r'}"
                               f"{stamp}", tenant.owner_role, secrets.owner_password,
                               tenant.app_role, secrets.app_password)
    rows, doc = restore_checked(connections, destination, source, target)
    seconds = time.monotonic() - started
    upgraded_from = (None if doc.get("schema_version") == head_revision("tenant")
                     else str(doc.get("schema_version")))
    if drill:
        drop_database(target.admin_url, target.name)
    else:
        with session_factory() as s, s.begin():
            audit.record(s, BackupEvents.RESTORED, actor=actor, target_type="tenant",
                         target_id=source.tenant_id,
                         details={"backup_id": source.backup_id, "database": target.name,
                                  "rows": rows, "schema_version": doc.get("schema_version"),
                                  "upgraded_from": upgraded_from})
    head = doc["audit_head"]
    return RestoreResult(source.backup_id, target.name, rows, int(head["seq"]), seconds,
                         upgraded_from)


@dataclass(frozen=True)
class DrillResult:
    tenant_slug: str
    backup_id: str | None
    ok: bool
    reason: str
    seconds: float
    backup_age_hours: float | None


def drill_tenant(session_factory: sessionmaker[Session], connections: TenantConnections,
                 destination_for: Callable[[str], Destination], tenant_id: int, *,
                 actor: audit.Actor) -> DrillResult:
    """Restore the tenant's latest backup into a throwaway database, check it, drop it, and
    record the result on the backup and as an audit event. A tenant without a backup fails;
    so does any error of the restore (a store or server that cannot be reached, too): every
    failure is recorded as ``backup.drill_failed`` with its sentence."""
    with session_factory() as s:
        tenant = s.get(Tenant, tenant_id)
        if tenant is None:
            raise BackupRefused(f"No tenant has the id {tenant_id}.")
        slug = tenant.slug
        latest = s.scalars(select(Backup).where(Backup.tenant_id == tenant_id,
                                                Backup.wrapped_key.is_not(None))
                           .order_by(Backup.created_at.desc()).limit(1)).first()
        backup_id = latest.id if latest else None
        where = latest.destination if latest else None
        age = ((datetime.now(UTC) - latest.created_at).total_seconds() / 3600
               if latest else None)
    started = time.monotonic()
    if backup_id is None or where is None:
        ok, reason = False, "the tenant has no backup"
    else:
        try:
            restore_tenant(session_factory, connections, destination_for(where), slug,
                           backup_id, actor=actor, drill=True)
            ok, reason = True, "restored, chain verified, row counts and sealed values checked"
        except BackupError as exc:
            ok, reason = False, exc.message
        except Exception as exc:  # noqa: BLE001 - any failure is the drill's result, recorded
            log.exception("the drill of backup %s of tenant %s could not run", backup_id, slug)
            detail = " ".join(str(exc).split())[:300] or "no detail"
            ok, reason = False, (f"The drill could not restore backup {backup_id} "
                                 f"({type(exc).__name__}: {detail}).")
    seconds = time.monotonic() - started
    with session_factory() as s, s.begin():
        if backup_id is not None:
            row = s.get(Backup, backup_id)
            if row is not None:
                row.drill_at, row.drill_ok, row.drill_detail = (datetime.now(UTC), ok,
                                                                reason[:1000])
        audit.record(s, BackupEvents.DRILL_PASSED if ok else BackupEvents.DRILL_FAILED,
                     actor=actor, target_type="tenant", target_id=tenant_id,
                     details={"backup_id": backup_id, "ok": ok, "reason": reason[:500],
                              "milliseconds": int(seconds * 1000),
                              "backup_age_minutes": None if age is None else int(age * 60)})
    return DrillResult(slug, backup_id, ok, reason, seconds, age)
