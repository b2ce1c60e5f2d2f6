"""The recommendation gate's jobs (tenant_runtime/recommendations/jobs.py): start a run (the
Architect, then one vote job per panel model, run in parallel by the workers), a vote, and the
deliberation once the last vote is in.

Every step is idempotent (tenant_runtime/recommendations/panel.py) and every follow-up job is
enqueued under a fixed idempotency key, after the tenant's transaction has committed; a retried
job redoes only what is missing and enqueues its follow-ups again, harmlessly. Each model call
is bounded by its route's timeout per attempt (three attempts, inside the gateway), and the job
by its lease: a worker that dies mid-vote stops renewing it, and the reaper hands the job to
another worker. A vote job that fails on its last attempt records an abstention, so a run never
waits for a vote that will not come."""

from __future__ import annotations

from typing import Any

from control_plane.jobs import JobKinds, enqueue_job
from control_plane.models import Job
from tenant_runtime.exceptions import TenantNotFound
from tenant_runtime.gateway.service import Gateway
from tenant_runtime.recommendations import jobs as rjobs
from tenant_runtime.recommendations import panel
from workers.handlers.common import tenant_context
from workers.runner import JobFailed, JobRun, handler

REFUSAL = "The tenant is not active; the recommendation run stopped."


def _enqueue(run: JobRun, tenant_id: int, kind: str, payload: dict[str, Any], key: str) -> None:
    with run.session_factory() as s, s.begin():
        enqueue_job(s, kind, {**payload, "tenant_id": tenant_id}, idempotency_key=key,
                    tenant_id=tenant_id)


def _ids(run: JobRun) -> tuple[int, int]:
    return int(run.payload["tenant_id"]), int(run.payload["run_id"])


def _missing_run(exc: TenantNotFound) -> JobFailed:
    # the page records the run and the job in two databases; a job that arrives before the
    # run's commit finds nothing yet, and is tried again
    return JobFailed(f"{exc.message} (the run may not be committed yet)", retry=True)


def _last_attempt(run: JobRun) -> bool:
    with run.session_factory() as s:
        job = s.get(Job, run.job_id)
        return job is None or job.attempts >= job.max_attempts


@handler(JobKinds.RECOMMENDATION_RUN)
def start_recommendation_run(run: JobRun) -> dict[str, Any]:
    tenant_id, run_id = _ids(run)
    with tenant_context(run.session_factory, tenant_id, panel.SYSTEM_ACTOR,
                        states=("active",), refusal=REFUSAL) as ctx:
        try:
            started = panel.start_run(ctx, run_id, Gateway(ctx))
        except TenantNotFound as exc:
            raise _missing_run(exc) from None
    for model in started.panel:
        _enqueue(run, tenant_id, JobKinds.RECOMMENDATION_VOTE,
                 {"run_id": run_id, "model": model},
                 rjobs.vote_key(tenant_id, run_id, model))
    if started.deliberate_now:
        _enqueue(run, tenant_id, JobKinds.RECOMMENDATION_DELIBERATE, {"run_id": run_id},
                 rjobs.deliberate_key(tenant_id, run_id))
    return {"run_id": run_id, "votes_enqueued": len(started.panel)}


@handler(JobKinds.RECOMMENDATION_VOTE)
def recommendation_vote(run: JobRun) -> dict[str, Any]:
    tenant_id, run_id = _ids(run)
    model = str(run.payload["model"])
    with tenant_context(run.session_factory, tenant_id, panel.SYSTEM_ACTOR,
                        states=("active",), refusal=REFUSAL) as ctx:
        try:
            ready = panel.cast_vote(ctx, run_id, model, Gateway(ctx))
        except TenantNotFound as exc:
            raise JobFailed(exc.message) from None
        except Exception as exc:
            if not _last_attempt(run):
                raise
            ready = panel.record_ballot(ctx, run_id, model, panel.Ballot(
                None, "error", f"The vote job failed on its last attempt "
                               f"({type(exc).__name__})."))
    if ready:
        _enqueue(run, tenant_id, JobKinds.RECOMMENDATION_DELIBERATE, {"run_id": run_id},
                 rjobs.deliberate_key(tenant_id, run_id))
    return {"run_id": run_id, "model": model, "deliberation_enqueued": ready}


@handler(JobKinds.RECOMMENDATION_DELIBERATE)
def recommendation_deliberate(run: JobRun) -> dict[str, Any]:
    tenant_id, run_id = _ids(run)
    with tenant_context(run.session_factory, tenant_id, panel.SYSTEM_ACTOR,
                        states=("active",), refusal=REFUSAL) as ctx:
        try:
            decision = panel.conclude(ctx, run_id, Gateway(ctx))
        except TenantNotFound as exc:
            raise JobFailed(exc.message) from None
    if decision is None:
        return {"run_id": run_id, "verdict": None, "outcome": "already concluded"}
    return {"run_id": run_id, "verdict": decision.verdict, "mode": decision.mode}
