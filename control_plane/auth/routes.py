"""Sign-in, the MFA challenge, sign-out and the account page (password, MFA, sessions)."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

from pydantic import Field
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from control_plane.auth import mfa, service, sessions
from control_plane.auth.service import ClientInfo, SignInOutcome
from control_plane.exceptions import Conflict, InvalidInput, RateLimited
from control_plane.identity.service import list_providers, sign_out_target
from control_plane.web.deps import (
    client_ip,
    current_session,
    request_host,
    require_user,
    session_token,
)
from control_plane.web.forms import Form, form_endpoint
from control_plane.web.services import services
from control_plane.web.templating import render


class SignInForm(Form):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)
    next: str = Field(default="/", max_length=2000)


class CodeForm(Form):
    code: str = Field(max_length=64)
    next: str = Field(default="/", max_length=2000)


class PasswordChangeForm(Form):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)
    confirm_password: str = Field(max_length=1024)


class PasswordForm(Form):
    password: str = Field(max_length=1024)


class EmptyForm(Form):
    pass


def safe_next(target: str | None) -> str:
    """Only same-site paths: never another host, never a scheme-relative URL."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def client_info(request: Request) -> ClientInfo:
    return ClientInfo(ip=client_ip(request), host=request_host(request),
                      user_agent=request.headers.get("user-agent"))


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    svc = services(request)
    response.set_cookie(
        svc.settings.session_cookie_name, svc.signer.sign_session(token),
        max_age=int(sessions.ABSOLUTE_LIFETIME / timedelta(seconds=1)), path="/",
        httponly=True, samesite="lax", secure=svc.settings.secure_cookies,
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    svc = services(request)
    response.delete_cookie(svc.settings.session_cookie_name, path="/", httponly=True,
                           samesite="lax", secure=svc.settings.secure_cookies)


# ------------------------------------------------------------------------------- sign-in


def sso_buttons(request: Request) -> list[tuple[int, str]]:
    """The active identity providers, (id, name), for the sign-in page's buttons."""
    with services(request).session_factory() as s:
        return [(p.id, p.name) for p in list_providers(s, active_only=True)]


def _sign_in_form(request: Request, context: dict[str, object], *, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    return render(request, "auth/sign_in.html", {**context, "providers": sso_buttons(request)},
                  status_code=status_code, headers=headers)


def sign_in_page(request: Request) -> Response:
    with services(request).session_factory() as s, s.begin():
        row = current_session(s, request)
        if row is not None and not row.mfa_pending:
            return RedirectResponse(safe_next(request.query_params.get("next")), 303)
    return _sign_in_form(request, {"next": safe_next(request.query_params.get("next")),
                                   "email": ""})


@form_endpoint(SignInForm)
def sign_in(request: Request, form: SignInForm) -> Response:
    svc = services(request)
    context = {"next": safe_next(form.next), "email": form.email}
    try:
        with svc.session_factory() as s, s.begin():
            result = service.do_sign_in(s, email=form.email, password=form.password,
                                        client=client_info(request), limiter=svc.limiter)
            previous = current_session(s, request)
            if result.outcome is not SignInOutcome.FAILED and previous is not None:
                sessions.revoke_session(s, previous)  # a new token at every sign-in
    except RateLimited as exc:
        with svc.session_factory() as s, s.begin():
            service.do_record_rate_limited(s, client=client_info(request))
        return _sign_in_form(request, {**context, "error": exc.message}, status_code=429,
                             headers={"Retry-After": str(exc.retry_after)})
    if result.outcome is SignInOutcome.FAILED:
        return _sign_in_form(request,
                             {**context, "error": "The e-mail or password is not correct."},
                             status_code=401)
    if result.outcome is SignInOutcome.SSO_REQUIRED:
        message = (result.refusal.sentence() if result.refusal is not None
                   else "Single sign-on is required: use your identity provider's button.")
        return _sign_in_form(request, {**context, "error": message}, status_code=403)
    if result.token is None or result.user is None:
        raise RuntimeError("sign-in succeeded without a session")
    if result.outcome is SignInOutcome.MFA_REQUIRED:
        target = "/sign-in/mfa?next=" + quote(context["next"], safe="/")
    elif result.user.must_change_password:
        target = "/account"
    else:
        target = context["next"]
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(request, response, result.token)
    return response


def mfa_challenge_page(request: Request) -> Response:
    with services(request).session_factory() as s, s.begin():
        row = current_session(s, request)
        if row is None or not row.mfa_pending:
            return RedirectResponse("/sign-in", 303)
    return render(request, "auth/mfa_challenge.html",
                  {"next": safe_next(request.query_params.get("next"))})


@form_endpoint(CodeForm)
def mfa_challenge(request: Request, form: CodeForm) -> Response:
    svc = services(request)
    context = {"next": safe_next(form.next)}
    try:
        with svc.session_factory() as s, s.begin():
            row = current_session(s, request)
            if row is None or not row.mfa_pending:
                return RedirectResponse("/sign-in", 303)
            must_change = row.user.must_change_password
            token = service.do_pass_mfa_challenge(
                s, row, code=form.code, client=client_info(request), sealer=svc.sealer,
                limiter=svc.limiter)
    except RateLimited as exc:
        with svc.session_factory() as s, s.begin():
            service.do_record_rate_limited(s, client=client_info(request))
        return render(request, "auth/mfa_challenge.html", {**context, "error": exc.message},
                      status_code=429, headers={"Retry-After": str(exc.retry_after)})
    if token is None:
        return render(request, "auth/mfa_challenge.html",
                      {**context, "error": "That code is not correct. Enter the current code "
                                           "from your authenticator app, or a backup code."},
                      status_code=401)
    response = RedirectResponse("/account" if must_change else context["next"], 303)
    set_session_cookie(request, response, token)
    return response


@form_endpoint(EmptyForm)
def sign_out(request: Request, form: EmptyForm) -> Response:
    """Sign out here; a session from single sign-on then goes on to the provider's end-session
    endpoint (RP-initiated logout), which sends the browser back to the sign-in page."""
    svc = services(request)
    target = None
    with svc.session_factory() as s, s.begin():
        row = sessions.load_session(s, session_token(request), host=request_host(request))
        if row is not None:
            target = sign_out_target(s, row, oidc=svc.oidc, sealer=svc.sealer,
                                     post_logout_redirect_uri=svc.settings.public_origin
                                     + "/sign-in")
            service.do_sign_out(s, row, acting_user=row.user)
    response = RedirectResponse(target or "/sign-in", 303)
    clear_session_cookie(request, response)
    return response


# ------------------------------------------------------------------------------- account


def _account(request: Request, *, status_code: int = 200, **extra: object) -> Response:
    with services(request).session_factory() as s, s.begin():
        me = require_user(s, request, allow_password_change=True)
        context = {"user": me.user, **extra}
    return render(request, "account/account.html", context, status_code=status_code)


def account_page(request: Request) -> Response:
    return _account(request)


@form_endpoint(PasswordChangeForm)
def change_password(request: Request, form: PasswordChangeForm) -> Response:
    if form.new_password != form.confirm_password:
        return _account(request, status_code=422,
                        password_error="The new password and its confirmation differ.")  # noqa: S106
    try:
        with services(request).session_factory() as s, s.begin():
            me = require_user(s, request, allow_password_change=True)
            service.do_change_password(s, current=form.current_password, new=form.new_password,
                                       current_session=me.session, acting_user=me.user)
    except InvalidInput as exc:
        return _account(request, status_code=422, password_error=exc.message)
    return _account(request, notice="Your password was changed. Other sessions were signed "
                                    "out.")


@form_endpoint(EmptyForm)
def sign_out_everywhere(request: Request, form: EmptyForm) -> Response:
    with services(request).session_factory() as s, s.begin():
        me = require_user(s, request, allow_password_change=True)
        service.do_sign_out_everywhere(s, acting_user=me.user)
    response = RedirectResponse("/sign-in", 303)
    clear_session_cookie(request, response)
    return response


# ------------------------------------------------------------------------------- MFA


@form_endpoint(EmptyForm)
def mfa_start(request: Request, form: EmptyForm) -> Response:
    svc = services(request)
    try:
        with svc.session_factory() as s, s.begin():
            me = require_user(s, request, allow_password_change=True)
            service.do_begin_mfa_enrollment(s, sealer=svc.sealer, acting_user=me.user)
    except Conflict as exc:
        return _account(request, status_code=409, mfa_error=exc.message)
    return RedirectResponse("/account/mfa", 303)


def _enrollment(request: Request, *, status_code: int = 200, error: str | None = None
                ) -> Response:
    svc = services(request)
    with svc.session_factory() as s, s.begin():
        me = require_user(s, request, allow_password_change=True)
        if me.user.mfa_enabled:
            return RedirectResponse("/account", 303)
        secret = service.totp_secret(svc.sealer, me.user)
        if secret is None:
            return RedirectResponse("/account", 303)
        uri = mfa.provisioning_uri(secret, me.user.email)
    return render(request, "account/mfa_enroll.html",
                  {"qr_svg": mfa.qr_svg(uri), "secret": secret, "error": error},
                  status_code=status_code)


def mfa_enroll_page(request: Request) -> Response:
    return _enrollment(request)


@form_endpoint(CodeForm)
def mfa_confirm(request: Request, form: CodeForm) -> Response:
    svc = services(request)
    try:
        with svc.session_factory() as s, s.begin():
            me = require_user(s, request, allow_password_change=True)
            codes = service.do_confirm_mfa_enrollment(s, code=form.code, sealer=svc.sealer,
                                                      acting_user=me.user)
    except (InvalidInput, Conflict) as exc:
        return _enrollment(request, status_code=422, error=exc.message)
    # shown once: this response is the only place the codes ever appear
    return render(request, "account/backup_codes.html", {"codes": codes})


@form_endpoint(PasswordForm)
def mfa_disable(request: Request, form: PasswordForm) -> Response:
    try:
        with services(request).session_factory() as s, s.begin():
            me = require_user(s, request, allow_password_change=True)
            service.do_disable_mfa(s, password=form.password, acting_user=me.user)
    except (InvalidInput, Conflict) as exc:
        return _account(request, status_code=422, mfa_error=exc.message)
    return _account(request, notice="Multi-factor authentication is off.")


routes = [
    Route("/sign-in", sign_in_page, methods=["GET"]),
    Route("/sign-in", sign_in, methods=["POST"]),
    Route("/sign-in/mfa", mfa_challenge_page, methods=["GET"]),
    Route("/sign-in/mfa", mfa_challenge, methods=["POST"]),
    Route("/sign-out", sign_out, methods=["POST"]),
    Route("/account", account_page, methods=["GET"]),
    Route("/account/password", change_password, methods=["POST"]),
    Route("/account/sign-out-everywhere", sign_out_everywhere, methods=["POST"]),
    Route("/account/mfa/start", mfa_start, methods=["POST"]),
    Route("/account/mfa", mfa_enroll_page, methods=["GET"]),
    Route("/account/mfa", mfa_confirm, methods=["POST"]),
    Route("/account/mfa/disable", mfa_disable, methods=["POST"]),
]
