"""Provisioning a tenant, step by step. Every step is idempotent, so a job that crashed in the
middle and runs again finishes the same tenant, without duplicates or leftovers.

    1. template   the migrated template database exists on the tenant's server
    2. roles      the tenant's _owner and _app roles exist with their (sealed) passwords
    3. database   magistrate_t_<id> is cloned from the template; CONNECT revoked from PUBLIC
    4. grants     the owner owns every object; the app role has DML only (INSERT/SELECT on audit)
    5. data key   a 256-bit data key is generated and stored wrapped by the tenant's KEK
    6. active     the tenant becomes active; a platform audit event records it
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from control_plane import audit
from control_plane.db import utcnow
from control_plane.keys.providers import KeyProvider, KeyUnavailable
from control_plane.keys.registry import new_data_key, provider_for
from control_plane.models import Tenant, TenantKey
from control_plane.sealing import ControlSealer
from control_plane.tenancy import database
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.servers import admin_url

STEPS = ("template", "roles", "database", "grants", "data key", "active")

Progress = Callable[[int, int, str], None]


@dataclass
class TenantSecrets:
    admin_url: str
    owner_password: str
    app_password: str


def tenant_secrets(sealer: ControlSealer, tenant: Tenant) -> TenantSecrets:
    if tenant.db_server is None or tenant.owner_password_sealed is None \
            or tenant.app_password_sealed is None:
        raise RuntimeError(f"tenant {tenant.id} has no server or role passwords")
    return TenantSecrets(
        admin_url(sealer, tenant.db_server),
        sealer.open(tenant.owner_password_sealed, table="tenants", column="owner_password",
                    row_key=tenant.id).decode(),
        sealer.open(tenant.app_password_sealed, table="tenants", column="app_password",
                    row_key=tenant.id).decode(),
    )


def ensure_data_key(s: Session, tenant: Tenant, providers: Mapping[str, KeyProvider]) -> int:
    """Version 1 of the tenant's data key, created once (wrapped by the KEK)."""
    existing = s.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant.id)
                         .order_by(TenantKey.version.desc())).first()
    if existing is not None:
        return existing.version
    provider = provider_for(providers, tenant.key_provider)
    wrapped = provider.wrap(new_data_key(), tenant_id=str(tenant.id), key_ref=tenant.key_ref)
    s.add(TenantKey(tenant_id=tenant.id, version=1, provider=tenant.key_provider,
                    key_ref=tenant.key_ref, wrapped_dek=wrapped))
    s.flush()
    return 1


def provision(session_factory: sessionmaker[Session], tenant_id: int, *,
              sealer: ControlSealer, providers: Mapping[str, KeyProvider],
              progress: Progress, stop_after: int | None = None) -> str:
    """Run the steps for ``tenant_id``; returns the tenant's state afterwards.

    ``stop_after`` ends the run after that many steps, as a crash there would (used by the
    operator's dry runs and the idempotency tests)."""
    total = len(STEPS)
    with session_factory() as s:
        tenant = s.get(Tenant, tenant_id)
        if tenant is None or tenant.state != "provisioning":
            return "gone" if tenant is None else tenant.state
        secrets = tenant_secrets(sealer, tenant)
        names = (tenant.db_name, tenant.owner_role, tenant.app_role)
        spares = database.spare_namespace(s.get_bind().engine.url)
    db_name, owner, app = names

    def step(done: int) -> bool:
        progress(done, total, f"{STEPS[done - 1]} done")
        return stop_after is not None and done >= stop_after

    database.ensure_template(secrets.admin_url)
    if step(1):
        return "provisioning"
    database.ensure_roles(secrets.admin_url, owner=owner, owner_password=secrets.owner_password,
                          app=app, app_password=secrets.app_password)
    if step(2):
        return "provisioning"
    database.ensure_database(secrets.admin_url, database=db_name, owner=owner, app=app,
                             spares=spares)
    if step(3):
        return "provisioning"
    database.apply_privileges(secrets.admin_url, database=db_name, owner=owner, app=app)
    if step(4):
        return "provisioning"
    with session_factory() as s, s.begin():
        tenant = s.get(Tenant, tenant_id, with_for_update=True)
        if tenant is None:
            return "gone"
        try:
            ensure_data_key(s, tenant, providers)
        except KeyUnavailable:
            raise
    if step(5):
        return "provisioning"
    with session_factory() as s, s.begin():
        tenant = s.get(Tenant, tenant_id, with_for_update=True)
        if tenant is None:
            return "gone"
        if tenant.state == "provisioning":
            tenant.state = "active"
            tenant.updated_at = utcnow()
            audit.record(s, TenantEvents.PROVISIONED, actor=audit.SYSTEM, target_type="tenant",
                         target_id=tenant.id, details={"server_id": tenant.db_server_id,
                                                       "key_provider": tenant.key_provider})
        state = tenant.state
    step(6)
    return state
