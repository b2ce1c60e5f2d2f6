"""Tenants: creation (provisioning runs as a job), access, memberships, lifecycle.

``access_tenant`` answers the same 404 for a tenant that does not exist and for one the user
is not a member of: another tenant's id looks exactly like a missing one. A member whose role
lacks the permission asked for gets ``ScopeDenied`` (403), which the web edge audits
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
from control_plane.models import ROLES, Job, Membership, Tenant, TenantKey, User
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


def do_create_tenant(s: Session, *, slug: str, name: str, key_provider: str, key_ref: str,
                     providers: Mapping[str, KeyProvider], sealer: ControlSealer,
                     acting_user: User) -> tuple[Tenant, Job]:
    """Record the tenant (state ``provisioning``), make the creator its Owner, and queue the
    provisioning job, all in the caller's transaction."""
    if not acting_user.is_owner:
        raise Forbidden("Only an Owner of this installation can create tenants.")
    slug = slug.strip().lower()
    if not SLUG_PATTERN.fullmatch(slug):
        raise InvalidInput("The slug must be 2 to 63 characters: lowercase letters, digits and "
                           "'-', starting with a letter.")
    check_key_choice(providers, key_provider, key_ref)
    if s.scalars(select(Tenant.id).where(Tenant.slug == slug)).first() is not None:
        raise Conflict(f"A tenant with the slug {slug} already exists.")
    server = pick_server(s)
    tenant = Tenant(slug=slug, name=name.strip() or slug, key_provider=key_provider,
                    key_ref=key_ref, db_server_id=server.id, created_by=acting_user.id)
    s.add(tenant)
    s.flush()
    tenant.owner_password_sealed = sealer.seal(secrets.token_urlsafe(32).encode(),
                                               table="tenants", column="owner_password",
                                               row_key=tenant.id)
    tenant.app_password_sealed = sealer.seal(secrets.token_urlsafe(32).encode(),
                                             table="tenants", column="app_password",
                                             row_key=tenant.id)
    s.add(Membership(user_id=acting_user.id, tenant_id=tenant.id, role="Owner"))
    job = enqueue_job(s, JobKinds.PROVISION_TENANT, {"tenant_id": tenant.id},
                      idempotency_key=f"provision:{tenant.id}", tenant_id=tenant.id,
                      created_by=acting_user.id, progress_total=len(STEPS))
    audit.record(s, TenantEvents.CREATED, actor=actor_of(acting_user), target_type="tenant",
                 target_id=tenant.id, details={"slug": slug, "server": server.name,
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
    if role == "Owner" and access.role != "Owner":
        raise Forbidden("Only an Owner can make someone an Owner.")
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


def do_remove_member(s: Session, access: TenantAccess, membership_id: int, *,
                     acting_user: User) -> None:
    if not permissions.allows(access.role, "members.manage"):
        raise Forbidden("Only an Owner or Admin of this tenant can manage members.")
    membership = s.get(Membership, membership_id)
    if membership is None or membership.tenant_id != access.tenant.id:
        raise NotFound("No such member.")
    if membership.role == "Owner":
        owners = s.scalar(select(func.count()).select_from(Membership).where(
            Membership.tenant_id == access.tenant.id, Membership.role == "Owner"))
        if (owners or 0) <= 1:
            raise Conflict("That is the tenant's last Owner.")
    s.delete(membership)
    audit.record(s, TenantEvents.MEMBER_REMOVED, actor=actor_of(acting_user),
                 target_type="tenant", target_id=access.tenant.id,
                 details={"user_id": membership.user_id})


def members(s: Session, tenant: Tenant) -> list[tuple[Membership, User]]:
    rows = s.execute(select(Membership, User).join(User, User.id == Membership.user_id)
                     .where(Membership.tenant_id == tenant.id).order_by(Membership.id)).all()
    return [(m, u) for m, u in rows]


def key_versions(s: Session, tenant: Tenant) -> list[TenantKey]:
    return list(s.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant.id)
                          .order_by(TenantKey.version)))
