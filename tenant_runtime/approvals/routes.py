"""The approvals area's dashboard routes, mounted under /tenants/{tenant_id} by the
control plane.

- ``/approvals``: the inbox (requests the signed-in member may decide), asking for an action
  (Owners, Admins, Operators) and the recent requests; htmx swaps ``_approvals_inbox.html``.
- ``/approvals/history``: requests no longer waiting, with filters, sorting, paging and a CSV
  download (``.csv``).
- ``/approvals/{request_id}``: one request and its timeline; approve (optional comment) or
  reject (a reason is required).
- ``/approvals/classes``: action classes and notification settings (Owners and Admins change
  them; every change is audited).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tenant_runtime import permissions, tables
from tenant_runtime.approvals import arguments, classes, history, notify, service
from tenant_runtime.approvals.exceptions import ApprovalError, RequestNotFound
from tenant_runtime.approvals.executors import internal_actions
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.routing import TenantRoute
from tenant_runtime.text import UnstorableJson, loads_storable


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csrf_token: str = ""


class RequestForm(_Form):
    action: str = Field(max_length=100)
    payload: str = Field(default="", max_length=8192)


class ApproveForm(_Form):
    comment: str = Field(default="", max_length=2000)


class RejectForm(_Form):
    reason: str = Field(default="", max_length=2000)


class ClassChangeForm(_Form):
    description: str = Field(default="", max_length=500)
    restricted: bool = False  # an unticked checkbox sends nothing
    approver_role: str = Field(default=classes.DEFAULT_APPROVER_ROLE, max_length=20)
    expiry_hours: int = Field(default=24, ge=1, le=720)
    approvals_needed: int = Field(default=1, ge=1, le=classes.MAX_APPROVALS)
    execution_url: str = Field(default="", max_length=500)


class ClassForm(ClassChangeForm):
    name: str = Field(max_length=100)


class SettingsForm(_Form):
    webhook_url: str = Field(default="", max_length=500)
    email_approvers: bool = False


class EmptyForm(_Form):
    pass


def _me(ctx: TenantContext) -> tuple[str, str]:
    return ctx.actor.id or "", ctx.actor.role or ""


def _inbox_context(s: Session, ctx: TenantContext) -> dict[str, Any]:
    user_id, role = _me(ctx)
    now = service.clock()
    inbox = service.inbox(s, user_id=user_id, role=role, now=now)
    return {"inbox": inbox, "recent": service.recent_requests(s), "now": now,
            "arguments": {r.id: arguments.arguments_for(ctx, r) for r in inbox},
            "state_of": lambda r: service.display_state(r, now)}


def _page(request: Request, ctx: TenantContext, *, status_code: int = 200,
          **extra: object) -> Response:
    render = request.app.state.render
    with ctx.session() as s, s.begin():
        context = {**_inbox_context(s, ctx),
                   "classes": classes.list_action_classes(s), "role": ctx.actor.role,
                   "may_request": permissions.allows(ctx.actor.role, "approvals.request"),
                   **extra}
    return render(request, "tenants/approvals.html",  # type: ignore[no-any-return]
                  context, status_code=status_code, partial="tenants/_approvals_inbox.html")


def approvals_page(request: Request, ctx: TenantContext) -> Response:
    return _page(request, ctx)


def _payload(raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        value = loads_storable(raw, field="payload")
    except UnstorableJson as exc:
        raise TenantInvalidInput(exc.args[0]) from None
    except (ValueError, RecursionError):
        raise TenantInvalidInput("The payload must be a JSON object, such as "
                                 "{\"agent_id\": 12}.") from None
    if not isinstance(value, dict):
        raise TenantInvalidInput("The payload must be a JSON object, such as "
                                 "{\"agent_id\": 12}.")
    return value


def request_action(request: Request, ctx: TenantContext) -> Response:
    form: RequestForm = request.state.form
    try:
        with ctx.session() as s, s.begin():
            req = service.request_action(s, ctx, form.action, _payload(form.payload),
                                         via="dashboard")
            request_id = req.id
    except (TenantInvalidInput, ApprovalError) as exc:
        return _page(request, ctx, status_code=exc.status_code, error=exc.message,
                     form=form.model_dump())
    return RedirectResponse(f"/tenants/{ctx.tenant_id}/approvals/{request_id}", 303)


def _request_page(request: Request, ctx: TenantContext, *, status_code: int = 200,
                  **extra: object) -> Response:
    render = request.app.state.render
    with ctx.session() as s, s.begin():
        view = service.request_view(s, ctx, request.path_params["request_id"])
        shown = arguments.arguments_for(ctx, view.request)
    return render(request, "tenants/approval_request.html",  # type: ignore[no-any-return]
                  {"view": view, "req": view.request, "arguments": shown,
                   "tool": notify.tool_of(view.request),
                   "arguments_kept": view.request.arguments_sealed is not None, **extra},
                  status_code=status_code,
                  partial="tenants/_approval_request.html")


def request_page(request: Request, ctx: TenantContext) -> Response:
    return _request_page(request, ctx)


def _decide(request: Request, ctx: TenantContext, approve: bool, text: str) -> Response:
    request_id = request.path_params["request_id"]
    from_inbox = request.headers.get("hx-target") == "inbox"
    try:
        with ctx.session() as s, s.begin():
            req = service.decide(s, ctx, request_id, approve, text)
            state = req.state
    except RequestNotFound:
        raise
    except (TenantInvalidInput, ApprovalError) as exc:
        if from_inbox:
            return _page(request, ctx, status_code=exc.status_code, error=exc.message)
        return _request_page(request, ctx, status_code=exc.status_code, error=exc.message)
    notice = {"rejected": "Rejected.", "pending": "Approved; more approvals are needed.",
              "approved": "Approved.", "executed": "Approved; the action ran."}.get(
                  state, "Saved.")
    response = (_page(request, ctx, notice=notice) if from_inbox
                else _request_page(request, ctx, notice=notice))
    response.headers["HX-Trigger"] = "approvals-changed"  # the navigation's count refreshes
    return response


def approve(request: Request, ctx: TenantContext) -> Response:
    form: ApproveForm = request.state.form
    return _decide(request, ctx, True, form.comment)


def reject(request: Request, ctx: TenantContext) -> Response:
    form: RejectForm = request.state.form
    return _decide(request, ctx, False, form.reason)


# --- history ---------------------------------------------------------------------------------


def history_page(request: Request, ctx: TenantContext) -> Response:
    f = history.HistoryFilter.parse(request.query_params)
    render = request.app.state.render
    with ctx.session() as s, s.begin():
        page = history.history(s, f, service.clock())
        actions = history.action_names(s)
    return render(request, "tenants/approvals_history.html",  # type: ignore[no-any-return]
                  {"page": page, "actions": actions, "statuses": history.STATUSES,
                   "sorts": history.SORTS, "tid": ctx.tenant_id},
                  partial="tenants/_approvals_history.html")


def history_download(request: Request, ctx: TenantContext) -> Response:
    f = history.HistoryFilter.parse(request.query_params)
    with ctx.session() as s, s.begin():
        body = history.history_csv(s, f, service.clock())
    return Response(body, media_type="text/csv; charset=utf-8", headers=tables.csv_headers(
        f"tenant-{ctx.tenant_id}-approvals.csv"))


# --- configuration ---------------------------------------------------------------------------


def _classes_page(request: Request, ctx: TenantContext, *, status_code: int = 200,
                  **extra: object) -> Response:
    render = request.app.state.render
    with ctx.session() as s, s.begin():
        settings = classes.settings_row(s)
        context = {"classes": classes.list_action_classes(s), "settings": settings,
                   "roles": classes.APPROVER_ROLES, "internal": internal_actions(),
                   "manager": permissions.allows(ctx.actor.role, "approvals.manage"),
                   **extra}
    return render(request, "tenants/approval_classes.html",  # type: ignore[no-any-return]
                  context, status_code=status_code)


def classes_page(request: Request, ctx: TenantContext) -> Response:
    return _classes_page(request, ctx)


def _change(request: Request, ctx: TenantContext,
            apply: Callable[[Session], tuple[str, str | None]]) -> Response:
    try:
        with ctx.session() as s, s.begin():
            notice, secret = apply(s)
    except TenantInvalidInput as exc:
        return _classes_page(request, ctx, status_code=422, error=exc.message)
    return _classes_page(request, ctx, notice=notice, new_secret=secret)


def _class_input(form: ClassChangeForm, name: str) -> classes.ClassInput:
    return classes.ClassInput(
        name=name, description=form.description, restricted=form.restricted,
        approver_role=form.approver_role, expiry_seconds=form.expiry_hours * 3600,
        approvals_needed=form.approvals_needed, execution_url=form.execution_url or None)


def add_class(request: Request, ctx: TenantContext) -> Response:
    form: ClassForm = request.state.form

    def apply(s: Session) -> tuple[str, str | None]:
        row, secret = classes.do_add_action_class(s, ctx, _class_input(form, form.name))
        return f"Action class {row.name} added.", secret

    return _change(request, ctx, apply)


def change_class(request: Request, ctx: TenantContext) -> Response:
    form: ClassChangeForm = request.state.form
    class_id = int(request.path_params["class_id"])

    def apply(s: Session) -> tuple[str, str | None]:
        row = classes.access_action_class(s, class_id)
        secret = classes.do_change_action_class(s, ctx, class_id, _class_input(form, row.name))
        return f"Action class {row.name} saved.", secret

    return _change(request, ctx, apply)


def delete_class(request: Request, ctx: TenantContext) -> Response:
    class_id = int(request.path_params["class_id"])

    def apply(s: Session) -> tuple[str, str | None]:
        classes.do_delete_action_class(s, ctx, class_id)
        return "Action class deleted.", None

    return _change(request, ctx, apply)


def save_settings(request: Request, ctx: TenantContext) -> Response:
    form: SettingsForm = request.state.form

    def apply(s: Session) -> tuple[str, str | None]:
        secret = classes.do_configure_notifications(s, ctx, webhook_url=form.webhook_url,
                                                    email_approvers=form.email_approvers)
        return "Notification settings saved.", secret

    return _change(request, ctx, apply)


routes = [
    TenantRoute("/approvals", approvals_page, permission="approvals.view"),
    TenantRoute("/approvals/requests", request_action, "POST", form=RequestForm,
                permission="approvals.request"),
    TenantRoute("/approvals/classes", classes_page, permission="approvals.view"),
    TenantRoute("/approvals/classes", add_class, "POST", form=ClassForm,
                permission="approvals.manage"),
    TenantRoute("/approvals/classes/{class_id:int}", change_class, "POST",
                form=ClassChangeForm, permission="approvals.manage"),
    TenantRoute("/approvals/classes/{class_id:int}/delete", delete_class, "POST",
                form=EmptyForm, permission="approvals.manage"),
    TenantRoute("/approvals/settings", save_settings, "POST", form=SettingsForm,
                permission="approvals.manage"),
    TenantRoute("/approvals/history", history_page, permission="approvals.view"),
    TenantRoute("/approvals/history.csv", history_download, permission="approvals.view"),
    TenantRoute("/approvals/{request_id}", request_page, permission="approvals.view"),
    # who may decide one request is also the class's setting (service.may_decide)
    TenantRoute("/approvals/{request_id}/approve", approve, "POST", form=ApproveForm,
                permission="approvals.decide"),
    TenantRoute("/approvals/{request_id}/reject", reject, "POST", form=RejectForm,
                permission="approvals.decide"),
]
