"""How a tenant area declares its HTTP routes without knowing the control plane: a handler takes
the request, its ``TenantContext`` and the caller's role in the tenant. The control plane mounts
these under ``/tenants/{tenant_id}`` after resolving access and building the context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from tenant_runtime.context import TenantContext

TenantHandler = Callable[[Request, TenantContext], Response]


@dataclass(frozen=True)
class TenantRoute:
    path: str  # below /tenants/{tenant_id}
    handler: TenantHandler
    method: str = "GET"
    roles: tuple[str, ...] | None = None  # None: any member
    form: type | None = None  # a pydantic Form model for POSTs
    permission: str | None = None  # a name in tenant_runtime/permissions.MATRIX
