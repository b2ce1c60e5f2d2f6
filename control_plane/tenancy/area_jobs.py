"""Outbox jobs asked for by tenant areas. Tenant code cannot import the control plane, so the
web app hands it ``enqueue_tenant_job`` (as ``app.state.enqueue_tenant_job``, next to
``render``): the job is recorded for that tenant only (the payload's ``tenant_id`` is the
caller's tenant, whatever the area passed) and dispatched to RQ."""

from __future__ import annotations

from typing import Any

from control_plane.jobs import dispatch_pending, enqueue_job
from control_plane.web.services import Services


def enqueue_tenant_job(svc: Services, tenant_id: int, kind: str, payload: dict[str, Any], *,
                       idempotency_key: str) -> None:
    with svc.session_factory() as s, s.begin():
        enqueue_job(s, kind, {**payload, "tenant_id": tenant_id},
                    idempotency_key=idempotency_key, tenant_id=tenant_id)
    dispatch_pending(svc.session_factory, svc.redis)
