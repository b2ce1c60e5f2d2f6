"""Tenant API keys: what programs present to the gateway and the JSON API as
``Authorization: Bearer mg_<prefix>_<secret>`` (or ``x-api-key: mg_…``, as the Anthropic SDK
sends it). The secret is 256 random bits; only the SHA-256 of the whole key is stored, and the
key is shown once. A key may expire; a revoked or expired key is refused (the gateway's key
cache holds a key at most until Postgres notifies the change; see below). A suspended tenant's
keys are refused with a clear message.

A key is least-privilege (DESIGN.md, invariant 9). Its creator picks its scopes (``SCOPES``) and
may pick only those their role could use itself. On every use, ``check_key`` (the one rule both
``authenticate_bearer`` and the gateway's ``authenticate_gateway_key`` apply) also reads the
creator's account and *current* membership in the key's tenant: a key whose creator is
deactivated, gone or no longer a member is refused (401); a key is refused (403, a sentence
naming the scope) when the route needs a scope the key does not hold, or one its creator's
current role no longer holds, or when the creator's role no longer holds the route's own
permission. So a key never does more than the person who made it, today. Deactivating a user
or removing their membership also revokes their keys outright (``service.revoke_keys_of``,
audited), so
reactivating the account does not bring them back.

The gateway's hot path checks a key with ``authenticate_gateway_key``: the same rules in one
statement that also reads the creator, their membership and the tenant's data-key records, so a
call costs one round trip here, or none when the process's key cache (``key_cache``) holds the
key: Postgres notifies every change to those rows (triggers, so SQL typed straight into the
database counts too) and each process drops what changed, so a revocation, an expiry, a
suspension or a demotion holds in every process within the notification delay and never later
than ``MAGISTRATE_GATEWAY_KEY_CACHE_SECONDS``. The JSON API's ``authenticate_bearer`` reads the
key on every request."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection
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
from control_plane.models import ApiKey, Membership, Tenant, User
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.key_cache import KeyCache
from control_plane.tenancy.service import TenantAccess, actor_of
from tenant_runtime import permissions

KEY_PREFIX = "mg_"
MAX_EXPIRY_DAYS = 3650


@dataclass(frozen=True)
class Scope:
    """What a key may be used for. ``permission`` is what its creator's role must hold to give
    it, and to keep it working."""

    name: str
    permission: str
    means: str


SCOPES: dict[str, Scope] = {s.name: s for s in (
    Scope("gateway", "gateway.call", "call models through the gateway (/v1/…)"),
    Scope("actions:request", "approvals.request",
          "ask for actions (POST /api/actions) and read their state"),
    Scope("actions:execute", "approvals.request",
          "execute approved actions (POST /api/actions/{id}/execute) and read their state"),
    Scope("agents", "agents.work", "read agents and record their shadow runs (/api/agents)"),
    Scope("mcp", "agents.work",
          "act as an agent at the tenant's MCP endpoint (/mcp/{tenant}): list and call the "
          "tools its catalogue allows"),
    Scope("audit:export", "audit.export", "export the audit log (GET /api/audit/export)"),
    Scope("read", "tenant.view", "read the state of actions and agents (GET only)"),
)}


@dataclass(frozen=True)
class KeyRule:
    """What one route asks of a key: one of ``scopes`` (none: any valid key), and that the
    creator's current role holds ``permission``. ``route`` names it in refusals."""

    route: str
    scopes: tuple[str, ...]
    permission: str


@dataclass
class ApiPrincipal:
    api_key: ApiKey
    tenant: Tenant
    creator: User
    creator_role: str

    @property
    def requester_name(self) -> str:
        """How approval pages name what the key asks for: the human, then the key."""
        return f"{self.creator.email} (API key {self.api_key.name})"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def grantable_scopes(role: str | None) -> list[str]:
    """The scopes a member of ``role`` may give a key (the create form's checkboxes)."""
    return [s.name for s in SCOPES.values() if permissions.allows(role, s.permission)]


def check_scopes_choice(role: str, scopes: Collection[str]) -> list[str]:
    chosen = sorted(set(scopes))
    if not chosen:
        raise InvalidInput("Pick at least one scope for the key: "
                           f"{', '.join(SCOPES)}.")
    for name in chosen:
        scope = SCOPES.get(name)
        if scope is None:
            raise InvalidInput(f"There is no scope named {name!r}; the scopes are "
                               f"{', '.join(SCOPES)}.")
        if not permissions.allows(role, scope.permission):
            raise Forbidden(f"Your role ({role}) may not give a key the scope {name!r}: a key "
                            "never holds more than its creator's role.")
    return chosen


def do_create_api_key(s: Session, access: TenantAccess, *, name: str, acting_user: User,
                      scopes: Collection[str], expires_in_days: int | None = None
                      ) -> tuple[ApiKey, str]:
    if not permissions.allows(access.role, "api_keys.manage"):
        raise Forbidden("Only an Owner or Admin of this tenant can create API keys.")
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("Give the key a name (at most 200 characters).")
    chosen = check_scopes_choice(access.role, scopes)
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        raise InvalidInput(f"A key expires after 1 to {MAX_EXPIRY_DAYS} days (or leave the "
                           "expiry empty for a key that does not expire).")
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    expires_at = (utcnow() + timedelta(days=expires_in_days)) if expires_in_days else None
    row = ApiKey(tenant_id=access.tenant.id, name=name, prefix=prefix, secret_hash=key_hash(key),
                 created_by=acting_user.id, expires_at=expires_at, scopes=chosen)
    s.add(row)
    s.flush()
    audit.record(s, TenantEvents.API_KEY_CREATED, actor=actor_of(acting_user),
                 target_type="api_key", target_id=row.id,
                 details={"tenant_id": access.tenant.id, "prefix": prefix,
                          "expires_in_days": expires_in_days, "scopes": chosen})
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


def list_api_keys(s: Session, tenant: Tenant) -> list[tuple[ApiKey, str | None]]:
    """The tenant's keys, each with its creator's e-mail (None when the account is gone)."""
    rows = s.execute(select(ApiKey, User.email).outerjoin(User, User.id == ApiKey.created_by)
                     .where(ApiKey.tenant_id == tenant.id).order_by(ApiKey.id)).all()
    return [(k, e) for k, e in rows]


@dataclass(frozen=True)
class KeyFacts:
    """What ``check_key`` judges, read in one statement by either caller."""

    secret_hash: str
    revoked_at: datetime | None
    expires_at: datetime | None
    tenant_state: str
    scopes: tuple[str, ...]
    creator_active: bool | None  # None: the creator's account is gone
    creator_role: str | None  # None: the creator is not a member of the key's tenant


def check_key(key: str, facts: KeyFacts, rule: KeyRule, now: datetime) -> None:
    """The rules every presented key passes, in the order the caller is told about them."""
    if not hmac.compare_digest(facts.secret_hash, key_hash(key)):
        raise NotSignedIn("This API key is not valid.")
    if facts.revoked_at is not None:
        raise NotSignedIn("This API key was revoked.")
    if facts.expires_at is not None and facts.expires_at <= now:
        raise NotSignedIn("This API key has expired; an Owner or Admin can create a new one.")
    if facts.tenant_state == "deleted":
        raise NotSignedIn("This API key is not valid.")
    if facts.tenant_state == "suspended":
        raise Forbidden("This tenant is suspended; its API keys are refused until an Owner "
                        "resumes it.")
    if facts.tenant_state != "active":
        raise Forbidden("This tenant is not active yet.")
    if not facts.creator_active:
        raise NotSignedIn("This API key stopped working: the account that created it is "
                          "deactivated or gone.")
    role = facts.creator_role
    if role is None:
        raise NotSignedIn("This API key stopped working: the person who created it is no "
                          "longer a member of this tenant.")
    if rule.scopes:
        held = [name for name in rule.scopes if name in facts.scopes]
        if not held:
            wanted = " or ".join(f"'{name}'" for name in rule.scopes)
            raise Forbidden(f"This API key lacks the scope {wanted} that {rule.route} needs; "
                            "an Owner or Admin can create a key with it.")
        if not any(permissions.allows(role, SCOPES[name].permission) for name in held):
            name = held[0]
            raise Forbidden(f"This API key holds the scope '{name}', but its creator's role "
                            f"is now {role}, which may not "
                            f"{permissions.MATRIX[SCOPES[name].permission].means}; a key never "
                            "does more than its creator.")
    if not permissions.allows(role, rule.permission):
        raise Forbidden(f"This API key's creator's role is now {role}, which may not "
                        f"{permissions.MATRIX[rule.permission].means}; a key never does more "
                        "than its creator.")


def _prefix(key: str) -> str:
    if not key.startswith(KEY_PREFIX):
        raise NotSignedIn("Send a tenant API key as 'Authorization: Bearer mg_…'.")
    return key[len(KEY_PREFIX):].split("_", 1)[0]


def authenticate_bearer(s: Session, authorization: str | None, x_api_key: str | None = None,
                        *, rule: KeyRule) -> ApiPrincipal:
    """The API key, tenant and creator behind an ``Authorization: Bearer`` (or ``x-api-key``)
    header, if it passes ``check_key`` for ``rule``; or a clear refusal. Routes call it through
    ``control_plane.web.access.authenticate_key``, which finds the route's rule (the MCP
    endpoint through ``control_plane.mcp_oauth.bearer.caller_of``, with its route's rule, which
    also re-checks its live sessions' keys)."""
    key = presented_key(authorization, x_api_key) or ""
    prefix = _prefix(key)
    found = s.execute(
        select(ApiKey, Tenant, User, Membership.role)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .outerjoin(User, User.id == ApiKey.created_by)
        .outerjoin(Membership, (Membership.user_id == ApiKey.created_by)
                   & (Membership.tenant_id == ApiKey.tenant_id))
        .where(ApiKey.prefix == prefix)).first()
    if found is None:
        raise NotSignedIn("This API key is not valid.")
    row, tenant, creator, role = found
    now = utcnow()
    check_key(key, KeyFacts(row.secret_hash, row.revoked_at, row.expires_at, tenant.state,
                            tuple(row.scopes), creator.is_active if creator else None, role),
              rule, now)
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
    assert creator is not None and role is not None  # noqa: S101 - check_key refused otherwise
    return ApiPrincipal(row, tenant, creator, role)


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
    creator_id: int = 0
    creator_role: str = ""


# The key, its tenant, its creator and the creator's membership of the key's tenant, and the
# tenant's data-key records (one row per key version), in one round trip. No row: no such key,
# or its tenant is gone.
_GATEWAY_KEY = (
    "SELECT k.id, k.name, k.tenant_id, k.secret_hash, k.revoked_at, k.expires_at, "
    "k.last_used_at, t.state, t.slug, tk.version, tk.provider, tk.key_ref, tk.wrapped_dek, "
    "tk.retired_at IS NOT NULL, k.scopes, u.is_active, m.role, k.created_by "
    "FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "
    "LEFT JOIN users u ON u.id = k.created_by "
    "LEFT JOIN memberships m ON m.user_id = k.created_by AND m.tenant_id = k.tenant_id "
    "LEFT JOIN tenant_keys tk ON tk.tenant_id = k.tenant_id "
    "WHERE k.prefix = %(prefix)s")
_TOUCH = "UPDATE api_keys SET last_used_at = %(now)s WHERE id = %(id)s"


@dataclass
class GatewayKey:
    """What the gateway's statement read about one key: what ``check_key`` judges and what the
    call needs. Kept by the process's key cache (``key_cache.KeyCache``) between calls."""

    facts: KeyFacts
    principal: GatewayPrincipal
    last_used_at: datetime | None


def read_gateway_key(connection: Any, prefix: str) -> GatewayKey:
    """The key of ``prefix``, its tenant, creator, membership and data-key records, in one
    statement; no such key (or its tenant is gone): a refusal."""
    rows: list[Any] = list(connection.exec_driver_sql(_GATEWAY_KEY, {"prefix": prefix}))
    if not rows:
        raise NotSignedIn("This API key is not valid.")
    first = rows[0]
    keys = tuple(TenantKeyRecord(row[9], row[10], row[11], bytes(row[12]), row[13])
                 for row in rows if row[9] is not None)
    return GatewayKey(
        KeyFacts(first[3], first[4], first[5], first[7], tuple(first[14] or ()), first[15],
                 first[16]),
        GatewayPrincipal(first[0], first[1], first[2], first[8], keys, first[17], first[16]),
        first[6])


def authenticate_gateway_key(s: Session, authorization: str | None,
                             x_api_key: str | None = None, *, rule: KeyRule,
                             cache: KeyCache | None = None) -> GatewayPrincipal:
    """``authenticate_bearer`` for the gateway: the same ``check_key`` and sentences, read with
    one statement (plus a write of ``last_used_at`` at most once a minute per key and
    process), or, when ``cache`` holds the key, with none: the rules, the expiry included,
    still run on every call, on what the cache kept."""
    key = presented_key(authorization, x_api_key) or ""
    prefix = _prefix(key)
    digest = key_hash(key)
    found, generation = cache.get(digest) if cache is not None else (None, None)
    if found is None:
        found = read_gateway_key(s.connection(), prefix)
        if cache is not None and hmac.compare_digest(found.facts.secret_hash, digest):
            cache.put(digest, found, generation)
    now = utcnow()
    check_key(key, found.facts, rule, now)
    if found.last_used_at is None or (now - found.last_used_at).total_seconds() > 60:
        s.connection().exec_driver_sql(_TOUCH, {"now": now, "id": found.principal.key_id})
        found.last_used_at = now
    return found.principal
