"""Fault-injection fixtures: real ``magistrate worker`` processes on the test database and
Redis, started as ``magistrate up`` starts them, that a test can ``kill -9`` or stop with
SIGTERM; Postgres locks that hold a job in the middle of its work until the test lets go; and
the results file that ops/RELIABILITY.md is generated from.

``MAGISTRATE_CHAOS_RESULTS``: a folder; when set, each chaos module writes its figures there as
JSON (``jobs.json``, ``shutdown.json``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from rq import Worker
from sqlalchemy import select

from control_plane.models import Job
from tests.conftest import TEST_SECRET_KEY, make_settings, with_database
from tests.control_plane.tenancy.conftest import (  # noqa: F401
    local_kek,
    primary_server,
)

ROOT = Path(__file__).resolve().parents[2]
RESULTS_ENV = "MAGISTRATE_CHAOS_RESULTS"
# the bounded form: a dead worker's job runs again within seconds instead of up to a minute
BOUNDED = {"MAGISTRATE_JOB_LEASE_SECONDS": "4", "MAGISTRATE_JOB_HEARTBEAT_SECONDS": "1",
           "MAGISTRATE_JOB_REAPER_SECONDS": "1"}


@pytest.fixture
def settings(tmp_path):
    return make_settings(home=tmp_path / "home",
                         gateway_private_networks=("127.0.0.0/8",))  # the fake LLM servers


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2,
             explain: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` (and what
    ``explain`` says of the state) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(every)


class Workers:
    """``magistrate worker`` processes, each in its own session (its process group holds the
    worker and RQ's scheduler; RQ puts each work horse in a group of its own)."""

    def __init__(self, env: dict[str, str], logs: Path, connection: redis.Redis) -> None:
        self.env = env
        self.logs = logs
        self.connection = connection
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_paths: dict[int, Path] = {}
        self._files: list[Any] = []

    def start(self, count: int = 1, **overrides: str) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            path = self.logs / f"worker-{len(self.procs) + 1}.log"
            log = path.open("wb")
            self._files.append(log)
            proc = subprocess.Popen([sys.executable, "-m", "control_plane", "worker"],
                                    env={**self.env, **overrides}, cwd=ROOT, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            self.procs.append(proc)
            self.log_paths[proc.pid] = path
            started.append(proc)
        return started

    def wait_listening(self, count: int, timeout: float = 120) -> None:
        """Until ``count`` RQ workers are registered in Redis (each is taking jobs)."""
        wait_for(lambda: Worker.count(connection=self.connection) >= count, timeout,
                 f"{count} workers listening", explain=lambda: self.log_text()[-4000:])

    def kill9(self, procs: list[subprocess.Popen[bytes]], horses: list[int]) -> None:
        """SIGKILL the workers (with their scheduler processes), then the work horses that were
        running jobs: nothing of the old workers gets a chance to clean up."""
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
        for horse in horses:
            try:
                os.killpg(horse, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in procs:
            proc.wait(timeout=10)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.logs.glob("worker-*.log")))

    def stop_all(self) -> None:
        """Stop what is left (idle standby workers, mostly) quickly: SIGTERM, then SIGKILL."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill9([proc], children(proc.pid))
        for f in self._files:
            f.close()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a worker's work horse among them)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture
def workers(settings, database_url, redis_url, redis_client, tmp_path) -> Iterator[Workers]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(MAGISTRATE_DATABASE_URL=database_url, MAGISTRATE_REDIS_URL=redis_url,
               MAGISTRATE_SECRET_KEY=TEST_SECRET_KEY, MAGISTRATE_ENV="test",
               MAGISTRATE_HOME=str(settings.home),
               MAGISTRATE_GATEWAY_PRIVATE_NETWORKS="127.0.0.0/8")
    logs = tmp_path / "logs"
    logs.mkdir()
    pool = Workers(env, logs, redis_client)
    yield pool
    pool.stop_all()


class Locks:
    """Postgres locks a test holds to stop a job at a known point of its work (the job's
    statement waits on the lock), released all at once."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._conns: list[psycopg.Connection] = []

    def hold(self, url: str, statement: str, params: tuple[Any, ...] = ()) -> None:
        conn = self._stack.enter_context(psycopg.connect(url))
        conn.execute(statement, params)  # the transaction stays open: the lock is held
        self._conns.append(conn)

    def release(self) -> None:
        for conn in self._conns:
            if not conn.closed:
                conn.rollback()
        self._stack.close()
        self._conns.clear()


@pytest.fixture
def locks() -> Iterator[Locks]:
    held = Locks()
    yield held
    held.release()


def tenant_db_url(pg_server_url: str, db_name: str) -> str:
    """The tenant database, as the server's administrative role (locks on any table)."""
    return with_database(pg_server_url, db_name)


def job_rows(db, ids: list[int] | None = None) -> dict[int, Job]:
    with db() as s:
        query = select(Job).order_by(Job.id)
        if ids is not None:
            query = query.where(Job.id.in_(ids))
        rows = list(s.scalars(query))
        s.expunge_all()
    return {j.id: j for j in rows}


def describe_jobs(db) -> str:
    return "\n".join(f"job {j.id} {j.kind}: {j.state}, attempts {j.attempts}, lease "
                     f"{j.lease_owner} until {j.lease_expires_at}, progress {j.progress}/"
                     f"{j.progress_total} {j.progress_note!r}, error {j.last_error!r}"
                     for j in job_rows(db).values())


def horse_pids(jobs: list[Job]) -> list[int]:
    """The work horses running ``jobs``: a lease owner is ``host:pid`` of the horse."""
    return [int(j.lease_owner.rsplit(":", 1)[1]) for j in jobs if j.lease_owner]


def write_results(name: str, figures: dict[str, Any]) -> None:
    folder = os.environ.get(RESULTS_ENV)
    if not folder:
        return
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
