"""Everything an account holds that outlives a sign-in, cut at once when the account is
deactivated (by an Owner, the CLI, or the identity provider over SCIM: ``active: false`` or
DELETE): ``users.service.do_deactivate_account`` runs every function of ``REVOCATIONS`` in its
transaction and audits what each one revoked under its detail key.

A new kind of standing access (a token, a grant) is added to ``REVOCATIONS`` here, and nowhere
else: the deactivation, the SCIM deprovisioning and their tests then cover it."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from control_plane.audit import Actor
from control_plane.auth import sessions
from control_plane.mcp_oauth.service import revoke_grants_of
from control_plane.models import User
from control_plane.tenancy.service import revoke_keys_of

Revocation = Callable[[Session, User, Actor], int]


def _sessions(s: Session, user: User, actor: Actor) -> int:
    return sessions.revoke_user_sessions(s, user.id)


def _api_keys(s: Session, user: User, actor: Actor) -> int:
    return revoke_keys_of(s, user.id, tenant_id=None, reason="creator deactivated",
                          actor=actor)


def _mcp_grants(s: Session, user: User, actor: Actor) -> int:
    return revoke_grants_of(s, user.id, tenant_id=None, reason="member deactivated",
                            actor=actor)


# (the audit detail's key, the function): each answers how many it revoked
REVOCATIONS: list[tuple[str, Revocation]] = [
    ("sessions_revoked", _sessions),
    ("api_keys_revoked", _api_keys),
    ("mcp_grants_revoked", _mcp_grants),
]


def revoke_all_access(s: Session, user: User, *, actor: Actor) -> dict[str, int]:
    """Run every revocation for ``user``, in the caller's transaction."""
    return {name: revoke(s, user, actor) for name, revoke in REVOCATIONS}
