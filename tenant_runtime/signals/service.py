"""Signal sources and imports.

Sources: an Owner or Admin adds one (a name and a kind) and removes it, which removes its
signals, imports and observations with it (audited with the counts). Nothing is imported from a
source until an Owner grants it (minimization/consent.py).

An import (``run_import``) reads one exported file as a stream and is made of short, visible
transactions, because a long file must neither hold locks others wait for nor leave half of
itself behind:

1. refused (the source has no grant): ``Source.refused_count`` goes up and
   ``signals.import_refused`` is audited in a transaction of their own, then ``ImportRefused``
   (403) is raised; nothing is read from the file;
2. the ``SignalImport`` row (state ``running``) and the tenant's pseudonym key, committed, so a
   page can show the import while it runs;
3. every row, in ONE transaction: valid rows are inserted in batches (ids drawn from the
   table's sequence first, so each title is sealed with its row's id before the insert; a row
   whose ``source_id + external_id`` exists is skipped and counted as a duplicate); rejected
   rows are counted, the first ``REJECTS_KEPT`` kept with their row number and reason. Every
   ``PROGRESS_ROWS`` rows, ``bytes_read`` is committed by a separate short transaction. At the
   end the extractor writes its observations (minimization/observations.py), the import row
   gets its counts and ``done``, and ``signals.imported`` is audited: last, because the audit
   chain's lock is held until commit. The transaction holds an advisory lock on the import
   (``IMPORT_LOCK``) throughout: Postgres releases it when the transaction ends, and also when
   the importing process dies, which is how ``fail_abandoned_imports`` (a worker task) tells a
   running import from one whose process is gone;
4. on a whole-file failure (FileUnreadable, the size limit, a grant withdrawn meanwhile) the
   row transaction is rolled back and the import row ends ``failed`` with the error, in its
   own transaction, audited as ``signals.import_failed``.

The person in a row is stored only as a pseudonym (minimization/pseudonyms.py); the title only
sealed, and as its template (fingerprint.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantError, TenantInvalidInput, TenantNotFound
from tenant_runtime.minimization.models import Observation
from tenant_runtime.minimization.observations import do_extract, extraction_allowed
from tenant_runtime.minimization.pseudonyms import Pseudonymizer, pseudonymizer_for
from tenant_runtime.personas.scope import Scope
from tenant_runtime.signals.fingerprint import template_of
from tenant_runtime.signals.importers import (
    FORMATS,
    FileTooLarge,
    FileUnreadable,
    Row,
    RowRejected,
    SignalFile,
)
from tenant_runtime.signals.importers.base import TEAM_MAX_CHARS
from tenant_runtime.signals.models import SOURCE_KINDS, Signal, SignalImport, Source

TABLE = "signals"
BATCH_ROWS = 1000
PROGRESS_ROWS = 5000
EXTRACT_CHUNK = 5000
REJECTS_KEPT = 1000
RECENT_IMPORTS = 20
KIND_LABELS = {"cloudwatch": "CloudWatch alarm history", "jira": "Jira issues",
               "github_actions": "GitHub Actions workflow runs", "logs": "Log lines"}

Progress = Callable[[int, int, int], None]  # (bytes read, bytes in all or 0, rows seen)


class SignalEvents:
    SOURCE_ADDED = "signals.source_added"
    SOURCE_REMOVED = "signals.source_removed"
    IMPORTED = "signals.imported"
    IMPORT_FAILED = "signals.import_failed"
    IMPORT_REFUSED = "signals.import_refused"


class ImportRefused(TenantError):
    """The source has no grant (403): nothing was read or written but the refusal's count."""

    status_code = 403


# -- sources -------------------------------------------------------------------------------


def list_sources(s: Session, scope: Scope) -> list[Source]:
    return list(s.scalars(select(Source).where(scope.source_filter(Source.id))
                          .order_by(Source.name)))


def access_source(s: Session, scope: Scope, source_id: int) -> Source:
    """A source the caller may see; TenantNotFound for a missing one and one out of scope."""
    source = s.get(Source, source_id)
    if source is None or not scope.sees_source(source.id):
        raise TenantNotFound("There is no such source.")
    return source


def source_named(s: Session, scope: Scope, name: str) -> Source:
    source = s.scalars(select(Source).where(Source.name == name.strip())).first()
    if source is None or not scope.sees_source(source.id):
        raise TenantNotFound(f"There is no source named {name.strip()!r}.")
    return source


def do_add_source(s: Session, ctx: TenantContext, *, name: str, kind: str) -> Source:
    """Add a source (without a grant); the acting user is ``ctx.actor``."""
    name = " ".join(name.split())
    if not name or len(name) > 100:
        raise TenantInvalidInput("A source needs a name of 1 to 100 characters.")
    if kind not in SOURCE_KINDS:
        raise TenantInvalidInput(f"The kind must be one of {', '.join(SOURCE_KINDS)}.")
    source = Source(name=name, kind=kind)
    try:
        with s.begin_nested():
            s.add(source)
            s.flush()
    except IntegrityError:
        raise TenantInvalidInput(f"A source named {name!r} already exists; choose another "
                                 "name.") from None
    audit.record(s, SignalEvents.SOURCE_ADDED, actor=ctx.actor, target_type="source",
                 target_id=source.id, details={"name": name, "kind": kind})
    return source


def do_remove_source(s: Session, ctx: TenantContext, source_id: int) -> dict[str, int]:
    """Remove a source with its signals, imports and observations (the foreign keys cascade);
    the counts removed, which the audit event records too."""
    source = s.scalars(select(Source).where(Source.id == source_id).with_for_update()).first()
    if source is None:
        raise TenantNotFound("There is no such source.")
    counts = {
        "signals": _count(s, Signal, Signal.source_id == source.id),
        "observations": _count(s, Observation, Observation.source_id == source.id),
        "imports": _count(s, SignalImport, SignalImport.source_id == source.id),
    }
    details: dict[str, Any] = {"name": source.name, "kind": source.kind, **counts}
    s.delete(source)
    s.flush()
    audit.record(s, SignalEvents.SOURCE_REMOVED, actor=ctx.actor, target_type="source",
                 target_id=source_id, details=details)
    return counts


def _count(s: Session, model: type[Any], where: Any) -> int:
    return int(s.scalar(select(func.count()).select_from(model).where(where)) or 0)


# -- imports: reading ----------------------------------------------------------------------


def recent_imports(s: Session, scope: Scope, limit: int = RECENT_IMPORTS
                   ) -> list[tuple[SignalImport, str]]:
    """The latest imports of the sources in scope, newest first, with their source's name."""
    rows = s.execute(select(SignalImport, Source.name).join(
        Source, Source.id == SignalImport.source_id).where(
        scope.source_filter(SignalImport.source_id)).order_by(
        SignalImport.id.desc()).limit(limit)).all()
    return [(imp, name) for imp, name in rows]


def access_import(s: Session, scope: Scope, import_id: int) -> tuple[SignalImport, str]:
    row = s.execute(select(SignalImport, Source.name).join(
        Source, Source.id == SignalImport.source_id).where(
        SignalImport.id == import_id, scope.source_filter(SignalImport.source_id))).first()
    if row is None:
        raise TenantNotFound("There is no such import.")
    return row[0], row[1]


@dataclass
class ImportReport:
    """What an import did; ``as_json`` is what the CLI prints."""

    import_id: int
    source: str
    filename: str
    file_format: str
    state: str = "running"
    bytes_read: int = 0
    bytes_total: int = 0
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0
    observations: int = 0
    rejects: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    status_code: int = 200  # of a failed import: 413 too large, 422 unreadable, 403 refused

    @classmethod
    def of(cls, imp: SignalImport, source: str) -> ImportReport:
        return cls(imp.id, source, imp.filename, imp.file_format, imp.state, imp.bytes_read,
                   imp.bytes_total, imp.rows_imported, imp.rows_duplicate, imp.rows_rejected,
                   0, list(imp.rejects or []), imp.error)

    @property
    def rejects_not_kept(self) -> int:
        return max(0, self.rejected - len(self.rejects))

    def as_json(self) -> dict[str, Any]:
        return {"import_id": self.import_id, "source": self.source, "file": self.filename,
                "format": self.file_format, "state": self.state,
                "bytes_read": self.bytes_read, "imported": self.imported,
                "duplicates": self.duplicates, "rejected": self.rejected,
                "observations": self.observations, "rejects": self.rejects,
                "rejects_not_listed": self.rejects_not_kept, "error": self.error}


# -- imports: writing ----------------------------------------------------------------------


def do_refuse_import(s: Session, ctx: TenantContext, source: Source) -> None:
    s.execute(update(Source).where(Source.id == source.id).values(
        refused_count=Source.refused_count + 1))
    audit.record(s, SignalEvents.IMPORT_REFUSED, actor=ctx.actor, target_type="source",
                 target_id=source.id, details={"source": source.name, "reason": "no_grant"})


def refusal_sentence(source: Source) -> str:
    return (f"Source {source.name} has no grant: an Owner must grant it on the Sources page "
            "before anything is imported from it. Nothing was imported.")


_INSERT = insert(Signal).on_conflict_do_nothing(
    index_elements=["source_id", "external_id"]).returning(Signal.id)


class _Batcher:
    """Inserts the rows of one import in batches, in the caller's transaction."""

    def __init__(self, s: Session, ctx: TenantContext, source: Source, import_id: int,
                 default_team: str, pseudonym: Pseudonymizer, report: ImportReport) -> None:
        self.s, self.ctx, self.source, self.import_id = s, ctx, source, import_id
        self.default_team, self.pseudonym, self.report = default_team, pseudonym, report
        self.pending: list[Row] = []

    def reject(self, number: int, reason: str) -> None:
        self.report.rejected += 1
        if len(self.report.rejects) < REJECTS_KEPT:
            self.report.rejects.append({"row": number, "reason": reason})

    def add(self, row: Row) -> None:
        self.pending.append(row)
        if len(self.pending) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        rows, self.pending = self.pending, []
        ids = self.s.execute(text(
            "SELECT nextval(pg_get_serial_sequence('signals', 'id')) "
            "FROM generate_series(1, :n)"), {"n": len(rows)}).scalars().all()
        values = [{
            "id": row_id, "source_id": self.source.id, "import_id": self.import_id,
            "external_id": row.external_id, "kind": self.source.kind,
            "title_sealed": self.ctx.sealer.seal(row.title, table=TABLE, column="title_sealed",
                                                 row_key=row_id),
            "template": template_of(row.title), "team": row.team or self.default_team,
            "person_ref": self.pseudonym(row.person), "outcome": row.outcome,
            "occurred_at": row.occurred_at, "resolved_at": row.resolved_at,
        } for row_id, row in zip(ids, rows, strict=True)]
        inserted = self.s.execute(_INSERT, values).scalars().all()  # "insertmanyvalues"
        self.report.imported += len(inserted)
        self.report.duplicates += len(rows) - len(inserted)


def _extract(s: Session, ctx: TenantContext, source: Source, import_id: int) -> int:
    """The extractor over this import's new signals, a chunk at a time."""
    if not extraction_allowed(s, source):
        return 0
    written, after = 0, 0
    while True:
        chunk = list(s.scalars(select(Signal).where(
            Signal.import_id == import_id, Signal.id > after).order_by(Signal.id)
            .limit(EXTRACT_CHUNK)))
        if not chunk:
            return written
        written += do_extract(s, ctx, source=source, signals=chunk)
        after = chunk[-1].id


def _start(ctx: TenantContext, scope: Scope, source_id: int, *, filename: str,
           file_format: str | None, bytes_total: int) -> tuple[int, str, Pseudonymizer]:
    """Steps 1 and 2 of the module docstring: the refusal, or the import row."""
    with ctx.session() as s, s.begin():
        source = access_source(s, scope, source_id)
        if source.granted:
            pseudonym = pseudonymizer_for(s, ctx)
            imp = SignalImport(source_id=source.id, filename=filename[:255] or "upload",
                               file_format=file_format or "auto", bytes_total=bytes_total,
                               created_by=ctx.actor.name)
            s.add(imp)
            s.flush()
            return imp.id, source.name, pseudonym
        do_refuse_import(s, ctx, source)  # committed: the refusal does not undo its count
        sentence = refusal_sentence(source)
    raise ImportRefused(sentence)


def _set_progress(ctx: TenantContext, import_id: int, bytes_read: int) -> None:
    with ctx.session() as s, s.begin():
        s.execute(update(SignalImport).where(SignalImport.id == import_id).values(
            bytes_read=bytes_read))


def _fail(ctx: TenantContext, report: ImportReport, error: str, status_code: int = 500
          ) -> None:
    report.state, report.error, report.status_code = "failed", error[:500], status_code
    report.imported = report.duplicates = report.observations = 0
    with ctx.session() as s, s.begin():
        s.execute(update(SignalImport).where(SignalImport.id == report.import_id).values(
            state="failed", error=report.error, bytes_read=report.bytes_read,
            rows_imported=0, rows_duplicate=0, rows_rejected=report.rejected,
            rejects=report.rejects, finished_at=datetime.now(UTC)))
        audit.record(s, SignalEvents.IMPORT_FAILED, actor=ctx.actor, target_type="import",
                     target_id=report.import_id,
                     details={"source": report.source, "bytes_read": report.bytes_read})


def run_import(ctx: TenantContext, scope: Scope, *, source_id: int, stream: BinaryIO,
               filename: str, file_format: str | None = None, default_team: str = "",
               bytes_total: int = 0, max_bytes: int | None = None,
               on_progress: Progress | None = None) -> ImportReport:
    """Import one file into a source (module docstring); the report, also when the file
    failed as a whole (``state == "failed"``, ``error`` says why). ImportRefused when the
    source has no grant; TenantNotFound for a source out of ``scope``; FileTooLarge, before
    anything is recorded, when ``bytes_total`` is known to be over ``max_bytes``."""
    default_team = " ".join(default_team.split())
    if len(default_team) > TEAM_MAX_CHARS:
        raise TenantInvalidInput(f"A team name has at most {TEAM_MAX_CHARS} characters.")
    if file_format is not None and file_format not in FORMATS:
        raise TenantInvalidInput(f"The format must be one of {', '.join(FORMATS)} (or left "
                                 "out, to be told by the file).")
    if max_bytes is not None and bytes_total > max_bytes:
        raise FileTooLarge(max_bytes)
    import_id, source_name, pseudonym = _start(ctx, scope, source_id, filename=filename,
                                               file_format=file_format,
                                               bytes_total=bytes_total)
    report = ImportReport(import_id, source_name, filename, file_format or "auto",
                          bytes_total=bytes_total)
    try:
        _write(ctx, report, source_id=source_id, stream=stream, filename=filename,
               file_format=file_format, default_team=default_team, max_bytes=max_bytes,
               pseudonym=pseudonym, on_progress=on_progress)
    except FileUnreadable as exc:
        _fail(ctx, report, exc.message, exc.status_code)
    except _GrantWithdrawn as exc:
        _fail(ctx, report, str(exc), ImportRefused.status_code)
    except BaseException:
        _fail(ctx, report, "The import stopped on an unexpected error; nothing was imported.")
        raise
    return report


class _GrantWithdrawn(Exception):
    pass


IMPORT_LOCK = 74241  # transaction-scoped advisory lock (IMPORT_LOCK, import id): a live import
ABANDONED_AFTER = timedelta(minutes=2)  # an import's row is older than this before it is judged


def _lock_key(import_id: int) -> dict[str, int]:
    return {"lock": IMPORT_LOCK, "key": import_id % 2_147_483_647}  # the lock's second int4


def _write(ctx: TenantContext, report: ImportReport, *, source_id: int, stream: BinaryIO,
           filename: str, file_format: str | None, default_team: str, max_bytes: int | None,
           pseudonym: Pseudonymizer, on_progress: Progress | None) -> None:
    with ctx.session() as s, s.begin():
        s.execute(text("SELECT pg_advisory_xact_lock(:lock, :key)"),
                  _lock_key(report.import_id))
        source = s.get(Source, source_id)
        if source is None:
            raise FileUnreadable("The source was removed before the import began.")
        signal_file = SignalFile(stream, kind=source.kind, file_format=file_format,
                                 filename=filename, max_bytes=max_bytes)
        report.file_format = signal_file.file_format
        batcher = _Batcher(s, ctx, source, report.import_id, default_team, pseudonym, report)
        seen = 0
        for number, row in signal_file:
            if isinstance(row, RowRejected):
                batcher.reject(number, row.reason)
            else:
                batcher.add(row)
            seen += 1
            if seen % PROGRESS_ROWS == 0:
                report.bytes_read = signal_file.bytes_read
                _set_progress(ctx, report.import_id, report.bytes_read)
                if on_progress is not None:
                    on_progress(report.bytes_read, report.bytes_total, seen)
        batcher.flush()
        report.bytes_read = signal_file.bytes_read
        # the grant, again, now: one withdrawn while the file was read stops the import
        granted = s.scalar(select(Source.granted).where(Source.id == source.id)
                           .with_for_update(read=True))
        if not granted:
            raise _GrantWithdrawn(f"The grant of source {source.name} was withdrawn during "
                                  "the import; nothing was imported.")
        report.observations = _extract(s, ctx, source, report.import_id)
        report.state = "done"
        s.execute(update(SignalImport).where(SignalImport.id == report.import_id).values(
            state="done", bytes_read=report.bytes_read, rows_imported=report.imported,
            rows_duplicate=report.duplicates, rows_rejected=report.rejected,
            rejects=report.rejects, file_format=report.file_format,
            finished_at=datetime.now(UTC)))
        audit.record(s, SignalEvents.IMPORTED, actor=ctx.actor, target_type="import",
                     target_id=report.import_id, details={
                         "source": source.name, "source_id": source.id,
                         "format": report.file_format, "bytes": report.bytes_read,
                         "imported": report.imported, "duplicates": report.duplicates,
                         "rejected": report.rejected, "observations": report.observations})
    if on_progress is not None:
        on_progress(report.bytes_read, report.bytes_total, seen)


def fail_abandoned_imports(s: Session, ctx: TenantContext, *,
                           older_than: timedelta = ABANDONED_AFTER,
                           now: datetime | None = None) -> int:
    """Imports still ``running`` whose process is gone (no transaction holds their lock: it
    died, and its row transaction was rolled back with it) end ``failed``, audited; nothing of
    them was written. Only rows older than ``older_than`` are judged, so an import between its
    row's commit and its lock is not mistaken for a dead one."""
    cutoff = (now or datetime.now(UTC)) - older_than
    running = list(s.scalars(select(SignalImport).where(
        SignalImport.state == "running", SignalImport.created_at < cutoff)
        .with_for_update(skip_locked=True)))
    failed = 0
    for imp in running:
        if not s.scalar(text("SELECT pg_try_advisory_xact_lock(:lock, :key)"),
                        _lock_key(imp.id)):
            continue  # its importer is still at work
        imp.state, imp.finished_at = "failed", datetime.now(UTC)
        imp.rows_imported = imp.rows_duplicate = 0
        imp.error = ("The import stopped before it finished (its process ended); nothing of "
                     "it was written. Import the file again.")
        audit.record(s, SignalEvents.IMPORT_FAILED, actor=ctx.actor, target_type="import",
                     target_id=imp.id, details={"source_id": imp.source_id,
                                                "bytes_read": imp.bytes_read,
                                                "reason": "abandoned"})
        failed += 1
    return failed
