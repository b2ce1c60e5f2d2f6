"""Periodic jobs and tasks: a small process beside each worker enqueues the jobs on schedule
and runs the tasks.

With several workers running, a Redis ``SET NX EX`` per period makes exactly one of them
enqueue each run.

A process, not a thread of the worker: the worker forks a work horse for every job, and a fork
copies every lock as it is at that instant but only the forking thread. A horse forked while a
periodic task held a lock (the data-key cache's, a key provider's, one inside an SDK) waited on
it forever. The worker's process runs no thread of ours, so nothing it forks can inherit a
held lock; the periodic process is forked once, at start, before anything runs in it."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
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
    """Run in the periodic process of every worker (cheap, safe to run concurrently)."""

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


class PeriodicScheduler:
    def __init__(self, connection: redis.Redis, jobs: list[PeriodicJob],
                 tasks: list[PeriodicTask] | None = None, tick_seconds: float = 2.0) -> None:
        self.connection = connection
        self.jobs = jobs
        self.tasks = tasks or []
        self.tick = tick_seconds
        self.stopped = threading.Event()
        # set by a signal handler, which must take no lock: the thread it interrupts may hold
        # the very lock (the event's, inside its wait); the loop sees it within a tick
        self.stop_requested = False
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

    def run(self, *, parent: int | None = None) -> None:
        """Tick until stopped, or (with ``parent``) until that process is gone."""
        while not self.stopped.is_set() and not self.stop_requested \
                and (parent is None or os.getppid() == parent):
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


PROCESS_NAME = "mag-periodic"  # what ps and top show (Linux keeps 15 bytes of it)


def _name_process(name: str) -> None:
    """Name this process for ps and top, where the kernel keeps a name (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass  # another system: the process keeps its parent's name


def _serve(scheduler: PeriodicScheduler, parent: int) -> None:
    _name_process(PROCESS_NAME)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the worker, which stops us
    signal.signal(signal.SIGTERM, lambda *_: setattr(scheduler, "stop_requested", True))
    scheduler.run(parent=parent)


class PeriodicProcess:
    """``scheduler`` run in a process of its own, forked from the caller (see the module
    docstring); it ends when stopped or when the caller's process is gone (``kill -9``)."""

    def __init__(self, scheduler: PeriodicScheduler) -> None:
        context = multiprocessing.get_context("fork")
        self.process = context.Process(target=_serve, args=(scheduler, os.getpid()),
                                       name="magistrate-periodic", daemon=True)

    def start(self) -> None:
        self.process.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Let the task in progress finish (up to ``timeout``), then end the process: the
        worker's exit is not held up by a periodic task, each of which is safe to stop at any
        point (its transaction rolls back; the next period does the work)."""
        if self.process.pid is None:
            return
        self.process.terminate()  # SIGTERM: it stops after the task in progress (or the tick)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
