"""The recommendations area's dashboard routes, mounted under /tenants/{tenant_id} by the
control plane."""

from __future__ import annotations

from tenant_runtime.routing import TenantRoute

routes: list[TenantRoute] = []
