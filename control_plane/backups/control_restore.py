"""Restoring a control-plane backup into a new database (``magistrate restore control --backup
ID``), next to the running one on the same server; the operator then points
``MAGISTRATE_DATABASE_URL`` at it (the command prints the URL). Nothing running is touched.

In order, refusing with one sentence at the first failure and dropping the new database when it
exists:

    1. the manifest is this backup's, of the control plane, and its signature verifies against
       a platform checkpoint key the running control plane holds; a control plane that holds
       none (an empty database after a loss) checks it against the key the manifest names, and
       step 5 then requires that key among the restored database's own platform keys;
    2. the object's size and SHA-256 match the manifest (and the running control plane's record
       of the backup, when it has one), before any decryption;
    3. the data key unwraps: through the platform key provider the manifest names, or, for a
       backup made to age recipients, with an identity from ``--age-identity FILE``;
    4. ``pg_restore`` (one transaction) of the decrypted stream, through a pipe;
    5. the restored platform audit chain verifies link by link, its head and last checkpoint are
       the manifest's, every checkpoint's signature verifies, and every table has the
       manifest's row count."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from control_plane import audit
from control_plane.audit_checkpoints import PLATFORM_TENANT_ID, platform_public_keys
from control_plane.backups import age, dump, manifest
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
from control_plane.backups.restore import digest_of, drop_database
from control_plane.backups.service import PLATFORM_KEY_CONTEXT
from control_plane.db import make_engine, make_session_factory
from control_plane.keys.providers import KeyProvider, KeyUnavailable
from control_plane.keys.registry import provider_for
from control_plane.models import (
    Backup,
    PlatformAuditHead,
    PlatformCheckpoint,
    PlatformCheckpointKey,
)
from control_plane.tenancy import database
from tenant_runtime.checkpoints import verify_checkpoint


@dataclass(frozen=True)
class ControlRestoreResult:
    backup_id: str
    database: str
    url: str  # the running control plane's URL with the new database's name (password hidden)
    rows: int
    audit_seq: int
    signature_checked_by: str  # "the running control plane" or "the restored database"
    seconds: float


def _running(session_factory: sessionmaker[Session], backup_id: str
             ) -> tuple[dict[str, str], tuple[int, str] | None]:
    """The running control plane's platform keys and its record of the backup (size, digest);
    nothing when its database is empty (restoring after a loss)."""
    try:
        with session_factory() as s:
            keys = platform_public_keys(s)
            row = s.get(Backup, backup_id)
            return keys, ((row.size_bytes, row.sha256) if row is not None else None)
    except SQLAlchemyError:
        return {}, None


def _data_key(doc: Mapping[str, object], backup_id: str, providers: Mapping[str, KeyProvider],
              age_identity: Path | None) -> bytes:
    key = doc.get("key")
    if not isinstance(key, dict) or not isinstance(key.get("wrapped_key"), str):
        raise BackupUnreadable(f"The manifest of backup {backup_id} carries no wrapped data "
                               "key; nothing was restored.")
    try:
        wrapped = base64.b64decode(key["wrapped_key"], validate=True)
    except (ValueError, binascii.Error):
        raise BackupUnreadable(f"The wrapped data key in the manifest of backup {backup_id} "
                               "is not base64; nothing was restored.") from None
    if key.get("provider") == age.PROVIDER:
        if age_identity is None:
            raise BackupKeyUnavailable(f"Backup {backup_id} was made to age recipients; give "
                                       "--age-identity FILE with one of their identities. "
                                       "Nothing was restored.")
        return age.unwrap(wrapped, age.read_identities(age_identity), where=age_identity)
    try:
        return provider_for(providers, str(key.get("provider"))).unwrap(
            wrapped, tenant_id=PLATFORM_KEY_CONTEXT, key_ref=str(key.get("key_ref")))
    except KeyUnavailable as exc:
        raise BackupKeyUnavailable(f"Platform backup key unavailable ({exc.provider}: "
                                   f"{exc.reason}); the backup cannot be decrypted and "
                                   "nothing was restored.") from None


def _create(control_url: str, name: str) -> tuple[str, int]:
    """The new database, owned by the control plane's own role; its owner and server major."""
    with psycopg.connect(database.libpq_url(database.url_for(control_url,
                                                             database="postgres")),
                         autocommit=True, connect_timeout=10) as conn:
        if database.database_exists(conn, name):
            raise BackupRefused(f"The database {name} exists already; nothing was restored.")
        owner = str(conn.info.user)
        db = sql.Identifier(name)
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
            db, sql.Identifier(owner)))
        with database.privileges_lock(conn):
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        return owner, dump.server_major(conn)


def check_restored_control(s: Session, doc: Mapping[str, object], signer: tuple[str, str]
                           ) -> int:
    """The checks of step 5 on the restored control database; returns the rows restored."""
    problems = audit.verify_chain(s)
    if problems:
        raise RestoreCheckFailed(f"The restored platform audit chain does not verify "
                                 f"({problems[0]}).")
    head = doc.get("audit_head")
    if not isinstance(head, dict):
        raise RestoreCheckFailed("The manifest has no audit head.")
    got = s.get(PlatformAuditHead, 1)
    got_head = (int(got.seq), str(got.chain_hash)) if got else (0, "0" * 64)
    if got_head != (head["seq"], head["chain_hash"]):
        raise RestoreCheckFailed(f"The restored platform chain ends at seq {got_head[0]}, the "
                                 f"manifest says {head['seq']}.")
    keys = {k.key_id: k.public_key for k in s.scalars(select(PlatformCheckpointKey))}
    if keys.get(signer[0]) != signer[1]:
        raise RestoreCheckFailed("The key that signed the manifest is not a platform "
                                 "checkpoint key of the restored database.")
    checkpoints = list(s.scalars(select(PlatformCheckpoint).order_by(PlatformCheckpoint.seq)))
    for c in checkpoints:
        public = keys.get(c.key_id)
        if public is None or not verify_checkpoint(public, PLATFORM_TENANT_ID, c.seq,
                                                   c.chain_hash, c.created_at, c.signature):
            raise RestoreCheckFailed(f"The restored platform checkpoint at seq {c.seq} does "
                                     "not verify.")
    wanted_cp = doc.get("last_checkpoint")
    if isinstance(wanted_cp, dict):
        last = checkpoints[-1] if checkpoints else None
        if last is None or (last.seq, last.chain_hash, last.signature) != (
                wanted_cp["seq"], wanted_cp["chain_hash"], wanted_cp["signature"]):
            raise RestoreCheckFailed("The restored last platform checkpoint is not the "
                                     "manifest's.")
    conn = s.connection().connection.driver_connection
    counts = dump.count_rows(conn)  # type: ignore[arg-type]
    wanted = doc.get("row_counts")
    if not isinstance(wanted, dict):
        raise RestoreCheckFailed("The manifest has no row counts.")
    if counts != wanted:
        diff = sorted(t for t in set(counts) | set(wanted) if counts.get(t) != wanted.get(t))
        raise RestoreCheckFailed(f"Row counts differ from the manifest in {', '.join(diff)}.")
    return sum(counts.values())


def restore_control(session_factory: sessionmaker[Session], control_url: str,
                    providers: Mapping[str, KeyProvider], destination: Destination,
                    backup_id: str, *, actor: audit.Actor, age_identity: Path | None = None
                    ) -> ControlRestoreResult:
    """Restore control-plane backup ``backup_id`` into a new database (module docstring)."""
    started = time.monotonic()
    backup_id = backup_id.strip()
    scope = scope_of(None)
    found = manifest.parse(destination.read_manifest(scope, backup_id), backup_id)
    doc = found.document
    if doc.get("kind") != "control":
        raise BackupUnreadable(f"Backup {backup_id} is not a control-plane backup; nothing "
                               "was restored.")
    known, recorded = _running(session_factory, backup_id)
    signature = doc["signature"]
    signer = (str(signature.get("key_id")), str(signature.get("public_key")))
    if known:
        manifest.verify(found, known)
        checked_by = "the running control plane"
    else:
        manifest.verify(found, {signer[0]: signer[1]})
        checked_by = "the restored database"
    if recorded is not None and recorded != (found.size, found.sha256):
        raise BackupUnreadable(f"The manifest of backup {backup_id} does not describe the "
                               "backup the platform recorded; nothing was restored.")
    name = f"{doc.get('database') or 'magistrate'}_r{datetime.now(UTC):%Y%m%d%H%M%S}"
    with destination.open_object(scope, backup_id) as fh:
        size, digest = digest_of(fh)
        if (size, digest) != (found.size, found.sha256):
            raise BackupUnreadable(f"The encrypted object of backup {backup_id} does not match "
                                   f"its manifest (size {size} vs {found.size}, or its SHA-256 "
                                   "differs); nothing was decrypted or restored.")
        key = _data_key(doc, backup_id, providers, age_identity)
        owner, major = _create(control_url, name)
        try:
            dump.run_restore(control_url, name, owner, major, decrypt_chunks(fh, key, backup_id))
        except BaseException:
            drop_database(control_url, name)
            raise
    new_url = database.url_for(control_url, database=name)
    try:
        engine = make_engine(new_url, pool_size=1)
        try:
            with make_session_factory(engine)() as rs:
                rows = check_restored_control(rs, doc, signer)
        finally:
            engine.dispose()
    except BackupError as exc:
        drop_database(control_url, name)
        raise RestoreCheckFailed(f"{exc.message} The new database was dropped.") from None
    head = doc["audit_head"]
    if known:
        with session_factory() as s, s.begin():
            audit.record(s, BackupEvents.CONTROL_RESTORED, actor=actor,
                         target_type="control_plane", target_id=name,
                         details={"backup_id": backup_id, "database": name, "rows": rows})
    from sqlalchemy.engine import make_url

    shown = make_url(new_url).render_as_string(hide_password=True)
    return ControlRestoreResult(backup_id, name, shown, rows, int(head["seq"]), checked_by,
                                time.monotonic() - started)
