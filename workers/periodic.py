"""Periodic jobs: a small thread in each worker enqueues them on schedule.

With several workers running, a Redis ``SET NX EX`` per period makes exactly one of them
enqueue each run."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import redis

from workers.queues import get_queue

log = logging.getLogger("magistrate.periodic")


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    func: Callable[..., object]
    every_seconds: int


def enqueue_if_due(connection: redis.Redis, job: PeriodicJob) -> bool:
    """Enqueue ``job`` unless another worker already did in this period."""
    claimed = connection.set(f"magistrate:periodic:{job.name}", "1", nx=True,
                             ex=job.every_seconds)
    if not claimed:
        return False
    get_queue(connection).enqueue(job.func, job_timeout=300, result_ttl=3600,
                                  description=f"periodic:{job.name}")
    return True


class PeriodicScheduler(threading.Thread):
    def __init__(self, connection: redis.Redis, jobs: list[PeriodicJob],
                 tick_seconds: float = 5.0) -> None:
        super().__init__(name="magistrate-periodic", daemon=True)
        self.connection = connection
        self.jobs = jobs
        self.tick = tick_seconds
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for job in self.jobs:
                try:
                    if enqueue_if_due(self.connection, job):
                        log.info("enqueued periodic job %s", job.name)
                except redis.RedisError as exc:
                    log.warning("could not enqueue periodic job %s: %s", job.name, exc)
            self.stopped.wait(self.tick)

    def stop(self) -> None:
        self.stopped.set()
