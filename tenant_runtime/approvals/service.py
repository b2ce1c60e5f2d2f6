"""The approval gate (DESIGN.md, invariant 5): a restricted action runs only with an approval
that is fresh, named (signed-in members with the approving role, or the tenant's Owner, never
the requester) and unused; the approval is consumed exactly once. The requester is the human
behind the request: what an API key asks for is recorded as asked by the key's creator
(``requester_of``), so she cannot approve it herself, whichever of her keys asked.

What other areas call (all in the caller's transaction; none commits):

- ``request_action(s, ctx, action, payload, via=...)`` → ``ApprovalRequest``. A restricted
  class makes a ``pending`` request and queues its notifications in ``approval_outbox``; a
  class that is not restricted is approved at once and fires like an approved one.
- ``decide(s, ctx, request_id, approve, comment)``: one approver's answer, under the request's
  row lock, so two approvers at once make one transition. Any rejection rejects; N distinct
  approvals approve. An approval of an internal action runs its executor right away; one whose
  class has an execution URL queues the signed ``action.execute`` webhook.
- ``consume(s, ctx, request_id)``: one conditional UPDATE (approved, unexpired, unused), so of
  two racing executions exactly one gets the row; the other gets ``AlreadyExecuted``.
- ``current_state(s, request_id)``: pending, approved, rejected, executed or expired.

Every function takes ``now`` (default: ``clock()``), so expiry is testable without waiting.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, not_, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.approvals import classes
from tenant_runtime.approvals.classes import ApprovalEvents
from tenant_runtime.approvals.exceptions import (
    AlreadyDecided,
    AlreadyExecuted,
    NotAnApprover,
    NotApproved,
    ReasonRequired,
    RequestExpired,
    RequestNotFound,
    SelfApprovalRefused,
    UnknownAction,
)
from tenant_runtime.approvals.executors import executor_for
from tenant_runtime.approvals.models import (
    ActionClass,
    ApprovalDecision,
    ApprovalOutbox,
    ApprovalRequest,
)
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.exceptions import TenantInvalidInput

VIAS = ("dashboard", "api", "internal")
MAX_PAYLOAD_BYTES = 8 * 1024
MAX_PAYLOAD_STRING = 500
MAX_COMMENT = 2000
SECRET_WORDS = ("secret", "password", "passwd", "token", "credential", "api_key", "apikey",
                "private_key")
TABLE = "approval_decisions"


def clock() -> datetime:
    return datetime.now(UTC)


def parse_request_id(raw: str | uuid.UUID) -> uuid.UUID:
    """A request id from a URL or a body; anything that is not one is "no such request"."""
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise RequestNotFound() from None


def _check_payload(payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise TenantInvalidInput("The payload must be a JSON object.")
    try:
        audit.check_details(payload, "payload")
    except ValueError as exc:
        raise TenantInvalidInput(f"The payload holds identifiers and counts only: {exc}.") \
            from None

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if any(word in key.lower() for word in SECRET_WORDS):
                    raise TenantInvalidInput(f"The payload holds identifiers and counts, never "
                                             f"secrets: remove {path}.{key}.")
                walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        elif isinstance(value, str) and len(value) > MAX_PAYLOAD_STRING:
            raise TenantInvalidInput(f"{path} is over {MAX_PAYLOAD_STRING} characters; the "
                                     "payload holds identifiers and counts.")

    walk(payload, "payload")
    if len(json.dumps(payload)) > MAX_PAYLOAD_BYTES:
        raise TenantInvalidInput("The payload is over 8 KiB.")
    return payload


# --- requests ----------------------------------------------------------------------------------


def requester_of(actor: Actor) -> tuple[str, str | None, str | None]:
    """Who a request records as its requester: the human behind it. An API key asks on its
    creator's behalf, so the creator is the requester (and can never approve it, from any of
    their keys or sessions); a key that names no creator may not ask at all."""
    if actor.type == "api_key":
        if actor.on_behalf_of is None:
            raise NotAnApprover("An API key that names no creator may not ask for actions.")
        return "user", actor.on_behalf_of, actor.on_behalf_of_name or actor.name
    return actor.type, actor.id, actor.name


def _is_requester(req: ApprovalRequest, user_id: str) -> bool:
    """Whether ``user_id`` is the human who asked for ``req``. A request recorded with an API
    key as its requester (made before keys named their creator) has no human on record, so it
    counts as everyone's own: nobody may approve it; it expires, and is asked for again."""
    return req.requested_by_type == "api_key" or (req.requested_by_type == "user"
                                                  and req.requested_by_id == user_id)


def request_action(s: Session, ctx: TenantContext, action: str, payload: dict[str, Any], *,
                   via: str, now: datetime | None = None) -> ApprovalRequest:
    """Ask for ``action``. An unknown name is refused (``UnknownAction``, 422), except an
    internal action (one with a registered executor), which gets a restricted default class."""
    now = now or clock()
    if via not in VIAS:
        raise ValueError(f"via must be one of {VIAS}")
    name = classes.normal_name(action)
    cls = classes.class_by_name(s, name)
    if cls is None:
        if executor_for(name) is None:
            raise UnknownAction(f"There is no action class named {name!r}; an Owner or Admin "
                                "can add it on the Approvals page.")
        cls = classes.do_add_default_class(s, ctx, name)
    payload = _check_payload(payload)
    actor = ctx.actor
    by_type, by_id, by_name = requester_of(actor)
    req = ApprovalRequest(
        id=uuid.uuid4(), action_class_id=cls.id, action=cls.name, payload=payload, via=via,
        state="pending" if cls.restricted else "approved", restricted=cls.restricted,
        approver_role=cls.approver_role, approvals_needed=cls.approvals_needed,
        expiry_seconds=cls.expiry_seconds, requested_by_type=by_type,
        requested_by_id=by_id, requested_by_name=by_name, created_at=now,
        expires_at=now + timedelta(seconds=cls.expiry_seconds),
        decided_at=None if cls.restricted else now)
    s.add(req)
    s.flush()
    audit.record(s, ApprovalEvents.REQUESTED, actor=actor, target_type="approval_request",
                 target_id=str(req.id),
                 details={"action": req.action, "via": via, "restricted": req.restricted,
                          "approver_role": req.approver_role,
                          "approvals_needed": req.approvals_needed})
    if cls.restricted:
        settings = classes.settings_row(s)
        if settings.email_approvers:
            s.add(ApprovalOutbox(request_id=req.id, kind="email", next_attempt_at=now))
        if settings.webhook_url:
            s.add(ApprovalOutbox(request_id=req.id, kind="webhook", next_attempt_at=now))
        s.flush()
    else:
        _fire(s, ctx, req, cls, now)
    return req


def _fire(s: Session, ctx: TenantContext, req: ApprovalRequest, cls: ActionClass,
          now: datetime) -> None:
    """What an approved request does at once: an internal action runs (consuming the approval
    in this transaction); an action with an execution URL is consumed and its webhook queued;
    otherwise the approval waits for ``POST /api/actions/{id}/execute``."""
    executor = executor_for(req.action)
    if executor is not None:
        consume(s, ctx, req.id, now=now, via="internal")
        executor(s, ctx, dict(req.payload))
    elif cls.execution_url:
        consume(s, ctx, req.id, now=now, via="webhook")
        s.add(ApprovalOutbox(request_id=req.id, kind="execute", next_attempt_at=now))
        s.flush()


def _locked(s: Session, request_id: uuid.UUID) -> ApprovalRequest:
    req = s.scalars(select(ApprovalRequest).where(ApprovalRequest.id == request_id)
                    .with_for_update().execution_options(populate_existing=True)).first()
    if req is None:
        raise RequestNotFound()
    return req


def may_decide(role: str | None, approver_role: str) -> bool:
    return role is not None and role in (approver_role, "Owner")


def decide(s: Session, ctx: TenantContext, request_id: str | uuid.UUID, approve: bool,
           comment: str | None, *, now: datetime | None = None) -> ApprovalRequest:
    """Record the acting member's decision. Refused: not a signed-in member with the approving
    role (or the Owner), the requester, a request no longer pending or expired, a second
    decision by the same approver, a rejection without a reason."""
    now = now or clock()
    actor = ctx.actor
    if actor.type != "user" or actor.id is None:
        raise NotAnApprover("Only a signed-in member can decide approval requests.")
    req = _locked(s, parse_request_id(request_id))
    if _is_requester(req, actor.id):
        raise SelfApprovalRefused()
    if not may_decide(actor.role, req.approver_role):
        raise NotAnApprover(f"Only the {req.approver_role} role (or the tenant's Owner) may "
                            "decide this request.")
    if req.state != "pending":
        raise AlreadyDecided(f"This request is already {req.state}.")
    if req.expires_at <= now:
        raise RequestExpired("This request expired before it was decided; ask for the action "
                             "again.")
    text = (comment or "").strip()
    if not approve and not text:
        raise ReasonRequired()
    if len(text) > MAX_COMMENT:
        raise TenantInvalidInput(f"The comment is at most {MAX_COMMENT} characters.")
    if s.scalar(select(exists().where(ApprovalDecision.request_id == req.id,
                                      ApprovalDecision.approver_id == actor.id))):
        raise AlreadyDecided(f"You have already approved this request; it needs "
                             f"{req.approvals_needed} approvals from different approvers.")
    decision = ApprovalDecision(request_id=req.id, approver_id=actor.id,
                                approver_name=actor.name, approver_role=actor.role,
                                approve=approve, decided_at=now)
    try:
        with s.begin_nested():
            s.add(decision)
            s.flush()
    except IntegrityError:
        raise AlreadyDecided() from None
    if text:
        decision.comment_sealed = ctx.sealer.seal(text, table=TABLE, column="comment_sealed",
                                                  row_key=decision.id)
    approvals = int(s.scalar(select(func.count()).select_from(ApprovalDecision).where(
        ApprovalDecision.request_id == req.id, ApprovalDecision.approve)) or 0)
    details: dict[str, Any] = {"action": req.action, "approvals": approvals,
                               "needed": req.approvals_needed, "commented": bool(text)}
    if not approve:
        req.state, req.decided_at = "rejected", now
        audit.record(s, ApprovalEvents.REJECTED, actor=actor, target_type="approval_request",
                     target_id=str(req.id), details=details)
        return req
    granted = approvals >= req.approvals_needed
    audit.record(s, ApprovalEvents.APPROVED, actor=actor, target_type="approval_request",
                 target_id=str(req.id), details={**details, "granted": granted})
    if granted:
        # the approval is fresh for the class's window from the moment it is complete
        req.state, req.decided_at = "approved", now
        req.expires_at = now + timedelta(seconds=req.expiry_seconds)
        s.flush()
        cls = s.get(ActionClass, req.action_class_id)
        assert cls is not None  # noqa: S101 - the foreign key keeps it
        _fire(s, ctx, req, cls, now)
    return req


def consume(s: Session, ctx: TenantContext, request_id: str | uuid.UUID, *,
            now: datetime | None = None, via: str = "api") -> ApprovalRequest:
    """Use the approval: one conditional UPDATE ... RETURNING, so exactly one caller gets the
    row; everyone else learns why not (``RequestNotFound``, ``NotApproved``,
    ``RequestExpired``, ``AlreadyExecuted``)."""
    now = now or clock()
    rid = parse_request_id(request_id)
    used = s.execute(
        update(ApprovalRequest)
        .where(ApprovalRequest.id == rid, ApprovalRequest.state == "approved",
               ApprovalRequest.expires_at > now, ApprovalRequest.executed_at.is_(None))
        .values(state="executed", executed_at=now, executed_via=via,
                executed_by=ctx.actor.name)
        .returning(ApprovalRequest.id)
        .execution_options(synchronize_session=False)).first()
    req = s.get(ApprovalRequest, rid, populate_existing=True)
    if used is None:
        raise _why_not_usable(req, now)
    assert req is not None  # noqa: S101 - the UPDATE just returned it
    audit.record(s, ApprovalEvents.EXECUTED, actor=ctx.actor, target_type="approval_request",
                 target_id=str(req.id), details={"action": req.action, "via": via})
    return req


def _why_not_usable(req: ApprovalRequest | None, now: datetime) -> Exception:
    if req is None:
        return RequestNotFound()
    if req.state == "executed":
        at = req.executed_at.strftime("%Y-%m-%d %H:%M:%S UTC") if req.executed_at else ""
        return AlreadyExecuted(f"This approval was already used at {at}; each approval runs "
                               "its action once. Ask for the action again.")
    if req.state == "rejected":
        return NotApproved("This request was rejected, so the action cannot run.")
    if req.expires_at <= now:
        return RequestExpired("This request has expired; ask for the action again.")
    return NotApproved("This request is still waiting for approval, so the action cannot run "
                       "yet.")


def check_usable(req: ApprovalRequest, now: datetime | None = None) -> None:
    """Raise why ``req`` could not be consumed now (the reasons ``consume`` gives), without
    consuming it: for an action that does long, undoable work before it consumes."""
    now = now or clock()
    if req.state != "approved" or req.expires_at <= now or req.executed_at is not None:
        raise _why_not_usable(req, now)


def display_state(req: ApprovalRequest, now: datetime | None = None) -> str:
    now = now or clock()
    if req.state in ("pending", "approved") and req.expires_at <= now:
        return "expired"
    return req.state


def current_state(s: Session, request_id: str | uuid.UUID, *,
                  now: datetime | None = None) -> str:
    req = s.get(ApprovalRequest, parse_request_id(request_id))
    if req is None:
        raise RequestNotFound()
    return display_state(req, now)


def access_request(s: Session, request_id: str | uuid.UUID) -> ApprovalRequest:
    req = s.get(ApprovalRequest, parse_request_id(request_id))
    if req is None:
        raise RequestNotFound()
    return req


# --- reads for pages -------------------------------------------------------------------------


def _decidable_by(user_id: str, role: str, now: datetime) -> Any:
    """Pending, unexpired requests that this member may still decide."""
    role_matches = true() if role == "Owner" else ApprovalRequest.approver_role == role
    own = or_(ApprovalRequest.requested_by_type == "api_key",
              and_(ApprovalRequest.requested_by_type == "user",
                   ApprovalRequest.requested_by_id == user_id))  # as _is_requester
    decided = exists().where(ApprovalDecision.request_id == ApprovalRequest.id,
                             ApprovalDecision.approver_id == user_id)
    return and_(ApprovalRequest.state == "pending", ApprovalRequest.expires_at > now,
                role_matches, not_(own), not_(decided))


def inbox(s: Session, *, user_id: str, role: str, now: datetime | None = None,
          limit: int = 100) -> list[ApprovalRequest]:
    now = now or clock()
    return list(s.scalars(select(ApprovalRequest).where(_decidable_by(user_id, role, now))
                          .order_by(ApprovalRequest.created_at).limit(limit)))


def pending_count(s: Session, *, user_id: str, role: str, now: datetime | None = None) -> int:
    """How many requests wait for this member (the navigation's live count)."""
    now = now or clock()
    return int(s.scalar(select(func.count()).select_from(ApprovalRequest)
                        .where(_decidable_by(user_id, role, now))) or 0)


def recent_requests(s: Session, limit: int = 50) -> list[ApprovalRequest]:
    return list(s.scalars(select(ApprovalRequest).order_by(ApprovalRequest.created_at.desc())
                          .limit(limit)))


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    what: str
    who: str | None = None
    text: str | None = None  # a comment or reason (decrypted for display)
    kind: str = "info"


@dataclass(frozen=True)
class RequestView:
    request: ApprovalRequest
    state: str
    approvals: int
    timeline: list[TimelineEntry] = field(default_factory=list)
    can_decide: bool = False


def _open_comment(ctx: TenantContext, d: ApprovalDecision) -> str | None:
    if d.comment_sealed is None:
        return None
    return ctx.sealer.open_text(d.comment_sealed, table=TABLE, column="comment_sealed",
                                row_key=d.id)


NOTIFIED = {"email": "Approvers notified by e-mail", "webhook": "Notification webhook sent",
            "execute": "Action sent to the execution URL"}
EXECUTED = {"internal": "Action ran inside Magistrate", "webhook": "Approval used: the action "
            "is sent to the execution URL", "api": "Approval used: the action was executed by"}


def request_view(s: Session, ctx: TenantContext, request_id: str | uuid.UUID, *,
                 now: datetime | None = None) -> RequestView:
    """The request and its one timeline: who asked, what for, who decided and why, when, and
    what fired afterwards."""
    now = now or clock()
    req = access_request(s, request_id)
    decisions = list(s.scalars(select(ApprovalDecision).where(
        ApprovalDecision.request_id == req.id).order_by(ApprovalDecision.decided_at,
                                                        ApprovalDecision.id)))
    outbox = list(s.scalars(select(ApprovalOutbox).where(ApprovalOutbox.request_id == req.id)
                            .order_by(ApprovalOutbox.id)))
    entries = [TimelineEntry(req.created_at, f"Requested {req.action} ({req.via})",
                             req.requested_by_name, kind="requested")]
    if not req.restricted:
        entries.append(TimelineEntry(req.created_at, "Not restricted: approved at once",
                                     kind="approved"))
    for d in decisions:
        entries.append(TimelineEntry(
            d.decided_at, f"Approved ({d.approver_role})" if d.approve
            else f"Rejected ({d.approver_role})", d.approver_name, _open_comment(ctx, d),
            kind="approved" if d.approve else "rejected"))
    if req.restricted and req.decided_at is not None and req.state != "rejected":
        entries.append(TimelineEntry(req.decided_at, f"Approval complete ({req.approvals_needed}"
                                     f" of {req.approvals_needed})", kind="approved"))
    if req.executed_at is not None:
        what = EXECUTED.get(req.executed_via or "", "Approval used")
        entries.append(TimelineEntry(req.executed_at, what, req.executed_by, kind="executed"))
    for row in outbox:
        if row.status == "sent" and row.sent_at is not None:
            label = NOTIFIED[row.kind] + (f" ({row.recipients} recipients)"
                                          if row.kind == "email" else "")
            entries.append(TimelineEntry(row.sent_at, label, kind="fired"))
        elif row.status == "skipped":
            entries.append(TimelineEntry(row.sent_at or row.created_at,
                                         f"{NOTIFIED[row.kind]}: skipped ({row.last_error})",
                                         kind="info"))
        elif row.attempts:
            entries.append(TimelineEntry(row.next_attempt_at, f"{NOTIFIED[row.kind]}: "
                                         f"{row.attempts} attempts failed ({row.last_error}); "
                                         "retrying", kind="info"))
    state = display_state(req, now)
    if state == "expired":
        entries.append(TimelineEntry(req.expires_at, "Expired", kind="expired"))
    entries.sort(key=lambda e: e.at)
    approvals = sum(1 for d in decisions if d.approve)
    actor = ctx.actor
    can = (state == "pending" and actor.type == "user" and may_decide(actor.role,
                                                                      req.approver_role)
           and actor.id is not None and not _is_requester(req, actor.id)
           and not any(d.approver_id == actor.id for d in decisions))
    return RequestView(req, state, approvals, entries, can)

