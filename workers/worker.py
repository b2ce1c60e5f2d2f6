"""``magistrate worker``: an RQ worker (JSON serializer) plus the periodic-job thread."""

from __future__ import annotations

import redis
from rq import Worker
from rq.serializers import JSONSerializer

from control_plane.settings import Settings
from workers import jobs, runtime
from workers.periodic import PeriodicJob, PeriodicScheduler
from workers.queues import QUEUE_NAMES, get_queue


def periodic_jobs(settings: Settings) -> list[PeriodicJob]:
    return [PeriodicJob("expire_sessions", jobs.expire_sessions,
                        settings.session_cleanup_seconds)]


def run_worker(settings: Settings, *, database_url: str, redis_url: str,
               burst: bool = False) -> bool:
    runtime.configure(database_url)
    connection = redis.Redis.from_url(redis_url)
    scheduler = PeriodicScheduler(connection, periodic_jobs(settings))
    if not burst:
        scheduler.start()
    worker = Worker([get_queue(connection, n) for n in QUEUE_NAMES], connection=connection,
                    serializer=JSONSerializer)
    try:
        return bool(worker.work(burst=burst, with_scheduler=True, logging_level="INFO"))
    finally:
        scheduler.stop()
