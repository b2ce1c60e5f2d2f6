"""Periodic jobs: a small thread in each worker enqueues them on schedule.

With several workers running, a Redis ``SET NX EX`` per period makes exactly one of them
enqueue each run."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from workers.queues import get_queue

log = logging.getLogger("magistrate.periodic")


@dataclass(frozen=True)
class PeriodicJob:
    """Enqueued on RQ once per period (one worker wins the period's Redis claim)."""

    name: str
    func: Callable[..., object]
    every_seconds: int


@dataclass(frozen=True)
class PeriodicTask:
    """Run in the scheduler thread of every worker (cheap, safe to run concurrently)."""

    name: str
    func: Callable[[], object]
    every_seconds: float


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
                 tasks: list[PeriodicTask] | None = None, tick_seconds: float = 2.0) -> None:
        super().__init__(name="magistrate-periodic", daemon=True)
        self.connection = connection
        self.jobs = jobs
        self.tasks = tasks or []
        self.tick = tick_seconds
        self.stopped = threading.Event()
        self._last_run: dict[str, float] = {}

    def run_tasks(self) -> None:
        now = time.monotonic()
        for task in self.tasks:
            if now - self._last_run.get(task.name, 0.0) < task.every_seconds:
                continue
            self._last_run[task.name] = now
            try:
                task.func()
            except Exception as exc:  # noqa: BLE001 - the next period tries again
                log.warning("periodic task %s failed: %s", task.name, type(exc).__name__)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.run_tasks()
            for job in self.jobs:
                try:
                    if enqueue_if_due(self.connection, job):
                        log.info("enqueued periodic job %s", job.name)
                except redis.RedisError as exc:
                    log.warning("could not enqueue periodic job %s: %s", job.name, exc)
            self.stopped.wait(self.tick)

    def stop(self) -> None:
        self.stopped.set()
