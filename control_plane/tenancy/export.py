"""Tenant export: every table of a tenant's database as JSON Lines in a zip, for its Owners and
Compliance members.

- ``do_request_export`` records an ``export_tenant`` job (at most ``EXPORTS_PER_HOUR`` per tenant
  in a rolling hour, counted from the ``jobs`` table, so the limit holds without Redis).
- ``build_export`` (run by the job) reads every table of ``TenantBase.metadata`` in one
  read-only, repeatable-read transaction: ``pii`` columns are decrypted, ``secret`` columns are
  replaced by ``"[redacted]"`` (and never decrypted), anything unclassified is treated as secret.
  ``manifest.json`` lists each file's row count and SHA-256. The zip is mode 0600.
- Downloads need the Owner or Compliance role *and* a signed link (5 minutes). An export is
  handed out once: ``do_take_download`` marks the job downloaded under a row lock in the same
  transaction as its audit event, and the route unlinks the file as soon as it is open, so the
  decrypted data does not stay on disk. A second download answers 410 Gone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import Select, Table, func, select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.db import utcnow
from control_plane.embedded import read_or_create_secret_key
from control_plane.exceptions import Conflict, Forbidden, Gone, NotFound, RateLimited
from control_plane.jobs import JobKinds, enqueue_job
from control_plane.models import Job, Tenant, User
from control_plane.settings import Settings
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.service import TenantAccess, actor_of
from tenant_runtime import permissions
from tenant_runtime.context import TenantContext
from tenant_runtime.models import TenantBase
from tenant_runtime.sealing import TenantSealer

EXPORTABLE_STATES = ("active", "suspended")
EXPORTS_PER_HOUR = 3
RATE_WINDOW = timedelta(hours=1)
LINK_SECONDS = 300
TOKEN_SALT = "magistrate.export"  # noqa: S105 - a signing salt, not a secret
REDACTED = "[redacted]"
FORMAT = 1
MANIFEST = "manifest.json"
ACTIVE_STATES = ("pending", "dispatched", "running")

Progress = Callable[[int, int, str], None]


class ExportGone(Gone):
    """410: the export was already downloaded, or its file is no longer on the server."""

    default_message = ("This export was already downloaded: a download works once. Request a "
                       "new export from the tenant's page.")


# ------------------------------------------------------------------------------- requesting


def do_request_export(s: Session, access: TenantAccess, *, acting_user: User) -> Job:
    """Queue an export of ``access.tenant`` in the caller's transaction."""
    tenant = access.tenant
    if not permissions.allows(access.role, "audit.export"):
        raise Forbidden("Only an Owner or a Compliance member of this tenant can export it.")
    if tenant.state not in EXPORTABLE_STATES:
        raise Conflict(f"Only an active or suspended tenant can be exported; this one is "
                       f"{tenant.state}.")
    # serialize requests of one tenant, so two at once cannot both pass the count
    s.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update(key_share=True))
    now: datetime = s.execute(select(func.now())).scalar_one()
    recent = list(s.scalars(
        select(Job.created_at).where(Job.kind == JobKinds.EXPORT_TENANT,
                                     Job.tenant_id == tenant.id,
                                     Job.created_at > now - RATE_WINDOW)
        .order_by(Job.created_at)))
    if len(recent) >= EXPORTS_PER_HOUR:
        frees_at = recent[len(recent) - EXPORTS_PER_HOUR] + RATE_WINDOW
        wait = max(1, int((frees_at - now).total_seconds() + 0.999))
        raise RateLimited(wait, f"This tenant was exported {EXPORTS_PER_HOUR} times in the last "
                                f"hour, the most allowed. The next export can be requested in "
                                f"{_minutes(wait)}.")
    job = enqueue_job(s, JobKinds.EXPORT_TENANT,
                      {"tenant_id": tenant.id, "requested_by": acting_user.id},
                      idempotency_key=f"export:{tenant.id}:{uuid.uuid4().hex}",
                      tenant_id=tenant.id, created_by=acting_user.id)
    audit.record(s, TenantEvents.EXPORT_REQUESTED, actor=actor_of(acting_user),
                 target_type="tenant", target_id=tenant.id, details={"job_id": job.id})
    return job


def _minutes(seconds: int) -> str:
    minutes = (seconds + 59) // 60
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


# ------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ExportView:
    """What the export pages show of one export job."""

    id: int
    state: str
    created_at: datetime
    requested_by: str | None
    progress: int
    progress_total: int
    progress_note: str | None
    error: str | None
    file: str | None
    rows: int | None
    downloaded_at: str | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def ready(self) -> bool:
        return self.state == "succeeded" and self.downloaded_at is None


def _view(job: Job, requested_by: str | None) -> ExportView:
    result = job.result or {}
    return ExportView(
        id=job.id, state=job.state, created_at=job.created_at, requested_by=requested_by,
        progress=job.progress, progress_total=job.progress_total,
        progress_note=job.progress_note, error=job.last_error,
        file=result.get("file"), rows=result.get("rows"),
        downloaded_at=result.get("downloaded_at"),
    )


def _export_jobs(tenant: Tenant) -> Select[Job, str]:
    return (select(Job, User.email).outerjoin(User, User.id == Job.created_by)
            .where(Job.kind == JobKinds.EXPORT_TENANT, Job.tenant_id == tenant.id))


def recent_exports(s: Session, access: TenantAccess, *, limit: int = 10) -> list[ExportView]:
    _require_export_role(access)
    rows = s.execute(_export_jobs(access.tenant).order_by(Job.id.desc()).limit(limit)).all()
    return [_view(job, email) for job, email in rows]


def access_export(s: Session, access: TenantAccess, job_id: int) -> ExportView:
    """One export of this tenant; another tenant's job id answers NotFound like a missing one."""
    _require_export_role(access)
    row = s.execute(_export_jobs(access.tenant).where(Job.id == job_id)).first()
    if row is None:
        raise NotFound("No such export.")
    return _view(row[0], row[1])


def _require_export_role(access: TenantAccess) -> None:
    if not permissions.allows(access.role, "audit.export"):
        raise Forbidden(f"Exports need the Owner or Compliance role in this tenant; yours is "
                        f"{access.role}.")


# ------------------------------------------------------------------------------- links


def signing_key(settings: Settings) -> str:
    """The secret key, resolved as ``control_plane.runtime.resolve_endpoints`` does."""
    if settings.secret_key is not None:
        return settings.secret_key.reveal()
    return read_or_create_secret_key(settings.home)


class DownloadLinks:
    """Signed download tokens: tenant id, job id and a random nonce, valid ``LINK_SECONDS``."""

    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret_key, salt=TOKEN_SALT)

    def issue(self, *, tenant_id: int, job_id: int) -> str:
        return self._serializer.dumps({"t": tenant_id, "j": job_id,
                                       "n": secrets.token_urlsafe(16)})

    def url(self, *, tenant_id: int, job_id: int) -> str:
        token = self.issue(tenant_id=tenant_id, job_id=job_id)
        return f"/tenants/{tenant_id}/exports/{job_id}/download?token={token}"

    def check(self, token: str, *, tenant_id: int, job_id: int) -> str:
        """The link's nonce, or Forbidden with the reason the link is refused."""
        if not token or len(token) > 512:
            raise Forbidden("This download link is incomplete. Open the export's page for a "
                            "fresh one.")
        try:
            data = self._serializer.loads(token, max_age=LINK_SECONDS)
        except SignatureExpired:
            raise Forbidden(f"This download link has expired: links last "
                            f"{LINK_SECONDS // 60} minutes. Open the export's page for a fresh "
                            f"one.") from None
        except BadSignature:
            raise Forbidden("This download link is not valid. Open the export's page for a "
                            "fresh one.") from None
        if (not isinstance(data, dict) or data.get("t") != tenant_id
                or data.get("j") != job_id or not isinstance(data.get("n"), str)):
            raise Forbidden("This download link belongs to another export.")
        return str(data["n"])


# ------------------------------------------------------------------------------- downloading


@dataclass
class ExportDownload:
    """An export handed out: the open file (read from it even after ``release``)."""

    name: str
    path: Path
    handle: IO[bytes]
    size: int
    rows: int

    def release(self) -> None:
        """Remove the file from disk; the open handle still reads it to the end."""
        self.path.unlink(missing_ok=True)

    def chunks(self, size: int = 64 * 1024) -> Iterator[bytes]:
        try:
            while chunk := self.handle.read(size):
                yield chunk
        finally:
            self.handle.close()


def do_take_download(s: Session, access: TenantAccess, job_id: int, *, nonce: str,
                     acting_user: User, out_dir: Path) -> ExportDownload:
    """Mark the export downloaded (once, under the job's row lock) and open its file. The
    caller commits, then calls ``release()`` and streams ``chunks()``."""
    _require_export_role(access)
    job = s.scalars(select(Job).where(Job.id == job_id, Job.kind == JobKinds.EXPORT_TENANT,
                                      Job.tenant_id == access.tenant.id)
                    .with_for_update().execution_options(populate_existing=True)).first()
    if job is None:
        raise NotFound("No such export.")
    if job.state != "succeeded":
        raise Conflict("This export is not ready yet; its page shows the progress.")
    result = dict(job.result or {})
    if result.get("downloaded_at"):
        raise ExportGone()
    name = str(result.get("file", ""))
    if not name or Path(name).name != name:
        raise ExportGone("This export has no file on the server. Request a new export.")
    path = out_dir / name
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise ExportGone("This export's file is no longer on the server. Request a new "
                         "export.") from None
    size = os.fstat(handle.fileno()).st_size
    job.result = {**result, "downloaded_at": utcnow().isoformat(),
                  "downloaded_by": acting_user.id, "download_nonce": nonce}
    job.updated_at = utcnow()
    audit.record(s, TenantEvents.EXPORT_DOWNLOADED, actor=actor_of(acting_user),
                 target_type="tenant", target_id=access.tenant.id,
                 details={"job_id": job.id, "rows": int(result.get("rows", 0)), "bytes": size})
    return ExportDownload(name, path, handle, size, int(result.get("rows", 0)))


# ------------------------------------------------------------------------------- building


def build_export(ctx: TenantContext, *, out_dir: Path, progress: Progress | None = None,
                 job_id: int | None = None) -> Path:
    """Write the tenant's export zip into ``out_dir`` (mode 0600) and return its path.

    Built by a job (``job_id``), the file name also carries the job, so a job that died and
    runs again leaves one file: the dead attempt's partial file is removed first, and a zip it
    had already published (without living to record it) is removed once the new one is.

    Raises TenantKeyUnavailable (before anything is read) when the tenant's key cannot be used,
    and SealedValueRefused when a sealed value does not open for its row."""
    _check_key(ctx.sealer)
    started = datetime.now(UTC)
    job = "" if job_id is None else f"-job{job_id}"
    name = f"tenant-{ctx.slug}-{started.strftime('%Y%m%dT%H%M%SZ')}{job}.zip"
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if job_id is not None:
        for leftover in out_dir.glob(f".tenant-{ctx.slug}-*{job}.zip.*.partial"):
            leftover.unlink(missing_ok=True)
    partial = out_dir / f".{name}.{secrets.token_hex(4)}.partial"
    tables = list(TenantBase.metadata.sorted_tables)
    files: dict[str, dict[str, Any]] = {}
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh, \
                zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf, \
                ctx.session() as s, s.begin():
            # one snapshot of the whole database, and nothing written by accident
            s.connection(execution_options={"isolation_level": "REPEATABLE READ",
                                            "postgresql_readonly": True})
            if progress:
                progress(0, len(tables), "starting")
            for done, table in enumerate(tables, start=1):
                member = f"{table.name}.jsonl"
                files[member] = _write_table(s, zf, member, table, ctx.sealer)
                if progress:
                    progress(done, len(tables), f"{table.name}: {files[member]['rows']} rows")
            manifest = {"tenant": ctx.slug, "tenant_id": ctx.tenant_id,
                        "created_at": _iso(started), "format": FORMAT, "files": files}
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        target = _publish(partial, out_dir, name)
        if job_id is not None:
            for earlier in out_dir.glob(f"tenant-{ctx.slug}-*{job}.zip"):
                if earlier != target:
                    earlier.unlink(missing_ok=True)
        return target
    finally:
        partial.unlink(missing_ok=True)


def read_manifest(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        manifest: dict[str, Any] = json.loads(zf.read(MANIFEST))
    return manifest


def _check_key(sealer: TenantSealer) -> None:
    """Fail closed up front: an export needs the customer's key even for a tenant that holds no
    sealed value yet (a revoked key means nothing is read)."""
    probe = sealer.seal(b"export", table="export", column="probe", row_key=0)
    sealer.open(probe, table="export", column="probe", row_key=0)


def _write_table(s: Session, zf: zipfile.ZipFile, member: str, table: Table,
                 sealer: TenantSealer) -> dict[str, Any]:
    digest = hashlib.sha256()
    rows = 0
    key_columns = list(table.primary_key.columns)
    query = select(table).order_by(*key_columns).execution_options(yield_per=500)
    with zf.open(member, "w", force_zip64=True) as entry:
        for row in s.execute(query):
            values = row._mapping
            # a composite key is joined with "|"; no sealed table has one today
            row_key = "|".join(str(values[c]) for c in key_columns)
            line = json.dumps(_encode_row(table, values, row_key, sealer), ensure_ascii=False,
                              separators=(",", ":")).encode() + b"\n"
            digest.update(line)
            entry.write(line)
            rows += 1
    return {"rows": rows, "sha256": digest.hexdigest()}


def _encode_row(table: Table, values: Mapping[Any, Any], row_key: str,
                sealer: TenantSealer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in table.columns:
        value = values[column]
        classification = column.info.get("classification")
        if value is None:
            out[column.name] = None
        elif classification == "plain":
            out[column.name] = _plain(value)
        elif classification == "pii":
            out[column.name] = sealer.open_text(bytes(value), table=table.name,
                                                column=column.name, row_key=row_key)
        else:  # "secret", or a column someone forgot to classify: never decrypted
            out[column.name] = REDACTED
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    return value


def _iso(value: datetime) -> str:
    """ISO-8601 in UTC with a ``Z`` (a naive timestamp is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _publish(partial: Path, out_dir: Path, name: str) -> Path:
    """Give the finished zip its name without ever replacing another export's file."""
    stem = name.removesuffix(".zip")
    for attempt in range(1, 100):
        target = out_dir / (name if attempt == 1 else f"{stem}-{attempt}.zip")
        try:
            os.link(partial, target)
        except FileExistsError:
            continue
        return target
    raise FileExistsError(f"too many exports named {name} in {out_dir}")
