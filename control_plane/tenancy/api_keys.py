"""Tenant API keys: what programs present to the gateway and the JSON API as
``Authorization: Bearer mg_<prefix>_<secret>`` (or ``x-api-key: mg_…``, as the Anthropic SDK
sends it). The secret is 256 random bits; only the SHA-256 of the whole key is stored, and the
key is shown once. A key may expire; a revoked or expired key is refused at once (every request
looks it up). A suspended tenant's keys are refused with a clear message.

The gateway's hot path checks a key with ``authenticate_gateway_key``: the same rules in one
statement that also reads the tenant's data-key records, so a call costs one round trip here,
and nothing about a key or its tenant is cached between requests (a revocation, an expiry, a
suspension written by any process, or straight into the database, holds on the next call)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.auth.credentials import (  # the one reader of the key headers
    presented_key as presented_key,
)
from control_plane.db import utcnow
from control_plane.exceptions import Forbidden, InvalidInput, NotFound, NotSignedIn
from control_plane.models import ApiKey, Tenant, User
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.service import TenantAccess, actor_of
from tenant_runtime import permissions

KEY_PREFIX = "mg_"
MAX_EXPIRY_DAYS = 3650


@dataclass
class ApiPrincipal:
    api_key: ApiKey
    tenant: Tenant


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def do_create_api_key(s: Session, access: TenantAccess, *, name: str, acting_user: User,
                      expires_in_days: int | None = None) -> tuple[ApiKey, str]:
    if not permissions.allows(access.role, "api_keys.manage"):
        raise Forbidden("Only an Owner or Admin of this tenant can create API keys.")
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("Give the key a name (at most 200 characters).")
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        raise InvalidInput(f"A key expires after 1 to {MAX_EXPIRY_DAYS} days (or leave the "
                           "expiry empty for a key that does not expire).")
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    expires_at = (utcnow() + timedelta(days=expires_in_days)) if expires_in_days else None
    row = ApiKey(tenant_id=access.tenant.id, name=name, prefix=prefix, secret_hash=key_hash(key),
                 created_by=acting_user.id, expires_at=expires_at)
    s.add(row)
    s.flush()
    audit.record(s, TenantEvents.API_KEY_CREATED, actor=actor_of(acting_user),
                 target_type="api_key", target_id=row.id,
                 details={"tenant_id": access.tenant.id, "prefix": prefix,
                          "expires_in_days": expires_in_days})
    return row, key


def do_revoke_api_key(s: Session, access: TenantAccess, key_id: int, *,
                      acting_user: User) -> None:
    if not permissions.allows(access.role, "api_keys.manage"):
        raise Forbidden("Only an Owner or Admin of this tenant can revoke API keys.")
    row = s.get(ApiKey, key_id)
    if row is None or row.tenant_id != access.tenant.id:
        raise NotFound("No such API key.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit.record(s, TenantEvents.API_KEY_REVOKED, actor=actor_of(acting_user),
                     target_type="api_key", target_id=row.id,
                     details={"tenant_id": access.tenant.id, "prefix": row.prefix})


def list_api_keys(s: Session, tenant: Tenant) -> list[ApiKey]:
    return list(s.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)
                          .order_by(ApiKey.id)))


def authenticate_bearer(s: Session, authorization: str | None,
                        x_api_key: str | None = None) -> ApiPrincipal:
    """The API key and tenant behind an ``Authorization: Bearer`` (or ``x-api-key``) header, or
    a clear refusal."""
    key = presented_key(authorization, x_api_key) or ""
    if not key.startswith(KEY_PREFIX):
        raise NotSignedIn("Send a tenant API key as 'Authorization: Bearer mg_…'.")
    prefix = key[len(KEY_PREFIX):].split("_", 1)[0]
    row = s.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first()
    tenant = s.get(Tenant, row.tenant_id) if row is not None else None
    now = utcnow()
    if row is None or tenant is None:
        raise NotSignedIn("This API key is not valid.")
    _check_key(key, row.secret_hash, row.revoked_at, row.expires_at, tenant.state, now)
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
    return ApiPrincipal(row, tenant)


@dataclass(frozen=True)
class TenantKeyRecord:
    """One version of a tenant's data key, wrapped: what a sealer needs to open it."""

    version: int
    provider: str
    key_ref: str
    wrapped_dek: bytes
    retired: bool


@dataclass(frozen=True)
class GatewayPrincipal:
    """A checked API key, its tenant and the tenant's data-key records, for the gateway."""

    key_id: int
    key_name: str
    tenant_id: int
    tenant_slug: str
    tenant_keys: tuple[TenantKeyRecord, ...]


# The key, its tenant and the tenant's data-key records (one row per key version), in one round
# trip. No row: no such key, or its tenant is gone.
_GATEWAY_KEY = (
    "SELECT k.id, k.name, k.tenant_id, k.secret_hash, k.revoked_at, k.expires_at, "
    "k.last_used_at, t.state, t.slug, tk.version, tk.provider, tk.key_ref, tk.wrapped_dek, "
    "tk.retired_at IS NOT NULL "
    "FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "
    "LEFT JOIN tenant_keys tk ON tk.tenant_id = k.tenant_id "
    "WHERE k.prefix = %(prefix)s")
_TOUCH = "UPDATE api_keys SET last_used_at = %(now)s WHERE id = %(id)s"


def _check_key(key: str, secret_hash: str, revoked_at: datetime | None,
               expires_at: datetime | None, tenant_state: str, now: datetime) -> None:
    """The rules every presented key passes, in the order the caller is told about them."""
    if not hmac.compare_digest(secret_hash, key_hash(key)):
        raise NotSignedIn("This API key is not valid.")
    if revoked_at is not None:
        raise NotSignedIn("This API key was revoked.")
    if expires_at is not None and expires_at <= now:
        raise NotSignedIn("This API key has expired; an Owner or Admin can create a new one.")
    if tenant_state == "deleted":
        raise NotSignedIn("This API key is not valid.")
    if tenant_state == "suspended":
        raise Forbidden("This tenant is suspended; its API keys are refused until an Owner "
                        "resumes it.")
    if tenant_state != "active":
        raise Forbidden("This tenant is not active yet.")


def authenticate_gateway_key(s: Session, authorization: str | None,
                             x_api_key: str | None = None) -> GatewayPrincipal:
    """``authenticate_bearer`` for the gateway: the same checks and sentences, read with one
    statement (plus a write of ``last_used_at`` at most once a minute per key)."""
    key = presented_key(authorization, x_api_key) or ""
    if not key.startswith(KEY_PREFIX):
        raise NotSignedIn("Send a tenant API key as 'Authorization: Bearer mg_…'.")
    prefix = key[len(KEY_PREFIX):].split("_", 1)[0]
    connection = s.connection()
    rows: list[Any] = list(connection.exec_driver_sql(_GATEWAY_KEY, {"prefix": prefix}))
    now = utcnow()
    if not rows:
        raise NotSignedIn("This API key is not valid.")
    first = rows[0]
    _check_key(key, first[3], first[4], first[5], first[7], now)
    if first[6] is None or (now - first[6]).total_seconds() > 60:
        connection.exec_driver_sql(_TOUCH, {"now": now, "id": first[0]})
    keys = tuple(TenantKeyRecord(row[9], row[10], row[11], bytes(row[12]), row[13])
                 for row in rows if row[9] is not None)
    return GatewayPrincipal(first[0], first[1], first[2], first[8], keys)
