"""The platform audit chain: control-plane actions (sign-ins, users, tenants, keys).

``record()`` writes in the caller's transaction, so the action and its event commit or roll back
together. Writers lock the single head row, so concurrent writers never fork the chain and
``seq`` stays contiguous. ``chain_hash = sha256(canonical_content || prev_hash)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.db import utcnow
from control_plane.models import PlatformAuditEvent, PlatformAuditHead
from tenant_runtime.audit import GENESIS_HASH, canonical_content, chain_hash, check_details
from tenant_runtime.observability import metrics


class AuthEvents:
    SIGN_IN = "auth.sign_in"
    SIGN_IN_FAILED = "auth.sign_in_failed"
    SIGN_IN_RATE_LIMITED = "auth.sign_in_rate_limited"
    SIGN_OUT = "auth.sign_out"
    SIGN_OUT_EVERYWHERE = "auth.sign_out_everywhere"
    MFA_CHALLENGE_PASSED = "auth.mfa_challenge_passed"
    MFA_CHALLENGE_FAILED = "auth.mfa_challenge_failed"
    MFA_ENROLLED = "auth.mfa_enrolled"
    MFA_DISABLED = "auth.mfa_disabled"
    BACKUP_CODE_USED = "auth.backup_code_used"
    PASSWORD_CHANGED = "auth.password_changed"  # noqa: S105 - an event name


class SsoEvents:
    """Single sign-on (control_plane/identity)."""

    PROVIDER_CREATED = "sso.provider_created"
    PROVIDER_DISABLED = "sso.provider_disabled"
    PROVIDER_ENABLED = "sso.provider_enabled"
    PROVIDER_UPDATED = "sso.provider_updated"  # details: changed {field: {from, to}}, no secret
    POLICY_CHANGED = "sso.policy_changed"
    TENANT_POLICY_CHANGED = "sso.tenant_policy_changed"
    SIGN_IN = "sso.sign_in"
    SIGN_IN_REFUSED = "sso.sign_in_refused"  # details: reason (wrong_issuer, expired, ...)
    ACCOUNT_CREATED = "sso.account_created"
    IDENTITY_LINKED = "sso.identity_linked"
    LINK_FAILED = "sso.link_failed"
    ROLE_GRANTED = "sso.role_granted"
    ROLE_CHANGED = "sso.role_changed"
    ROLE_REMOVED = "sso.role_removed"
    ROLE_KEPT = "sso.role_kept"  # a removal refused: the tenant's last Owner
    BACKCHANNEL_LOGOUT = "sso.backchannel_logout"
    BACKCHANNEL_LOGOUT_REFUSED = "sso.backchannel_logout_refused"


class UserEvents:
    CREATED = "user.created"
    DEACTIVATED = "user.deactivated"
    REACTIVATED = "user.reactivated"
    PASSWORD_RESET = "user.password_reset"  # noqa: S105 - an event name


@dataclass(frozen=True)
class Actor:
    type: str  # "user", "api_key" or "system"
    id: str | None = None
    name: str | None = None

    @classmethod
    def user(cls, user_id: int, name: str) -> Actor:
        return cls("user", str(user_id), name)


SYSTEM = Actor("system")


def _content(event: PlatformAuditEvent | None = None, **fields: Any) -> bytes:
    if event is not None:
        fields = {"seq": event.seq, "occurred_at": event.occurred_at,
                  "actor_type": event.actor_type, "actor_id": event.actor_id,
                  "actor_name": event.actor_name, "event_type": event.event_type,
                  "target_type": event.target_type, "target_id": event.target_id,
                  "details": event.details}
    return canonical_content(**fields)


def record(
    session: Session, event_type: str, *, actor: Actor, target_type: str | None = None,
    target_id: str | int | None = None, details: dict[str, Any] | None = None,
) -> PlatformAuditEvent:
    """Append one event to the platform chain inside the caller's transaction."""
    metrics.AUDIT_APPENDS.labels("platform").inc()
    head = session.execute(
        select(PlatformAuditHead).where(PlatformAuditHead.id == 1).with_for_update()
    ).scalar_one()
    seq = head.seq + 1
    occurred_at = utcnow()
    details = details or {}
    check_details(details)
    tid = None if target_id is None else str(target_id)
    content = _content(seq=seq, occurred_at=occurred_at, actor_type=actor.type,
                       actor_id=actor.id, actor_name=actor.name, event_type=event_type,
                       target_type=target_type, target_id=tid, details=details)
    digest = chain_hash(content, head.chain_hash)
    event = PlatformAuditEvent(
        seq=seq, occurred_at=occurred_at, actor_type=actor.type, actor_id=actor.id,
        actor_name=actor.name, event_type=event_type, target_type=target_type, target_id=tid,
        details=details, prev_hash=head.chain_hash, chain_hash=digest,
    )
    session.add(event)
    head.seq = seq
    head.chain_hash = digest
    session.flush()
    return event


def verify_chain(session: Session) -> list[str]:
    """Recompute the chain; returns the problems found (empty when it verifies)."""
    problems: list[str] = []
    prev = GENESIS_HASH
    expected_seq = 1
    for event in session.scalars(select(PlatformAuditEvent).order_by(PlatformAuditEvent.seq)):
        if event.seq != expected_seq:
            problems.append(f"sequence gap: expected {expected_seq}, found {event.seq}")
        content = _content(event)
        if event.prev_hash != prev or chain_hash(content, prev) != event.chain_hash:
            problems.append(f"event {event.seq} does not match its hash")
        prev = event.chain_hash
        expected_seq = event.seq + 1
    return problems
