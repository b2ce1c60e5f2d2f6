"""The worker: a real RQ worker on real Redis, JSON-serialized jobs, the periodic
session-expiry job, and `magistrate worker --burst` as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from datetime import timedelta

from sqlalchemy import select, update

from control_plane.db import utcnow
from control_plane.models import WebSession
from tests.conftest import TEST_SECRET_KEY
from tests.factories import make_user, sign_in
from workers import jobs
from workers.periodic import PeriodicJob, enqueue_if_due
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
