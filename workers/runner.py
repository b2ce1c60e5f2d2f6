"""Running outbox jobs under a lease.

``run_job(job_id)`` is what RQ executes. It claims the job: a conditional UPDATE that succeeds
only for a pending or dispatched job, or a running one whose lease has expired; the claim bumps
the job's fencing token. While the handler runs, a heartbeat renews the lease every
``HEARTBEAT_SECONDS``; every write of the outcome is conditional on the token, so a worker
presumed dead cannot overwrite the work of the one that took over. A job that is already running
under a live lease, or finished, is left alone: duplicates from RQ are harmless.

The lease and heartbeat periods are settings (``MAGISTRATE_JOB_LEASE_SECONDS``,
``MAGISTRATE_JOB_HEARTBEAT_SECONDS``; 30 and 10 by default). The lease owner is
``host:pid`` of the process running the handler (RQ's work horse), so the worker that forked it
can release the lease at once when the horse dies (``release_leases``) instead of waiting for it
to expire.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db import utcnow
from control_plane.models import Job
from tenant_runtime.observability import metrics
from workers import runtime

log = logging.getLogger("magistrate.runner")

LEASE_SECONDS = 30
HEARTBEAT_SECONDS = 10


class JobFailed(Exception):
    """A handler's clear, user-facing failure; ``retry`` says whether another attempt may help."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class JobRun:
    """What a handler gets: the payload, the job's identity, and a progress reporter."""

    job_id: int
    payload: dict[str, Any]
    token: int
    session_factory: sessionmaker[Session]

    def progress(self, done: int, total: int, note: str) -> None:
        with self.session_factory() as s, s.begin():
            s.execute(update(Job).where(Job.id == self.job_id,
                                        Job.fencing_token == self.token)
                      .values(progress=done, progress_total=total, progress_note=note[:300],
                              updated_at=utcnow()))


Handler = Callable[[JobRun], dict[str, Any] | None]
HANDLERS: dict[str, Handler] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return register


def worker_name(pid: int | None = None) -> str:
    """The lease owner name of process ``pid`` (default: this one) on this host."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def claim(session_factory: sessionmaker[Session], job_id: int, owner: str, *,
          lease_seconds: int = LEASE_SECONDS) -> tuple[int, str, dict[str, Any]] | None:
    """Take the job under a new lease; returns (fencing token, kind, payload), or None when
    the job is finished or running under another worker's live lease."""
    now = utcnow()
    with session_factory() as s, s.begin():
        row = s.execute(
            update(Job)
            .where(Job.id == job_id, or_(
                Job.state.in_(("pending", "dispatched")),
                (Job.state == "running") & (Job.lease_expires_at < now),
            ))
            .values(state="running", lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    fencing_token=Job.fencing_token + 1, attempts=Job.attempts + 1,
                    updated_at=now)
            .returning(Job.fencing_token, Job.kind, Job.payload)
        ).first()
    return None if row is None else (int(row[0]), str(row[1]), dict(row[2]))


def renew_lease(session_factory: sessionmaker[Session], job_id: int, token: int, *,
                lease_seconds: int = LEASE_SECONDS) -> bool:
    """Extend the lease held under ``token``; False when the job is no longer ours."""
    with session_factory() as s, s.begin():
        result = s.execute(update(Job).where(Job.id == job_id, Job.fencing_token == token,
                                             Job.state == "running")
                           .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)))
        return bool(getattr(result, "rowcount", 0))


def _heartbeat(session_factory: sessionmaker[Session], job_id: int, token: int,
               stop: threading.Event, every: float, lease_seconds: int) -> None:
    while not stop.wait(every):
        try:
            if not renew_lease(session_factory, job_id, token, lease_seconds=lease_seconds):
                log.warning("job %s: the lease was lost; the outcome of this run will not be "
                            "recorded", job_id)
                return
        except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
            log.warning("lease renewal failed for job %s", job_id)


def _finish(session_factory: sessionmaker[Session], job_id: int, token: int,
            **values: Any) -> bool:
    with session_factory() as s, s.begin():
        result = s.execute(update(Job).where(Job.id == job_id, Job.fencing_token == token,
                                             Job.state == "running")
                           .values(lease_owner=None, lease_expires_at=None,
                                   updated_at=utcnow(), **values))
        return bool(getattr(result, "rowcount", 0))


def run_job(job_id: int) -> dict[str, Any]:
    """Claim and run one outbox job; returns a JSON-safe summary (RQ keeps it as the result)."""
    import workers.handlers  # noqa: F401 - registers the handlers

    settings = runtime.env().settings
    session_factory = runtime.session_factory()
    claimed = claim(session_factory, job_id, worker_name(),
                    lease_seconds=settings.job_lease_seconds)
    if claimed is None:
        return {"job": job_id, "outcome": "skipped"}
    token, kind, payload = claimed
    fn = HANDLERS.get(kind)
    if fn is None:
        _finish(session_factory, job_id, token, state="failed",
                last_error=f"no handler for job kind {kind!r}", finished_at=utcnow())
        return {"job": job_id, "outcome": "failed"}
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(session_factory, job_id, token, stop,
                                                     settings.job_heartbeat_seconds,
                                                     settings.job_lease_seconds),
                            daemon=True)
    beat.start()
    try:
        result = fn(JobRun(job_id, payload, token, session_factory)) or {}
    except JobFailed as exc:
        _fail(session_factory, job_id, token, str(exc), retry=exc.retry)
        return {"job": job_id, "outcome": "failed", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - recorded on the job, retried while attempts last
        log.error("job %s (%s) raised:\n%s", job_id, kind, traceback.format_exc())
        _fail(session_factory, job_id, token, f"{type(exc).__name__}: {exc}"[:2000],
              retry=True)
        return {"job": job_id, "outcome": "failed", "error": type(exc).__name__}
    finally:
        stop.set()
    if not _finish(session_factory, job_id, token, state="succeeded", result=result,
                   last_error=None, finished_at=utcnow()):
        log.warning("job %s finished after losing its lease; its outcome was not recorded",
                    job_id)
        return {"job": job_id, "outcome": "fenced"}
    return {**result, "job": job_id, "outcome": "succeeded"}


def _fail(session_factory: sessionmaker[Session], job_id: int, token: int, message: str, *,
          retry: bool) -> None:
    with session_factory() as s, s.begin():
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or job.fencing_token != token:
            return
        again = retry and job.attempts < job.max_attempts
        job.state = "pending" if again else "failed"
        job.last_error = message
        job.lease_owner = None
        job.lease_expires_at = None
        job.updated_at = utcnow()
        if not again:
            job.finished_at = utcnow()


def reap_expired_leases(session_factory: sessionmaker[Session]) -> int:
    """Return jobs whose worker stopped renewing the lease to the outbox, to run again."""
    with session_factory() as s, s.begin():
        result = s.execute(update(Job).where(Job.state == "running",
                                             Job.lease_expires_at < utcnow())
                           .values(state="pending", lease_owner=None, lease_expires_at=None,
                                   updated_at=utcnow()))
        reaped = int(getattr(result, "rowcount", 0) or 0)
    if reaped:
        metrics.LEASE_RECLAIMS.labels("expired").inc(reaped)
        log.warning("%d job(s) whose lease expired returned to the outbox", reaped)
    return reaped


def release_leases(session_factory: sessionmaker[Session], owner: str) -> int:
    """Return the jobs ``owner`` (a ``worker_name``) still holds to the outbox at once: the
    process is known to be dead (its worker reaped it), so there is no need to wait for the
    lease to expire. The next claim bumps the fencing token as always."""
    with session_factory() as s, s.begin():
        result = s.execute(update(Job).where(Job.state == "running", Job.lease_owner == owner)
                           .values(state="pending", lease_owner=None, lease_expires_at=None,
                                   updated_at=utcnow()))
        released = int(getattr(result, "rowcount", 0) or 0)
    if released:
        metrics.LEASE_RECLAIMS.labels("released").inc(released)
        log.warning("%d job(s) left by the stopped process %s returned to the outbox",
                    released, owner)
    return released
