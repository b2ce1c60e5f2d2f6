"""Tenant pages and the tenants JSON API.

Every route below ``/tenants/{tenant_id}`` resolves the caller's membership first
(``access_tenant``): another tenant's id answers 404, the same as a missing one. Then the
caller's role must hold the route's permission (tenant_runtime/permissions.py; the table of
every route's decision is control_plane/web/access.py); a refusal is a 403, audited as a scope
denial by ``audits_denials``."""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from control_plane.console.notices import done_url, notice_from
from control_plane.console.overview import tenant_overview
from control_plane.db import make_session_factory, utcnow
from control_plane.exceptions import (
    Conflict,
    Forbidden,
    InvalidInput,
)
from control_plane.identity.policy import sso_settings
from control_plane.jobs import dispatch_pending, requeue_job
from control_plane.keys.providers import KeyReferenceInvalid
from control_plane.models import ROLES, Tenant
from control_plane.tenancy import api_keys, service
from control_plane.tenancy.areas import TENANT_AREAS, mount_area, with_tenant
from control_plane.tenancy.mfa_policy import not_enrolled
from control_plane.web.access import audits_denials, authenticate_key
from control_plane.web.deps import require_user
from control_plane.web.forms import (
    Form,
    form_endpoint,
    read_json_object,
    validated,
)
from control_plane.web.services import Services, services
from control_plane.web.templating import render
from tenant_runtime import checkpoints, permissions
from tenant_runtime.approvals import gates
from tenant_runtime.context import Actor
from tenant_runtime.exceptions import TenantError, TenantKeyUnavailable


class CreateTenantForm(Form):
    slug: str = Field(max_length=63)
    name: str = Field(default="", max_length=200)
    key_provider: str = Field(max_length=20)
    key_ref: str = Field(max_length=500)


class CreateTenantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: str = Field(max_length=63)
    name: str = Field(default="", max_length=200)
    key_provider: str = Field(max_length=20)
    key_ref: str = Field(max_length=500)


class TestKeyForm(Form):
    key_provider: str = Field(max_length=20)
    key_ref: str = Field(max_length=500)
    slug: str = Field(default="", max_length=63)
    name: str = Field(default="", max_length=200)


class LocalKeyForm(Form):
    """The tenant form as it stands, when "Create a local key" was pressed (development)."""

    key_provider: str = Field(default="local", max_length=20)
    key_ref: str = Field(default="", max_length=500)
    slug: str = Field(default="", max_length=63)
    name: str = Field(default="", max_length=200)


class ChangeKeyForm(Form):
    key_provider: str = Field(max_length=20)
    key_ref: str = Field(max_length=500)


class ReasonForm(Form):
    reason: str = Field(default="", max_length=500)


class MemberForm(Form):
    email: str = Field(max_length=320)
    role: str = Field(max_length=20)


class EmptyForm(Form):
    pass


class ApiKeyForm(Form):
    list_fields: ClassVar[tuple[str, ...]] = ("scopes",)

    name: str = Field(max_length=200)
    scopes: list[str] = Field(default_factory=list, max_length=len(api_keys.SCOPES))
    expires_in_days: int | None = Field(default=None, ge=1, le=api_keys.MAX_EXPIRY_DAYS)

    @field_validator("expires_in_days", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value


class DeleteForm(Form):
    confirm_slug: str = Field(max_length=63)
    reason: str = Field(max_length=1000)
    approval_id: str = Field(default="", max_length=64)


class RotateKeyForm(Form):
    reencrypt: bool = False  # the checkbox: "true" when ticked, absent otherwise
    approval_id: str = Field(default="", max_length=64)


def tenant_json(tenant: Tenant, job_state: str | None = None,
                progress: tuple[int, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": tenant.id, "slug": tenant.slug, "name": tenant.name,
                            "state": tenant.state, "key_provider": tenant.key_provider,
                            "key_ref": tenant.key_ref,
                            "database_server": tenant.db_server.name if tenant.db_server
                            else None}
    if job_state is not None:
        body["provisioning"] = {"job_state": job_state,
                                "done": progress[0] if progress else 0,
                                "total": progress[1] if progress else 0}
    return body


def _dispatch(svc: Services) -> None:
    dispatch_pending(svc.session_factory, svc.redis)


# ------------------------------------------------------------------------------- list, create


def _list_page(request: Request, *, status_code: int = 200, **extra: object) -> Response:
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me = require_user(s, request)
        rows = service.list_tenants(s, user=me.user)
        providers = sorted(svc.key_providers)
        # the installation's default provider (`local` in development) is the form's default
        default = (svc.settings.key_provider if svc.settings.key_provider in providers
                   else providers[0])
        context = {"tenants": rows, "providers": providers, "default_provider": default,
                   "local_keys": "local" in providers, **extra}
    return render(request, "tenants/list.html", context, status_code=status_code)


def tenants_page(request: Request) -> Response:
    return _list_page(request, notice=notice_from(request.query_params))


@form_endpoint(CreateTenantForm)
def create_tenant(request: Request, form: CreateTenantForm) -> Response:
    svc = services(request)
    try:
        with svc.session_factory() as s, s.begin():
            me = require_user(s, request)
            if me.user.is_owner:  # (the service refuses anyone else first)
                service.require_working_key(svc.key_providers, form.key_provider, form.key_ref)
            tenant, _ = service.do_create_tenant(
                s, slug=form.slug, name=form.name, key_provider=form.key_provider,
                key_ref=form.key_ref, providers=svc.key_providers, sealer=svc.sealer,
                acting_user=me.user)
            tenant_id = tenant.id
    except (InvalidInput, Conflict) as exc:
        return _list_page(request, status_code=exc.status_code, error=exc.message,
                          form=form.model_dump())
    _dispatch(svc)
    return RedirectResponse(f"/tenants/{tenant_id}", 303)


@form_endpoint(TestKeyForm)
def test_key(request: Request, form: TestKeyForm) -> Response:
    """Wrap and unwrap a throw-away key with the chosen KEK, before anything is saved."""
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me = require_user(s, request)
        if not me.user.is_owner:
            raise Forbidden("Only an Owner of this installation can test tenant keys.")
        try:
            service.check_key_choice(svc.key_providers, form.key_provider, form.key_ref)
        except InvalidInput as exc:
            return render(request, "tenants/_key_test.html", {"ok": False,
                                                              "message": exc.message})
    ok, message = service.probe_key(svc.key_providers, form.key_provider, form.key_ref)
    from control_plane import audit
    from control_plane.tenancy.events import TenantEvents

    with svc.session_factory() as s, s.begin():
        audit.record(s, TenantEvents.KEY_TESTED, actor=service.actor_of(me.user),
                     details={"provider": form.key_provider, "ok": ok})
    # 200 either way: the test ran and its outcome is the content (htmx swaps only 2xx)
    return render(request, "tenants/_key_test.html", {"ok": ok, "message": message})


@form_endpoint(LocalKeyForm)
def create_local_key(request: Request, form: LocalKeyForm) -> Response:
    """Development only: create a ``local`` key (a 0600 file under ``$MAGISTRATE_HOME/keys``)
    named by the form's key reference, or after the slug, and put it in the form."""
    from control_plane import audit
    from control_plane.keys.local import LocalKeyProvider
    from control_plane.tenancy.events import TenantEvents

    svc = services(request)
    local = svc.key_providers.get("local")
    keep = {**form.model_dump(), "key_provider": "local"}
    with svc.session_factory() as s, s.begin():
        me = require_user(s, request)
        if not me.user.is_owner:
            raise Forbidden("Only an Owner of this installation can create tenant keys.")
        if not isinstance(local, LocalKeyProvider):
            return _list_page(request, status_code=409, form=keep,
                              error="Local keys exist only outside production; name a key "
                                    "of your KMS.")
        name = form.key_ref.strip() or (
            f"{form.slug.strip().lower() or 'tenant'}-{secrets.token_hex(3)}")
        try:
            local.check_reference(name)
        except KeyReferenceInvalid as exc:
            return _list_page(request, status_code=422, form=keep, error=str(exc))
        existed = local.path(name).exists()
        local.create_key(name)
        if not existed:
            audit.record(s, TenantEvents.LOCAL_KEY_CREATED, actor=service.actor_of(me.user),
                         details={"key_ref": name})
    keep["key_ref"] = name
    what = "already existed" if existed else "was created"
    return _list_page(request, form=keep,
                      notice=f"The local key {name} {what} (a file under "
                             f"{local.folder}, mode 0600). Test it, then create the tenant.")


# ------------------------------------------------------------------------------- one tenant


def _detail(request: Request, *, status_code: int = 200, page: str = "settings",
            **extra: object) -> Response:
    """The tenant's Overview (``page="overview"``) or Settings tab. A POST that re-renders
    it (a refusal, a one-time secret) names the tab's own address for the address bar."""
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me, access = with_tenant(request, s, permission="tenant.view")
        tenant = access.tenant
        job = service.provisioning_job(s, tenant)
        key_problem = None
        checkpoint_key = None
        if tenant.state in ("active", "suspended"):
            with make_session_factory(svc.tenant_connections.engine(tenant))() as ts:
                checkpoint_key = checkpoints.active_public_key(ts)
            try:  # served from the key cache in steady state; a revoked KEK shows here
                sealer = svc.tenant_connections.sealer_for(s, tenant)
                sealer.seal(b"probe", table="-", column="-", row_key="-")
            except TenantKeyUnavailable as exc:
                key_problem = exc.message
        context = {
            "tenant": tenant, "role": access.role, "job": job, "key_problem": key_problem,
            "pages": permissions.pages_for(access.role),
            "checkpoint_key": checkpoint_key, "providers": sorted(svc.key_providers),
            "server": tenant.db_server.name if tenant.db_server else "",
            "members": service.members(s, tenant)
            if permissions.allows(access.role, "members.manage") else [],
            "keys": service.key_versions(s, tenant), "roles": ROLES,
            # the roles this member may give, and so the members whose role they may change
            "givable": [r for r in ROLES if not permissions.outranks(r, access.role)],
            "api_keys": api_keys.list_api_keys(s, tenant)
            if permissions.allows(access.role, "api_keys.manage") else [], "now": utcnow(),
            "scopes": [api_keys.SCOPES[name]
                       for name in api_keys.grantable_scopes(access.role)],
            "notice": notice_from(request.query_params),
            "not_enrolled": not_enrolled(s, access)
            if permissions.allows(access.role, "tenant.lifecycle") else [],
            **sso_settings(s, tenant),
            **extra,
        }
        if page == "overview" and tenant.state in ("active", "suspended"):
            context["overview"] = tenant_overview(s, svc, access, base_url=svc.settings.public_url)
    path = f"/tenants/{tenant.id}" + ("" if page == "overview" else "/settings")
    if request.method == "POST":
        context["page_url"] = path
    template = "tenants/detail.html" if page == "overview" else "tenants/settings.html"
    return render(request, template, context, status_code=status_code,
                  partial="tenants/_status.html" if page == "overview" else None)


@audits_denials
def tenant_page(request: Request) -> Response:
    return _detail(request, page="overview")


@audits_denials
def tenant_settings_page(request: Request) -> Response:
    return _detail(request)


def _settings_done(tenant_id: int, code: str, **params: int) -> Response:
    return RedirectResponse(done_url(f"/tenants/{tenant_id}/settings", code, **params), 303)


@audits_denials
def switch_tenant(request: Request) -> Response:
    """The tenant switcher: the same tab of another of the member's tenants (its Overview when
    their role there does not open that tab). A tenant they are not a member of is a 404."""
    from control_plane.console.nav import tab_paths

    wanted = request.query_params.get("tab", "")
    with services(request).session_factory() as s, s.begin():
        me = require_user(s, request)  # sign-in first, whatever the address holds
        raw = request.query_params.get("to", "")
        if not raw.isdigit():
            return RedirectResponse("/tenants", 303)  # no tenant chosen: the list
        target = int(raw)
        access = service.access_tenant(s, target, user=me.user, permission="tenant.view")
        paths = [path for _, path in tab_paths(access.role, access.tenant.state)]
    return RedirectResponse(f"/tenants/{target}{wanted if wanted in paths else ''}", 303)


@form_endpoint(EmptyForm)
@audits_denials
def retry_provisioning(request: Request, form: EmptyForm) -> Response:
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me, access = with_tenant(request, s, permission="tenant.lifecycle")
        job = service.provisioning_job(s, access.tenant)
        if access.tenant.state != "provisioning" or job is None or job.state != "failed":
            raise Conflict("Only a failed provisioning can be retried.")
        requeue_job(s, job)
        from control_plane import audit
        from control_plane.tenancy.events import TenantEvents

        audit.record(s, TenantEvents.PROVISIONING_RETRIED, actor=service.actor_of(me.user),
                     target_type="tenant", target_id=access.tenant.id)
    _dispatch(svc)
    return RedirectResponse(f"/tenants/{access.tenant.id}", 303)


@form_endpoint(ChangeKeyForm)
@audits_denials
def change_provisioning_key(request: Request, form: ChangeKeyForm) -> Response:
    """A tenant stuck in provisioning on its key: name a key that passes its test, and the
    provisioning job runs again."""
    svc = services(request)
    try:
        with svc.session_factory() as s, s.begin():
            me, access = with_tenant(request, s, permission="tenant.lifecycle")
            service.do_change_provisioning_key(
                s, access, key_provider=form.key_provider, key_ref=form.key_ref,
                providers=svc.key_providers, acting_user=me.user)
            tenant_id = access.tenant.id
    except (InvalidInput, Conflict) as exc:
        return _detail(request, status_code=exc.status_code, error=exc.message,
                       key_form=form.model_dump(), page="overview")
    _dispatch(svc)
    return RedirectResponse(f"/tenants/{tenant_id}", 303)


@form_endpoint(ReasonForm)
@audits_denials
def suspend_tenant(request: Request, form: ReasonForm) -> Response:
    svc = services(request)
    try:
        with svc.session_factory() as s, s.begin():
            me, access = with_tenant(request, s, permission="tenant.lifecycle")
            service.do_suspend_tenant(s, access, reason=form.reason, acting_user=me.user)
            tenant_id = access.tenant.id
    except Conflict as exc:
        return _detail(request, status_code=409, error=exc.message)
    svc.tenant_connections.forget(tenant_id)
    return _settings_done(tenant_id, "suspended")


@form_endpoint(EmptyForm)
@audits_denials
def resume_tenant(request: Request, form: EmptyForm) -> Response:
    try:
        with services(request).session_factory() as s, s.begin():
            me, access = with_tenant(request, s, permission="tenant.lifecycle")
            service.do_resume_tenant(s, access, acting_user=me.user)
            tenant_id = access.tenant.id
    except Conflict as exc:
        return _detail(request, status_code=409, error=exc.message)
    return _settings_done(tenant_id, "resumed")


@form_endpoint(MemberForm)
@audits_denials
def add_member(request: Request, form: MemberForm) -> Response:
    try:
        with services(request).session_factory() as s, s.begin():
            me, access = with_tenant(request, s, permission="members.manage")
            service.do_add_member(s, access, email=form.email, role=form.role,
                                  acting_user=me.user)
            tenant_id = access.tenant.id
    except (InvalidInput, Conflict) as exc:
        return _detail(request, status_code=exc.status_code, error=exc.message,
                       member_form=form.model_dump())
    return _settings_done(tenant_id, "member-added")


@form_endpoint(EmptyForm)
@audits_denials
def remove_member(request: Request, form: EmptyForm) -> Response:
    try:
        with services(request).session_factory() as s, s.begin():
            me, access = with_tenant(request, s, permission="members.manage")
            service.do_remove_member(s, access, int(request.path_params["membership_id"]),
                                     acting_user=me.user)
            tenant_id = access.tenant.id
    except Conflict as exc:
        return _detail(request, status_code=409, error=exc.message)
    return _settings_done(tenant_id, "member-removed")


class RoleForm(Form):
    role: str = Field(max_length=20)


@form_endpoint(RoleForm)
@audits_denials
def change_member_role(request: Request, form: RoleForm) -> Response:
    try:
        with services(request).session_factory() as s, s.begin():
            me, access = with_tenant(request, s, permission="members.manage")
            changed = service.do_change_member_role(
                s, access, int(request.path_params["membership_id"]), role=form.role,
                acting_user=me.user)
            del changed
            tenant_id = access.tenant.id
    except (InvalidInput, Conflict) as exc:
        return _detail(request, status_code=exc.status_code, error=exc.message)
    return _settings_done(tenant_id, "member-role")


@form_endpoint(ApiKeyForm)
@audits_denials
def create_api_key(request: Request, form: ApiKeyForm) -> Response:
    try:
        with services(request).session_factory() as s, s.begin():
            me, access = with_tenant(request, s, permission="api_keys.manage")
            _, key = api_keys.do_create_api_key(s, access, name=form.name, acting_user=me.user,
                                                scopes=form.scopes,
                                                expires_in_days=form.expires_in_days)
    except service.ScopeDenied:
        raise  # audited by audits_denials
    except (InvalidInput, Forbidden) as exc:  # a scope the creator's role lacks, no scope
        return _detail(request, status_code=exc.status_code, error=exc.message,
                       key_form=form.model_dump())
    # shown once, so rendered here rather than redirected; the page names its own address
    return _detail(request, status_code=201, new_api_key=key)


@form_endpoint(EmptyForm)
@audits_denials
def revoke_api_key(request: Request, form: EmptyForm) -> Response:
    with services(request).session_factory() as s, s.begin():
        me, access = with_tenant(request, s, permission="api_keys.manage")
        api_keys.do_revoke_api_key(s, access, int(request.path_params["key_id"]),
                                   acting_user=me.user)
        tenant_id = access.tenant.id
    return _settings_done(tenant_id, "key-revoked")


def api_whoami(request: Request) -> Response:
    """GET /api/whoami: the tenant and key behind a bearer API key (programs check setup)."""
    with services(request).session_factory() as s, s.begin():
        principal = authenticate_key(s, request)
        request.state.tenant = principal.tenant.id
        request.state.actor = f"api_key:{principal.api_key.id}"
        body = {"tenant": {"id": principal.tenant.id, "slug": principal.tenant.slug,
                           "state": principal.tenant.state},
                "api_key": {"id": principal.api_key.id, "name": principal.api_key.name,
                            "prefix": principal.api_key.prefix,
                            "scopes": sorted(principal.api_key.scopes),
                            "created_by": principal.creator.email,
                            "creator_role": principal.creator_role}}
    return JSONResponse(body)


@form_endpoint(EmptyForm)
@audits_denials
def verify_audit(request: Request, form: EmptyForm) -> Response:
    """Queue "Verify now": a job recomputes the tenant's whole chain and its checkpoints."""
    import uuid

    from control_plane.jobs import JobKinds, enqueue_job

    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me, access = with_tenant(request, s, permission="audit.verify")
        enqueue_job(s, JobKinds.VERIFY_AUDIT, {"tenant_id": access.tenant.id},
                    idempotency_key=f"verify:{access.tenant.id}:{uuid.uuid4()}",
                    tenant_id=access.tenant.id, created_by=me.user.id)
        tenant_id = access.tenant.id
    _dispatch(svc)
    return RedirectResponse(f"/tenants/{tenant_id}/audit", 303)


@audits_denials
def verification_status(request: Request) -> Response:
    """The latest "Verify now" of this tenant (an htmx partial that polls while it runs)."""
    from sqlalchemy import select

    from control_plane.jobs import JobKinds
    from control_plane.models import Job

    with services(request).session_factory() as s, s.begin():
        _, access = with_tenant(request, s, permission="audit.view")
        job = s.scalars(select(Job).where(Job.kind == JobKinds.VERIFY_AUDIT,
                                          Job.tenant_id == access.tenant.id)
                        .order_by(Job.id.desc()).limit(1)).first()
        context = {"job": job, "tenant_id": access.tenant.id}
    return render(request, "tenants/_verification.html", context)


@form_endpoint(DeleteForm)
@audits_denials
def delete_tenant(request: Request, form: DeleteForm) -> Response:
    from control_plane.tenancy.deletion import do_request_deletion

    svc = services(request)
    try:
        with svc.session_factory() as s, s.begin():
            me, access = with_tenant(request, s, permission="tenant.lifecycle")
            if form.confirm_slug.strip() != access.tenant.slug:
                raise InvalidInput(f"Type the tenant's slug ({access.tenant.slug}) exactly to "
                                   "confirm.")
            if access.tenant.state in ("active", "suspended"):  # the tenant may guard it
                ctx = svc.tenant_connections.context(s, access.tenant, Actor(
                    "user", str(me.user.id), me.user.email, access.role))
                gates.guard(ctx, "tenant.delete", {"tenant_id": access.tenant.id},
                            approval_id=form.approval_id or None)
            do_request_deletion(s, access, confirm_slug=form.confirm_slug, reason=form.reason,
                                acting_user=me.user)
            tenant_id = access.tenant.id
    except gates.ApprovalPending as pending:
        return _detail(request, status_code=202, notice=pending.message)
    except InvalidInput as exc:
        return _detail(request, status_code=422, error=exc.message)
    except TenantError as exc:  # the approval named is not usable: say why, delete nothing
        return _detail(request, status_code=exc.status_code, error=exc.message)
    svc.tenant_connections.forget(tenant_id)
    _dispatch(svc)
    return RedirectResponse(done_url("/tenants", "tenant-deleted"), 303)


@form_endpoint(RotateKeyForm)
@audits_denials
def rotate_key(request: Request, form: RotateKeyForm) -> Response:
    """What ``magistrate keys rotate`` does, as a job (``rotate_tenant_key``): rewrap the data
    key under the customer's key, and with ``reencrypt`` move every sealed value to a new one.
    One rotation of a tenant at a time; the tenant may make ``keys.rotate`` a restricted
    action (the same approval as the command's)."""
    from control_plane.tenancy.rotation import (
        ROTATABLE_STATES,
        refuse_while_rotating,
        request_rotation,
    )

    svc = services(request)
    try:
        with svc.session_factory() as s, s.begin():
            me, access = with_tenant(request, s, permission="tenant.lifecycle")
            if access.tenant.state not in ROTATABLE_STATES:
                raise Conflict("Only an active or suspended tenant's keys can be rotated.")
            refuse_while_rotating(s, access.tenant)  # before an approval would be used up
            ctx = svc.tenant_connections.context(s, access.tenant, Actor(
                "user", str(me.user.id), me.user.email, access.role))
            approval = gates.guard(ctx, "keys.rotate", {"tenant_id": access.tenant.id},
                                   approval_id=form.approval_id or None)
            job = request_rotation(s, access.tenant, reencrypt=form.reencrypt,
                                   acting_user=me.user, approval_id=approval)
            job_id = job.id
    except gates.ApprovalPending as pending:
        return _detail(request, status_code=202, notice=pending.message)
    except Conflict as exc:
        return _detail(request, status_code=409, error=exc.message)
    except TenantError as exc:  # the approval named is not usable: say why, rotate nothing
        return _detail(request, status_code=exc.status_code, error=exc.message)
    _dispatch(svc)
    return _settings_done(access.tenant.id,
                          "reencrypt-queued" if form.reencrypt else "rotation-queued", job=job_id)


# ------------------------------------------------------------------------------- JSON API


def _api_create(request: Request, raw: dict[str, Any]) -> Response:
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me = require_user(s, request)
        payload = validated(CreateTenantRequest, raw)
        if me.user.is_owner:  # (the service refuses anyone else first)
            service.require_working_key(svc.key_providers, payload.key_provider,
                                        payload.key_ref)
        tenant, job = service.do_create_tenant(
            s, slug=payload.slug, name=payload.name, key_provider=payload.key_provider,
            key_ref=payload.key_ref, providers=svc.key_providers, sealer=svc.sealer,
            acting_user=me.user)
        body = tenant_json(tenant, job.state, (job.progress, job.progress_total))
    _dispatch(svc)
    return JSONResponse(body, status_code=202,
                        headers={"Location": f"/api/tenants/{body['id']}"})


async def api_create_tenant(request: Request) -> Response:
    """POST /api/tenants: create a tenant; provisioning continues as a job (202)."""
    raw = await read_json_object(request)
    return await run_in_threadpool(_api_create, request, raw)


@audits_denials
def api_get_tenant(request: Request) -> Response:
    with services(request).session_factory() as s, s.begin():
        _, access = with_tenant(request, s, permission="tenant.view")
        job = service.provisioning_job(s, access.tenant)
        body = tenant_json(access.tenant, job.state if job else None,
                           (job.progress, job.progress_total) if job else None)
    return JSONResponse(body)


def api_list_tenants(request: Request) -> Response:
    with services(request).session_factory() as s, s.begin():
        me = require_user(s, request)
        rows = service.list_tenants(s, user=me.user)
        body = {"tenants": [{**tenant_json(t), "role": role} for t, role in rows]}
    return JSONResponse(body)


routes = [
    Route("/tenants", tenants_page, methods=["GET"]),
    Route("/tenants", create_tenant, methods=["POST"]),
    Route("/tenants/test-key", test_key, methods=["POST"]),
    Route("/tenants/local-key", create_local_key, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/key", change_provisioning_key, methods=["POST"]),
    Route("/tenants/switch", switch_tenant, methods=["GET"]),
    Route("/tenants/{tenant_id:int}", tenant_page, methods=["GET"]),
    Route("/tenants/{tenant_id:int}/settings", tenant_settings_page, methods=["GET"]),
    Route("/tenants/{tenant_id:int}/retry", retry_provisioning, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/suspend", suspend_tenant, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/resume", resume_tenant, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/delete", delete_tenant, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/keys/rotate", rotate_key, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/audit/verify", verify_audit, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/audit/verification", verification_status,
          methods=["GET"]),
    Route("/tenants/{tenant_id:int}/api-keys", create_api_key, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/api-keys/{key_id:int}/revoke", revoke_api_key,
          methods=["POST"]),
    Route("/tenants/{tenant_id:int}/members", add_member, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/members/{membership_id:int}/remove", remove_member,
          methods=["POST"]),
    Route("/tenants/{tenant_id:int}/members/{membership_id:int}/role", change_member_role,
          methods=["POST"]),
    *[mount_area(r) for r in TENANT_AREAS],
    Route("/api/whoami", api_whoami, methods=["GET"]),
    Route("/api/tenants", api_list_tenants, methods=["GET"]),
    Route("/api/tenants", api_create_tenant, methods=["POST"]),
    Route("/api/tenants/{tenant_id:int}", api_get_tenant, methods=["GET"]),
]
