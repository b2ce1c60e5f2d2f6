"""Tenants: creation (provisioning runs as a job), access, memberships, lifecycle.

Members follow one rule wherever they are changed (dashboard, JSON API, CLI all call the
``do_*`` here): nobody gives a role, removes a member or changes the role of a member whose role
outranks theirs (``permissions.outranks``: holds a permission theirs lacks), and a tenant's last
active Owner can be neither removed nor demoted (nor deactivated:
control_plane/users/service.py). Removing a member revokes the API keys they made in that
tenant.

``access_tenant`` answers the same 404 for a tenant that does not exist and for one the user is
not a member of: another tenant's id looks exactly like a missing one. A member whose role lacks
the permission asked for gets ``ScopeDenied`` (403), which the web edge audits
(control_plane/web/access.py)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.audit import Actor
from control_plane.db import utcnow
from control_plane.exceptions import Conflict, Forbidden, InvalidInput, NotFound
from control_plane.jobs import JobKinds, enqueue_job, requeue_job
from control_plane.keys.providers import KeyProvider, KeyReferenceInvalid, KeyUnavailable
from control_plane.keys.registry import new_data_key
from control_plane.mcp_oauth.service import revoke_grants_of
from control_plane.models import ROLES, ApiKey, Job, Membership, Tenant, TenantKey, User
from control_plane.sealing import ControlSealer
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.provisioning import STEPS
from control_plane.tenancy.servers import pick_server
from tenant_runtime import permissions

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
MAX_ID = 2**63 - 1  # a Postgres bigint


class ScopeDenied(Forbidden):
    """A member of the tenant whose role does not hold ``permission``: 403 with the matrix's
    sentence. It carries what the audit event needs, read before the transaction ends."""

    def __init__(self, *, permission: str, role: str, tenant_id: int, tenant_state: str,
                 user_id: int, user_email: str) -> None:
        super().__init__(permissions.refusal(permission, role))
        self.permission, self.role = permission, role
        self.tenant_id, self.tenant_state = tenant_id, tenant_state
        self.user_id, self.user_email = user_id, user_email
        self.recorded = False  # set once the edge has audited it


@dataclass
class TenantAccess:
    tenant: Tenant
    membership: Membership

    @property
    def role(self) -> str:
        return self.membership.role


def actor_of(user: User) -> Actor:
    return Actor.user(user.id, user.email)


def access_tenant(s: Session, tenant_id: int, *, user: User,
                  permission: str | None = None) -> TenantAccess:
    """The tenant if ``user`` is a member (whose role holds ``permission`` when given).
    Missing, deleted and not-a-member all answer the same NotFound; a member whose role lacks
    the permission gets ScopeDenied."""
    if not 0 < tenant_id <= MAX_ID:  # not an id Postgres could hold: no such tenant either
        raise NotFound("No such tenant.")
    row = s.execute(
        select(Tenant, Membership).join(Membership, Membership.tenant_id == Tenant.id)
        .where(Tenant.id == tenant_id, Membership.user_id == user.id,
               Tenant.state != "deleted")
    ).first()
    if row is None:
        raise NotFound("No such tenant.")
    access = TenantAccess(row[0], row[1])
    if permission is not None and not permissions.allows(access.role, permission):
        raise ScopeDenied(permission=permission, role=access.role, tenant_id=access.tenant.id,
                          tenant_state=access.tenant.state, user_id=user.id,
                          user_email=user.email)
    return access


def list_tenants(s: Session, *, user: User) -> list[tuple[Tenant, str]]:
    rows = s.execute(
        select(Tenant, Membership.role).join(Membership, Membership.tenant_id == Tenant.id)
        .where(Membership.user_id == user.id, Tenant.state != "deleted")
        .order_by(Tenant.created_at, Tenant.id)
    ).all()
    return [(t, r) for t, r in rows]


def check_key_choice(providers: Mapping[str, KeyProvider], provider: str, key_ref: str) -> None:
    if provider not in providers:
        raise InvalidInput(f"The key provider {provider!r} is not available here; choose one of "
                           f"{', '.join(sorted(providers))}.")
    try:
        providers[provider].check_reference(key_ref)
    except KeyReferenceInvalid as exc:
        raise InvalidInput(str(exc)) from None


def probe_key(providers: Mapping[str, KeyProvider], provider: str, key_ref: str,
              ) -> tuple[bool, str]:
    """What "Test key" does: wrap and unwrap a throw-away data key with the chosen KEK.
    Returns whether it worked and one sentence saying so (the choice must be valid)."""
    probe = new_data_key()
    chosen = providers[provider]
    try:
        wrapped = chosen.wrap(probe, tenant_id="key-test", key_ref=key_ref)
        ok = chosen.unwrap(wrapped, tenant_id="key-test", key_ref=key_ref) == probe
    except KeyUnavailable as exc:
        return False, str(exc)
    return ok, ("Wrap and unwrap worked with this key." if ok else
                "The key unwrapped to different bytes; do not use it.")


def require_working_key(providers: Mapping[str, KeyProvider], provider: str,
                        key_ref: str) -> None:
    """A tenant is recorded (or its key reference changed) only on a key that passes its test,
    whatever the page's script did: a key that fails would leave it stuck in provisioning."""
    check_key_choice(providers, provider, key_ref)
    ok, message = probe_key(providers, provider, key_ref)
    if not ok:
        raise InvalidInput(f"The key did not pass its test ({message}); fix the key reference "
                           "(or create the key) and try again.")


def do_change_provisioning_key(s: Session, access: TenantAccess, *, key_provider: str,
                               key_ref: str, providers: Mapping[str, KeyProvider],
                               acting_user: User) -> Job:
    """Fix a tenant stuck in provisioning on its key: name another key (which must pass its
    test) and run the provisioning job again. Only before a data key was wrapped: after that,
    a key change is a rotation (``magistrate keys rotate``)."""
    if not permissions.allows(access.role, "tenant.lifecycle"):
        raise Forbidden("Only an Owner of this tenant can change its key.")
    tenant = access.tenant
    job = provisioning_job(s, tenant)
    if tenant.state != "provisioning" or job is None or job.state != "failed":
        raise Conflict("The key reference can be changed here only while provisioning has "
                       "failed; an active tenant's key is changed by a key rotation.")
    if s.scalars(select(TenantKey.id).where(TenantKey.tenant_id == tenant.id)).first():
        raise Conflict("This tenant already has a data key wrapped by its key; change the key "
                       "with a key rotation instead.")
    require_working_key(providers, key_provider, key_ref)
    before = {"key_provider": tenant.key_provider, "key_ref": tenant.key_ref}
    tenant.key_provider, tenant.key_ref = key_provider, key_ref
    tenant.updated_at = utcnow()
    requeue_job(s, job)
    audit.record(s, TenantEvents.PROVISIONING_KEY_CHANGED, actor=actor_of(acting_user),
                 target_type="tenant", target_id=tenant.id,
                 details={"before": before,
                          "after": {"key_provider": key_provider, "key_ref": key_ref}})
    return job


def check_new_slug(s: Session, slug: str) -> str:
    """``slug`` normalised, if it is well formed and no tenant (live or deleted) has it."""
    slug = slug.strip().lower()
    if not SLUG_PATTERN.fullmatch(slug):
        raise InvalidInput("The slug must be 2 to 63 characters: lowercase letters, digits and "
                           "'-', starting with a letter.")
    if s.scalars(select(Tenant.id).where(Tenant.slug == slug)).first() is not None:
        raise Conflict(f"A tenant with the slug {slug} already exists.")
    return slug


def add_tenant_row(s: Session, *, slug: str, name: str, key_provider: str, key_ref: str,
                   sealer: ControlSealer, owner: User) -> Tenant:
    """The tenant row (state ``provisioning``) on the server the normal placement picks, with
    fresh sealed passwords for its two roles, and ``owner`` as its Owner; flushed."""
    server = pick_server(s)
    tenant = Tenant(slug=slug, name=name.strip() or slug, key_provider=key_provider,
                    key_ref=key_ref, db_server_id=server.id, created_by=owner.id)
    tenant.db_server = server
    s.add(tenant)
    s.flush()
    tenant.owner_password_sealed = sealer.seal(secrets.token_urlsafe(32).encode(),
                                               table="tenants", column="owner_password",
                                               row_key=tenant.id)
    tenant.app_password_sealed = sealer.seal(secrets.token_urlsafe(32).encode(),
                                             table="tenants", column="app_password",
                                             row_key=tenant.id)
    s.add(Membership(user_id=owner.id, tenant_id=tenant.id, role="Owner"))
    s.flush()
    return tenant


def server_name(tenant: Tenant) -> str | None:
    return tenant.db_server.name if tenant.db_server is not None else None


def do_create_tenant(s: Session, *, slug: str, name: str, key_provider: str, key_ref: str,
                     providers: Mapping[str, KeyProvider], sealer: ControlSealer,
                     acting_user: User) -> tuple[Tenant, Job]:
    """Record the tenant (state ``provisioning``), make the creator its Owner, and queue the
    provisioning job, all in the caller's transaction."""
    if not acting_user.is_owner:
        raise Forbidden("Only an Owner of this installation can create tenants.")
    slug = check_new_slug(s, slug)
    check_key_choice(providers, key_provider, key_ref)
    tenant = add_tenant_row(s, slug=slug, name=name, key_provider=key_provider,
                            key_ref=key_ref, sealer=sealer, owner=acting_user)
    job = enqueue_job(s, JobKinds.PROVISION_TENANT, {"tenant_id": tenant.id},
                      idempotency_key=f"provision:{tenant.id}", tenant_id=tenant.id,
                      created_by=acting_user.id, progress_total=len(STEPS))
    audit.record(s, TenantEvents.CREATED, actor=actor_of(acting_user), target_type="tenant",
                 target_id=tenant.id, details={"slug": slug, "server": server_name(tenant),
                                               "key_provider": key_provider})
    return tenant, job


def provisioning_job(s: Session, tenant: Tenant) -> Job | None:
    return s.scalars(select(Job).where(Job.idempotency_key == f"provision:{tenant.id}")).first()


def do_suspend_tenant(s: Session, access: TenantAccess, *, reason: str,
                      acting_user: User) -> None:
    tenant = access.tenant
    if not permissions.allows(access.role, "tenant.lifecycle"):
        raise Forbidden("Only an Owner of this tenant can suspend it.")
    if tenant.state != "active":
        raise Conflict(f"Only an active tenant can be suspended; this one is {tenant.state}.")
    tenant.state = "suspended"
    tenant.suspended_reason = reason.strip()[:500] or "suspended by an Owner"
    tenant.updated_at = utcnow()
    audit.record(s, TenantEvents.SUSPENDED, actor=actor_of(acting_user), target_type="tenant",
                 target_id=tenant.id, details={"reason_length": len(reason)})


def do_resume_tenant(s: Session, access: TenantAccess, *, acting_user: User) -> None:
    tenant = access.tenant
    if not permissions.allows(access.role, "tenant.lifecycle"):
        raise Forbidden("Only an Owner of this tenant can resume it.")
    if tenant.state != "suspended":
        raise Conflict(f"Only a suspended tenant can be resumed; this one is {tenant.state}.")
    tenant.state = "active"
    tenant.suspended_reason = None
    tenant.updated_at = utcnow()
    audit.record(s, TenantEvents.RESUMED, actor=actor_of(acting_user), target_type="tenant",
                 target_id=tenant.id)


def do_add_member(s: Session, access: TenantAccess, *, email: str, role: str,
                  acting_user: User) -> Membership:
    if not permissions.allows(access.role, "members.manage"):
        raise Forbidden("Only an Owner or Admin of this tenant can manage members.")
    if role not in ROLES:
        raise InvalidInput(f"The role must be one of {', '.join(ROLES)}.")
    _check_may_give(access, role)
    user = s.scalars(select(User).where(User.email == email.strip().lower(),
                                        User.is_active)).first()
    if user is None:
        raise InvalidInput(f"No active account has the e-mail {email.strip()}; create it on "
                           "the Users page first.")
    existing = s.scalars(select(Membership).where(Membership.tenant_id == access.tenant.id,
                                                  Membership.user_id == user.id)).first()
    if existing is not None:
        raise Conflict(f"{user.email} is already a member ({existing.role}).")
    membership = Membership(user_id=user.id, tenant_id=access.tenant.id, role=role)
    s.add(membership)
    s.flush()
    audit.record(s, TenantEvents.MEMBER_ADDED, actor=actor_of(acting_user),
                 target_type="tenant", target_id=access.tenant.id,
                 details={"user_id": user.id, "role": role})
    return membership


# --- who may remove, demote or deactivate whom: one rule for the dashboard, API and CLI -------


def _check_may_give(access: TenantAccess, role: str) -> None:
    """Nobody gives a role that outranks their own (only an Owner makes an Owner)."""
    if permissions.outranks(role, access.role):
        raise Forbidden(f"Your role ({access.role}) may not make someone {role}: that role "
                        f"outranks yours ({_beyond(role, access.role)}).")


def _check_may_touch(access: TenantAccess, target: Membership, what: str) -> None:
    """Nobody removes or changes the role of a member whose role outranks theirs."""
    if not permissions.allows(access.role, "members.manage"):
        raise Forbidden("Only an Owner or Admin of this tenant can manage members.")
    if permissions.outranks(target.role, access.role):
        article = "an" if target.role[0] in "AEIOU" else "a"
        raise Forbidden(f"Your role ({access.role}) may not {what} {article} {target.role}: "
                        f"that member's role outranks yours "
                        f"({_beyond(target.role, access.role)}).")


def _beyond(role: str, mine: str) -> str:
    """What ``role`` may do that ``mine`` may not, for a refusal sentence."""
    extra = sorted(permissions.held_by(role) - permissions.held_by(mine))
    more = f", and {len(extra) - 1} more things yours may not" if len(extra) > 1 else ""
    return f"it may {permissions.MATRIX[extra[0]].means}{more}"


def other_active_owners(s: Session, tenant_id: int, user_id: int) -> int:
    """How many Owners of the tenant, other than ``user_id``, have an active account."""
    return int(s.scalar(
        select(func.count()).select_from(Membership).join(User, User.id == Membership.user_id)
        .where(Membership.tenant_id == tenant_id, Membership.role == "Owner",
               Membership.user_id != user_id, User.is_active)) or 0)


def _check_not_last_owner(s: Session, target: Membership, what: str) -> None:
    if target.role == "Owner" and other_active_owners(s, target.tenant_id,
                                                      target.user_id) == 0:
        raise Conflict(f"That is the tenant's last Owner, who cannot be {what}; make someone "
                       "else an Owner first.")


def access_member(s: Session, access: TenantAccess, membership_id: int) -> Membership:
    """A membership of this tenant, locked for the change; another tenant's is "no such"."""
    membership = s.scalars(select(Membership).where(Membership.id == membership_id)
                           .with_for_update()).first()
    if membership is None or membership.tenant_id != access.tenant.id:
        raise NotFound("No such member.")
    return membership


def _lock_owners(s: Session, tenant_id: int) -> None:
    """Serialize changes to one tenant's members, so two Owners demoting each other at once
    cannot leave it with none."""
    s.execute(select(func.pg_advisory_xact_lock(74203, tenant_id)))


def do_change_member_role(s: Session, access: TenantAccess, membership_id: int, *, role: str,
                          acting_user: User) -> Membership:
    if role not in ROLES:
        raise InvalidInput(f"The role must be one of {', '.join(ROLES)}.")
    _lock_owners(s, access.tenant.id)
    membership = access_member(s, access, membership_id)
    _check_may_touch(access, membership, "change the role of")
    _check_may_give(access, role)
    if membership.role == role:
        return membership
    if role != "Owner":
        _check_not_last_owner(s, membership, "demoted")
    before, membership.role = membership.role, role
    audit.record(s, TenantEvents.MEMBER_ROLE_CHANGED, actor=actor_of(acting_user),
                 target_type="tenant", target_id=access.tenant.id,
                 details={"user_id": membership.user_id, "from": before, "to": role})
    return membership


def do_remove_member(s: Session, access: TenantAccess, membership_id: int, *,
                     acting_user: User) -> None:
    """Remove a membership; the member's API keys and OAuth grants of this tenant are revoked
    with it."""
    _lock_owners(s, access.tenant.id)
    membership = access_member(s, access, membership_id)
    _check_may_touch(access, membership, "remove")
    _check_not_last_owner(s, membership, "removed")
    s.delete(membership)
    revoked = revoke_member_access(s, membership.user_id, tenant_id=access.tenant.id,
                                   reason="membership removed", actor=actor_of(acting_user))
    audit.record(s, TenantEvents.MEMBER_REMOVED, actor=actor_of(acting_user),
                 target_type="tenant", target_id=access.tenant.id,
                 details={"user_id": membership.user_id, "role": membership.role, **revoked})


def revoke_member_access(s: Session, user_id: int, *, tenant_id: int, reason: str,
                         actor: Actor) -> dict[str, int]:
    """What a member loses with their membership of ``tenant_id``: the API keys they created
    there and the MCP clients' grants they approved there, each audited; the counts, under the
    audit detail keys ``api_keys_revoked`` and ``mcp_grants_revoked``."""
    return {"api_keys_revoked": revoke_keys_of(s, user_id, tenant_id=tenant_id, reason=reason,
                                               actor=actor),
            "mcp_grants_revoked": revoke_grants_of(s, user_id, tenant_id=tenant_id,
                                                   reason=reason, actor=actor)}


def revoke_keys_of(s: Session, user_id: int, *, tenant_id: int | None, reason: str,
                   actor: Actor) -> int:
    """Revoke every live API key ``user_id`` created (in ``tenant_id``, or everywhere), each
    audited with ``reason``, in the caller's transaction; how many. A revoked key stays
    revoked: reactivating the account or adding the member again does not revive it."""
    query = select(ApiKey).where(ApiKey.created_by == user_id, ApiKey.revoked_at.is_(None))
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    rows = list(s.scalars(query.order_by(ApiKey.id).with_for_update()))
    now = utcnow()
    for row in rows:
        row.revoked_at = now
        audit.record(s, TenantEvents.API_KEY_REVOKED, actor=actor, target_type="api_key",
                     target_id=row.id, details={"tenant_id": row.tenant_id,
                                                "prefix": row.prefix, "reason": reason})
    return len(rows)


def tenants_it_would_orphan(s: Session, user_id: int) -> list[str]:
    """The slugs of tenants whose only active Owner is ``user_id``."""
    owned = s.scalars(select(Membership).where(Membership.user_id == user_id,
                                               Membership.role == "Owner")).all()
    return sorted(m.tenant.slug for m in owned
                  if m.tenant.state != "deleted"
                  and other_active_owners(s, m.tenant_id, user_id) == 0)


def members(s: Session, tenant: Tenant) -> list[tuple[Membership, User]]:
    rows = s.execute(select(Membership, User).join(User, User.id == Membership.user_id)
                     .where(Membership.tenant_id == tenant.id).order_by(Membership.id)).all()
    return [(m, u) for m, u in rows]


def key_versions(s: Session, tenant: Tenant) -> list[TenantKey]:
    return list(s.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant.id)
                          .order_by(TenantKey.version)))
