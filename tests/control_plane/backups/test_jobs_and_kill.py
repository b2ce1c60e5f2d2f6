"""The worker's schedule (durable outbox jobs, recorded once per day or month) and a backup
killed with SIGKILL in the middle: nothing is published, and the next run publishes once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import psycopg
from sqlalchemy import select

from control_plane.backups.schedule import schedule_due
from control_plane.jobs import JobKinds
from control_plane.models import Backup, Job, PlatformAuditEvent, Tenant
from tests.conftest import TEST_SECRET_KEY
from tests.control_plane.tenancy.helpers import run_pending_jobs

LATE_ON_THE_FIRST = datetime(2031, 3, 1, 23, 59, 59, tzinfo=UTC)


def test_schedule_records_each_job_once_and_the_worker_runs_them(world, database_url):
    db = world.services.session_factory
    assert schedule_due(db, LATE_ON_THE_FIRST) == 3  # two tenants and the control plane
    assert schedule_due(db, LATE_ON_THE_FIRST) == 0  # idempotent: other workers, next tick
    results = run_pending_jobs(world.services, database_url)
    assert len(results) == 3
    with db() as s:
        rows = list(s.scalars(select(Backup)))
        states = {j.kind: j.state for j in s.scalars(select(Job))
                  if j.kind.startswith("backup")}
    assert sorted(r.tenant_slug for r in rows) == ["acme", "control", "globex"]
    assert states == {JobKinds.BACKUP_TENANT: "succeeded", JobKinds.BACKUP_CONTROL: "succeeded"}
    # on the first of a month, once the day's backup exists, the drill is due too
    with db() as s, s.begin():
        for b in s.scalars(select(Backup)):
            b.created_at = LATE_ON_THE_FIRST.replace(hour=0, minute=1)
        for j in s.scalars(select(Job).where(Job.kind.startswith("backup"))):
            s.delete(j)
    assert schedule_due(db, LATE_ON_THE_FIRST) == 5  # the 3 backups again, and 2 drills
    run_pending_jobs(world.services, database_url)
    with db() as s:
        drills = [e.details for e in s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == "backup.drill_passed"))]
        tenant_rows = list(s.scalars(select(Backup).where(Backup.tenant_id.is_not(None))))
    assert len(drills) == 2
    assert sum(1 for b in tenant_rows if b.drill_ok) == 2
    # before its slot of the day, nothing is due for a tenant; the control plane waits for
    # 00:30 UTC
    with db() as s, s.begin():
        for j in s.scalars(select(Job).where(Job.kind.startswith("backup"))):
            s.delete(j)
    assert schedule_due(db, LATE_ON_THE_FIRST.replace(day=2, hour=0, minute=0, second=0)) == 0


def test_a_killed_backup_publishes_nothing_and_the_next_run_publishes_once(
        world, database_url, redis_url, settings, pg_server_url):
    # enough data that the dump takes a moment
    with world.services.session_factory() as s:
        tenant = s.get(Tenant, world.tenant_id)
        owner_url = world.services.tenant_connections.owner_url(tenant)
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE filler AS SELECT g, md5(g::text) AS h, repeat(md5(g::text), "
                     "8) AS pad FROM generate_series(1, 400000) g")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update({"MAGISTRATE_DATABASE_URL": database_url, "MAGISTRATE_REDIS_URL": redis_url,
                "MAGISTRATE_SECRET_KEY": TEST_SECRET_KEY, "MAGISTRATE_HOME": str(settings.home),
                "MAGISTRATE_ENV": "test"})
    folder = world.folder / f"tenant-{world.tenant_id}"
    process = subprocess.Popen([sys.executable, "-m", "control_plane", "backup", "tenant",
                                "acme"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        partial = []
        while time.monotonic() < deadline and not partial:
            partial = [p for p in folder.glob(".partial-*") if p.stat().st_size > 0] \
                if folder.is_dir() else []
            time.sleep(0.005)
        assert partial, "the backup never started writing"
    finally:  # on every path: the CLI and its pg_dump, never left running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(60)
    assert not list(folder.glob("*.mgbk")) and not list(folder.glob("*.manifest.json"))
    with world.services.session_factory() as s:
        assert s.scalars(select(Backup)).all() == []
    # the scheduled job runs (again): one backup published, complete and restorable
    assert schedule_due(world.services.session_factory, LATE_ON_THE_FIRST) == 3
    run_pending_jobs(world.services, database_url)
    published = list(folder.glob("*.mgbk"))
    assert len(published) == 1 and len(list(folder.glob("*.manifest.json"))) == 1
    with world.services.session_factory() as s:
        row = s.scalars(select(Backup).where(Backup.tenant_id == world.tenant_id)).one()
    from control_plane.backups.restore import restore_tenant
    from tests.control_plane.backups.conftest import ACTOR

    restored = restore_tenant(world.services.session_factory, world.services.tenant_connections,
                              world.destination, "acme", row.id, actor=ACTOR)
    assert restored.rows >= 400_000
