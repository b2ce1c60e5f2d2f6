"""The agents area's tenant tables (TenantBase.metadata lists them through
tenant_runtime/models.py)."""

from __future__ import annotations
