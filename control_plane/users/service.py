"""Operator accounts: creation (with a one-time password), deactivation, the first Owner.

Deactivation is an installation Owner's act (an installation Owner ranks with every tenant's
Owners); it ends the account's sessions and revokes every API key it made, at once and audited,
and it is refused while the account is the last active Owner of the installation or of a
tenant. Reactivation lets the account sign in again and revives no key."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.audit import Actor, UserEvents
from control_plane.auth import passwords, sessions
from control_plane.db import utcnow
from control_plane.exceptions import Conflict, Forbidden, InvalidInput, NotFound
from control_plane.models import User
from control_plane.tenancy.service import tenants_it_would_orphan
from control_plane.users import deprovision


@dataclass
class CreatedUser:
    user: User
    one_time_password: str | None


def new_one_time_password() -> str:
    return secrets.token_urlsafe(15)


def _actor(user: User | None) -> Actor:
    return audit.SYSTEM if user is None else Actor.user(user.id, user.email)


def require_owner(acting_user: User) -> None:
    if not acting_user.is_owner:
        raise Forbidden("Only an Owner can manage users.")


def access_user(s: Session, user_id: int, *, acting_user: User) -> User:
    """A user an Owner may manage; the same 'not found' for missing and non-existent ids."""
    require_owner(acting_user)
    user = s.get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    return user


def list_users(s: Session, *, acting_user: User) -> list[User]:
    require_owner(acting_user)
    return list(s.scalars(select(User).order_by(User.created_at, User.id)))


def do_create_user(
    s: Session, *, email: str, display_name: str, is_owner: bool, password: str | None = None,
    acting_user: User | None,
) -> CreatedUser:
    """Create an account. Without ``password`` a one-time password is generated and the user
    must choose a new one at first sign-in. ``acting_user=None`` means the system (CLI, ``up``)."""
    if acting_user is not None:
        require_owner(acting_user)
    email = email.strip().lower()
    one_time = None
    if password is None:
        one_time = password = new_one_time_password()
    else:
        problem = passwords.password_problem(password, email=email)
        if problem:
            raise InvalidInput(problem)
    user = User(email=email, display_name=display_name.strip() or email,
                password_hash=passwords.hash_password(password), is_owner=is_owner,
                must_change_password=one_time is not None)
    try:
        with s.begin_nested():
            s.add(user)
            s.flush()
    except IntegrityError:
        raise Conflict(f"An account with the e-mail {email} already exists.") from None
    audit.record(s, UserEvents.CREATED, actor=_actor(acting_user), target_type="user",
                 target_id=user.id, details={"is_owner": is_owner})
    return CreatedUser(user, one_time)


def _active_owner_count(s: Session) -> int:
    return int(s.scalar(select(func.count()).select_from(User)
                        .where(User.is_owner, User.is_active)) or 0)


def do_deactivate_user(s: Session, user: User, *, acting_user: User) -> None:
    require_owner(acting_user)
    if user.id == acting_user.id:
        raise Conflict("You cannot deactivate your own account.")
    do_deactivate_account(s, user, actor=_actor(acting_user))


def do_deactivate_account(s: Session, user: User, *, actor: Actor) -> None:
    """End the account's access at once: sessions revoked, every API key it made revoked, and
    every other standing access of ``deprovision.REVOCATIONS`` (the one hook point), audited
    with ``actor`` (an Owner, or a SCIM token acting for the identity provider). Refused while
    it is the last active Owner of the installation or of a tenant."""
    if not user.is_active:
        raise Conflict("That account is already deactivated.")
    if user.is_owner and _active_owner_count(s) <= 1:
        raise Conflict("That is the last active Owner; make someone else an Owner first.")
    orphaned = tenants_it_would_orphan(s, user.id)
    if orphaned:
        raise Conflict(f"{user.email} is the last Owner of {', '.join(orphaned)}; make someone "
                       "else an Owner there first.")
    user.is_active = False
    user.deactivated_at = utcnow()
    revoked = deprovision.revoke_all_access(s, user, actor=actor)
    audit.record(s, UserEvents.DEACTIVATED, actor=actor, target_type="user",
                 target_id=user.id, details=revoked)


def do_reactivate_user(s: Session, user: User, *, acting_user: User) -> None:
    """Let the account sign in again. Its API keys, revoked at deactivation, stay revoked."""
    require_owner(acting_user)
    do_reactivate_account(s, user, actor=_actor(acting_user))


def do_reactivate_account(s: Session, user: User, *, actor: Actor) -> None:
    if user.is_active:
        raise Conflict("That account is already active.")
    user.is_active = True
    user.deactivated_at = None
    audit.record(s, UserEvents.REACTIVATED, actor=actor, target_type="user",
                 target_id=user.id)


def ensure_first_owner(s: Session, *, email: str, password: str | None) -> CreatedUser | None:
    """Create the first Owner when the installation has no user yet; otherwise do nothing.

    Safe to run from several processes at once: they queue on an advisory lock."""
    s.execute(text("SELECT pg_advisory_xact_lock(74202)"))
    if s.scalar(select(func.count()).select_from(User)):
        return None
    return do_create_user(s, email=email, display_name="Owner", is_owner=True,
                          password=password, acting_user=None)


def do_reset_password(s: Session, *, email: str, acting_user: User | None) -> str:
    """Give an account a new one-time password (returned, to be shown once): the old password
    stops working, the user must choose a new one at next sign-in, and every session of the
    account is revoked. ``acting_user=None`` is the system (``magistrate user reset-password``,
    for whoever holds the server's shell when the Owner's password is lost). Second factors
    are kept: a reset password does not bypass MFA."""
    if acting_user is not None:
        require_owner(acting_user)
    user = s.scalars(select(User).where(User.email == email.strip().lower())
                     .with_for_update()).first()
    if user is None:
        raise NotFound(f"No account has the e-mail {email.strip().lower()}.")
    if not user.is_active:
        raise Conflict(f"The account {user.email} is deactivated; reactivate it first.")
    one_time = new_one_time_password()
    user.password_hash = passwords.hash_password(one_time)
    user.must_change_password = True
    revoked = sessions.revoke_user_sessions(s, user.id)
    audit.record(s, UserEvents.PASSWORD_RESET, actor=_actor(acting_user), target_type="user",
                 target_id=user.id, details={"sessions_revoked": revoked})
    return one_time
