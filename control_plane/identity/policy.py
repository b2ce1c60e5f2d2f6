"""Who may sign in with a password: the single sign-on policy of the platform (one row) and of
each tenant (``tenants.sso_required``), read by the password sign-in (which it may refuse) and
changed by ``service.do_set_policy`` and ``service.do_set_tenant_policy``. Apart so
``control_plane.auth`` can read it without importing the rest of single sign-on.

``password_refusal`` is the one choke point: every path that turns a password into a session
asks it (``auth.service.do_sign_in``; a test enumerates the callers of
``sessions.start_session`` so a new path cannot skip it). A break-glass account keeps its
password only while it has TOTP, so the password alone never opens it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.models import IdentityProvider, Membership, SsoPolicy, Tenant, User


def get_policy(s: Session, *, lock: bool = False) -> SsoPolicy:
    query = select(SsoPolicy).where(SsoPolicy.id == 1)
    row = s.scalars(query.with_for_update() if lock else query).first()
    if row is None:
        row = SsoPolicy(id=1, sso_required=False)
        s.add(row)
        s.flush()
    return row


@dataclass(frozen=True)
class PasswordRefusal:
    """Why a password sign-in is refused: ``tenant`` is None when the platform requires single
    sign-on; ``providers`` are the names of the buttons to use instead."""

    tenant: str | None
    providers: tuple[str, ...]

    def sentence(self) -> str:
        where = (f"The tenant {self.tenant} requires" if self.tenant
                 else "This installation requires")
        if not self.providers:
            return (f"{where} single sign-on, and no identity provider is active: ask an "
                    "Owner.")
        buttons = " or ".join(f"\u201cSign in with {name}\u201d" for name in self.providers)
        return f"{where} single sign-on: use the {buttons} button below."


def _break_glass(user: User, break_glass_user_id: int | None) -> bool:
    return break_glass_user_id == user.id and user.mfa_enabled


def _active_provider_names(s: Session, only: int | None = None) -> tuple[str, ...]:
    query = select(IdentityProvider.name).where(IdentityProvider.is_active)
    if only is not None:
        query = query.where(IdentityProvider.id == only)
    return tuple(s.scalars(query.order_by(IdentityProvider.name)))


def password_refusal(s: Session, user: User) -> PasswordRefusal | None:
    """Whether a policy refuses this account a password sign-in, and which: the platform's
    first, then the first tenant (by slug) of the account's that requires single sign-on and
    does not name it its break-glass Owner."""
    policy = get_policy(s)
    if policy.sso_required and not _break_glass(user, policy.break_glass_user_id):
        return PasswordRefusal(None, _active_provider_names(s))
    tenants = s.scalars(
        select(Tenant).join(Membership, Membership.tenant_id == Tenant.id)
        .where(Membership.user_id == user.id, Tenant.sso_required,
               Tenant.state.in_(("active", "suspended")))
        .order_by(Tenant.slug)).all()
    for row in tenants:
        if not _break_glass(user, row.sso_break_glass_user_id):
            names = _active_provider_names(s, row.sso_provider_id)
            return PasswordRefusal(row.name, names or _active_provider_names(s))
    return None


def sso_settings(s: Session, tenant: Tenant) -> dict[str, object]:
    """What a tenant's Settings tab shows of its single sign-on policy."""
    break_glass = (s.get(User, tenant.sso_break_glass_user_id)
                   if tenant.sso_break_glass_user_id else None)
    provider = (s.get(IdentityProvider, tenant.sso_provider_id)
                if tenant.sso_provider_id else None)
    return {"sso_break_glass": break_glass.email if break_glass else "",
            "sso_provider": provider.name if provider else "",
            "sso_providers": list(_active_provider_names(s))}
