"""The worker: a real RQ worker on real Redis, JSON-serialized jobs, the periodic
session-expiry job, and `magistrate worker --burst` as a process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from control_plane.db import utcnow
from control_plane.models import WebSession
from tests.conftest import TEST_SECRET_KEY
from tests.factories import make_user, sign_in
from workers import jobs
from workers.periodic import (
    PROCESS_NAME,
    PeriodicJob,
    PeriodicProcess,
    PeriodicScheduler,
    PeriodicTask,
    enqueue_if_due,
)
from workers.queues import get_queue


def make_sessions(client, db) -> None:
    user = make_user(db)
    for _ in range(3):
        client.cookies.clear()
        sign_in(client, user.email)
    with db() as s, s.begin():
        ids = s.scalars(select(WebSession.id).order_by(WebSession.id)).all()
        s.execute(update(WebSession).where(WebSession.id == ids[0])
                  .values(expires_at=utcnow() - timedelta(minutes=1)))
        s.execute(update(WebSession).where(WebSession.id == ids[1])
                  .values(last_seen_at=utcnow() - timedelta(hours=13)))


def test_periodic_job_is_enqueued_once_per_period(redis_client):
    job = PeriodicJob("expire_sessions", jobs.expire_sessions, 60)
    assert enqueue_if_due(redis_client, job) is True
    assert enqueue_if_due(redis_client, job) is False  # another worker, same period
    queue = get_queue(redis_client)
    assert queue.count == 1
    queued = queue.jobs[0]
    assert queued.func_name == "workers.jobs.expire_sessions"
    # JSON, not pickle, on the wire
    raw = zlib.decompress(redis_client.hget(f"rq:job:{queued.id}", "data"))
    assert json.loads(raw)[0] == "workers.jobs.expire_sessions"


def test_worker_process_runs_the_expiry_job(client, db, database_url, redis_url,
                                            redis_client):
    make_sessions(client, db)
    assert enqueue_if_due(redis_client, PeriodicJob("expire_sessions", jobs.expire_sessions, 60))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(MAGISTRATE_DATABASE_URL=database_url, MAGISTRATE_REDIS_URL=redis_url,
               MAGISTRATE_SECRET_KEY=TEST_SECRET_KEY, MAGISTRATE_ENV="test")
    result = subprocess.run([sys.executable, "-m", "control_plane", "worker", "--burst"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "expired sessions deleted: 2" in result.stderr
    with db() as s:
        assert len(s.scalars(select(WebSession)).all()) == 1
    assert get_queue(redis_client).count == 0


def test_stale_export_files_are_purged(tmp_path):
    from workers.worker import purge_stale_exports

    folder = tmp_path / "exports"
    folder.mkdir()
    old, fresh = folder / "old.zip", folder / "fresh.zip"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (0, 0))
    assert purge_stale_exports(folder, max_age=60) == 1
    assert not old.exists() and fresh.exists()
    assert purge_stale_exports(tmp_path / "missing") == 0


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _gone(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] == "Z"  # exited, waiting for its parent to read its status


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)
    return value


def test_the_worker_process_that_forks_work_horses_runs_no_other_thread(
        database_url, redis_url, tmp_path):
    """A fork copies the locks but only the forking thread: a horse forked while another
    thread held a lock waited on it forever. The periodic tasks run in a process of their
    own, so the worker's process, the one that forks every horse, runs no thread of ours:
    its main thread and RQ's listener for commands to the worker (which holds its own Redis
    connection only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(MAGISTRATE_DATABASE_URL=database_url, MAGISTRATE_REDIS_URL=redis_url,
               MAGISTRATE_SECRET_KEY=TEST_SECRET_KEY, MAGISTRATE_ENV="test",
               MAGISTRATE_HOME=str(tmp_path / "home"))
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "control_plane", "worker"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # RQ's scheduler and the periodic process: both forked from the worker
        _until(lambda: len(_children(worker.pid)) >= 2, 60, "the worker's two processes")
        time.sleep(3)  # the periodic process has ticked (its tasks ran) meanwhile
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        assert _threads(worker.pid) == 2
        (periodic,) = [pid for pid in _children(worker.pid)
                       if Path(f"/proc/{pid}/comm").read_text().strip() == PROCESS_NAME]

        worker.kill()  # kill -9 of the worker alone: its periodic process follows it
        worker.wait(timeout=10)
        _until(lambda: _gone(periodic), 15, "the periodic process to end with its worker")
    finally:
        with contextlib.suppress(ProcessLookupError):  # RQ's scheduler outlives its worker
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        log.close()


def test_the_periodic_process_runs_the_tasks_and_stops_when_asked(redis_client, tmp_path):
    marks = tmp_path / "marks"

    def mark() -> None:
        with marks.open("a") as fh:
            fh.write(f"{os.getpid()}\n")

    scheduler = PeriodicScheduler(redis_client, [], [PeriodicTask("mark", mark, 0.1)],
                                  tick_seconds=0.1)
    periodic = PeriodicProcess(scheduler)
    threads = threading.active_count()
    periodic.start()
    assert threading.active_count() == threads  # nothing of it runs in this process
    try:
        _until(lambda: marks.exists() and len(marks.read_text().split()) >= 3, 30,
               "the task to run three times")
    finally:
        periodic.stop(timeout=10)
    assert not periodic.process.is_alive() and periodic.process.exitcode == 0
    assert set(marks.read_text().split()) == {str(periodic.process.pid)}  # not in this process
