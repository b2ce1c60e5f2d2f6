"""Rotating a tenant's keys, as ``magistrate keys rotate`` runs it (ops/KEY_ROTATION.md).

    rewrap      every non-retired data-key version is unwrapped with the KEK that wraps it now and
                wrapped again under the tenant's KEK (``new_key_ref`` or the current one): same
                version, same data key, new wrapped bytes. For a KMS, wrapping again picks up the
                key's current primary version. No sealed value changes.
    reencrypt   a new data-key version N+1, then every sealed value of the tenant's database
                moved to it in batches, then the old versions retired once nothing references them.

Crash and resume. A re-encryption keeps its state where the data is, never in a side table:
"in progress" means the tenant has more than one non-retired key version (the newest is the
target); each sealed value names its version in its header, so a rerun selects only the values not
yet at the target and continues. Retiring the old versions is the last step, and happens only
when no value references them. Two rotations of one tenant never run at once: both take the
tenant's advisory lock (``ROTATION_LOCK``, tenant id) on the control-plane database.

A row whose value does not open (a copy from another row, damage) is reported with its table and
primary key and skipped; the others move. An unusable KEK stops the run (fail closed).

Run by a job (``rotate_tenant_key``), both steps name the job in their audit events
(``job_id``) and, under the tenant's rotation lock, first look for their own event: a job that
died after a step committed and runs again skips that step instead of rewrapping twice or
starting a second re-encryption.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    LargeBinary,
    Table,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.orm import Session, sessionmaker

from control_plane import audit
from control_plane.audit import Actor
from control_plane.db import utcnow
from control_plane.exceptions import Conflict, InvalidInput, NotFound
from control_plane.jobs import JobKinds, enqueue_job
from control_plane.keys.providers import KeyProvider, KeyReferenceInvalid, KeyUnavailable
from control_plane.keys.registry import new_data_key, provider_for
from control_plane.models import Job, PlatformAuditEvent, Tenant, TenantKey, User
from control_plane.tenancy.connections import TenantConnections
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.service import actor_of
from tenant_runtime.exceptions import SealedValueRefused
from tenant_runtime.models import TenantBase
from tenant_runtime.sealing import HEADER, MAGIC, TenantSealer

ROTATION_LOCK = 74220  # advisory lock class; the second key is the tenant id
DEFAULT_BATCH_SIZE = 200
SEALED_CLASSES = ("pii", "secret")
ROTATABLE_STATES = ("active", "suspended")
AUDITED_FAILURES = 50  # failed rows named in the audit event; the count is always exact

Progress = Callable[[int, int], None]


# ------------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class RewrappedVersion:
    version: int
    from_provider: str
    from_key_ref: str


@dataclass
class RewrapReport:
    tenant_id: int
    provider: str
    key_ref: str  # the KEK that wraps every version afterwards
    versions: list[RewrappedVersion]
    dry_run: bool
    already_done: bool = False  # the job that asked for it had rewrapped already

    @property
    def key_ref_changed(self) -> bool:
        return any(v.from_key_ref != self.key_ref or v.from_provider != self.provider
                   for v in self.versions)


@dataclass(frozen=True)
class FailedRow:
    table: str
    row_key: str
    reason: str


@dataclass
class ReencryptReport:
    tenant_id: int
    from_versions: list[int]
    to_version: int
    resumed: bool  # an unfinished re-encryption was continued (else ``to_version`` is new)
    dry_run: bool
    rows_total: int = 0  # rows with a value not at ``to_version`` when the pass started
    rows_moved: int = 0  # (dry run: rows that would move)
    values_moved: int = 0
    failed: list[FailedRow] = field(default_factory=list)
    retired_versions: list[int] = field(default_factory=list)
    finished: bool = False  # the pass reached the end of every table (not stopped early)
    already_done: bool = False  # the job that asked for it had finished it already


# ------------------------------------------------------------------------------- locking


def _lock_params(tenant_id: int) -> dict[str, int]:
    return {"lock": ROTATION_LOCK, "tenant": tenant_id}


def _busy(tenant_id: int) -> Conflict:
    return Conflict(f"Another key rotation of tenant {tenant_id} is running; wait for it to "
                    "finish, then run this one again.")


@contextmanager
def rotation_lock(session_factory: sessionmaker[Session], tenant_id: int) -> Iterator[None]:
    """Hold the tenant's rotation lock for the duration of a multi-transaction rotation. It is
    a session-level advisory lock on a connection of its own: a crash drops the connection and
    with it the lock. Raises Conflict when another rotation holds it."""
    with session_factory() as s:
        conn = s.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        got = conn.scalar(text("SELECT pg_try_advisory_lock(CAST(:lock AS integer), "
                               "CAST(:tenant AS integer))"), _lock_params(tenant_id))
        if not got:
            raise _busy(tenant_id)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(CAST(:lock AS integer), "
                              "CAST(:tenant AS integer))"), _lock_params(tenant_id))


def _lock_for_transaction(s: Session, tenant_id: int) -> None:
    got = s.scalar(text("SELECT pg_try_advisory_xact_lock(CAST(:lock AS integer), "
                        "CAST(:tenant AS integer))"), _lock_params(tenant_id))
    if not got:
        raise _busy(tenant_id)


def _rotatable(s: Session, tenant_id: int) -> Tenant:
    tenant = s.get(Tenant, tenant_id)
    if tenant is None or tenant.state == "deleted":
        raise NotFound("No such tenant.")
    if tenant.state not in ROTATABLE_STATES:
        raise Conflict(f"Tenant {tenant.slug} is {tenant.state}; only an active or suspended "
                       "tenant's keys can be rotated.")
    return tenant


def job_step_done(s: Session, tenant_id: int, event_type: str, job_id: int,
                  **details: Any) -> bool:
    """Whether job ``job_id`` already recorded ``event_type`` (with ``details``) for the tenant."""
    return s.scalar(select(exists().where(
        PlatformAuditEvent.event_type == event_type,
        PlatformAuditEvent.target_type == "tenant",
        PlatformAuditEvent.target_id == str(tenant_id),
        PlatformAuditEvent.details.contains({"job_id": job_id, **details})))) is True


def _job(job_id: int | None) -> dict[str, int]:
    return {} if job_id is None else {"job_id": job_id}


def _unwrap(providers: Mapping[str, KeyProvider], key: TenantKey) -> bytes:
    return provider_for(providers, key.provider).unwrap(
        key.wrapped_dek, tenant_id=str(key.tenant_id), key_ref=key.key_ref)


# ------------------------------------------------------------------------------- rewrap


def rewrap(s: Session, tenant: Tenant, providers: Mapping[str, KeyProvider], *,
           new_key_ref: str | None = None, dry_run: bool = False,
           actor: Actor = audit.SYSTEM, job_id: int | None = None) -> RewrapReport:
    """Wrap every non-retired data-key version again under the tenant's KEK (``new_key_ref``
    when given, which then becomes the tenant's key), in the caller's transaction.

    Every version is unwrapped, wrapped and checked to unwrap again before any row changes, so
    an unusable old or new KEK (``KeyUnavailable``) leaves everything as it was. Running it twice
    is harmless: the second run wraps the same data keys again; for a job (``job_id``) that
    already rewrapped, the second run changes nothing."""
    _lock_for_transaction(s, tenant.id)
    tenant = _rotatable(s, tenant.id)
    key_ref = new_key_ref.strip() if new_key_ref is not None else tenant.key_ref
    if job_id is not None and not dry_run and job_step_done(
            s, tenant.id, TenantEvents.KEY_ROTATED, job_id):
        return RewrapReport(tenant.id, tenant.key_provider, tenant.key_ref, [], dry_run,
                            already_done=True)
    target = provider_for(providers, tenant.key_provider)
    try:
        target.check_reference(key_ref)
    except KeyReferenceInvalid as exc:
        raise InvalidInput(str(exc)) from None
    keys = list(s.scalars(select(TenantKey).where(
        TenantKey.tenant_id == tenant.id, TenantKey.retired_at.is_(None))
        .order_by(TenantKey.version).with_for_update()))
    if not keys:
        raise Conflict(f"Tenant {tenant.slug} has no data key yet; it is created when the "
                       "tenant is provisioned.")
    rewrapped: list[tuple[TenantKey, bytes]] = []
    for key in keys:
        dek = _unwrap(providers, key)
        wrapped = target.wrap(dek, tenant_id=str(tenant.id), key_ref=key_ref)
        if target.unwrap(wrapped, tenant_id=str(tenant.id), key_ref=key_ref) != dek:
            raise KeyUnavailable(target.name, "the rewrapped data key did not unwrap to the "
                                              "same key; nothing was changed")
        rewrapped.append((key, wrapped))
    report = RewrapReport(tenant.id, tenant.key_provider, key_ref,
                          [RewrappedVersion(k.version, k.provider, k.key_ref) for k in keys],
                          dry_run)
    if dry_run:
        return report
    for key, wrapped in rewrapped:
        key.provider, key.key_ref, key.wrapped_dek = tenant.key_provider, key_ref, wrapped
    previous_ref = tenant.key_ref
    if previous_ref != key_ref:
        tenant.key_ref = key_ref
        tenant.updated_at = utcnow()
    audit.record(s, TenantEvents.KEY_ROTATED, actor=actor, target_type="tenant",
                 target_id=tenant.id, details={
                     "versions": [k.version for k in keys], "rewrapped": len(keys),
                     "provider": tenant.key_provider, "key_ref": key_ref,
                     "key_ref_changed": previous_ref != key_ref, **_job(job_id)})
    s.flush()
    return report


# ------------------------------------------------------------------------------- reencrypt


@dataclass(frozen=True)
class SealedTable:
    """A tenant table with sealed columns; its single primary-key column is the row key of
    the sealed values' associated data."""

    table: Table
    key: Column[Any]
    columns: tuple[Column[Any], ...]


def sealed_tables() -> list[SealedTable]:
    found = []
    for table in TenantBase.metadata.sorted_tables:
        columns = tuple(c for c in table.columns
                        if c.info.get("classification") in SEALED_CLASSES)
        if not columns:
            continue
        primary = list(table.primary_key.columns)
        if len(primary) != 1:
            raise RuntimeError(f"tenant table {table.name} has sealed columns but not a single-"
                               "column primary key, so its sealed values have no row key")
        found.append(SealedTable(table, primary[0], columns))
    return found


def header(version: int) -> bytes:
    """The first bytes of every value sealed under ``version``."""
    return HEADER.pack(MAGIC, version)


def _prefix(column: Column[Any]) -> ColumnElement[Any]:
    return func.substring(column, 1, HEADER.size, type_=LargeBinary)


def _not_at(st: SealedTable, version: int) -> ColumnElement[bool]:
    """Rows with at least one value not sealed under ``version`` (malformed ones included)."""
    return or_(*[and_(c.is_not(None), _prefix(c) != header(version)) for c in st.columns])


def _version_of(blob: bytes) -> int | None:
    if len(blob) < HEADER.size:
        return None
    magic, version = HEADER.unpack_from(blob)
    return int(version) if magic == MAGIC else None


class _RowRefused(Exception):
    pass


@dataclass
class _Plan:
    tenant_id: int
    from_versions: list[int]
    to_version: int
    resumed: bool
    known_versions: frozenset[int]
    sealer: TenantSealer


def reencrypt(session_factory: sessionmaker[Session], tenant_id: int,
              connections: TenantConnections, *, batch_size: int = DEFAULT_BATCH_SIZE,
              dry_run: bool = False, progress: Progress | None = None,
              stop_after_batches: int | None = None,
              actor: Actor = audit.SYSTEM, job_id: int | None = None) -> ReencryptReport:
    """Move every sealed value of the tenant to a new data-key version (see the module
    docstring for crash and resume). Owns its transactions: one for the new version, one per
    batch of ``batch_size`` rows in the tenant database, one to retire the old versions.

    ``stop_after_batches`` ends the run after that many batches, as a crash there would (for
    the resumability tests). ``dry_run`` opens every value that would move, to count the rows
    and find those that would fail, and writes nothing. For a job (``job_id``) that already
    finished its re-encryption, nothing is done (``already_done``)."""
    if batch_size < 1:
        raise InvalidInput("The batch size must be at least 1.")
    with rotation_lock(session_factory, tenant_id):
        if job_id is not None and not dry_run:
            with session_factory() as s:
                if job_step_done(s, tenant_id, TenantEvents.KEY_REENCRYPTED, job_id,
                                 phase="finished"):
                    return ReencryptReport(tenant_id, [], 0, False, dry_run, finished=True,
                                           already_done=True)
        plan = _begin(session_factory, tenant_id, connections, dry_run=dry_run, actor=actor,
                      job_id=job_id)
        report = ReencryptReport(tenant_id, plan.from_versions, plan.to_version,
                                 plan.resumed, dry_run)
        with session_factory() as s:
            engine = connections.engine(_rotatable(s, tenant_id))
        tables = sealed_tables()
        with engine.connect() as conn:
            present = [st for st in tables if conn.scalar(
                select(func.to_regclass(st.table.name))) is not None]
            report.rows_total = sum(conn.scalar(
                select(func.count()).select_from(st.table)
                .where(_not_at(st, plan.to_version))) or 0 for st in present)
        tick = progress or (lambda done, total: None)
        tick(0, report.rows_total)
        done = batches = 0
        for st in present:
            last: Any = None
            while True:
                with engine.begin() as conn:
                    seen = _move_batch(conn, st, plan, report, after=last, limit=batch_size)
                if not seen:
                    break
                last = seen[-1]
                done += len(seen)
                batches += 1
                tick(done, max(done, report.rows_total))
                if stop_after_batches is not None and batches >= stop_after_batches:
                    return report
                if len(seen) < batch_size:
                    break
        report.finished = True
        if not dry_run:
            with engine.connect() as conn:
                unreferenced = [v for v in plan.from_versions
                                if not _referenced(conn, present, v)]
            _finish(session_factory, plan, report, unreferenced, actor=actor, job_id=job_id)
            connections.dek_cache.forget(tenant_id)
        return report


def _begin(session_factory: sessionmaker[Session], tenant_id: int,
           connections: TenantConnections, *, dry_run: bool, actor: Actor,
           job_id: int | None = None) -> _Plan:
    """The target version: the newest non-retired one when a re-encryption is unfinished,
    otherwise a new version N+1 (not created on a dry run). Every non-retired data key is
    unwrapped first, so an unusable KEK stops the run before anything is written."""
    providers = connections.providers
    with session_factory() as s, s.begin():
        tenant = _rotatable(s, tenant_id)
        keys = list(s.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant.id)
                              .order_by(TenantKey.version).with_for_update()))
        live = [k for k in keys if k.retired_at is None]
        if not live:
            raise Conflict(f"Tenant {tenant.slug} has no data key yet; it is created when the "
                           "tenant is provisioned.")
        deks = {k.version: _unwrap(providers, k) for k in live}
        wrapped = {k.version: k for k in keys}
        resumed = len(live) > 1
        if resumed:  # an unfinished re-encryption: continue towards its target
            target = live[-1].version
            from_versions = [k.version for k in live[:-1]]
        else:
            target = keys[-1].version + 1
            from_versions = [live[0].version]
            if not dry_run:
                dek = new_data_key()
                provider = provider_for(providers, tenant.key_provider)
                blob = provider.wrap(dek, tenant_id=str(tenant.id), key_ref=tenant.key_ref)
                s.add(TenantKey(tenant_id=tenant.id, version=target,
                                provider=tenant.key_provider, key_ref=tenant.key_ref,
                                wrapped_dek=blob))
                deks[target] = dek
                audit.record(s, TenantEvents.KEY_REENCRYPTED, actor=actor, target_type="tenant",
                             target_id=tenant.id, details={
                                 "phase": "started", "from_versions": from_versions,
                                 "to_version": target, **_job(job_id)})
        tenant_key = str(tenant.id)
        # retired versions stay readable, should a value still name one
        retired = {v: (k.provider, k.key_ref, k.wrapped_dek) for v, k in wrapped.items()
                   if v not in deks}

    def key_for(version: int) -> bytes:
        if version not in deks:
            provider_name, key_ref, blob = retired[version]
            deks[version] = provider_for(providers, provider_name).unwrap(
                blob, tenant_id=tenant_key, key_ref=key_ref)
        return deks[version]

    known = frozenset(deks) | frozenset(retired)
    return _Plan(tenant_id, from_versions, target, resumed, known,
                 TenantSealer(tenant_key, target, key_for))


def _move_batch(conn: Connection, st: SealedTable, plan: _Plan, report: ReencryptReport, *,
                after: Any, limit: int) -> list[Any]:
    """Move one batch of rows (locked FOR UPDATE) past ``after`` in primary-key order; returns
    the primary keys seen, failed rows included."""
    query = select(st.key, *st.columns).where(_not_at(st, plan.to_version))
    if after is not None:
        query = query.where(st.key > after)
    query = query.order_by(st.key).limit(limit)
    if not report.dry_run:
        query = query.with_for_update()
    rows = conn.execute(query).all()
    updates = []
    for row in rows:
        row_key, blobs = row[0], row[1:]
        try:
            values, moved = _move_row(st, plan, row_key, blobs, seal=not report.dry_run)
        except _RowRefused as exc:
            report.failed.append(FailedRow(st.table.name, str(row_key), str(exc)))
            continue
        report.rows_moved += 1
        report.values_moved += moved
        updates.append({"rotation_row_key": row_key,
                        **{f"v_{c.name}": v for c, v in zip(st.columns, values, strict=True)}})
    if updates and not report.dry_run:
        conn.execute(st.table.update().where(st.key == bindparam("rotation_row_key"))
                     .values({c.name: bindparam(f"v_{c.name}") for c in st.columns}), updates)
    return [row[0] for row in rows]


def _move_row(st: SealedTable, plan: _Plan, row_key: Any, blobs: Sequence[bytes | None], *,
              seal: bool) -> tuple[list[bytes | None], int]:
    values: list[bytes | None] = []
    moved = 0
    table = st.table.name
    for column, blob in zip(st.columns, blobs, strict=True):
        version = None if blob is None else _version_of(blob)
        if blob is None or version == plan.to_version:
            values.append(blob)
            continue
        if version is None:
            raise _RowRefused(f"{column.name}: not a sealed value")
        if version not in plan.known_versions:
            raise _RowRefused(f"{column.name}: sealed under data key version {version}, "
                              "which this tenant does not have")
        try:
            plain = plan.sealer.open(blob, table=table, column=column.name, row_key=row_key)
        except SealedValueRefused:
            raise _RowRefused(f"{column.name}: does not open for this row (copied from another "
                              "row or tenant, or damaged)") from None
        values.append(plan.sealer.seal(plain, table=table, column=column.name, row_key=row_key)
                      if seal else blob)
        moved += 1
    return values, moved


def _referenced(conn: Connection, tables: Sequence[SealedTable], version: int) -> bool:
    prefix = header(version)
    return any(conn.scalar(select(exists().where(_prefix(c) == prefix).select_from(st.table)))
               for st in tables for c in st.columns)


def _finish(session_factory: sessionmaker[Session], plan: _Plan, report: ReencryptReport,
            unreferenced: list[int], *, actor: Actor, job_id: int | None = None) -> None:
    with session_factory() as s, s.begin():
        keys = s.scalars(select(TenantKey).where(
            TenantKey.tenant_id == plan.tenant_id, TenantKey.version.in_(unreferenced),
            TenantKey.retired_at.is_(None)).with_for_update())
        now = utcnow()
        for key in keys:
            key.retired_at = now
            report.retired_versions.append(key.version)
        report.retired_versions.sort()
        audit.record(s, TenantEvents.KEY_REENCRYPTED, actor=actor, target_type="tenant",
                     target_id=plan.tenant_id, details={
                         "phase": "finished", "from_versions": plan.from_versions,
                         "to_version": plan.to_version, "rows_moved": report.rows_moved,
                         "values_moved": report.values_moved,
                         "rows_failed": len(report.failed),
                         "failed_rows": [{"table": f.table, "row_key": f.row_key}
                                         for f in report.failed[:AUDITED_FAILURES]],
                         "retired_versions": report.retired_versions, **_job(job_id)})


def refuse_while_rotating(s: Session, tenant: Tenant) -> None:
    """Conflict while a rotation job of ``tenant`` is queued or running."""
    unfinished = s.scalar(select(Job.id).where(
        Job.kind == JobKinds.ROTATE_TENANT_KEY, Job.tenant_id == tenant.id,
        Job.state.not_in(("succeeded", "failed"))))
    if unfinished is not None:
        raise Conflict(f"A key rotation of this tenant is already queued or running (job "
                       f"{unfinished}); the jobs page shows its progress.")


def request_rotation(s: Session, tenant: Tenant, *, reencrypt: bool, acting_user: User,
                     approval_id: str | None = None) -> Job:
    """Queue a ``rotate_tenant_key`` job (the dashboard's button), audited as
    ``key.rotation_requested``. One rotation of a tenant at a time: Conflict while one is queued
    or running. The tenant's row is locked first, so two presses at once make one job."""
    s.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    refuse_while_rotating(s, tenant)
    earlier = s.scalar(select(func.count()).select_from(Job).where(
        Job.kind == JobKinds.ROTATE_TENANT_KEY, Job.tenant_id == tenant.id)) or 0
    job = enqueue_job(s, JobKinds.ROTATE_TENANT_KEY,
                      {"tenant_id": tenant.id, "reencrypt": reencrypt},
                      idempotency_key=f"rotate-tenant-key:{tenant.id}:{earlier + 1}",
                      tenant_id=tenant.id, created_by=acting_user.id)
    audit.record(s, TenantEvents.KEY_ROTATION_REQUESTED, actor=actor_of(acting_user),
                 target_type="tenant", target_id=tenant.id,
                 details={"job_id": job.id, "reencrypt": reencrypt,
                          "approval_request": approval_id})
    return job
