"""``magistrate worker``: an RQ worker (JSON serializer) plus the periodic-job thread."""

from __future__ import annotations

import time
from pathlib import Path

import redis
from rq import Worker
from rq.serializers import JSONSerializer

from control_plane.settings import Settings
from workers import jobs, runtime
from workers.periodic import PeriodicJob, PeriodicScheduler, PeriodicTask
from workers.queues import QUEUE_NAMES, get_queue


def periodic_jobs(settings: Settings) -> list[PeriodicJob]:
    return [PeriodicJob("expire_sessions", jobs.expire_sessions,
                        settings.session_cleanup_seconds)]


def periodic_tasks(connection: redis.Redis) -> list[PeriodicTask]:
    from control_plane.jobs import dispatch_pending
    from workers.approvals import run_approval_outbox
    from workers.checkpoints import (
        run_checkpoints,
        run_minimization_retention,
        run_retention,
        settle_abandoned_calls,
    )
    from workers.runner import reap_expired_leases

    return [
        PeriodicTask("dispatch_outbox",
                     lambda: dispatch_pending(runtime.session_factory(), connection), 2),
        PeriodicTask("reap_expired_leases",
                     lambda: reap_expired_leases(runtime.session_factory()), 10),
        PeriodicTask("audit_checkpoints", run_checkpoints, 60),
        PeriodicTask("refill_spare_databases", refill_all_servers, 30),
        PeriodicTask("audit_retention", run_retention, 3600),
        PeriodicTask("minimization_retention", run_minimization_retention, 3600),
        PeriodicTask("settle_abandoned_gateway_calls", settle_abandoned_calls, 300),
        PeriodicTask("approval_outbox", run_approval_outbox, 10),
        PeriodicTask("purge_stale_exports",
                     lambda: purge_stale_exports(runtime.env().settings.home / "exports"), 600),
    ]


def refill_all_servers() -> int:
    """Keep spare template clones ready on every active database server, so provisioning
    renames one instead of waiting for ``CREATE DATABASE``."""
    from sqlalchemy import select

    from control_plane.models import DbServer
    from control_plane.tenancy.database import refill_spares
    from control_plane.tenancy.servers import admin_url

    env = runtime.env()
    with runtime.session_factory()() as s:
        urls = [admin_url(env.sealer, server) for server in
                s.scalars(select(DbServer).where(DbServer.is_active))]
    return sum(refill_spares(url) for url in urls)


EXPORT_MAX_AGE_SECONDS = 3600


def purge_stale_exports(folder: Path, max_age: float = EXPORT_MAX_AGE_SECONDS) -> int:
    """Delete export files nobody downloaded within ``max_age``: decrypted personal data must
    not linger on disk (a download link lives 5 minutes; the page re-issues it for an hour)."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - max_age
    removed = 0
    for path in folder.iterdir():
        if path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def run_worker(settings: Settings, *, database_url: str, redis_url: str, secret_key: str,
               burst: bool = False) -> bool:
    runtime.configure(settings, database_url=database_url, secret_key=secret_key)
    connection = redis.Redis.from_url(redis_url)
    scheduler = PeriodicScheduler(connection, periodic_jobs(settings),
                                  periodic_tasks(connection))
    if burst:
        scheduler.run_tasks()  # send what waits in the outbox, then work through the queue
    else:
        scheduler.start()
    worker = Worker([get_queue(connection, n) for n in QUEUE_NAMES], connection=connection,
                    serializer=JSONSerializer)
    try:
        return bool(worker.work(burst=burst, with_scheduler=True, logging_level="INFO"))
    finally:
        scheduler.stop()
