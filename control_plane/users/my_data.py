""""Download my data": what Magistrate holds about a signed-in member, as one JSON file.

The file holds their account (never the password hash, TOTP secret or backup codes), their
memberships, their sessions, the API keys they created, the platform audit events where they
are the actor or the target and, for each tenant they belong to, that tenant's audit events
where they are the actor and their persona assignments. A tenant that cannot be read (its
customer-held key is revoked, its database does not answer, it is not provisioned yet) is listed
with a note; the rest of the file is still made.

- Size: rows are read in batches (``yield_per``) and written as they come to a spooled file
  that stays in memory up to ``SPOOL_BYTES`` and then moves to an anonymous temporary file (no
  name on disk, gone when closed). The response streams that file, so a member with a long
  history never has it all in memory at once.
- Rate: ``EXPORTS_PER_HOUR`` per member in a sliding hour, counted in Redis (a sorted set of
  download times, checked and added to by one Lua script, so concurrent requests cannot both
  take the last slot). When Redis cannot be reached, the count falls back to the platform audit
  chain, which records every download: exact and shared by every web process, where an
  in-process limiter would allow three per process; refusing instead would deny members their
  own data whenever Redis is down. A download that fails gives its slot back.
- Audit: each download writes ``account.data_exported`` in the platform chain, in the same
  transaction, with the counts of what the file holds (never its content).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import redis
from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.responses import StreamingResponse

from control_plane import audit
from control_plane.exceptions import RateLimited
from control_plane.models import (
    ApiKey,
    Membership,
    PlatformAuditEvent,
    Tenant,
    User,
    WebSession,
)
from control_plane.tenancy.connections import TenantConnections
from tenant_runtime.context import Actor
from tenant_runtime.exceptions import TenantError
from tenant_runtime.models import AuditEvent
from tenant_runtime.personas.models import Persona, PersonaAssignment

log = logging.getLogger("magistrate.my_data")

EXPORTS_PER_HOUR = 3
WINDOW_SECONDS = 3600
SPOOL_BYTES = 4 * 1024 * 1024
BATCH = 500
CHUNK_BYTES = 64 * 1024
FORMAT = 1
READABLE_STATES = ("active", "suspended")
MEDIA_TYPE = "application/json"


class AccountEvents:
    DATA_EXPORTED = "account.data_exported"


# ------------------------------------------------------------------------------- rate limit

_TAKE_SLOT = """
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) >= limit then
  return redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]
end
redis.call('ZADD', key, now, ARGV[4])
redis.call('EXPIRE', key, math.ceil(window))
return false
"""


@dataclass(frozen=True)
class Slot:
    user_id: int
    member: str | None  # the entry in Redis; None when the audit chain did the counting


class ExportLimiter:
    """``EXPORTS_PER_HOUR`` downloads per member in a sliding hour (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, per_hour: int = EXPORTS_PER_HOUR,
                 window_seconds: int = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.limit = per_hour
        self.window = window_seconds
        self.clock = clock

    @staticmethod
    def key(user_id: int) -> str:
        return f"magistrate:rl:my-data:{user_id}"

    def acquire(self, s: Session, user_id: int) -> Slot:
        """Take one of the member's slots, or raise RateLimited saying when one frees up."""
        member = uuid.uuid4().hex
        now = self.clock()
        try:
            oldest = self.client.eval(_TAKE_SLOT, 1, self.key(user_id), repr(now),
                                      str(self.window), str(self.limit), member)
        except redis.RedisError as exc:
            log.warning("Redis unreachable for the data download limit (%s); counting the "
                        "audit chain's downloads instead", type(exc).__name__)
            self._acquire_from_audit(s, user_id)
            return Slot(user_id, None)
        if oldest is not None:
            raise self._refusal(float(oldest) + self.window - now)
        return Slot(user_id, member)

    def release(self, slot: Slot) -> None:
        """Give back a slot whose download failed."""
        if slot.member is None:
            return
        try:
            self.client.zrem(self.key(slot.user_id), slot.member)
        except redis.RedisError:
            pass  # the slot then frees itself when the hour is over

    def _acquire_from_audit(self, s: Session, user_id: int) -> None:
        # one download of a member at a time, so two cannot both count two and go ahead
        s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                  {"key": self.key(user_id)})
        now: datetime = s.execute(select(func.now())).scalar_one()
        recent = list(s.scalars(
            select(PlatformAuditEvent.occurred_at)
            .where(PlatformAuditEvent.event_type == AccountEvents.DATA_EXPORTED,
                   PlatformAuditEvent.actor_type == "user",
                   PlatformAuditEvent.actor_id == str(user_id),
                   PlatformAuditEvent.occurred_at > now - timedelta(seconds=self.window))
            .order_by(PlatformAuditEvent.occurred_at)))
        if len(recent) >= self.limit:
            frees_at = recent[len(recent) - self.limit] + timedelta(seconds=self.window)
            raise self._refusal((frees_at - now).total_seconds())

    def _refusal(self, wait: float) -> RateLimited:
        seconds = max(1, int(wait + 0.999))
        minutes = (seconds + 59) // 60
        when = "1 minute" if minutes == 1 else f"{minutes} minutes"
        return RateLimited(seconds, f"You downloaded your data {self.limit} times in the last "
                                    f"hour, the most allowed. You can download it again in "
                                    f"{when}.")


# ------------------------------------------------------------------------------- the file


@dataclass
class ExportCounts:
    memberships: int = 0
    sessions: int = 0
    api_keys: int = 0
    platform_events: int = 0
    tenants: int = 0
    tenants_unavailable: int = 0
    tenant_events: int = 0
    persona_assignments: int = 0
    bytes: int = 0


@dataclass
class MyDataExport:
    """The built file (positioned at its start) and what it holds."""

    file: IO[bytes]
    counts: ExportCounts
    filename: str
    slot: Slot | None = field(default=None, repr=False)

    def chunks(self) -> Iterator[bytes]:
        try:
            while chunk := self.file.read(CHUNK_BYTES):
                yield chunk
        finally:
            self.file.close()

    def response(self) -> StreamingResponse:
        return StreamingResponse(
            self.chunks(), media_type=MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{self.filename}"',
                     "Content-Length": str(self.counts.bytes), "Cache-Control": "no-store"})

    def discard(self, limiter: ExportLimiter | None = None) -> None:
        """Close the file and give the slot back: the download did not happen."""
        self.file.close()
        if limiter is not None and self.slot is not None:
            limiter.release(self.slot)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode("utf-8")


class _Writer:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def array(self, items: Iterable[Mapping[str, Any]], indent: str = "  ") -> int:
        """One item a line; returns how many were written."""
        count = 0
        for item in items:
            self.write(b"[\n" if count == 0 else b",\n")
            self.write(indent.encode() + b"  " + _dumps(item))
            count += 1
        self.write(b"[]" if count == 0 else b"\n" + indent.encode() + b"]")
        return count


def _event(row: Any) -> dict[str, Any]:
    return {"seq": row.seq, "occurred_at": _time(row.occurred_at),
            "actor_type": row.actor_type, "actor_id": row.actor_id,
            "actor_name": row.actor_name, "event_type": row.event_type,
            "target_type": row.target_type, "target_id": row.target_id,
            "details": row.details}


def _event_columns(model: Any) -> list[Any]:
    return [model.seq, model.occurred_at, model.actor_type, model.actor_id, model.actor_name,
            model.event_type, model.target_type, model.target_id, model.details]


def _account(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "display_name": user.display_name,
            "installation_owner": user.is_owner, "active": user.is_active,
            "created_at": _time(user.created_at),
            "password_changed_at": _time(user.password_changed_at),
            "mfa_enabled": user.mfa_enabled, "mfa_enabled_at": _time(user.mfa_enabled_at),
            "deactivated_at": _time(user.deactivated_at)}


def _sessions(s: Session, user: User, current_id: int | None) -> Iterator[dict[str, Any]]:
    for row in s.scalars(select(WebSession).where(WebSession.user_id == user.id)
                         .order_by(WebSession.created_at, WebSession.id)):
        yield {"created_at": _time(row.created_at), "last_seen_at": _time(row.last_seen_at),
               "expires_at": _time(row.expires_at), "revoked_at": _time(row.revoked_at),
               "ip": row.ip, "user_agent": row.user_agent, "host": row.host,
               "current": row.id == current_id}


def _api_keys(s: Session, user: User) -> Iterator[dict[str, Any]]:
    rows = s.execute(select(ApiKey, Tenant.slug).join(Tenant, Tenant.id == ApiKey.tenant_id)
                     .where(ApiKey.created_by == user.id).order_by(ApiKey.created_at, ApiKey.id))
    for key, slug in rows:
        yield {"tenant": slug, "name": key.name, "prefix": key.prefix, "scopes": sorted(key.scopes),
               "created_at": _time(key.created_at), "last_used_at": _time(key.last_used_at),
               "expires_at": _time(key.expires_at), "revoked_at": _time(key.revoked_at)}


def _platform_events(s: Session, user: User) -> Iterator[dict[str, Any]]:
    uid = str(user.id)
    statement = (select(*_event_columns(PlatformAuditEvent))
                 .where(or_(and_(PlatformAuditEvent.actor_type == "user",
                                 PlatformAuditEvent.actor_id == uid),
                            and_(PlatformAuditEvent.target_type == "user",
                                 PlatformAuditEvent.target_id == uid)))
                 .order_by(PlatformAuditEvent.seq).execution_options(yield_per=BATCH))
    for row in s.execute(statement):
        yield _event(row)


def _write_tenant(w: _Writer, connections: TenantConnections, s: Session, user: User,
                  membership: Membership, counts: ExportCounts) -> None:
    """One tenant's object; its events stream from the tenant's database. When the tenant
    cannot be read, whatever was written of it is cut off and a note takes its place."""
    tenant = membership.tenant
    head = {"tenant_id": tenant.id, "slug": tenant.slug, "name": tenant.name,
            "role": membership.role, "state": tenant.state}
    start = w.out.tell()
    if tenant.state not in READABLE_STATES:
        note = ("This tenant is being set up; it holds nothing about you yet."
                if tenant.state == "provisioning" else "This tenant's data was deleted.")
        w.write(_dumps({**head, "available": False, "note": note}))
        counts.tenants_unavailable += 1
        return
    events = assignments = 0
    try:
        ctx = connections.context(s, tenant, Actor("user", str(user.id), user.email,
                                                   membership.role))
        ctx.sealer.ensure_available()  # fail closed while the customer's key is revoked
        with ctx.session() as ts, ts.begin():
            ts.execute(text("SET TRANSACTION READ ONLY"))
            w.write(_dumps(head)[:-1] + b', "available": true, "persona_assignments": ')
            personas = ts.execute(
                select(Persona.name, Persona.teams, Persona.source_ids,
                       PersonaAssignment.assigned_by, PersonaAssignment.assigned_at)
                .join(Persona, Persona.id == PersonaAssignment.persona_id)
                .where(PersonaAssignment.user_id == str(user.id)).order_by(Persona.name))
            assignments = w.array(
                ({"persona": p.name, "teams": p.teams, "source_ids": p.source_ids,
                  "assigned_by": p.assigned_by, "assigned_at": _time(p.assigned_at)}
                 for p in personas), indent="    ")
            w.write(b', "audit_events": ')
            rows = ts.execute(select(*_event_columns(AuditEvent))
                              .where(AuditEvent.actor_type == "user",
                                     AuditEvent.actor_id == str(user.id))
                              .order_by(AuditEvent.seq).execution_options(yield_per=BATCH))
            events = w.array((_event(row) for row in rows), indent="    ")
            w.write(b"}")
    except (TenantError, SQLAlchemyError) as exc:
        log.warning("data download of user %d: tenant %d unreadable: %s", user.id, tenant.id,
                    type(exc).__name__)
        note = ("This tenant's customer-held key is unavailable, so Magistrate cannot read its "
                "data now. Ask the tenant's Owner, or try again later."
                if isinstance(exc, TenantError) else
                "This tenant's database could not be read just now. Try again later.")
        w.out.seek(start)
        w.out.truncate(start)
        w.write(_dumps({**head, "available": False, "note": note}))
        counts.tenants_unavailable += 1
        return
    counts.tenant_events += events
    counts.persona_assignments += assignments


def build_my_data(s: Session, user: User, *, connections: TenantConnections,
                  current_session_id: int | None, out: IO[bytes]) -> ExportCounts:
    """Write the member's file to ``out`` (see the module docstring); returns its counts."""
    counts = ExportCounts()
    w = _Writer(out)
    w.write(b'{\n  "format": ' + _dumps(FORMAT) + b',\n  "generated_at": '
            + _dumps(_time(datetime.now(UTC))) + b',\n  "account": ' + _dumps(_account(user)))
    memberships = list(s.scalars(select(Membership).where(Membership.user_id == user.id)
                                 .order_by(Membership.tenant_id)))
    w.write(b',\n  "memberships": ')
    counts.memberships = w.array(
        {"tenant": m.tenant.slug, "tenant_name": m.tenant.name, "role": m.role,
         "since": _time(m.created_at)} for m in memberships)
    w.write(b',\n  "sessions": ')
    counts.sessions = w.array(_sessions(s, user, current_session_id))
    w.write(b',\n  "api_keys": ')
    counts.api_keys = w.array(_api_keys(s, user))
    w.write(b',\n  "platform_audit_events": ')
    counts.platform_events = w.array(_platform_events(s, user))
    w.write(b',\n  "tenants": ')
    if not memberships:
        w.write(b"[]")
    for i, membership in enumerate(memberships):
        w.write(b"[\n    " if i == 0 else b",\n    ")
        _write_tenant(w, connections, s, user, membership, counts)
        counts.tenants += 1
    if memberships:
        w.write(b"\n  ]")
    w.write(b"\n}\n")
    counts.bytes = out.tell()
    return counts


def do_export_my_data(s: Session, *, connections: TenantConnections, limiter: ExportLimiter,
                      current_session_id: int | None, acting_user: User) -> MyDataExport:
    """Take a rate-limit slot, build the member's file and audit the download, in the caller's
    transaction. The caller streams ``.response()`` after commit, or ``.discard()``s it."""
    slot = limiter.acquire(s, acting_user.id)
    out: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+b")
    try:
        counts = build_my_data(s, acting_user, connections=connections,
                               current_session_id=current_session_id, out=out)
        audit.record(s, AccountEvents.DATA_EXPORTED,
                     actor=audit.Actor.user(acting_user.id, acting_user.email),
                     target_type="user", target_id=acting_user.id, details=asdict(counts))
    except BaseException:
        out.close()
        limiter.release(slot)
        raise
    out.seek(0)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return MyDataExport(out, counts, f"magistrate-my-data-{stamp}.json", slot)
