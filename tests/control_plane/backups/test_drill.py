"""Every drill failure is recorded, whatever its cause, and a month's drill is not skipped
because that month's first backup failed: it drills the latest good backup."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from control_plane.backups.events import BackupEvents
from control_plane.backups.restore import drill_tenant
from control_plane.backups.schedule import schedule_due
from control_plane.backups.service import backup_tenant
from control_plane.jobs import JobKinds
from control_plane.models import Backup, Job, PlatformAuditEvent
from tests.control_plane.backups.conftest import ACTOR
from tests.control_plane.tenancy.helpers import run_pending_jobs

LATE_ON_THE_FIRST = datetime(2031, 3, 1, 23, 59, 59, tzinfo=UTC)


def _drill_events(world) -> list[tuple[str, dict]]:
    with world.services.session_factory() as s:
        return [(e.event_type, e.details) for e in s.scalars(
            select(PlatformAuditEvent).where(PlatformAuditEvent.event_type.startswith(
                "backup.drill")).order_by(PlatformAuditEvent.seq))]


def test_a_drill_that_fails_outside_the_backup_checks_is_recorded(world, tmp_path):
    done = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR)
    # the recorded destination is now a file, not a folder: reading it is an OSError, not
    # a backup refusal
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")
    with world.services.session_factory() as s, s.begin():
        s.get(Backup, done.backup_id).destination = str(blocked)
    result = drill_tenant(world.services.session_factory, world.services.tenant_connections,
                          world.opener, world.tenant_id, actor=ACTOR)
    assert not result.ok
    assert result.reason.startswith(f"The drill could not restore backup {done.backup_id} "
                                    "(NotADirectoryError: ")
    assert result.reason.endswith(").")
    [(kind, details)] = _drill_events(world)
    assert kind == BackupEvents.DRILL_FAILED and details["reason"] == result.reason
    assert details["backup_id"] == done.backup_id and details["ok"] is False
    with world.services.session_factory() as s:
        row = s.get(Backup, done.backup_id)
        assert row.drill_ok is False and row.drill_detail == result.reason


def test_the_monthly_drill_runs_on_the_latest_good_backup_when_the_1sts_fails(
        world, database_url):
    db = world.services.session_factory
    good = backup_tenant(db, world.services.tenant_connections, world.destination,
                         world.tenant_id, actor=ACTOR)
    with db() as s, s.begin():
        s.get(Backup, good.backup_id).created_at = datetime(2031, 2, 27, 3, 0, tzinfo=UTC)
    assert schedule_due(db, LATE_ON_THE_FIRST) == 3  # two tenant backups, the control plane
    # acme's backup of the 1st fails; globex's and the control plane's have not run yet
    with db() as s, s.begin():
        for job in s.scalars(select(Job).where(Job.kind.startswith("backup"))):
            if job.tenant_id == world.tenant_id:
                job.state, job.last_error = "failed", "Tenant key unavailable (test)"
            else:
                s.delete(job)
    assert schedule_due(db, LATE_ON_THE_FIRST) == 3  # globex and control again, acme's drill
    assert schedule_due(db, LATE_ON_THE_FIRST) == 0  # once a month
    with db() as s, s.begin():
        drills = list(s.scalars(select(Job).where(Job.kind == JobKinds.BACKUP_DRILL)))
        assert [j.tenant_id for j in drills] == [world.tenant_id]
        for job in s.scalars(select(Job).where(Job.kind.in_((JobKinds.BACKUP_TENANT,
                                                             JobKinds.BACKUP_CONTROL)))):
            s.delete(job)  # only the drill is run here
    run_pending_jobs(world.services, database_url)
    [(kind, details)] = _drill_events(world)
    assert kind == BackupEvents.DRILL_PASSED and details["backup_id"] == good.backup_id
    assert details["ok"] is True
