"""Sign-in, MFA and account changes. ``do_*`` change state and write their audit event in the
caller's transaction; none of them commits."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.audit import Actor, AuthEvents
from control_plane.auth import mfa, passwords, sessions
from control_plane.auth.ratelimit import LoginRateLimiter
from control_plane.db import utcnow
from control_plane.exceptions import Conflict, InvalidInput
from control_plane.identity.policy import PasswordRefusal, password_refusal
from control_plane.models import BackupCode, User, WebSession
from control_plane.sealing import ControlSealer, SealError


class SignInOutcome(enum.Enum):
    SIGNED_IN = "signed_in"
    MFA_REQUIRED = "mfa_required"
    FAILED = "failed"
    SSO_REQUIRED = "sso_required"  # the password was right, but the policy wants the provider


@dataclass
class SignInResult:
    outcome: SignInOutcome
    token: str | None = None
    user: User | None = None
    refusal: PasswordRefusal | None = None  # SSO_REQUIRED: which policy, which buttons


@dataclass(frozen=True)
class ClientInfo:
    ip: str
    host: str
    user_agent: str | None = None
    details: dict[str, str] = field(default_factory=dict)


def actor_for(user: User) -> Actor:
    return Actor.user(user.id, user.email)


def get_user_by_email(s: Session, email: str) -> User | None:
    return s.scalars(select(User).where(User.email == email.strip().lower())).first()


def do_sign_in(s: Session, *, email: str, password: str, client: ClientInfo,
               limiter: LoginRateLimiter) -> SignInResult:
    """Check the password; a failure is audited and counted, never explained in detail."""
    limiter.check(client.ip, email)
    user = get_user_by_email(s, email)
    ok = passwords.verify_password(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        limiter.record_failure(client.ip, email)
        reason = ("unknown_account" if user is None else
                  "bad_password" if not ok else "deactivated")
        audit.record(s, AuthEvents.SIGN_IN_FAILED, actor=audit.SYSTEM,
                     target_type="user" if user else None, target_id=user.id if user else None,
                     details={"reason": reason, "ip": client.ip})
        return SignInResult(SignInOutcome.FAILED)
    refusal = password_refusal(s, user)
    if refusal is not None:
        # said only after the right password, so the break-glass account is not revealed
        audit.record(s, AuthEvents.SIGN_IN_FAILED, actor=audit.SYSTEM, target_type="user",
                     target_id=user.id, details={"reason": "sso_required", "ip": client.ip,
                                                 "tenant": refusal.tenant})
        return SignInResult(SignInOutcome.SSO_REQUIRED, refusal=refusal)
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    if user.mfa_enabled:
        # the backoff is cleared only by the whole sign-in: a guesser who has the password
        # must not reset the count of its MFA-code guesses by entering the password again
        token = sessions.start_session(s, user, host=client.host, ip=client.ip,
                                       user_agent=client.user_agent, mfa_pending=True)
        return SignInResult(SignInOutcome.MFA_REQUIRED, token, user)
    limiter.record_success(client.ip, email)
    token = sessions.start_session(s, user, host=client.host, ip=client.ip,
                                   user_agent=client.user_agent)
    audit.record(s, AuthEvents.SIGN_IN, actor=actor_for(user), target_type="user",
                 target_id=user.id, details={"ip": client.ip, "mfa": False})
    return SignInResult(SignInOutcome.SIGNED_IN, token, user)


def do_record_rate_limited(s: Session, *, client: ClientInfo) -> None:
    """Audit a sign-in refused by the rate limit (in its own transaction: the attempt itself
    changed nothing)."""
    audit.record(s, AuthEvents.SIGN_IN_RATE_LIMITED, actor=audit.SYSTEM,
                 details={"ip": client.ip})


def totp_secret(sealer: ControlSealer, user: User) -> str | None:
    if user.mfa_secret_sealed is None:
        return None
    try:
        return sealer.open(user.mfa_secret_sealed, table="users", column="mfa_secret",
                           row_key=user.id).decode()
    except SealError:
        return None


def _use_backup_code(s: Session, user: User, code: str) -> bool:
    row = s.scalars(
        select(BackupCode)
        .where(BackupCode.user_id == user.id, BackupCode.code_hash == mfa.backup_code_hash(code),
               BackupCode.used_at.is_(None))
        .with_for_update()
    ).first()
    if row is None:
        return False
    row.used_at = utcnow()
    return True


def do_pass_mfa_challenge(s: Session, pending: WebSession, *, code: str, client: ClientInfo,
                          sealer: ControlSealer, limiter: LoginRateLimiter) -> str | None:
    """Verify a TOTP or backup code for a pending session; returns the new full session token."""
    user = pending.user
    limiter.check(client.ip, user.email)
    # lock the user row: two requests with the same code cannot both pass
    s.refresh(user, with_for_update=True)
    secret = totp_secret(sealer, user)
    used_backup = False
    step = None if secret is None else mfa.matching_step(secret, code,
                                                          last_used_step=user.mfa_last_step)
    ok = step is not None
    if ok:
        user.mfa_last_step = step
    elif _use_backup_code(s, user, code):
        ok = used_backup = True
    if not ok:
        limiter.record_failure(client.ip, user.email)
        audit.record(s, AuthEvents.MFA_CHALLENGE_FAILED, actor=actor_for(user),
                     target_type="user", target_id=user.id, details={"ip": client.ip})
        return None
    limiter.record_success(client.ip, user.email)
    sessions.revoke_session(s, pending)
    sso = None if pending.sso_provider_id is None or pending.sso_subject is None else (
        pending.sso_provider_id, pending.sso_subject, pending.sso_sid)
    token = sessions.start_session(s, user, host=client.host, ip=client.ip,
                                   user_agent=client.user_agent, sso=sso)
    actor = actor_for(user)
    if used_backup:
        remaining = len(s.scalars(select(BackupCode.id).where(
            BackupCode.user_id == user.id, BackupCode.used_at.is_(None))).all())
        audit.record(s, AuthEvents.BACKUP_CODE_USED, actor=actor, target_type="user",
                     target_id=user.id, details={"remaining": remaining})
    audit.record(s, AuthEvents.MFA_CHALLENGE_PASSED, actor=actor, target_type="user",
                 target_id=user.id, details={"method": "backup_code" if used_backup else "totp"})
    audit.record(s, AuthEvents.SIGN_IN, actor=actor, target_type="user", target_id=user.id,
                 details={"ip": client.ip, "mfa": True})
    return token


def do_sign_out(s: Session, session_row: WebSession, *, acting_user: User) -> None:
    sessions.revoke_session(s, session_row)
    audit.record(s, AuthEvents.SIGN_OUT, actor=actor_for(acting_user), target_type="user",
                 target_id=acting_user.id)


def do_sign_out_everywhere(s: Session, *, acting_user: User) -> int:
    count = sessions.revoke_user_sessions(s, acting_user.id)
    audit.record(s, AuthEvents.SIGN_OUT_EVERYWHERE, actor=actor_for(acting_user),
                 target_type="user", target_id=acting_user.id, details={"sessions": count})
    return count


def do_change_password(s: Session, *, current: str, new: str, current_session: WebSession,
                       acting_user: User) -> None:
    if not passwords.verify_password(acting_user.password_hash, current):
        raise InvalidInput("The current password is not correct.")
    problem = passwords.password_problem(new, email=acting_user.email)
    if problem:
        raise InvalidInput(problem)
    if passwords.verify_password(acting_user.password_hash, new):
        raise InvalidInput("The new password must differ from the current one.")
    acting_user.password_hash = passwords.hash_password(new)
    acting_user.must_change_password = False
    acting_user.password_changed_at = utcnow()
    others = sessions.revoke_user_sessions(s, acting_user.id, except_id=current_session.id)
    audit.record(s, AuthEvents.PASSWORD_CHANGED, actor=actor_for(acting_user),
                 target_type="user", target_id=acting_user.id,
                 details={"other_sessions_revoked": others})


def do_begin_mfa_enrollment(s: Session, *, sealer: ControlSealer, acting_user: User) -> str:
    """Give the user a fresh TOTP secret (sealed at rest); MFA is on only after confirmation."""
    if acting_user.mfa_enabled:
        raise Conflict("Multi-factor authentication is already on for this account.")
    secret = totp_secret(sealer, acting_user)
    if secret is None:
        secret = mfa.new_totp_secret()
        acting_user.mfa_secret_sealed = sealer.seal(secret.encode(), table="users",
                                                    column="mfa_secret", row_key=acting_user.id)
    return secret


def do_confirm_mfa_enrollment(s: Session, *, code: str, sealer: ControlSealer,
                              acting_user: User) -> list[str]:
    """Turn MFA on when ``code`` matches; returns the backup codes, shown to the user once."""
    if acting_user.mfa_enabled:
        raise Conflict("Multi-factor authentication is already on for this account.")
    secret = totp_secret(sealer, acting_user)
    if secret is None:
        raise Conflict("Start the enrollment again: no pending authenticator secret was found.")
    step = mfa.matching_step(secret, code)
    if step is None:
        raise InvalidInput("That code does not match. Check your authenticator app's clock and "
                           "enter the current 6-digit code.")
    acting_user.mfa_enabled_at = utcnow()
    acting_user.mfa_last_step = step
    s.execute(delete(BackupCode).where(BackupCode.user_id == acting_user.id))
    codes = mfa.new_backup_codes()
    s.add_all(BackupCode(user_id=acting_user.id, code_hash=mfa.backup_code_hash(c))
              for c in codes)
    audit.record(s, AuthEvents.MFA_ENROLLED, actor=actor_for(acting_user), target_type="user",
                 target_id=acting_user.id, details={"backup_codes": len(codes)})
    return codes


def do_disable_mfa(s: Session, *, password: str, acting_user: User) -> None:
    if not acting_user.mfa_enabled:
        raise Conflict("Multi-factor authentication is not on for this account.")
    if not passwords.verify_password(acting_user.password_hash, password):
        raise InvalidInput("The password is not correct.")
    acting_user.mfa_enabled_at = None
    acting_user.mfa_secret_sealed = None
    acting_user.mfa_last_step = None
    s.execute(delete(BackupCode).where(BackupCode.user_id == acting_user.id))
    audit.record(s, AuthEvents.MFA_DISABLED, actor=actor_for(acting_user), target_type="user",
                 target_id=acting_user.id)
