"""How a tenant area declares its HTTP routes without knowing the control plane: a handler takes
the request and its ``TenantContext``. The control plane mounts these under
``/tenants/{tenant_id}`` after resolving the caller's membership and checking the route's
``permission`` (a name in ``tenant_runtime.permissions.MATRIX``) against the caller's role.

``permission`` is required and keyword-only, so a route cannot be declared without a decision,
and a role tuple passed where the old ``roles`` field was fails loudly instead of becoming a
form."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from tenant_runtime import permissions
from tenant_runtime.context import TenantContext

TenantHandler = Callable[[Request, TenantContext], Response]


@dataclass(frozen=True)
class TenantRoute:
    path: str  # below /tenants/{tenant_id}
    handler: TenantHandler
    method: str = "GET"
    permission: str = field(kw_only=True)  # a name in tenant_runtime/permissions.MATRIX
    form: type | None = field(default=None, kw_only=True)  # a pydantic Form model for POSTs

    def __post_init__(self) -> None:
        if self.permission not in permissions.MATRIX:
            raise ValueError(f"TenantRoute {self.method} {self.path}: unknown permission "
                             f"{self.permission!r}; name one from tenant_runtime/permissions.py "
                             "MATRIX (or add it there, and to the table in docs/roles.md).")
