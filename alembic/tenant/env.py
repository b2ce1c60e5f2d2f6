"""Alembic environment for the tenant tree: run once per tenant database (in practice once per
template database, which new tenant databases are cloned from), with the URL handed in by the
control plane."""

from control_plane.migrations import run_online
from tenant_runtime.models import TenantBase

run_online(TenantBase.metadata)
