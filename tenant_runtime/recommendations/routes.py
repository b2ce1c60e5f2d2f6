"""The recommendations area's dashboard routes, mounted under /tenants/{tenant_id} by the
control plane: the task list (create, import), a task's page (the Architect's analysis, the
panel's votes side by side, the deliberator's synthesis, the gate's verdict and reasons, and
"Run the panel"), and the panel settings. Every change is audited by the service."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tenant_runtime import permissions
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.gateway import config as gateway_config
from tenant_runtime.personas.scope import scope_for
from tenant_runtime.recommendations import jobs, pages, service
from tenant_runtime.recommendations.exceptions import ImportRejected, RunInProgress
from tenant_runtime.recommendations.gate import VERDICT_LABELS, Thresholds
from tenant_runtime.recommendations.schemas import PERIODS, TaskInput
from tenant_runtime.recommendations.service import validation_sentence
from tenant_runtime.routing import TenantRoute


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csrf_token: str = ""


class TaskForm(_Form):
    title: str = Field(max_length=200)
    description: str = Field(max_length=20_000)
    team: str = Field(default="", max_length=100)
    tags: str = Field(default="", max_length=1000)
    recurrence_occurrences: str = Field(default="", max_length=12)
    recurrence_period: str = Field(default="", max_length=10)
    uniformity: str = Field(default="", max_length=12)
    handler_consistency: str = Field(default="", max_length=12)


class ImportForm(_Form):
    file_fields: ClassVar[tuple[str, ...]] = ("tasks_file",)  # read as UTF-8 text

    tasks_file: str = Field(default="", max_length=service.MAX_IMPORT_BYTES)
    tasks_json: str = Field(default="", max_length=service.MAX_IMPORT_BYTES)


class SettingsForm(_Form):
    panel_models: str = Field(default="", max_length=1000)
    architect_model: str = Field(default="", max_length=100)
    deliberator_model: str = Field(default="", max_length=100)
    min_cost_benefit: int = Field(ge=0, le=10)
    max_customer_risk: int = Field(ge=0, le=10)
    max_human_sensitivity: int = Field(ge=0, le=10)
    min_compliance: int = Field(ge=0, le=10)


class EmptyForm(_Form):
    pass


def _words(value: str) -> list[str]:
    return [w for w in value.replace(",", " ").split() if w]


def task_input(form: TaskForm) -> TaskInput:
    """The form as a task; TenantInvalidInput with one sentence when it is not valid. The form
    sends text, so numbers are parsed here, then checked by the same schema as an import."""
    signals: dict[str, object] = {}
    try:
        occurrences, period = form.recurrence_occurrences.strip(), form.recurrence_period.strip()
        if occurrences or period:
            signals["recurrence"] = {"occurrences": int(occurrences) if occurrences else None,
                                     "period": period}
        for name in ("uniformity", "handler_consistency"):
            if value := getattr(form, name).strip():
                signals[name] = float(value)
    except ValueError:
        raise TenantInvalidInput("Occurrences must be a whole number; uniformity and handler "
                                 "consistency numbers from 0 to 1.") from None
    try:
        return TaskInput.model_validate({
            "title": form.title, "description": form.description, "team": form.team,
            "tags": _words(form.tags), "signals": signals})
    except ValidationError as exc:
        raise TenantInvalidInput(f"The task is not valid: {validation_sentence(exc)}.") \
            from None


# -- the task list -------------------------------------------------------------------------


def _list(request: Request, ctx: TenantContext, *, status_code: int = 200,
          **extra: object) -> Response:
    render = request.app.state.render
    before = request.query_params.get("before_id") if request.method == "GET" else None
    if before is not None and (not before.isascii() or not before.isdigit()
                               or len(before) > 18):
        raise TenantInvalidInput("'before_id' must be a positive whole number.")
    with ctx.session() as s, s.begin():
        page = service.list_tasks(s, scope=scope_for(s, ctx.actor),
                                  before_id=int(before) if before else None)
        context = {"tasks": page.rows, "next_before_id": page.next_before_id,
                   "older_page": before is not None,
                   "panel": service.panel_of(s),
                   "periods": PERIODS, "verdict_labels": VERDICT_LABELS,
                   "can_create": permissions.allows(ctx.actor.role, "tasks.work"),
                   "can_configure": permissions.allows(ctx.actor.role,
                                                         "recommendations.manage"), **extra}
    return render(request, "tenants/tasks.html",  # type: ignore[no-any-return]
                  context, status_code=status_code)


def tasks_page(request: Request, ctx: TenantContext) -> Response:
    return _list(request, ctx)


def create_task(request: Request, ctx: TenantContext) -> Response:
    form: TaskForm = request.state.form
    try:
        data = task_input(form)
        with ctx.session() as s, s.begin():
            task = service.do_create_task(s, ctx, data)
            task_id = task.id
    except TenantInvalidInput as exc:
        return _list(request, ctx, status_code=422, error=exc.message, form=form)
    return RedirectResponse(f"/tenants/{ctx.tenant_id}/tasks/{task_id}", 303)


def import_tasks(request: Request, ctx: TenantContext) -> Response:
    form: ImportForm = request.state.form
    raw = form.tasks_file if form.tasks_file.strip() else form.tasks_json
    if not raw.strip():
        return _list(request, ctx, status_code=422,
                     error="Choose a JSON file (or paste its text) to import.")
    try:
        with ctx.session() as s, s.begin():
            rows = service.do_import_tasks(s, ctx, raw)
            count = len(rows)
    except ImportRejected as exc:
        return _list(request, ctx, status_code=422, error=exc.message, rejected=exc.rejected)
    return _list(request, ctx, status_code=201,
                 notice=f"Imported {count} task{'s' if count != 1 else ''}.")


# -- a task --------------------------------------------------------------------------------


def _task(request: Request, ctx: TenantContext, *, status_code: int = 200,
          **extra: object) -> Response:
    render = request.app.state.render
    task_id = int(request.path_params["task_id"])
    with ctx.session() as s, s.begin():
        can_run = permissions.allows(ctx.actor.role, "tasks.work")
        page = pages.task_page(s, ctx, task_id, can_run=can_run)
    return render(request, "tenants/tasks_detail.html",  # type: ignore[no-any-return]
                  {"page": page, **extra}, status_code=status_code,
                  partial="tenants/_tasks_run.html")


def task_page(request: Request, ctx: TenantContext) -> Response:
    return _task(request, ctx)


def run_panel(request: Request, ctx: TenantContext) -> Response:
    """Record the run and its first job; the workers do the rest (the page polls)."""
    enqueue: jobs.EnqueueTenantJob = request.app.state.enqueue_tenant_job
    task_id = int(request.path_params["task_id"])
    try:
        with ctx.session() as s, s.begin():
            run = service.do_start_run(s, ctx, task_id)
            # in the outbox before the run commits: a job that runs first finds no run and is
            # tried again; a run is never left without its job
            enqueue(ctx.tenant_id, jobs.RUN, {"run_id": run.id},
                    idempotency_key=jobs.run_key(ctx.tenant_id, run.id))
    except RunInProgress as exc:
        return _task(request, ctx, status_code=exc.status_code, error=exc.message)
    return RedirectResponse(f"/tenants/{ctx.tenant_id}/tasks/{task_id}", 303)


# -- panel settings ------------------------------------------------------------------------


def _settings(request: Request, ctx: TenantContext, *, status_code: int = 200,
              **extra: object) -> Response:
    render = request.app.state.render
    with ctx.session() as s, s.begin():
        row = service.load_settings(s)
        context = {"settings": row, "panel": service.panel_of(s),
                   "allowed": gateway_config.allowed_routes(s), **extra}
    return render(request, "tenants/tasks_settings.html",  # type: ignore[no-any-return]
                  context, status_code=status_code)


def settings_page(request: Request, ctx: TenantContext) -> Response:
    return _settings(request, ctx)


def update_settings(request: Request, ctx: TenantContext) -> Response:
    form: SettingsForm = request.state.form
    change = service.SettingsChange(
        panel_models=_words(form.panel_models),
        architect_model=form.architect_model.strip() or None,
        deliberator_model=form.deliberator_model.strip() or None,
        thresholds=Thresholds(form.min_cost_benefit, form.max_customer_risk,
                              form.max_human_sensitivity, form.min_compliance))
    try:
        with ctx.session() as s, s.begin():
            changed = service.do_update_settings(s, ctx, change)
    except TenantInvalidInput as exc:
        return _settings(request, ctx, status_code=422, error=exc.message)
    return _settings(request, ctx, notice="Panel settings saved." if changed
                     else "Nothing changed.")


routes = [
    TenantRoute("/tasks", tasks_page, permission="tasks.view"),
    TenantRoute("/tasks", create_task, "POST", form=TaskForm, permission="tasks.work"),
    TenantRoute("/tasks/import", import_tasks, "POST", form=ImportForm,
                permission="tasks.work"),
    TenantRoute("/tasks/settings", settings_page, permission="recommendations.manage"),
    TenantRoute("/tasks/settings", update_settings, "POST", form=SettingsForm,
                permission="recommendations.manage"),
    TenantRoute("/tasks/{task_id:int}", task_page, permission="tasks.view"),
    TenantRoute("/tasks/{task_id:int}/run", run_panel, "POST", form=EmptyForm,
                permission="tasks.work"),
]
