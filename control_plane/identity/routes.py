"""Single sign-on over HTTP: the sign-in buttons' start, the provider's answer (callback), the
account link, back-channel logout, and the Owners' page of providers and policy.

A refused sign-in (``SsoRefused``, or an ``OidcError`` from the protocol) rolls its
transaction back, so its audit event (``sso.sign_in_refused`` with the reason) is written in a
transaction of its own, and the person sees a page with one sentence (403)."""

from __future__ import annotations

from pydantic import Field
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from control_plane.audit import SsoEvents
from control_plane.auth.routes import (
    EmptyForm,
    client_info,
    safe_next,
    set_session_cookie,
)
from control_plane.console.notices import done_url, notice_from
from control_plane.exceptions import Conflict, InvalidInput, NotFound, RateLimited
from control_plane.identity import service
from control_plane.identity.oidc import OidcError
from control_plane.identity.policy import get_policy
from control_plane.identity.service import SsoRefused, SsoResult
from control_plane.models import ScimToken
from control_plane.scim import service as scim
from control_plane.tenancy.areas import with_tenant
from control_plane.web.access import audits_denials
from control_plane.web.deps import client_ip, require_user
from control_plane.web.forms import Form, form_endpoint
from control_plane.web.services import services
from control_plane.web.templating import render

CALLBACK_PATH = "/sign-in/sso/callback"


class LinkForm(Form):
    link: str = Field(max_length=100)
    password: str = Field(max_length=1024)


class ProviderForm(Form):
    name: str = Field(max_length=63)
    discovery_url: str = Field(max_length=1000)
    client_id: str = Field(max_length=500)
    client_secret: str = Field(default="", max_length=2000)
    allowed_domains: str = Field(default="", max_length=4000)
    create_accounts: bool = False
    groups_claim: str = Field(default="", max_length=100)
    group_roles: str = Field(default="", max_length=20000)
    trust_idp_mfa: bool = False
    mfa_amr_values: str = Field(default="", max_length=1000)
    mfa_acr_values: str = Field(default="", max_length=4000)


class BackchannelForm(Form):
    logout_token: str = Field(min_length=1, max_length=16_000)


class ScimTokenForm(Form):
    provider_id: int
    label: str = Field(max_length=100)


class PolicyForm(Form):
    sso_required: bool = False
    break_glass_email: str = Field(default="", max_length=320)


class TenantPolicyForm(PolicyForm):
    sso_provider: str = Field(default="", max_length=63)  # the provider's name; empty: any


def redirect_uri(request: Request) -> str:
    return services(request).settings.public_origin + CALLBACK_PATH


def _binding(request: Request) -> str | None:
    found = getattr(request.state, "csrf_binding", None)
    return found if isinstance(found, str) else None


def _refused(request: Request, exc: SsoRefused | OidcError, *, provider_id: int | None,
             event: str = SsoEvents.SIGN_IN_REFUSED) -> Response:
    with services(request).session_factory() as s, s.begin():
        service.do_record_refusal(s, exc, provider_id=provider_id, client_ip=client_ip(request),
                                  event=event)
    return render(request, "auth/sso_refused.html", {"message": exc.message,
                                                     "reason": exc.reason}, status_code=403)


def _signed_in(request: Request, result: SsoResult) -> Response:
    if result.link_state is not None:
        return render(request, "auth/sso_link.html",
                      {"link": result.link_state, "email": result.link_email})
    if result.token is None:
        raise RuntimeError("single sign-on succeeded without a session")
    if result.mfa_pending:
        target = "/sign-in/mfa?next=" + safe_next(result.next_path)
    else:
        target = safe_next(result.next_path)
    response = RedirectResponse(target, 303)
    set_session_cookie(request, response, result.token)
    return response


# ------------------------------------------------------------------------------- sign-in


def start(request: Request) -> Response:
    """A link, not a form: the answer redirects to the provider, and the CSP's
    ``form-action 'self'`` would stop a form's submission from going on to another origin.
    Starting a sign-in changes nothing but a row that only this browser's answer can use."""
    svc = services(request)
    next_path = safe_next(request.query_params.get("next"))
    binding = _binding(request)
    try:
        with svc.session_factory() as s, s.begin():
            provider = service.get_active_provider(s, request.path_params["provider_id"])
            if binding is None:
                raise SsoRefused("no_browser_binding", "Your browser sent no cookie; allow "
                                                       "cookies for this site and try again.")
            url = service.do_begin_sign_in(
                s, provider, browser_binding=binding, next_path=next_path,
                redirect_uri=redirect_uri(request), oidc=svc.oidc, sealer=svc.sealer)
    except (SsoRefused, OidcError) as exc:
        return _refused(request, exc, provider_id=request.path_params["provider_id"])
    return RedirectResponse(url, 303)


def callback(request: Request) -> Response:
    svc = services(request)
    params = request.query_params
    state, code, error = params.get("state"), params.get("code"), params.get("error")
    if not state and not code and not error:
        return RedirectResponse("/sign-in", 303)
    if error or not state or not code:
        described = (params.get("error_description") or error or "no code")[:200]
        return _refused(request, SsoRefused("provider_error", "The identity provider did not "
                                                              f"sign you in: {described}"),
                        provider_id=None)
    try:
        with svc.session_factory() as s, s.begin():
            info = client_info(request)
            result = service.do_finish_sign_in(
                s, state=state[:200], code=code[:2000], browser_binding=_binding(request),
                redirect_uri=redirect_uri(request), client_ip=info.ip, host=info.host,
                user_agent=info.user_agent, oidc=svc.oidc, sealer=svc.sealer)
    except SsoRefused as exc:
        return _refused(request, exc, provider_id=exc.provider_id)
    except NotFound:
        return _refused(request, SsoRefused("provider_disabled", "This identity provider is "
                                                                 "no longer in use here."),
                        provider_id=None)
    return _signed_in(request, result)


def link_page(request: Request) -> Response:
    link = request.query_params.get("link")
    if not link:
        return RedirectResponse("/sign-in", 303)
    return render(request, "auth/sso_link.html", {"link": link[:100], "email": None})


@form_endpoint(LinkForm)
def link(request: Request, form: LinkForm) -> Response:
    svc = services(request)
    try:
        with svc.session_factory() as s, s.begin():
            info = client_info(request)
            result = service.do_link_identity(
                s, link_state=form.link, password=form.password,
                browser_binding=_binding(request), client_ip=info.ip, host=info.host,
                user_agent=info.user_agent, limiter=svc.limiter)
    except SsoRefused as exc:
        return _refused(request, exc, provider_id=exc.provider_id)
    except RateLimited as exc:
        return render(request, "auth/sso_link.html",
                      {"link": form.link, "email": None, "error": exc.message},
                      status_code=429, headers={"Retry-After": str(exc.retry_after)})
    if result.token is None:
        return render(request, "auth/sso_link.html",
                      {"link": form.link, "email": result.link_email,
                       "error": "That password is not correct."}, status_code=401)
    return _signed_in(request, result)


# ------------------------------------------------------------------------------- logout


@form_endpoint(BackchannelForm)
def backchannel_logout(request: Request, form: BackchannelForm) -> Response:
    """OpenID Connect Back-Channel Logout 1.0: the provider POSTs ``logout_token`` (form);
    200 when the sessions it names are revoked, 400 with an error otherwise (section 2.8).
    Exempt from CSRF (``CSRF_EXEMPT_PREFIXES``) only while it carries no session: the
    provider's server sends no cookie, and the signed token is its credential."""
    svc = services(request)
    headers = {"Cache-Control": "no-store"}
    provider_id = request.path_params["provider_id"]
    token = form.logout_token
    try:
        with svc.session_factory() as s, s.begin():
            provider = service.get_active_provider(s, provider_id)
            service.do_backchannel_logout(s, provider, logout_token=token, oidc=svc.oidc,
                                          sealer=svc.sealer)
    except NotFound:
        return PlainTextResponse("invalid_request: no such provider", 400, headers=headers)
    except OidcError as exc:
        with svc.session_factory() as s, s.begin():
            service.do_record_refusal(s, exc, provider_id=provider_id,
                                      client_ip=client_ip(request),
                                      event=SsoEvents.BACKCHANNEL_LOGOUT_REFUSED)
        return PlainTextResponse(f"invalid_request: {exc.message}", 400, headers=headers)
    return PlainTextResponse("", 200, headers=headers)


# ------------------------------------------------------------------------------- Owners' page


def _page(request: Request, *, status_code: int = 200, **extra: object) -> Response:
    with services(request).session_factory() as s, s.begin():
        me = require_user(s, request)
        service.require_owner(me.user)
        providers = service.list_providers(s)
        policy = get_policy(s)
        break_glass = policy.break_glass_user.email if policy.break_glass_user else ""
        tokens = scim.list_tokens(s)
        context = {"providers": providers, "sso_required": policy.sso_required,
                   "tokens": tokens, "scim_url": services(request).settings.public_origin
                   + "/scim/v2",
                   "break_glass_email": break_glass,
                   "callback_url": redirect_uri(request), **extra}
        return render(request, "identity/providers.html", context, status_code=status_code,
                      partial="identity/_providers.html")


def providers_page(request: Request) -> Response:
    return _page(request, notice=notice_from(request.query_params))


def _typed(form: ProviderForm) -> dict[str, object]:
    """What the person typed, to show again with a refusal (never the secret)."""
    return form.model_dump(exclude={"csrf_token", "client_secret"})


def _edit_of(s: Session, form: ProviderForm) -> service.ProviderEdit:
    """The whole form as an edit: every field is set, and an empty secret keeps the old."""
    return service.ProviderEdit(
        name=form.name, discovery_url=form.discovery_url, client_id=form.client_id,
        client_secret=form.client_secret,
        allowed_domains=service.parse_domains(form.allowed_domains),
        create_accounts=form.create_accounts, groups_claim=form.groups_claim,
        group_roles=service.parse_group_roles(s, form.group_roles),
        trust_idp_mfa=form.trust_idp_mfa,
        mfa_amr_values=service.parse_mfa_values(form.mfa_amr_values, what="amr"),
        mfa_acr_values=service.parse_mfa_values(form.mfa_acr_values, what="acr"))


@form_endpoint(ProviderForm)
def create_provider(request: Request, form: ProviderForm) -> Response:
    svc = services(request)
    try:
        with svc.session_factory() as s, s.begin():
            me = require_user(s, request)
            service.require_owner(me.user)
            edit = _edit_of(s, form)
            provider = service.do_create_provider(
                s, name=form.name, discovery_url=form.discovery_url, client_id=form.client_id,
                client_secret=form.client_secret, allowed_domains=edit.allowed_domains or [],
                create_accounts=form.create_accounts, groups_claim=form.groups_claim,
                group_roles=edit.group_roles or [], trust_idp_mfa=form.trust_idp_mfa,
                oidc=svc.oidc, sealer=svc.sealer, acting_user=me.user,
                mfa_amr_values=edit.mfa_amr_values, mfa_acr_values=edit.mfa_acr_values)
            name = provider.name
    except (InvalidInput, Conflict) as exc:
        return _page(request, status_code=exc.status_code, error=exc.message,
                     typed=_typed(form))
    return _page(request, status_code=201, notice=f"Provider {name} added.")


def _edit_page(request: Request, provider_id: int, *, typed: dict[str, object] | None = None,
               error: str | None = None, status_code: int = 200) -> Response:
    with services(request).session_factory() as s, s.begin():
        me = require_user(s, request)
        provider = service.access_provider(s, provider_id, acting_user=me.user)
        current = {"name": provider.name, "discovery_url": provider.discovery_url,
                   "client_id": provider.client_id,
                   "allowed_domains": ", ".join(provider.allowed_domains),
                   "create_accounts": provider.create_accounts,
                   "groups_claim": provider.groups_claim or "",
                   "group_roles": service.format_group_roles(s, provider.group_roles),
                   "trust_idp_mfa": provider.trust_idp_mfa,
                   "mfa_amr_values": ", ".join(provider.mfa_amr_values),
                   "mfa_acr_values": ", ".join(provider.mfa_acr_values)}
        context = {"provider": provider, "values": typed or current, "error": error,
                   "has_secret": provider.client_secret_sealed is not None,
                   "callback_url": redirect_uri(request)}
        return render(request, "identity/provider_edit.html", context,
                      status_code=status_code)


def provider_page(request: Request) -> Response:
    return _edit_page(request, request.path_params["provider_id"])


@form_endpoint(ProviderForm)
def update_provider(request: Request, form: ProviderForm) -> Response:
    """An Owner's change of a provider; a refusal is the edit page again, 422 (409 for a name
    taken) with one sentence and what was typed."""
    svc = services(request)
    provider_id = request.path_params["provider_id"]
    try:
        with svc.session_factory() as s, s.begin():
            me = require_user(s, request)
            provider = service.access_provider(s, provider_id, acting_user=me.user)
            changed = service.do_update_provider(s, provider, edit=_edit_of(s, form),
                                                 oidc=svc.oidc, sealer=svc.sealer,
                                                 acting_user=me.user)
    except (InvalidInput, Conflict) as exc:
        return _edit_page(request, provider_id, typed=_typed(form), error=exc.message,
                          status_code=exc.status_code)
    return RedirectResponse(done_url("/sso", "sso-provider-saved" if changed
                                     else "sso-provider-unchanged"), 303)


def _set_active(request: Request, active: bool) -> Response:
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me = require_user(s, request)
        provider = service.access_provider(s, request.path_params["provider_id"],
                                           acting_user=me.user)
        service.do_set_provider_active(s, provider, active=active, acting_user=me.user)
        svc.oidc.forget(provider.id)
    return _page(request)


@form_endpoint(EmptyForm)
def disable_provider(request: Request, form: EmptyForm) -> Response:
    return _set_active(request, False)


@form_endpoint(EmptyForm)
def enable_provider(request: Request, form: EmptyForm) -> Response:
    return _set_active(request, True)


@form_endpoint(PolicyForm)
def set_policy(request: Request, form: PolicyForm) -> Response:
    try:
        with services(request).session_factory() as s, s.begin():
            me = require_user(s, request)
            service.do_set_policy(s, sso_required=form.sso_required,
                                  break_glass_email=form.break_glass_email,
                                  acting_user=me.user)
    except InvalidInput as exc:
        return _page(request, status_code=422, error=exc.message)
    return _page(request, notice="The single sign-on policy was saved.")


@form_endpoint(TenantPolicyForm)
@audits_denials
def set_tenant_policy(request: Request, form: TenantPolicyForm) -> Response:
    """A tenant Owner's "single sign-on required" (the tenant's Settings tab); a refusal
    (no break-glass Owner, one without TOTP, no provider) is the page's 422 sentence."""
    with services(request).session_factory() as s, s.begin():
        me, access = with_tenant(request, s, permission="tenant.lifecycle")
        service.do_set_tenant_policy(
            s, access.tenant, role=access.role, sso_required=form.sso_required,
            break_glass_email=form.break_glass_email, provider_name=form.sso_provider,
            acting_user=me.user)
        tenant_id = access.tenant.id
    code = "sso-required" if form.sso_required else "sso-optional"
    return RedirectResponse(done_url(f"/tenants/{tenant_id}/settings", code), 303)


@form_endpoint(ScimTokenForm)
def create_scim_token(request: Request, form: ScimTokenForm) -> Response:
    try:
        with services(request).session_factory() as s, s.begin():
            me = require_user(s, request)
            provider = service.access_provider(s, form.provider_id, acting_user=me.user)
            token, secret = scim.do_create_token(s, provider, label=form.label,
                                                 acting_user=me.user)
            label = token.label
    except Conflict as exc:
        return _page(request, status_code=422, error=exc.message)
    # shown once: this response is the only place the secret ever appears
    return _page(request, status_code=201, new_token=secret, new_token_label=label)


@form_endpoint(EmptyForm)
def revoke_scim_token(request: Request, form: EmptyForm) -> Response:
    with services(request).session_factory() as s, s.begin():
        me = require_user(s, request)
        service.require_owner(me.user)
        token = s.get(ScimToken, request.path_params["token_id"])
        if token is None:
            raise NotFound("No such SCIM token.")
        scim.do_revoke_token(s, token, acting_user=me.user)
    return _page(request, notice="The SCIM token was revoked.")


routes = [
    Route("/sign-in/sso/{provider_id:int}", start, methods=["GET"]),
    Route(CALLBACK_PATH, callback, methods=["GET"]),
    Route("/sign-in/sso/link", link_page, methods=["GET"]),
    Route("/sign-in/sso/link", link, methods=["POST"]),
    Route("/sso/backchannel-logout/{provider_id:int}", backchannel_logout, methods=["POST"]),
    Route("/sso", providers_page, methods=["GET"]),
    Route("/sso/providers", create_provider, methods=["POST"]),
    Route("/sso/providers/{provider_id:int}", provider_page, methods=["GET"]),
    Route("/sso/providers/{provider_id:int}", update_provider, methods=["POST"]),
    Route("/sso/providers/{provider_id:int}/disable", disable_provider, methods=["POST"]),
    Route("/sso/providers/{provider_id:int}/enable", enable_provider, methods=["POST"]),
    Route("/sso/policy", set_policy, methods=["POST"]),
    Route("/tenants/{tenant_id:int}/security/sso", set_tenant_policy, methods=["POST"]),
    Route("/sso/scim-tokens", create_scim_token, methods=["POST"]),
    Route("/sso/scim-tokens/{token_id:int}/revoke", revoke_scim_token, methods=["POST"]),
]
