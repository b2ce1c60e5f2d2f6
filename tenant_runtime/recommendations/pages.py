"""What the task pages may show, as dataclasses (CONVENTIONS.md, "Page contexts are
dataclasses"), built from the rows with sealed values opened."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from tenant_runtime.context import TenantContext
from tenant_runtime.minimization.observations import ObservationView, list_observations
from tenant_runtime.personas.scope import scope_for
from tenant_runtime.recommendations import consensus, gate, panel, service
from tenant_runtime.recommendations.heuristics import HeuristicAnalysis
from tenant_runtime.recommendations.models import RecommendationRun, Task
from tenant_runtime.recommendations.schemas import DIMENSION_LABELS, DIMENSIONS, TaskSignals


@dataclass(frozen=True)
class TaskView:
    id: int
    title: str
    description: str
    team: str
    tags: list[str]
    signals: TaskSignals
    source: str
    created_by: str | None
    created_at: datetime
    veto_tags: list[str]
    cluster_key: str | None = None  # a candidate task found by clustering signals
    confirmed_by: list[str] = field(default_factory=list)  # its sources, when two or more


@dataclass(frozen=True)
class VoteView:
    model: str
    state: str  # valid, abstained, waiting
    abstention: str | None = None
    detail: str | None = None
    scores: dict[str, int | None] = field(default_factory=dict)
    rationales: dict[str, str] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)  # thresholds this vote does not clear


@dataclass(frozen=True)
class RunView:
    id: int
    state: str
    running: bool
    verdict: str | None
    mode: str | None
    reasons: list[str]
    panel: list[str]
    architect: str | None
    deliberator: str | None
    thresholds: gate.Thresholds
    analysis: str | None
    analysis_error: str | None
    synthesis: dict[str, Any] | None
    synthesis_error: str | None
    heuristic: HeuristicAnalysis | None
    consensus: consensus.Consensus
    votes: list[VoteView]
    valid_votes: int
    required_votes: int
    requested_by: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class TaskPage:
    task: TaskView
    run: RunView | None
    can_run: bool
    dimensions: tuple[str, ...] = DIMENSIONS
    labels: dict[str, str] = field(default_factory=lambda: dict(DIMENSION_LABELS))
    verdict_labels: dict[str, str] = field(default_factory=lambda: dict(gate.VERDICT_LABELS))
    heuristic_mark: str = gate.HEURISTIC_MARK
    observations: list[ObservationView] = field(default_factory=list)  # within the persona


def task_view(ctx: TenantContext, task: Task) -> TaskView:
    return TaskView(task.id, task.title, service.task_description(ctx, task), task.team,
                    list(task.tags), TaskSignals.model_validate(task.signals), task.source,
                    task.created_by, task.created_at, gate.vetoing_tags(task.tags),
                    task.cluster_key, list(task.confirmed_by))


def run_view(s: Session, ctx: TenantContext, run: RecommendationRun) -> RunView:
    thresholds = gate.Thresholds.from_dict(run.thresholds)
    rows = {v.model_name: v for v in service.votes_of(s, run.id)}
    votes = []
    for model in run.panel_models:
        vote = rows.get(model)
        if vote is None:
            votes.append(VoteView(model, "waiting" if run.state != "done" else "abstained",
                                  "missing" if run.state == "done" else None))
            continue
        scores = {d: getattr(vote, d) for d in DIMENSIONS}
        misses = (thresholds.misses(panel.valid_scores([vote])[model]) if vote.valid else [])
        votes.append(VoteView(model, "valid" if vote.valid else "abstained", vote.abstention,
                              vote.abstention_detail, scores, panel.rationales_of(ctx, vote),
                              misses))
    valid = panel.valid_scores(list(rows.values()))
    heuristic = (HeuristicAnalysis.from_dict(run.heuristic) if run.heuristic is not None
                 else None)
    return RunView(
        run.id, run.state, run.state != "done", run.verdict, run.mode, list(run.reasons),
        list(run.panel_models), run.architect_model, run.deliberator_model, thresholds,
        panel.analysis_text(ctx, run), run.analysis_error, panel.synthesis_of(ctx, run),
        run.synthesis_error, heuristic, consensus.compare(valid), votes, len(valid),
        gate.required_votes(len(run.panel_models)), run.requested_by, run.created_at,
        run.finished_at)


def task_page(s: Session, ctx: TenantContext, task_id: int, *, can_run: bool) -> TaskPage:
    scope = scope_for(s, ctx.actor)
    task = service.access_task(s, task_id, scope=scope)
    run = service.latest_run(s, task.id)
    observations = list_observations(s, ctx, scope, task_id=task.id)
    return TaskPage(task_view(ctx, task), run_view(s, ctx, run) if run else None, can_run,
                    observations=observations)
