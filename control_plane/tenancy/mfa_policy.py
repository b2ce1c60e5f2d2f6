"""A tenant's requirement of two-factor sign-in: when an Owner turns it on, a member without
MFA is refused the tenant's pages (with a sentence that sends them to their account) until
they enrol. The Owner turning it on must have MFA themselves, so no one locks themselves out.
A session whose second factor the identity provider did (its ID token's ``amr``/``acr``, as
the provider's configuration accepts: ``web_sessions.mfa_by_provider``) meets the requirement
as TOTP does. Bearer API keys are not affected: a key is not a sign-in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.db import utcnow
from control_plane.exceptions import Conflict, Forbidden
from control_plane.models import User

if TYPE_CHECKING:
    from control_plane.web.deps import SignedIn
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.service import TenantAccess, actor_of, members
from tenant_runtime import permissions


class MfaRequired(Forbidden):
    default_message = ("This tenant requires two-factor sign-in. Turn it on in your account "
                       "(/account), or sign in with an identity provider that asks for a "
                       "second factor, then open the tenant again.")


def check_mfa(access: TenantAccess, me: SignedIn) -> None:
    """Refuse a member without a second factor when the tenant requires one: TOTP on the
    account, or this session's provider vouching for one."""
    if (access.tenant.require_mfa and not me.user.mfa_enabled
            and not me.session.mfa_by_provider):
        raise MfaRequired()


def not_enrolled(s: Session, access: TenantAccess) -> list[tuple[str, str]]:
    """(e-mail, role) of the tenant's members who have not turned on two-factor sign-in."""
    return [(user.email, membership.role) for membership, user in members(s, access.tenant)
            if not user.mfa_enabled and user.is_active]


def do_set_mfa_requirement(s: Session, access: TenantAccess, *, required: bool,
                           acting_user: User) -> bool:
    """Turn the requirement on or off; answers whether it changed."""
    if not permissions.allows(access.role, "tenant.lifecycle"):
        raise Forbidden("Only an Owner of this tenant can require two-factor sign-in.")
    if required and not acting_user.mfa_enabled:
        raise Conflict("Turn on two-factor sign-in for your own account first (/account): "
                       "requiring it without it would lock you out of this tenant.")
    tenant = access.tenant
    if tenant.require_mfa == required:
        return False
    tenant.require_mfa = required
    tenant.updated_at = utcnow()
    audit.record(s, TenantEvents.MFA_REQUIREMENT_CHANGED, actor=actor_of(acting_user),
                 target_type="tenant", target_id=tenant.id, details={"required": required})
    return True
