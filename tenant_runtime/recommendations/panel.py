"""The model calls of a run, each through the tenant's gateway (allowlist, redaction, spend cap,
audit apply to the platform's own calls as to any program's): the Architect's analysis, one
vote per panel model, the deliberator's synthesis, then the gate.

The worker jobs (``workers/handlers/recommendations.py``) call ``start_run``, ``cast_vote`` and
``conclude``; each is idempotent. Database work and model calls never share a transaction:
state is read, the model is called, then the result is written under the run's row lock, and
only if it is not there already (a retried job records nothing twice). Failures of a model are
recorded, never raised: a vote that cannot be had is an abstention, an analysis or synthesis
that cannot be had is shown as unavailable."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.exceptions import TenantError, TenantKeyUnavailable, TenantNotFound
from tenant_runtime.gateway.messages import ChatMessage, ChatRequest
from tenant_runtime.gateway.service import (
    Gateway,
    ModelRefused,
    ProvidersFailed,
    release_answer,
)
from tenant_runtime.gateway.spend import SpendCapReached
from tenant_runtime.recommendations import consensus, gate, heuristics
from tenant_runtime.recommendations.models import PanelVote, RecommendationRun, Task
from tenant_runtime.recommendations.schemas import (
    DIMENSION_LABELS,
    DIMENSIONS,
    AnswerRefused,
    PanelVoteAnswer,
    TaskSignals,
    parse_deliberation,
    parse_vote,
)
from tenant_runtime.recommendations.service import (
    RecommendationEvents,
    task_description,
    votes_of,
)

SYSTEM_ACTOR = Actor("system", None, "recommendation gate")
ENDPOINT_KIND = "recommendation"
ANALYSIS_MAX_TOKENS = 900
VOTE_MAX_TOKENS = 700
SYNTHESIS_MAX_TOKENS = 900

ARCHITECT_PROMPT = """You are the Architect of an AI-governance review. Analyse whether the task \
below should be handed to AI automation. Cover: what the work is; what automating it would \
look like; its cost and benefit; how sensitive it is for the people involved; the risk to \
customers if automation errs; compliance concerns. Plain prose, at most 300 words. Do not give \
a verdict: a panel votes and a gate decides."""

VOTE_PROMPT = """You sit on a panel that judges, independently of the other members, whether a \
task should be automated by AI. Score four dimensions with whole numbers from 0 to 10:
- cost_benefit: 10 = automation clearly pays off; 0 = not worth it.
- human_sensitivity: 10 = people must handle it (empathy, judgement, dignity); 0 = none.
- customer_risk: 10 = a mistake would badly hurt customers; 0 = harmless.
- compliance: 10 = no legal or regulatory concern; 0 = serious concern.
Answer with exactly one JSON object and nothing else, in this schema (no other fields):
{"cost_benefit": {"score": 0, "rationale": "..."}, "human_sensitivity": {"score": 0, \
"rationale": "..."}, "customer_risk": {"score": 0, "rationale": "..."}, "compliance": \
{"score": 0, "rationale": "..."}}
Each rationale is one or two sentences, at most 300 characters."""

DELIBERATOR_PROMPT = """You are the deliberator of a model panel. Read the panel's votes on the \
task below and synthesize them: say plainly where the members agree and where they disagree, \
and why. Do not give a verdict: a fixed gate decides from the scores. Answer with exactly one \
JSON object and nothing else:
{"synthesis": "at most 2000 characters", "agreements": ["..."], "disagreements": ["..."]}
with at most 8 agreements and 8 disagreements of at most 300 characters each."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TaskBrief:
    """What models are told about a task (the gateway redacts it on the way out)."""

    title: str
    team: str
    tags: list[str]
    signals: TaskSignals
    description: str

    def text(self) -> str:
        signals = self.signals.model_dump(exclude_none=True)
        return (f"Task: {self.title}\nTeam: {self.team or 'not given'}\n"
                f"Tags: {', '.join(self.tags) or 'none'}\n"
                f"Signals: {json.dumps(signals) if signals else 'none'}\n\n"
                f"Description:\n{self.description}")


def _brief(ctx: TenantContext, task: Task) -> TaskBrief:
    return TaskBrief(task.title, task.team, list(task.tags),
                     TaskSignals.model_validate(task.signals), task_description(ctx, task))


def _run(s: Session, run_id: int, *, lock: bool = False) -> RecommendationRun:
    run = s.get(RecommendationRun, run_id, with_for_update=lock)
    if run is None:
        raise TenantNotFound("There is no such run.")
    return run


def answer_key(run_id: int, step: str) -> str:
    """The idempotency key of a run's model call: ``analysis``, ``vote:<model>`` or
    ``synthesis``. A retried job's call is answered from the kept answer until the step
    records it (``Gateway.complete_once``), so a model is paid once per step."""
    return f"recommendation-run:{run_id}:{step}"


def _ask(gateway: Gateway, key: str, model: str, system: str, user: str,
         max_tokens: int) -> str:
    # no sampling fields: a panel may mix providers, and some (Anthropic's current API) take
    # none, which the gateway refuses rather than drop; votes are read as JSON, not compared
    # as text, so the provider's default sampling serves
    return gateway.complete_once(ChatRequest(model=model, messages=(
        ChatMessage("system", system), ChatMessage("user", user)), max_tokens=max_tokens),
        key=key, endpoint_kind=ENDPOINT_KIND).text


def _seal(ctx: TenantContext, value: str, table: str, column: str, row_key: int) -> bytes:
    return ctx.sealer.seal(value, table=table, column=column, row_key=row_key)


def _open(ctx: TenantContext, value: bytes, table: str, column: str, row_key: int) -> str:
    return ctx.sealer.open_text(value, table=table, column=column, row_key=row_key)


def analysis_text(ctx: TenantContext, run: RecommendationRun) -> str | None:
    if run.analysis_sealed is None:
        return None
    return _open(ctx, run.analysis_sealed, "recommendation_runs", "analysis_sealed", run.id)


def synthesis_of(ctx: TenantContext, run: RecommendationRun) -> dict[str, Any] | None:
    if run.synthesis_sealed is None:
        return None
    data: dict[str, Any] = json.loads(_open(ctx, run.synthesis_sealed, "recommendation_runs",
                                            "synthesis_sealed", run.id))
    return data


def rationales_of(ctx: TenantContext, vote: PanelVote) -> dict[str, str]:
    if vote.rationales_sealed is None:
        return {}
    data: dict[str, str] = json.loads(_open(ctx, vote.rationales_sealed, "panel_votes",
                                            "rationales_sealed", vote.id))
    return data


# -- the Architect -------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    panel: list[str]  # one vote job each
    deliberate_now: bool  # no panel at all: straight to the gate


def start_run(ctx: TenantContext, run_id: int, gateway: Gateway) -> Started:
    """The Architect's analysis (once), then the run is voting."""
    with ctx.session() as s, s.begin():
        run = _run(s, run_id)
        panel = list(run.panel_models)
        needed = (run.state == "queued" and run.analysis_sealed is None
                  and run.analysis_error is None)
        architect = run.architect_model
        finished = run.state == "done"
        brief = _brief(ctx, _task(s, run.task_id)) if needed and architect else None
    if finished:
        return Started([], False)
    text: str | None = None
    error: str | None = None
    if not needed:
        pass
    elif architect is None or brief is None:
        error = "No model is configured or allowed for the Architect."
    else:
        try:
            text = _ask(gateway, answer_key(run_id, "analysis"), architect, ARCHITECT_PROMPT,
                        brief.text(), ANALYSIS_MAX_TOKENS)
        except (ModelRefused, ProvidersFailed, SpendCapReached) as exc:
            error = exc.message
        except TenantKeyUnavailable:
            raise
        except TenantError as exc:
            error = exc.message
    with ctx.session() as s, s.begin():
        run = _run(s, run_id, lock=True)
        if needed and run.analysis_sealed is None and run.analysis_error is None:
            if text is not None:
                run.analysis_sealed = _seal(ctx, text, "recommendation_runs", "analysis_sealed",
                                            run.id)
            else:
                run.analysis_error = (error or "The analysis is unavailable.")[:300]
            audit.record(s, RecommendationEvents.ANALYSIS_RECORDED, actor=ctx.actor,
                         target_type="recommendation_run", target_id=run.id,
                         details={"model": architect, "available": text is not None})
        release_answer(s, answer_key(run_id, "analysis"))
        if run.state == "queued":
            run.state = "voting" if panel else "deliberating"
        state = run.state
    return Started(panel if state == "voting" else [], state == "deliberating" and not panel)


def _task(s: Session, task_id: int) -> Task:
    task = s.get(Task, task_id)
    if task is None:
        raise TenantNotFound("There is no such task.")
    return task


# -- a vote --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ballot:
    """What one model answered, before it is recorded."""

    answer: PanelVoteAnswer | None
    abstention: str | None  # unreachable, refused, spend_cap, malformed, error
    detail: str | None
    latency_ms: int | None = None


def ask_for_vote(gateway: Gateway, run_id: int, model: str, brief: TaskBrief,
                 analysis: str | None) -> Ballot:
    user = brief.text() + "\n\nThe Architect's analysis:\n" + (
        analysis or "(unavailable; judge from the task itself)")
    started = time.perf_counter()
    try:
        text = _ask(gateway, answer_key(run_id, f"vote:{model}"), model, VOTE_PROMPT, user,
                    VOTE_MAX_TOKENS)
    except ModelRefused as exc:
        return Ballot(None, "refused", exc.message)
    except SpendCapReached as exc:
        return Ballot(None, "spend_cap", exc.message)
    except ProvidersFailed as exc:
        return Ballot(None, "unreachable", exc.message)
    except TenantKeyUnavailable:
        raise
    except TenantError as exc:
        return Ballot(None, "error", exc.message)
    latency = round((time.perf_counter() - started) * 1000)
    try:
        return Ballot(parse_vote(text), None, None, latency)
    except AnswerRefused as exc:
        return Ballot(None, "malformed", f"The answer was not a valid vote: {exc}.", latency)


def cast_vote(ctx: TenantContext, run_id: int, model: str, gateway: Gateway) -> bool:
    """Ask ``model`` for its vote and record it (or its abstention) once. Returns whether every
    panel model's vote is now in, so the deliberation should be enqueued."""
    with ctx.session() as s, s.begin():
        run = _run(s, run_id)
        if model not in run.panel_models:
            raise TenantNotFound(f"{model!r} is not on this run's panel.")
        done = s.scalar(select(func.count()).select_from(PanelVote).where(
            PanelVote.run_id == run_id, PanelVote.model_name == model))
        if run.state == "done":
            return False
        if done:
            brief, analysis = None, None
        else:
            brief = _brief(ctx, _task(s, run.task_id))
            analysis = analysis_text(ctx, run)
    ballot = (ask_for_vote(gateway, run_id, model, brief, analysis) if brief is not None
              else None)
    return record_ballot(ctx, run_id, model, ballot)


def record_ballot(ctx: TenantContext, run_id: int, model: str, ballot: Ballot | None) -> bool:
    """Record ``ballot`` unless this model's vote is already in (``None``: only check whether
    every vote is in). Returns whether the run is ready to deliberate."""
    with ctx.session() as s, s.begin():
        run = _run(s, run_id, lock=True)
        if ballot is not None and run.state != "done":
            _insert_vote(s, ctx, run, model, ballot)
        release_answer(s, answer_key(run_id, f"vote:{model}"))
        count = s.scalar(select(func.count()).select_from(PanelVote)
                         .where(PanelVote.run_id == run_id)) or 0
        if run.state == "voting" and count >= len(run.panel_models):
            run.state = "deliberating"
        return run.state == "deliberating"


def _insert_vote(s: Session, ctx: TenantContext, run: RecommendationRun, model: str,
                 ballot: Ballot) -> None:
    answer = ballot.answer
    scores: dict[str, int | None] = {d: getattr(answer, d).score if answer else None
                                     for d in DIMENSIONS}
    vote_id = s.scalar(insert(PanelVote).values(
        run_id=run.id, model_name=model, valid=answer is not None,
        abstention=ballot.abstention, abstention_detail=(ballot.detail or "")[:300] or None,
        latency_ms=ballot.latency_ms, **scores,
    ).on_conflict_do_nothing(constraint="uq_panel_votes_run_id_model_name")
        .returning(PanelVote.id))
    if vote_id is None:
        return  # a retried job: the vote is in already
    if answer is not None:
        rationales = {d: getattr(answer, d).rationale for d in DIMENSIONS}
        vote = s.get(PanelVote, vote_id)
        assert vote is not None  # noqa: S101 - just inserted
        vote.rationales_sealed = _seal(ctx, json.dumps(rationales), "panel_votes",
                                       "rationales_sealed", vote_id)
    audit.record(s, RecommendationEvents.VOTE_RECORDED, actor=ctx.actor,
                 target_type="recommendation_run", target_id=run.id,
                 details={"model": model, "valid": answer is not None,
                          "abstention": ballot.abstention, **scores})


# -- the deliberator and the gate ----------------------------------------------------------


def valid_scores(votes: list[PanelVote]) -> dict[str, gate.Scores]:
    return {v.model_name: gate.Scores(v.cost_benefit or 0, v.human_sensitivity or 0,
                                      v.customer_risk or 0, v.compliance or 0)
            for v in votes if v.valid}


def _deliberation_prompt(brief: TaskBrief, ctx: TenantContext, votes: list[PanelVote],
                         found: consensus.Consensus) -> str:
    lines = [brief.text(), "", "The panel's votes:"]
    for vote in votes:
        if not vote.valid:
            lines.append(f"- {vote.model_name}: abstained ({vote.abstention}).")
            continue
        why = rationales_of(ctx, vote)
        for d in DIMENSIONS:
            lines.append(f"- {vote.model_name}, {DIMENSION_LABELS[d]}: {getattr(vote, d)}/10 — "
                         f"{why.get(d, '')}")
    lines += ["", "Computed from the scores:", *[f"- agree: {a}" for a in found.agreements],
              *[f"- disagree: {d}" for d in found.disagreements]]
    return "\n".join(lines)


def conclude(ctx: TenantContext, run_id: int, gateway: Gateway) -> gate.Decision | None:
    """The deliberator (when there are valid votes to synthesize), then the gate's verdict,
    recorded once. Returns None when the run was concluded already."""
    with ctx.session() as s, s.begin():
        run = _run(s, run_id)
        if run.state == "done":
            return None
        task = _task(s, run.task_id)
        brief = _brief(ctx, task)
        votes = votes_of(s, run_id)
        panel_size = len(run.panel_models)
        thresholds = gate.Thresholds.from_dict(run.thresholds)
        deliberator = run.deliberator_model
        prompt = None
        scores = valid_scores(votes)
        if scores:
            prompt = _deliberation_prompt(brief, ctx, votes, consensus.compare(scores))
    synthesis: str | None = None
    synthesis_error: str | None = None
    if prompt is not None and deliberator:
        try:
            answer = parse_deliberation(_ask(gateway, answer_key(run_id, "synthesis"),
                                             deliberator, DELIBERATOR_PROMPT, prompt,
                                             SYNTHESIS_MAX_TOKENS))
            synthesis = answer.model_dump_json()
        except (ModelRefused, ProvidersFailed, SpendCapReached) as exc:
            synthesis_error = exc.message
        except AnswerRefused as exc:
            synthesis_error = f"The deliberator's answer was not usable: {exc}."
        except TenantKeyUnavailable:
            raise
        except TenantError as exc:
            synthesis_error = exc.message
    elif prompt is not None:
        synthesis_error = "No model is configured or allowed for the deliberator."
    analysis = None if scores else heuristics.analyse(brief.signals)
    decision = gate.decide(tags=brief.tags, panel_size=panel_size, votes=scores,
                           thresholds=thresholds, heuristic=analysis)
    with ctx.session() as s, s.begin():
        run = _run(s, run_id, lock=True)
        release_answer(s, answer_key(run_id, "synthesis"))
        if run.state == "done":
            return None
        if synthesis is not None:
            run.synthesis_sealed = _seal(ctx, synthesis, "recommendation_runs",
                                         "synthesis_sealed", run.id)
        run.synthesis_error = synthesis_error[:300] if synthesis_error else None
        run.mode, run.verdict, run.reasons = decision.mode, decision.verdict, \
            list(decision.reasons)
        run.heuristic = analysis.as_dict() if analysis is not None else None
        run.state, run.finished_at = "done", _now()
        audit.record(s, RecommendationEvents.VERDICT, actor=ctx.actor,
                     target_type="recommendation_run", target_id=run.id,
                     details={"task_id": run.task_id, "verdict": decision.verdict,
                              "mode": decision.mode, "panel_size": panel_size,
                              "valid_votes": len(scores),
                              "abstentions": panel_size - len(scores),
                              "formed": decision.formed, "agreed": decision.agreed,
                              "vetoed": decision.vetoed,
                              "synthesis": synthesis is not None})
    return decision
