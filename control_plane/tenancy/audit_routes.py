"""Exporting a tenant's audit chain: ``GET /api/audit/export`` and, for the dashboard,
``GET /tenants/{tenant_id}/audit/export``. The file format is ops/AUDIT_FORMAT.md; a compliance
team checks it offline with ops/verify_audit_chain.py.

- The API takes a tenant API key with the ``audit:export`` scope whose creator's current role
  holds ``audit.export`` (``Authorization: Bearer``: its own tenant only) or a signed-in
  session naming ``?tenant=<id>``; a session needs the ``audit.export`` permission, on both
  routes (a refusal is audited as a scope denial).
  Another tenant's id answers 404, the same as one that does not exist.
- The range is ``first_seq``/``last_seq`` or ``since``/``until`` (a date, or a date and time);
  any other parameter, or a value that does not parse, answers 422 with one sentence.
- The request (who, which tenant, which range) is recorded in the platform audit chain in its
  own transaction before the body starts: how many rows went out is only known at the end,
  and the manifest line of the file says it.
- The body streams from one read-only snapshot of the tenant database, in chunks of about
  ``CHUNK_BYTES``; the first chunk is read before the response starts, so a tenant database that
  cannot be read answers an error status rather than an empty 200. A body cut short later has
  no manifest, which the verifier reports as truncated.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import chain

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from control_plane import audit
from control_plane.exceptions import Conflict, InvalidInput, NotFound
from control_plane.models import Tenant
from control_plane.tenancy import api_keys, service
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.export import EXPORTABLE_STATES
from control_plane.tenancy.mfa_policy import check_mfa
from control_plane.web.access import audits_denials, authenticate_key, key_actor
from control_plane.web.deps import require_user
from control_plane.web.services import services
from tenant_runtime.audit_export import RANGE_PARAMS, ExportRange, export_tenant_chain, parse_range
from tenant_runtime.context import Actor, TenantContext

CHUNK_BYTES = 64 * 1024
TENANT_ID = re.compile(r"[0-9]{1,18}")
MEDIA_TYPE = "application/x-ndjson"


def _range(request: Request, *, allowed: tuple[str, ...]) -> ExportRange:
    params = request.query_params
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidInput(f"Unknown parameter {unknown[0]!r}: the range is first_seq and "
                           "last_seq, or since and until.")
    if len(params.multi_items()) != len(params):
        raise InvalidInput("Give each parameter once.")
    return parse_range(dict(params))


def _check_state(tenant: Tenant) -> None:
    if tenant.state not in EXPORTABLE_STATES:
        raise Conflict(f"Only an active or suspended tenant's audit log can be exported; this "
                       f"one is {tenant.state}.")


def _body(ctx: TenantContext, wanted: ExportRange) -> Iterator[bytes]:
    chunk: list[bytes] = []
    size = 0
    for line in export_tenant_chain(ctx, wanted):
        chunk.append(line)
        size += len(line)
        if size >= CHUNK_BYTES:
            yield b"".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield b"".join(chunk)


def _export(request: Request, s: Session, tenant: Tenant, *, actor: audit.Actor,
            tenant_actor: Actor, wanted: ExportRange, via: str) -> TenantContext:
    """Record the request and build the tenant context, in the caller's transaction."""
    _check_state(tenant)
    request.state.tenant = tenant.id
    ctx = services(request).tenant_connections.context(s, tenant, tenant_actor)
    audit.record(s, TenantEvents.AUDIT_EXPORTED, actor=actor, target_type="tenant",
                 target_id=tenant.id, details={"range": wanted.as_json(), "via": via})
    return ctx


def _stream(ctx: TenantContext, wanted: ExportRange) -> Response:
    body = _body(ctx, wanted)
    first = next(body)  # read before the response starts: a failure gets its own status
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        chain([first], body), media_type=MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="audit-{ctx.slug}-{stamp}.jsonl"',
                 "Cache-Control": "no-store"})


@audits_denials
def api_export(request: Request) -> Response:
    """GET /api/audit/export: a tenant API key, or a session and ``?tenant=<id>``."""
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        if api_keys.presented_key(request.headers.get("authorization"),
                                  request.headers.get("x-api-key")):
            principal = authenticate_key(s, request)  # scope audit:export, creator's role
            key = principal.api_key
            request.state.actor = f"api_key:{key.id}"
            named = request.query_params.get("tenant")
            if named is not None and named.strip() != str(principal.tenant.id):
                raise NotFound("No such tenant.")  # a key reaches its own tenant only
            tenant = principal.tenant
            actor = audit.Actor("api_key", str(key.id), key.name)
            tenant_actor = key_actor(principal)
        else:
            me = require_user(s, request)
            named = request.query_params.get("tenant", "").strip()
            if not TENANT_ID.fullmatch(named):
                raise InvalidInput("Name the tenant by its id: ?tenant=<id>.")
            access = service.access_tenant(s, int(named), user=me.user,
                                           permission="audit.export")
            check_mfa(access, me)
            tenant = access.tenant
            actor = service.actor_of(me.user)
            tenant_actor = Actor("user", str(me.user.id), me.user.email, access.role)
        wanted = _range(request, allowed=("tenant", *RANGE_PARAMS))
        ctx = _export(request, s, tenant, actor=actor, tenant_actor=tenant_actor,
                      wanted=wanted, via="api")
    return _stream(ctx, wanted)


@audits_denials
def dashboard_export(request: Request) -> Response:
    """GET /tenants/{tenant_id}/audit/export: the download link of the tenant's page."""
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me = require_user(s, request)
        access = service.access_tenant(s, int(request.path_params["tenant_id"]), user=me.user,
                                       permission="audit.export")
        check_mfa(access, me)
        wanted = _range(request, allowed=RANGE_PARAMS)
        ctx = _export(request, s, access.tenant, actor=service.actor_of(me.user),
                      tenant_actor=Actor("user", str(me.user.id), me.user.email, access.role),
                      wanted=wanted, via="dashboard")
    return _stream(ctx, wanted)


routes = [
    Route("/api/audit/export", api_export, methods=["GET"]),
    Route("/tenants/{tenant_id:int}/audit/export", dashboard_export, methods=["GET"]),
]
