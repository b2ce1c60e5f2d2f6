"""The users page for Owners: create (with a one-time password shown once), deactivate; and
any member's "Download my data" (users/my_data.py)."""

from __future__ import annotations

from pydantic import EmailStr, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control_plane.exceptions import Conflict, InvalidInput, RateLimited
from control_plane.users import my_data, service
from control_plane.web.deps import require_user
from control_plane.web.forms import Form, form_endpoint
from control_plane.web.services import services
from control_plane.web.templating import render


class CreateUserForm(Form):
    email: EmailStr = Field(max_length=320)
    display_name: str = Field(default="", max_length=200)
    is_owner: bool = False


class EmptyForm(Form):
    pass


def _page(request: Request, *, status_code: int = 200, **extra: object) -> Response:
    with services(request).session_factory() as s, s.begin():
        me = require_user(s, request)
        users = service.list_users(s, acting_user=me.user)
        context = {"users": users, "me": me.user, **extra}
    return render(request, "users/users.html", context, status_code=status_code,
                  partial="users/_users.html")


def users_page(request: Request) -> Response:
    return _page(request)


@form_endpoint(CreateUserForm)
def create_user(request: Request, form: CreateUserForm) -> Response:
    try:
        with services(request).session_factory() as s, s.begin():
            me = require_user(s, request)
            created = service.do_create_user(
                s, email=str(form.email), display_name=form.display_name,
                is_owner=form.is_owner, acting_user=me.user)
            email = created.user.email
    except (Conflict, InvalidInput) as exc:
        return _page(request, status_code=exc.status_code, error=exc.message)
    return _page(request, status_code=201, created_email=email,
                 one_time_password=created.one_time_password)


def _set_active(request: Request, active: bool) -> Response:
    user_id = request.path_params["user_id"]
    try:
        with services(request).session_factory() as s, s.begin():
            me = require_user(s, request)
            user = service.access_user(s, user_id, acting_user=me.user)
            if active:
                service.do_reactivate_user(s, user, acting_user=me.user)
            else:
                service.do_deactivate_user(s, user, acting_user=me.user)
    except Conflict as exc:
        return _page(request, status_code=409, error=exc.message)
    return _page(request, notice="Account updated.")


@form_endpoint(EmptyForm)
def deactivate_user(request: Request, form: EmptyForm) -> Response:
    return _set_active(request, False)


@form_endpoint(EmptyForm)
def reactivate_user(request: Request, form: EmptyForm) -> Response:
    return _set_active(request, True)


@form_endpoint(EmptyForm)
def download_my_data(request: Request, form: EmptyForm) -> Response:
    """POST /account/my-data: the member's own data as a JSON attachment (users/my_data.py)."""
    svc = services(request)
    limiter = my_data.ExportLimiter(svc.redis)
    export: my_data.MyDataExport | None = None
    try:
        with svc.session_factory() as s, s.begin():
            me = require_user(s, request)
            export = my_data.do_export_my_data(
                s, connections=svc.tenant_connections, limiter=limiter,
                current_session_id=me.session.id, acting_user=me.user)
    except RateLimited as exc:
        with svc.session_factory() as s, s.begin():
            me = require_user(s, request)
            context = {"user": me.user, "my_data_error": exc.message}
        return render(request, "account/account.html", context, status_code=429,
                      headers={"Retry-After": str(exc.retry_after)})
    except BaseException:
        if export is not None:  # built, but the transaction did not commit
            export.discard(limiter)
        raise
    return export.response()


routes = [
    Route("/users", users_page, methods=["GET"]),
    Route("/users", create_user, methods=["POST"]),
    Route("/users/{user_id:int}/deactivate", deactivate_user, methods=["POST"]),
    Route("/users/{user_id:int}/reactivate", reactivate_user, methods=["POST"]),
    Route("/account/my-data", download_my_data, methods=["POST"]),
]
