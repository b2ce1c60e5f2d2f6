"""The job outbox, control-plane side: record a job in the caller's transaction, dispatch it to
RQ after commit. If Redis is down the job waits in the outbox; the worker's periodic dispatcher
sends it when Redis returns. The worker side (leases, fencing, running) is ``workers/runner.py``.

A dispatched job whose RQ message is gone before any worker claimed it (Redis lost its data, or
the worker that took it died before claiming it, or was stopped) would wait forever:
``redeliver_undelivered`` returns such jobs to the outbox.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db import utcnow
from control_plane.models import Job

log = logging.getLogger("magistrate.jobs")

RUNNER = "workers.runner.run_job"
# RQ states in which a message will not run (again): its outbox job needs sending again
UNDELIVERED = (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
QUEUE = "default"
JOB_TIMEOUT_SECONDS = 3600


class JobKinds:
    PROVISION_TENANT = "provision_tenant"
    DELETE_TENANT = "delete_tenant"
    EXPORT_TENANT = "export_tenant"
    ROTATE_TENANT_KEY = "rotate_tenant_key"
    VERIFY_AUDIT = "verify_audit"
    # backups (control_plane/backups/schedule.py)
    BACKUP_TENANT = "backup_tenant"
    BACKUP_CONTROL = "backup_control"
    BACKUP_DRILL = "backup_drill"
    RESTORE_TENANT_AS = "restore_tenant_as"  # a backup restored as a new tenant (the console)
    REPLACE_TENANT = "replace_tenant"  # a backup restored over the live tenant, approved
    # the recommendation gate (tenant_runtime/recommendations/jobs.py names the same kinds)
    RECOMMENDATION_RUN = "recommendation_run"
    RECOMMENDATION_VOTE = "recommendation_vote"
    RECOMMENDATION_DELIBERATE = "recommendation_deliberate"


def enqueue_job(s: Session, kind: str, payload: dict[str, Any], *, idempotency_key: str,
                tenant_id: int | None = None, created_by: int | None = None,
                progress_total: int = 0) -> Job:
    """Record a job (or find the one already recorded under ``idempotency_key``)."""
    s.execute(insert(Job).values(
        kind=kind, payload=payload, idempotency_key=idempotency_key, tenant_id=tenant_id,
        created_by=created_by, progress_total=progress_total,
    ).on_conflict_do_nothing(index_elements=["idempotency_key"]))
    return s.scalars(select(Job).where(Job.idempotency_key == idempotency_key)).one()


def requeue_job(s: Session, job: Job) -> None:
    """Send a failed job round again (an Owner's retry)."""
    job.state = "pending"
    job.last_error = None
    job.attempts = 0
    job.updated_at = utcnow()


def dispatch_pending(session_factory: sessionmaker[Session], connection: redis.Redis,
                     limit: int = 100) -> int:
    """Hand pending jobs to RQ; returns how many were sent. Safe to run from many processes."""
    queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer)
    sent = 0
    with session_factory() as s, s.begin():
        jobs = s.scalars(select(Job).where(Job.state == "pending").order_by(Job.id)
                         .limit(limit).with_for_update(skip_locked=True)).all()
        for job in jobs:
            try:
                queue.enqueue(RUNNER, job.id, job_id=rq_job_id(job),
                              job_timeout=JOB_TIMEOUT_SECONDS, result_ttl=3600,
                              failure_ttl=86400, description=f"{job.kind} #{job.id}")
            except redis.RedisError as exc:
                log.warning("jobs wait in the outbox: Redis is unreachable (%s)",
                            type(exc).__name__)
                break
            job.state = "dispatched"
            job.dispatched_at = utcnow()
            sent += 1
    return sent


def rq_job_id(job: Job) -> str:
    """The id of the RQ message that carries ``job`` (one per dispatch: claims bump attempts)."""
    return f"magistrate-job-{job.id}-{job.attempts}"


def redeliver_undelivered(session_factory: sessionmaker[Session], connection: redis.Redis, *,
                          older_than_seconds: int) -> int:
    """Return to the outbox every job dispatched more than ``older_than_seconds`` ago whose RQ
    message no longer exists or ended without running it (see the module docstring). A job
    whose message is still queued, scheduled or started is left alone. Returns how many."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    returned = 0
    with session_factory() as s, s.begin():
        jobs = s.scalars(select(Job).where(Job.state == "dispatched", Job.dispatched_at < cutoff)
                         .order_by(Job.id).limit(100).with_for_update(skip_locked=True)).all()
        for job in jobs:
            try:
                message = RQJob.fetch(rq_job_id(job), connection=connection,
                                      serializer=JSONSerializer)
                if message.get_status() not in UNDELIVERED:
                    continue
                message.delete()  # out of RQ's failed registry: it is sent again under its id
            except NoSuchJobError:
                pass
            except redis.RedisError:
                return returned  # Redis is down: nothing can be told; the next period retries
            job.state = "pending"
            job.updated_at = utcnow()
            returned += 1
    if returned:
        log.warning("%d dispatched job(s) whose message was lost returned to the outbox",
                    returned)
    return returned
