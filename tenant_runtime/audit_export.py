"""The tenant's audit chain as a JSON Lines export a compliance team verifies offline.

The format is specified in ops/AUDIT_FORMAT.md and checked by ops/verify_audit_chain.py:
a header line, one line per event in seq order, the signed checkpoints of the range, and a
manifest. ``export_lines`` streams it:

- one REPEATABLE READ, READ ONLY transaction, so events, checkpoints and keys come from one
  snapshot (a checkpoint written meanwhile never names a row the export lacks);
- keyset batches of ``BATCH_SIZE`` rows (``seq > last seen ORDER BY seq LIMIT n``) read as plain
  rows, not ORM objects, so memory holds one batch whatever the size of the log;
- a date range is first resolved to the seq range it covers, so the exported rows are always
  contiguous (the verifier checks that);
- the tables of checkpoints and keys may not exist in an older tenant database: then the export
  has no checkpoints and no keys;
- each checkpoint line's ``tenant_id`` is the tenant it was signed for: a copy restored from
  another tenant's backup carries checkpoints signed for that tenant (tenant_runtime/
  audit_lineage.py), and the lineage events in the chain say which.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from sqlalchemy import Row, Table, func, select, text
from sqlalchemy.orm import Session

from tenant_runtime.audit_lineage import Lineage, lineage, signer_of
from tenant_runtime.checkpoints import make_checkpoint, statement_signer
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.models import AuditEvent

FORMAT = 2
BATCH_SIZE = 5_000
RANGE_PARAMS = ("first_seq", "last_seq", "since", "until")
SEQ = re.compile(r"[0-9]{1,18}")  # fits a bigint
EVENTS = cast(Table, AuditEvent.__table__)


@dataclass(frozen=True)
class ChainTables:
    """Where a chain lives: its events table and the names of its checkpoint, key and key
    rotation tables (constants, never input). The tenant chain's are the default; the
    platform chain (control_plane/audit_checkpoints.py) passes its own."""

    events: Table
    checkpoints: str
    keys: str
    rotations: str


TENANT_CHAIN = ChainTables(EVENTS, "audit_checkpoints", "checkpoint_keys",
                           "checkpoint_key_rotations")


@dataclass(frozen=True)
class ExportRange:
    """What to export: a seq range or a date range (``since`` inclusive, ``until`` exclusive),
    each end optional; nothing given means the whole chain."""

    first_seq: int | None = None
    last_seq: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {"first_seq": self.first_seq, "last_seq": self.last_seq,
                "since": timestamp(self.since) if self.since else None,
                "until": timestamp(self.until) if self.until else None}


def timestamp(moment: datetime) -> str:
    """The one way the audit format writes a time: UTC, microseconds, ``Z``."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical_line(document: Mapping[str, Any]) -> bytes:
    """A line of the export: canonical JSON (sorted keys, no whitespace, UTF-8) and ``\\n``."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8") + b"\n"


# ------------------------------------------------------------------------------- the range


def _seq(name: str, value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    if not SEQ.fullmatch(value.strip()) or int(value) < 1:
        raise TenantInvalidInput(f"{name} must be a whole number of at least 1.")
    return int(value)


def _moment(name: str, value: str | None) -> datetime | None:
    """A date (midnight UTC) or an ISO 8601 date and time; without an offset it is UTC."""
    if value is None or value.strip() == "":
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise TenantInvalidInput(f"{name} must be a date (2025-01-31) or a date and time "
                                 "(2025-01-31T12:00:00Z).") from None


def parse_range(params: Mapping[str, str | None]) -> ExportRange:
    """An ``ExportRange`` from strings (query parameters, command-line options), or
    TenantInvalidInput with one sentence saying what is wrong."""
    return check_range(ExportRange(
        first_seq=_seq("first_seq", params.get("first_seq")),
        last_seq=_seq("last_seq", params.get("last_seq")),
        since=_moment("since", params.get("since")),
        until=_moment("until", params.get("until"))))


def check_range(wanted: ExportRange) -> ExportRange:
    by_seq = wanted.first_seq is not None or wanted.last_seq is not None
    by_date = wanted.since is not None or wanted.until is not None
    if by_seq and by_date:
        raise TenantInvalidInput("Give a range by seq (first_seq, last_seq) or by date "
                                 "(since, until), not both.")
    for name in ("first_seq", "last_seq"):
        value = getattr(wanted, name)
        if value is not None and value < 1:
            raise TenantInvalidInput(f"{name} must be a whole number of at least 1.")
    if wanted.first_seq and wanted.last_seq and wanted.last_seq < wanted.first_seq:
        raise TenantInvalidInput("last_seq must not be smaller than first_seq.")
    if wanted.since and wanted.until and wanted.until <= wanted.since:
        raise TenantInvalidInput("until must be later than since.")
    return wanted


def _seq_bounds(session: Session, wanted: ExportRange,
                events: Table = EVENTS) -> tuple[int, int | None] | None:
    """The seq range to export, ``(first, last)`` with ``last`` None for "to the end"; a date
    range becomes the seqs it covers. None when a date range holds no event."""
    first, last = wanted.first_seq or 1, wanted.last_seq
    if wanted.since is not None:
        first = session.scalar(select(func.min(events.c.seq))
                               .where(events.c.occurred_at >= wanted.since))
        if first is None:
            return None
    if wanted.until is not None:
        last = session.scalar(select(func.max(events.c.seq))
                              .where(events.c.occurred_at < wanted.until))
        if last is None:
            return None
    return first, last


# ------------------------------------------------------------------------------- reading


def _table_exists(session: Session, name: str) -> bool:
    return session.scalar(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name}) is True


def _event_line(row: Row[Any]) -> bytes:
    return canonical_line({
        "type": "event", "seq": row.seq, "occurred_at": timestamp(row.occurred_at),
        "actor_type": row.actor_type, "actor_id": row.actor_id, "actor_name": row.actor_name,
        "event_type": row.event_type, "target_type": row.target_type,
        "target_id": row.target_id, "details": row.details, "prev_hash": row.prev_hash,
        "chain_hash": row.chain_hash})


def _events(session: Session, first: int, last: int | None, batch: int,
            events: Table = EVENTS) -> Iterator[Row[Any]]:
    after = first - 1
    while True:
        query = select(events).where(events.c.seq > after).order_by(events.c.seq).limit(batch)
        if last is not None:
            query = query.where(events.c.seq <= last)
        rows = session.execute(query).all()
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].seq


def _checkpoints(session: Session, low: int, high: int, batch: int,
                 table: str) -> Iterator[Row[Any]]:
    after = low - 1
    while True:
        rows = session.execute(text(
            f"SELECT seq, chain_hash, created_at, signature, key_id FROM {table} "  # noqa: S608
            "WHERE seq > :after AND seq <= :high ORDER BY seq LIMIT :batch"),
            {"after": after, "high": high, "batch": batch}).all()
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].seq


def _keys(session: Session, table: str) -> list[dict[str, Any]]:
    if not _table_exists(session, table):
        return []
    return [{"key_id": row.key_id, "public_key": row.public_key,
             "valid_from": timestamp(row.valid_from),
             "retired_at": timestamp(row.retired_at) if row.retired_at else None}
            for row in session.execute(text(
                f"SELECT key_id, public_key, valid_from, retired_at FROM {table} "  # noqa: S608
                "ORDER BY valid_from, id"))]


def _rotations(session: Session, tenant_id: int, chain: ChainTables,
               restorations: Lineage) -> list[dict[str, Any]]:
    """The rotation statements, each naming the tenant it was signed for: the one that signed
    the old key's last checkpoint, made in the same transaction just before the rotation
    (tenant_runtime/checkpoints.py), so a restored copy's rotations inherited from its source
    name the source, by the same lineage rule as its checkpoints."""
    if not _table_exists(session, chain.rotations):
        return []
    last_checkpoint = (f"(SELECT max(c.seq) FROM {chain.checkpoints} c "  # noqa: S608
                       "WHERE c.key_id = r.old_key_id)" if restorations else "NULL")
    return [{"type": "key_rotation",
             "tenant_id": tenant_id if row.last_seq is None else signer_of(
                 restorations, row.last_seq, tenant_id),
             "old_key_id": row.old_key_id,
             "new_key_id": row.new_key_id, "new_public_key": row.new_public_key,
             "rotated_at": timestamp(row.rotated_at), "signature": row.signature,
             "new_signature": row.new_signature}
            for row in session.execute(text(
                "SELECT old_key_id, new_key_id, new_public_key, rotated_at, signature, "  # noqa: S608
                f"new_signature, {last_checkpoint} AS last_seq FROM {chain.rotations} r "
                "ORDER BY rotated_at, id"))]


class Signer(Protocol):
    """Signs an export statement: the checkpoint key valid at the export's time."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> str: ...


def export_lines(session: Session, *, tenant_id: int, slug: str, first_seq: int | None = None,
                 last_seq: int | None = None, since: datetime | None = None,
                 until: datetime | None = None, batch_size: int = BATCH_SIZE,
                 exported_at: datetime | None = None,
                 signer: Callable[[Session, datetime], Signer | None] | None = None,
                 chain: ChainTables = TENANT_CHAIN) -> Iterator[bytes]:
    """The export, line by line (each ``bytes`` ends with ``\\n``). ``session`` must not have
    run a statement yet: the export opens its own read-only snapshot in it. ``signer`` finds,
    in that snapshot, the key that signs the closing statement (None: no statement, which the
    verifier refuses for a tenant that has a key; only tests and benchmarks leave it out)."""
    wanted = check_range(ExportRange(first_seq, last_seq, since, until))
    moment = exported_at or datetime.now(UTC)  # before the snapshot: see statement_signer
    session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    has_checkpoints = _table_exists(session, chain.checkpoints)
    keys = _keys(session, chain.keys)
    events = chain.events
    tenant_head = session.execute(select(events.c.seq, events.c.chain_hash)
                                  .order_by(events.c.seq.desc()).limit(1)).first()
    signing = signer(session, moment) if signer is not None and keys else None
    # a restored copy carries checkpoints (and key rotations) signed for its source: each line
    # names its signer
    restorations = lineage(session) if chain is TENANT_CHAIN and has_checkpoints else []
    digest = hashlib.sha256()

    def emit(line: bytes) -> bytes:
        digest.update(line)
        return line

    header = {"type": "header", "format": FORMAT, "tenant_id": tenant_id, "tenant": slug,
              "exported_at": timestamp(moment), "range": wanted.as_json(), "public_keys": keys}
    yield emit(canonical_line(header))
    for rotation in _rotations(session, tenant_id, chain, restorations):
        yield emit(canonical_line(rotation))
    bounds = _seq_bounds(session, wanted, events)
    count, first_row, head = 0, None, None
    for row in _events(session, *bounds, batch_size, events) if bounds else ():
        count += 1
        if first_row is None:
            first_row = row.seq
        head = row
        yield emit(_event_line(row))
    checkpoints = 0
    if has_checkpoints and head is not None and first_row is not None:
        for cp in _checkpoints(session, first_row - 1, head.seq, batch_size, chain.checkpoints):
            checkpoints += 1
            yield emit(canonical_line({
                "type": "checkpoint", "seq": cp.seq,
                "tenant_id": signer_of(restorations, cp.seq, tenant_id),
                "chain_hash": cp.chain_hash, "created_at": timestamp(cp.created_at),
                "signature": cp.signature, "key_id": cp.key_id}))
    manifest = {"type": "manifest", "first_seq": first_row,
                "last_seq": head.seq if head is not None else None,
                "head_hash": head.chain_hash if head is not None else None,
                "events": count, "checkpoints": checkpoints, "sha256": digest.hexdigest()}
    yield emit(canonical_line(manifest))
    if signing is None:
        return
    statement: dict[str, Any] = {
        "type": "statement", "tenant_id": tenant_id, "tenant": slug,
        "exported_at": header["exported_at"], "range": header["range"],
        "first_seq": first_row, "last_seq": manifest["last_seq"], "events": count,
        "checkpoints": checkpoints,
        "head_seq": tenant_head.seq if tenant_head is not None else None,
        "head_hash": tenant_head.chain_hash if tenant_head is not None else None,
        "sha256": digest.hexdigest(), "key_id": signing.key_id}
    statement["signature"] = signing.sign(canonical_line(statement)[:-1])
    yield canonical_line(statement)


def export_tenant_chain(ctx: TenantContext, wanted: ExportRange, *,
                        batch_size: int = BATCH_SIZE) -> Iterator[bytes]:
    """What the dashboard, the API and the shell hand out: the chain head checkpointed first
    (in its own transaction, so the export carries a checkpoint of the head as it was a moment
    before), then ``export_lines`` from one snapshot, closed by a statement signed by the
    tenant's checkpoint key. Needs the tenant's data key (TenantKeyUnavailable otherwise):
    without it nothing can be signed, and an unsigned export of a tenant with a key does not
    verify."""
    with ctx.session() as s, s.begin():
        make_checkpoint(s, ctx, force=True)
    with ctx.session() as s:
        yield from export_lines(
            s, tenant_id=ctx.tenant_id, slug=ctx.slug, first_seq=wanted.first_seq,
            last_seq=wanted.last_seq, since=wanted.since, until=wanted.until,
            batch_size=batch_size,
            signer=lambda session, moment: statement_signer(session, ctx, moment))
