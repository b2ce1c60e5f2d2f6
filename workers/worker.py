"""``magistrate worker``: an RQ worker (JSON serializer) plus the periodic process.

Warm shutdown. RQ's worker already treats the first SIGTERM (or Ctrl-C) as a warm shutdown: it
takes no new job, waits for the work horse running the current one, then exits; a second
signal stops at once, killing the horse. What RQ does not bound is the wait: a job may run for
its whole RQ timeout. ``MagistrateWorker`` adds the bound
(``MAGISTRATE_JOB_SHUTDOWN_GRACE_SECONDS``): past it the horse is killed. And whenever a horse
ends while still holding an outbox job's lease (killed, crashed, out of memory) the lease is
released at once, so another worker runs
the job again without waiting for the lease to expire.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import redis
from rq import Worker
from rq.serializers import JSONSerializer
from sqlalchemy.orm import configure_mappers

from control_plane.settings import Settings
from workers import jobs, runtime
from workers.periodic import PeriodicJob, PeriodicProcess, PeriodicScheduler, PeriodicTask
from workers.queues import QUEUE_NAMES, get_queue


def periodic_jobs(settings: Settings) -> list[PeriodicJob]:
    return [PeriodicJob("expire_sessions", jobs.expire_sessions,
                        settings.session_cleanup_seconds)]


def periodic_tasks(connection: redis.Redis,
                   settings: Settings | None = None) -> list[PeriodicTask]:
    from control_plane.backups.schedule import schedule_due
    from control_plane.jobs import dispatch_pending, redeliver_undelivered
    from workers.approvals import run_approval_outbox
    from workers.checkpoints import (
        fail_abandoned_signal_imports,
        run_checkpoints,
        run_minimization_retention,
        run_retention,
        settle_abandoned_calls,
    )
    from workers.runner import reap_expired_leases

    lease = settings or Settings()
    return [
        PeriodicTask("dispatch_outbox",
                     lambda: dispatch_pending(runtime.session_factory(), connection), 2),
        PeriodicTask("reap_expired_leases",
                     lambda: reap_expired_leases(runtime.session_factory()),
                     lease.job_reaper_seconds),
        PeriodicTask("redeliver_undelivered_jobs",
                     lambda: redeliver_undelivered(runtime.session_factory(), connection,
                                                   older_than_seconds=lease.job_lease_seconds),
                     lease.job_reaper_seconds),
        PeriodicTask("audit_checkpoints", run_checkpoints, 60),
        PeriodicTask("refill_spare_databases", refill_all_servers, 30),
        PeriodicTask("audit_retention", run_retention, 3600),
        PeriodicTask("minimization_retention", run_minimization_retention, 3600),
        PeriodicTask("settle_abandoned_gateway_calls", settle_abandoned_calls, 300),
        PeriodicTask("fail_abandoned_signal_imports", fail_abandoned_signal_imports, 120),
        PeriodicTask("approval_outbox", run_approval_outbox, 10),
        PeriodicTask("schedule_backups",
                     lambda: schedule_due(runtime.session_factory()), 300),
        PeriodicTask("purge_stale_exports",
                     lambda: purge_stale_exports(runtime.env().settings.home / "exports"), 600),
    ]


def refill_all_servers() -> int:
    """Keep spare template clones ready on every active database server, so provisioning
    renames one instead of waiting for ``CREATE DATABASE``."""
    from sqlalchemy import select

    from control_plane.models import DbServer
    from control_plane.tenancy.database import refill_spares, spare_namespace
    from control_plane.tenancy.servers import admin_url

    env = runtime.env()
    namespace = spare_namespace(env.database_url)
    with runtime.session_factory()() as s:
        urls = [admin_url(env.sealer, server) for server in
                s.scalars(select(DbServer).where(DbServer.is_active))]
    return sum(refill_spares(url, namespace=namespace) for url in urls)


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


log = logging.getLogger("magistrate.worker")


class MagistrateWorker(Worker):
    """RQ's worker with a bounded warm shutdown and immediate release of a dead horse's lease
    (see the module docstring)."""

    shutdown_grace_seconds: float = 60.0

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()  # type: ignore[no-untyped-call]
        horse = self.horse_pid
        if horse:
            log.info("warm shutdown: the running job has %ss to finish",
                     self.shutdown_grace_seconds)
            timer = threading.Timer(self.shutdown_grace_seconds, self._stop_overdue_job, (horse,))
            timer.daemon = True
            timer.start()

    def _stop_overdue_job(self, horse: int) -> None:
        if self.horse_pid == horse:  # still the job that was running at the signal
            log.warning("warm shutdown: the running job outlived %ss; stopping it, its lease is "
                        "released for another worker", self.shutdown_grace_seconds)
            self.kill_horse()

    def monitor_work_horse(self, job: Any, queue: Any, execution: Any) -> None:
        from workers.runner import release_leases, worker_name

        horse = self.horse_pid
        try:
            super().monitor_work_horse(job, queue, execution)
        finally:
            if horse:
                try:
                    release_leases(runtime.session_factory(), worker_name(horse))
                except Exception as exc:  # noqa: BLE001 - the lease then expires instead
                    log.warning("could not release the leases of process %s: %s", horse,
                                type(exc).__name__)


def _prepare_for_fork() -> None:
    """Do once, before anything is forked, what each forked work horse would otherwise do
    itself: import the handlers (and with them every model and SDK) and configure the ORM
    mappers, sparing every job those seconds."""
    import workers.handlers  # noqa: F401 - registers the handlers

    configure_mappers()


def run_worker(settings: Settings, *, database_url: str, redis_url: str, secret_key: str,
               burst: bool = False) -> bool:
    runtime.configure(settings, database_url=database_url, secret_key=secret_key)
    connection = redis.Redis.from_url(redis_url)
    scheduler = PeriodicScheduler(connection, periodic_jobs(settings),
                                  periodic_tasks(connection, settings))
    _prepare_for_fork()
    periodic = PeriodicProcess(scheduler)
    if burst:
        scheduler.run_tasks()  # send what waits in the outbox, then work through the queue
    else:
        periodic.start()
    worker = MagistrateWorker([get_queue(connection, n) for n in QUEUE_NAMES],
                              connection=connection, serializer=JSONSerializer)
    worker.shutdown_grace_seconds = settings.job_shutdown_grace_seconds
    try:
        return bool(worker.work(burst=burst, with_scheduler=True, logging_level="INFO"))
    finally:
        periodic.stop()
