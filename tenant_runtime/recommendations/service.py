"""Tasks, panel settings and runs: state changes (``do_*``, audited in the caller's
transaction) and checked reads (``access_*``). The model calls are in ``panel.py``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from tenant_runtime import audit
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput, TenantNotFound
from tenant_runtime.gateway import config as gateway_config
from tenant_runtime.gateway.names import normalize_model_name
from tenant_runtime.models import GatewayRoute, single_row
from tenant_runtime.personas.scope import Scope, scope_for
from tenant_runtime.recommendations.exceptions import ImportRejected, RunInProgress
from tenant_runtime.recommendations.gate import Thresholds
from tenant_runtime.recommendations.models import (
    PanelVote,
    RecommendationRun,
    RecommendationSettings,
    Task,
)
from tenant_runtime.recommendations.schemas import TaskImport, TaskInput
from tenant_runtime.text import UnstorableJson, loads_storable

DEFAULT_PANEL_SIZE = 3
MAX_PANEL_SIZE = 7
STALE_RUN = timedelta(minutes=15)  # a run unfinished for this long may be started again
MAX_IMPORT_BYTES = 5 * 1024 * 1024


class RecommendationEvents:
    TASK_CREATED = "recommendation.task_created"
    TASKS_IMPORTED = "recommendation.tasks_imported"
    SETTINGS_CHANGED = "recommendation.settings_changed"
    RUN_STARTED = "recommendation.run_started"
    ANALYSIS_RECORDED = "recommendation.analysis_recorded"
    VOTE_RECORDED = "recommendation.vote_recorded"
    VERDICT = "recommendation.verdict"


def _now() -> datetime:
    return datetime.now(UTC)


def validation_sentence(exc: ValidationError) -> str:
    first = exc.errors()[0]
    if not first["loc"]:
        return "the item is not a JSON object"
    field = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown field '{field}'"
    if first["type"] == "missing":
        return f"the field '{field}' is required"
    return f"the field '{field}' is not valid: {first['msg']}"


# -- tasks ---------------------------------------------------------------------------------


def _unique_tags(tags: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for tag in tags:
        seen.setdefault(tag.casefold(), tag)
    return list(seen.values())


def _add_task(s: Session, ctx: TenantContext, data: TaskInput, source: str) -> Task:
    row = Task(title=data.title, description_sealed=b"pending", team=data.team,
               tags=_unique_tags(list(data.tags)),
               signals=data.signals.model_dump(exclude_none=True), source=source,
               created_by=ctx.actor.name)
    s.add(row)
    s.flush()  # the id is the sealed value's row key
    row.description_sealed = ctx.sealer.seal(data.description, table="tasks",
                                             column="description_sealed", row_key=row.id)
    audit.record(s, RecommendationEvents.TASK_CREATED, actor=ctx.actor, target_type="task",
                 target_id=row.id, details={"source": source, "tags": row.tags,
                                            "signals": sorted(row.signals)})
    return row


def do_create_task(s: Session, ctx: TenantContext, data: TaskInput) -> Task:
    return _add_task(s, ctx, data, "form")


def parse_import(raw: str) -> tuple[list[TaskInput], list[tuple[int, str]]]:
    """The tasks of a JSON document (``{"tasks": [...]}`` or a list), and the rejected items
    (1-based number, why). Raises ImportRejected when the document itself is unusable."""
    if len(raw.encode("utf-8")) > MAX_IMPORT_BYTES:
        raise ImportRejected(f"The file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MiB; "
                             "split it. Nothing was written.")
    try:
        document = loads_storable(raw, field="tasks")
    except UnstorableJson as exc:
        raise ImportRejected(f"{exc.args[0]} Nothing was written.") from None
    except (ValueError, RecursionError) as exc:
        raise ImportRejected(f"The file is not valid JSON (line {getattr(exc, 'lineno', '?')})"
                             "; nothing was written.") from None
    try:
        items = TaskImport.model_validate(
            {"tasks": document} if isinstance(document, list) else document).tasks
    except ValidationError:
        raise ImportRejected('The file must be a JSON list of tasks, or an object {"tasks": '
                             "[...]} with at most 1000 tasks; nothing was written.") from None
    if not items:
        raise ImportRejected("The file holds no task; nothing was written.")
    tasks, rejected = [], []
    for number, item in enumerate(items, start=1):
        try:
            tasks.append(TaskInput.model_validate(item))
        except ValidationError as exc:
            rejected.append((number, validation_sentence(exc)))
    return tasks, rejected


def do_import_tasks(s: Session, ctx: TenantContext, raw: str) -> list[Task]:
    """All or nothing: when any item is rejected, nothing is written and ImportRejected lists
    every rejected item and why."""
    tasks, rejected = parse_import(raw)
    if rejected:
        raise ImportRejected(
            f"{len(rejected)} of {len(tasks) + len(rejected)} items were rejected; nothing "
            "was written. Fix them and import the file again.", rejected=rejected)
    rows = [_add_task(s, ctx, data, "import") for data in tasks]
    audit.record(s, RecommendationEvents.TASKS_IMPORTED, actor=ctx.actor, target_type="task",
                 details={"imported": len(rows), "task_ids": [r.id for r in rows]})
    return rows


def access_task(s: Session, task_id: int, *, scope: Scope) -> Task:
    """The task, or TenantNotFound: the same answer for a missing id, another tenant's, and a
    task of a team outside ``scope`` (the caller's persona, ``personas/scope.py``)."""
    row = s.scalars(select(Task).where(Task.id == task_id, scope.team_filter(Task.team))).first()
    if row is None:
        raise TenantNotFound("There is no such task.")
    return row


def task_description(ctx: TenantContext, task: Task) -> str:
    return ctx.sealer.open_text(task.description_sealed, table="tasks",
                                column="description_sealed", row_key=task.id)


@dataclass(frozen=True)
class TaskListRow:
    id: int
    title: str
    team: str
    tags: list[str]
    verdict: str | None
    mode: str | None
    state: str | None


TASKS_PER_PAGE = 50


@dataclass(frozen=True)
class TaskPage:
    rows: list[TaskListRow]
    next_before_id: int | None  # the next (older) page starts below this id; None: the last


def list_tasks(s: Session, *, scope: Scope, before_id: int | None = None,
               limit: int = TASKS_PER_PAGE) -> TaskPage:
    """One page of the tasks of the teams ``scope`` may see, newest first, with their last
    run's verdict: ``limit`` tasks with an id below ``before_id`` (keyset paging, so an older
    page costs what the first does)."""
    earlier = aliased(RecommendationRun)
    last_id = (select(func.max(earlier.id)).where(earlier.task_id == Task.id)
               .correlate(Task).scalar_subquery())
    query = (select(Task.id, Task.title, Task.team, Task.tags, RecommendationRun.verdict,
                    RecommendationRun.mode, RecommendationRun.state)
             .outerjoin(RecommendationRun, RecommendationRun.id == last_id)
             .where(scope.team_filter(Task.team)))
    if before_id is not None:
        query = query.where(Task.id < before_id)
    # the listed columns only: whole Task rows (sealed description, signals) cost more to
    # load than the page costs to render; one row more than the page says whether one follows
    found = s.execute(query.order_by(Task.id.desc()).limit(limit + 1)).all()
    rows = [TaskListRow(task_id, title, team, list(tags), verdict, mode, state)
            for task_id, title, team, tags, verdict, mode, state in found[:limit]]
    return TaskPage(rows, rows[-1].id if len(found) > limit else None)


# -- settings ------------------------------------------------------------------------------


def load_settings(s: Session) -> RecommendationSettings:
    return single_row(s, RecommendationSettings)


def thresholds_of(row: RecommendationSettings) -> Thresholds:
    return Thresholds(row.min_cost_benefit, row.max_customer_risk, row.max_human_sensitivity,
                      row.min_compliance)


@dataclass(frozen=True)
class Panel:
    models: list[str]
    architect: str | None
    deliberator: str | None
    thresholds: Thresholds
    default: bool  # the models were chosen by default, not configured


def default_panel(routes: list[GatewayRoute], size: int = DEFAULT_PANEL_SIZE) -> list[str]:
    """Up to ``size`` allowed routes, one per provider first, then the rest by name."""
    chosen: list[str] = []
    providers: set[str] = set()
    for route in routes:
        if route.provider not in providers and len(chosen) < size:
            chosen.append(route.model_name)
            providers.add(route.provider)
    for route in routes:
        if route.model_name not in chosen and len(chosen) < size:
            chosen.append(route.model_name)
    return chosen


def panel_of(s: Session) -> Panel:
    row = load_settings(s)
    models = list(row.panel_models)
    default = not models
    if default:
        models = default_panel(gateway_config.allowed_routes(s))
    first = models[0] if models else None
    return Panel(models, row.architect_model or first, row.deliberator_model or first,
                 thresholds_of(row), default)


@dataclass(frozen=True)
class SettingsChange:
    panel_models: list[str]  # empty: the default panel
    architect_model: str | None
    deliberator_model: str | None
    thresholds: Thresholds


def _allowed_model(s: Session, raw: str, what: str) -> str:
    name = normalize_model_name(raw)
    route = gateway_config.route_for(s, name) if name else None
    if name is None or route is None or not route.allowed:
        raise TenantInvalidInput(f"{what} {raw.strip()[:100]!r} is not a model on this "
                                 "tenant's allowlist; allow its route on the gateway page "
                                 "first.")
    return name


def do_update_settings(s: Session, ctx: TenantContext, change: SettingsChange) -> list[str]:
    """Validate and apply; returns the names of the changed fields (audited)."""
    models = [_allowed_model(s, m, "Panel model") for m in change.panel_models]
    if len(set(models)) != len(models):
        raise TenantInvalidInput("A model may sit on the panel only once.")
    if len(models) > MAX_PANEL_SIZE:
        raise TenantInvalidInput(f"The panel has at most {MAX_PANEL_SIZE} models.")
    architect = (_allowed_model(s, change.architect_model, "The Architect")
                 if change.architect_model else None)
    deliberator = (_allowed_model(s, change.deliberator_model, "The deliberator")
                   if change.deliberator_model else None)
    for name, value in change.thresholds.as_dict().items():
        if not 0 <= value <= 10:
            raise TenantInvalidInput(f"Threshold {name} must be a whole number from 0 to 10.")
    row = load_settings(s)
    t = change.thresholds
    new: dict[str, Any] = {
        "panel_models": models, "architect_model": architect,
        "deliberator_model": deliberator, "min_cost_benefit": t.min_cost_benefit,
        "max_customer_risk": t.max_customer_risk,
        "max_human_sensitivity": t.max_human_sensitivity, "min_compliance": t.min_compliance}
    changed = [name for name, value in new.items() if getattr(row, name) != value]
    if not changed:
        return []
    for name in changed:
        setattr(row, name, new[name])
    row.updated_at = _now()
    audit.record(s, RecommendationEvents.SETTINGS_CHANGED, actor=ctx.actor,
                 target_type="recommendation_settings", target_id=1,
                 details={"changed": changed, **{k: new[k] for k in changed}})
    return changed


# -- runs ----------------------------------------------------------------------------------


def latest_run(s: Session, task_id: int) -> RecommendationRun | None:
    return s.scalars(select(RecommendationRun).where(RecommendationRun.task_id == task_id)
                     .order_by(RecommendationRun.id.desc()).limit(1)).first()


def votes_of(s: Session, run_id: int) -> list[PanelVote]:
    return list(s.scalars(select(PanelVote).where(PanelVote.run_id == run_id)
                          .order_by(PanelVote.id)))


def do_start_run(s: Session, ctx: TenantContext, task_id: int) -> RecommendationRun:
    """Record a queued run with the panel as configured now (the caller enqueues its job).
    Refused while the task's last run is unfinished and younger than ``STALE_RUN``. A task of
    a team outside the actor's persona is as absent as a missing one."""
    task = s.scalars(select(Task).where(Task.id == task_id,
                                        scope_for(s, ctx.actor).team_filter(Task.team))
                     .with_for_update()).first()
    if task is None:
        raise TenantNotFound("There is no such task.")
    last = latest_run(s, task_id)
    if last is not None and last.state != "done" and _now() - last.created_at < STALE_RUN:
        raise RunInProgress()
    panel = panel_of(s)
    run = RecommendationRun(task_id=task.id, state="queued", panel_models=panel.models,
                            architect_model=panel.architect,
                            deliberator_model=panel.deliberator,
                            thresholds=panel.thresholds.as_dict(), reasons=[],
                            requested_by=ctx.actor.name)
    s.add(run)
    s.flush()
    audit.record(s, RecommendationEvents.RUN_STARTED, actor=ctx.actor,
                 target_type="recommendation_run", target_id=run.id,
                 details={"task_id": task.id, "panel": panel.models,
                          "panel_size": len(panel.models), "architect": panel.architect,
                          "deliberator": panel.deliberator,
                          "thresholds": panel.thresholds.as_dict()})
    return run
