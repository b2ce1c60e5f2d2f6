"""Making backups: ``backup_tenant`` and ``backup_control`` (the module docstring of
control_plane/backups/__init__.py tells the whole story).

Each backup: a fresh 256-bit data key, wrapped by the tenant's key-encryption key (a tenant
backup) or the platform backup key (the control-plane backup); a REPEATABLE READ transaction
whose exported snapshot ``pg_dump`` uses, so the audit head and row counts recorded in the
manifest are exactly those of the dump; the dump streamed through the envelope into a staging
file and hashed as it is written; the signed manifest; publication (object, then manifest);
then the record with the wrapped key and the audit event, in one transaction."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import psycopg
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from control_plane import audit
from control_plane.audit_checkpoints import make_platform_checkpoint, platform_signer
from control_plane.backups import age, dump, manifest
from control_plane.backups.destinations import Destination, scope_of, sweep_before_backup
from control_plane.backups.envelope import EnvelopeWriter
from control_plane.backups.events import BackupEvents
from control_plane.backups.exceptions import BackupKeyUnavailable, BackupRefused
from control_plane.keys.local import LocalKeyProvider
from control_plane.keys.providers import KeyProvider, KeyUnavailable
from control_plane.keys.registry import new_data_key, provider_for
from control_plane.models import Backup, BackupSigningKey, Tenant, TenantKey
from control_plane.sealing import ControlSealer
from control_plane.tenancy.connections import TenantConnections
from control_plane.tenancy.database import libpq_url
from tenant_runtime.checkpoints import ensure_checkpoint_key, make_checkpoint, statement_signer
from tenant_runtime.context import Actor as TenantActor
from tenant_runtime.exceptions import TenantKeyUnavailable

PLATFORM_KEY_CONTEXT = "platform-backup"
CONTROL_SLUG = "control"


def new_backup_id(now: datetime) -> str:
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class BackupResult:
    backup_id: str
    tenant_slug: str
    size: int
    sha256: str
    destination: str
    row_count: int
    audit_seq: int


class _HashingWriter:
    """Writes to the staging file and hashes exactly the bytes written."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.out.write(data)


def current_kek(s: Session, tenant: Tenant) -> TenantKey:
    """The tenant's newest unretired data-key record: its provider and key reference name the
    key-encryption key in use now."""
    key = s.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant.id,
                                            TenantKey.retired_at.is_(None))
                    .order_by(TenantKey.version.desc())).first()
    if key is None:
        raise BackupRefused(f"Tenant {tenant.slug} has no data key yet (is it provisioned?); "
                            "no backup was made.")
    return key


def _wrap(provider: KeyProvider, dek: bytes, *, context: str, key_ref: str, whose: str) -> bytes:
    try:
        return provider.wrap(dek, tenant_id=context, key_ref=key_ref)
    except KeyUnavailable as exc:
        raise BackupKeyUnavailable(f"{whose} key unavailable ({exc.provider}: {exc.reason}); "
                                   "no backup was made.") from None


def _write_object(url: str, destination: Destination, scope: str, backup_id: str, key: bytes,
                  conn: psycopg.Connection[tuple[object, ...]]
                  ) -> tuple[IO[bytes], dump.SnapshotState, str, int, str]:
    """Dump ``url`` at the snapshot of ``conn``'s open transaction into a staging file."""
    state = dump.read_snapshot_state(conn)
    staged = destination.staging(scope, backup_id)
    try:
        hashing = _HashingWriter(staged)
        envelope = EnvelopeWriter(hashing, key, backup_id)  # type: ignore[arg-type]
        tool = dump.run_dump(url, state.snapshot, state.major, envelope.write)
        envelope.close()
    except BaseException:
        destination.discard(staged)
        raise
    return staged, state, tool, envelope.written, hashing.digest.hexdigest()


def _document(*, backup_id: str, kind: str, tenant_id: int | None, slug: str, database: str,
              created_at: datetime, state: dump.SnapshotState, head: tuple[int, str],
              checkpoint: dict[str, Any] | None, size: int, sha256: str,
              key: dict[str, Any], tool: str) -> dict[str, Any]:
    return {
        "format": manifest.FORMAT, "backup_id": backup_id, "kind": kind,
        "tenant_id": tenant_id, "tenant_slug": slug, "database": database,
        "schema_version": state.schema_version,
        "created_at": created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "audit_head": {"seq": head[0], "chain_hash": head[1]},
        "last_checkpoint": checkpoint, "row_counts": state.row_counts,
        "object": {"name": backup_id + ".mgbk", "size": size, "sha256": sha256,
                   "encryption": "AES-256-GCM, 1 MiB authenticated chunks",
                   "dump": "pg_dump custom format (compressed)", "pg_dump": tool},
        "key": key,
    }


def _checkpoint_of(row: tuple[Any, ...] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    seq, chain_hash, created_at, key_id, signature = row
    return {"seq": int(seq), "chain_hash": str(chain_hash),
            "created_at": created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "key_id": str(key_id), "signature": str(signature)}


def backup_tenant(session_factory: sessionmaker[Session], connections: TenantConnections,
                  destination: Destination, tenant_id: int, *, actor: audit.Actor,
                  monthly: bool = False) -> BackupResult:
    """Back up one tenant's database (module docstring); returns what was published."""
    now = datetime.now(UTC)
    backup_id = new_backup_id(now)
    tenant_actor = TenantActor("system", None, actor.name or "backup")
    with session_factory() as s:
        tenant = s.get(Tenant, tenant_id)
        if tenant is None or tenant.state not in ("active", "suspended"):
            raise BackupRefused(f"Tenant {tenant_id} is not active or suspended; no backup "
                                "was made.")
        slug, db_name = tenant.slug, tenant.db_name
        kek = current_kek(s, tenant)
        provider_name, key_ref, key_version = kek.provider, kek.key_ref, kek.version
        owner_url = connections.owner_url(tenant)
        try:
            ctx = connections.context(s, tenant, tenant_actor)
            # the head is vouched for by a checkpoint signed now, and the key that signs the
            # manifest exists (both need the tenant's data key: revoked -> no backup)
            with ctx.session() as ts, ts.begin():
                if make_checkpoint(ts, ctx, force=True) is None:
                    ensure_checkpoint_key(ts, ctx)
        except TenantKeyUnavailable as exc:
            raise BackupKeyUnavailable(f"{exc.message} No backup was made.") from None
    dek = new_data_key()
    wrapped = _wrap(provider_for(connections.providers, provider_name), dek,
                    context=str(tenant_id), key_ref=key_ref, whose="Tenant")
    scope = scope_of(tenant_id)
    swept = sweep_before_backup(destination, scope)
    with psycopg.connect(libpq_url(owner_url), connect_timeout=10) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        head_row = conn.execute("SELECT seq, chain_hash FROM audit_events ORDER BY seq DESC "
                                "LIMIT 1").fetchone()
        checkpoint = _checkpoint_of(conn.execute(
            "SELECT seq, chain_hash, created_at, key_id, signature FROM audit_checkpoints "
            "ORDER BY seq DESC LIMIT 1").fetchone())
        staged, state, tool, size, sha256 = _write_object(owner_url, destination, scope,
                                                          backup_id, dek, conn)
        conn.rollback()
    head = (int(head_row[0]), str(head_row[1])) if head_row else (0, "0" * 64)
    document = _document(
        backup_id=backup_id, kind="tenant", tenant_id=tenant_id, slug=slug, database=db_name,
        created_at=now, state=state, head=head, checkpoint=checkpoint, size=size, sha256=sha256,
        key={"provider": provider_name, "key_ref": key_ref, "tenant_key_version": key_version,
             "wrapped_key": "kept in the control plane's backups table (destroyed with the "
                            "tenant)"}, tool=tool)
    try:
        with session_factory() as s:
            tenant = s.get(Tenant, tenant_id)
            if tenant is None:
                raise BackupRefused(f"Tenant {slug} was deleted during its backup; nothing "
                                    "was published.")
            ctx = connections.context(s, tenant, tenant_actor)
            with ctx.session() as ts:
                signer = statement_signer(ts, ctx, datetime.now(UTC))
                public = {k: v for k, v in _tenant_public_keys(ts).items()}
            if signer is None:
                raise BackupRefused(f"Tenant {slug} has no checkpoint key to sign the manifest; "
                                    "no backup was made.")
            body = manifest.sign(document, key_id=signer.key_id, public_key=public[signer.key_id],
                                 signer=signer.sign)
        destination.publish(scope, backup_id, staged, body)
    except TenantKeyUnavailable as exc:
        destination.discard(staged)
        raise BackupKeyUnavailable(f"{exc.message} No backup was made.") from None
    except BaseException:
        destination.discard(staged)
        raise
    with session_factory() as s, s.begin():
        s.add(Backup(id=backup_id, tenant_id=tenant_id, tenant_slug=slug, created_at=now,
                     destination=destination.uri, size_bytes=size, sha256=sha256,
                     key_provider=provider_name, key_ref=key_ref, wrapped_key=wrapped,
                     monthly=monthly))
        record_signing_keys(s, tenant_id, public)
        audit.record(s, BackupEvents.CREATED, actor=actor, target_type="tenant",
                     target_id=tenant_id, details={
                         "backup_id": backup_id, "size": size, "sha256": sha256,
                         "destination": destination.uri, "audit_seq": head[0],
                         "key_provider": provider_name, "tenant_key_version": key_version,
                         "unpublished_swept": swept})
    return BackupResult(backup_id, slug, size, sha256, destination.uri,
                        sum(state.row_counts.values()), head[0])


def record_signing_keys(s: Session, tenant_id: int, public: Mapping[str, str]) -> None:
    """Keep the public halves of the tenant's checkpoint keys in the control plane, in the
    backup record's transaction: a restore verifies the manifest against them without the
    tenant's live database. A key id recorded once keeps its first public key."""
    if public:
        s.execute(pg_insert(BackupSigningKey).values([
            {"tenant_id": tenant_id, "key_id": key_id, "public_key": key}
            for key_id, key in public.items()]).on_conflict_do_nothing())


def _tenant_public_keys(ts: Session) -> dict[str, str]:
    from tenant_runtime.models import CheckpointKey

    return {k.key_id: k.public_key for k in ts.scalars(select(CheckpointKey))}


def platform_backup_provider(providers: Mapping[str, KeyProvider], name: str, key_ref: str
                             ) -> KeyProvider:
    """The provider of the platform backup key; a ``local`` key file is made on first use."""
    provider = provider_for(providers, name)
    if isinstance(provider, LocalKeyProvider):
        provider.create_key(key_ref)
    return provider


def backup_control(session_factory: sessionmaker[Session], control_url: str,
                   sealer: ControlSealer, providers: Mapping[str, KeyProvider],
                   destination: Destination, *, key_provider: str, key_ref: str,
                   actor: audit.Actor, age_recipients: Sequence[str] = ()) -> BackupResult:
    """Back up the control-plane database; its data key is wrapped by the platform backup key
    (or, with ``age_recipients``, age-encrypted to them instead: control_plane/backups/age.py)
    and travels (wrapped) in the manifest, since the database it would be recorded in is the
    one being backed up."""
    now = datetime.now(UTC)
    backup_id = new_backup_id(now)
    recipients = [r.strip() for r in age_recipients if r.strip()]
    if recipients:
        age.parse_recipients(recipients)  # refused before any work
    with session_factory() as s, s.begin():
        make_platform_checkpoint(s, sealer, force=True)
    dek = new_data_key()
    if recipients:
        wrapped = age.wrap(dek, recipients)
        key_provider, key_ref = age.PROVIDER, ",".join(recipients)[:500]
        key_doc: dict[str, Any] = {"provider": age.PROVIDER, "recipients": recipients}
    else:
        try:
            provider = platform_backup_provider(providers, key_provider, key_ref)
        except KeyUnavailable as exc:
            raise BackupKeyUnavailable(f"Platform backup key unavailable ({exc.provider}: "
                                       f"{exc.reason}); no backup was made.") from None
        wrapped = _wrap(provider, dek, context=PLATFORM_KEY_CONTEXT, key_ref=key_ref,
                        whose="Platform backup")
        key_doc = {"provider": key_provider, "key_ref": key_ref,
                   "context": PLATFORM_KEY_CONTEXT}
    scope = scope_of(None)
    swept = sweep_before_backup(destination, scope)
    with psycopg.connect(libpq_url(control_url), connect_timeout=10) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        head_row = conn.execute("SELECT seq, chain_hash FROM platform_audit_head WHERE id = 1"
                                ).fetchone()
        checkpoint = _checkpoint_of(conn.execute(
            "SELECT seq, chain_hash, created_at, key_id, signature FROM platform_checkpoints "
            "ORDER BY seq DESC LIMIT 1").fetchone())
        database = str(conn.info.dbname)
        staged, state, tool, size, sha256 = _write_object(control_url, destination, scope,
                                                          backup_id, dek, conn)
        conn.rollback()
    head = (int(head_row[0]), str(head_row[1])) if head_row else (0, "0" * 64)
    document = _document(
        backup_id=backup_id, kind="control", tenant_id=None, slug=CONTROL_SLUG,
        database=database, created_at=now, state=state, head=head, checkpoint=checkpoint,
        size=size, sha256=sha256, tool=tool,
        key={**key_doc, "wrapped_key": base64.b64encode(wrapped).decode("ascii")})
    try:
        with session_factory() as s:
            found = platform_signer(s, sealer)
        if found is None:
            raise BackupRefused("The platform chain has no checkpoint key to sign the manifest "
                                "(its chain is empty); no backup was made.")
        signer, public = found
        body = manifest.sign(document, key_id=signer.key_id, public_key=public,
                             signer=signer.sign)
        destination.publish(scope, backup_id, staged, body)
    except BaseException:
        destination.discard(staged)
        raise
    with session_factory() as s, s.begin():
        s.add(Backup(id=backup_id, tenant_id=None, tenant_slug=CONTROL_SLUG, created_at=now,
                     destination=destination.uri, size_bytes=size, sha256=sha256,
                     key_provider=key_provider, key_ref=key_ref, wrapped_key=wrapped))
        audit.record(s, BackupEvents.CREATED, actor=actor, target_type="control_plane",
                     target_id=database, details={
                         "backup_id": backup_id, "size": size, "sha256": sha256,
                         "destination": destination.uri, "audit_seq": head[0],
                         "key_provider": key_provider, "unpublished_swept": swept})
    return BackupResult(backup_id, CONTROL_SLUG, size, sha256, destination.uri,
                        sum(state.row_counts.values()), head[0])
