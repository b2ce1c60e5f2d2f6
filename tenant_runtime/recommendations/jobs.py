"""The recommendation gate's outbox jobs, as the tenant side names them.

A run is three kinds of job (``workers/handlers/recommendations.py`` runs them):

    recommendation_run         the Architect's analysis, then one vote job per panel model
    recommendation_vote        one panel model's vote (the route's timeout per attempt; the
                               job's lease while it runs); a retry never records a second vote
    recommendation_deliberate  enqueued when the last vote is in: the deliberator and the gate

Each carries an idempotency key naming the tenant, the run and (for votes) the model, so
enqueueing again is harmless. ``control_plane.jobs.JobKinds`` holds the same names.

The dashboard cannot import the control plane, so the control plane hands it an
``EnqueueTenantJob`` as ``request.app.state.enqueue_tenant_job``: it records the job in the
outbox (payload and key bound to the tenant) and dispatches it."""

from __future__ import annotations

from typing import Any, Protocol

RUN = "recommendation_run"
VOTE = "recommendation_vote"
DELIBERATE = "recommendation_deliberate"


class EnqueueTenantJob(Protocol):
    def __call__(self, tenant_id: int, kind: str, payload: dict[str, Any], *,
                 idempotency_key: str) -> None: ...


def run_key(tenant_id: int, run_id: int) -> str:
    return f"recommendation:{tenant_id}:{run_id}:run"


def vote_key(tenant_id: int, run_id: int, model: str) -> str:
    return f"recommendation:{tenant_id}:{run_id}:vote:{model}"


def deliberate_key(tenant_id: int, run_id: int) -> str:
    return f"recommendation:{tenant_id}:{run_id}:deliberate"
