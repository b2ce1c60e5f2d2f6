"""Helpers for tenancy tests: create tenants through the real service and run their jobs
through the real job runner (the code RQ runs)."""

from __future__ import annotations

from sqlalchemy import select

from control_plane.models import Job, Tenant, User
from control_plane.tenancy.service import do_create_tenant
from tests.conftest import TEST_SECRET_KEY
from workers import runtime
from workers.runner import run_job


def configure_worker(services, database_url: str) -> None:
    runtime.configure(services.settings, database_url=database_url,
                      secret_key=TEST_SECRET_KEY, key_providers=services.key_providers)


def run_pending_jobs(services, database_url: str) -> list[dict]:
    configure_worker(services, database_url)
    with services.session_factory() as s:
        ids = s.scalars(select(Job.id).where(Job.state.in_(("pending", "dispatched")))
                        .order_by(Job.id)).all()
    return [run_job(job_id) for job_id in ids]


def create_tenant(services, owner_email: str, slug: str, *, key_provider: str = "local",
                  key_ref: str = "test-kek") -> int:
    with services.session_factory() as s, s.begin():
        owner = s.scalars(select(User).where(User.email == owner_email)).one()
        tenant, _ = do_create_tenant(s, slug=slug, name=slug.title(), key_provider=key_provider,
                                     key_ref=key_ref, providers=services.key_providers,
                                     sealer=services.sealer, acting_user=owner)
        return tenant.id


def tenant_state(services, tenant_id: int) -> str:
    with services.session_factory() as s:
        return s.get(Tenant, tenant_id).state
