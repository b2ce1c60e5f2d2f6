"""Retention really deletes: beyond what is kept, each backup's object, manifest and record
(with its wrapped key) go, and each pruning is audited; by ``prune()`` and by
``magistrate backup prune``."""

from __future__ import annotations

from sqlalchemy import select

from control_plane.backups.events import BackupEvents
from control_plane.backups.retention import prune
from control_plane.backups.service import backup_tenant
from control_plane.models import Backup, PlatformAuditEvent
from tests.conftest import TEST_SECRET_KEY
from tests.control_plane.backups.conftest import ACTOR
from tests.control_plane.backups.test_s3_and_cli import run


def _files(world, tenant_id: int, backup_id: str) -> list:
    folder = world.folder / f"tenant-{tenant_id}"
    return [folder / f"{backup_id}.mgbk", folder / f"{backup_id}.manifest.json"]


def _pruned_events(world) -> list[dict]:
    with world.services.session_factory() as s:
        return [e.details for e in s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == BackupEvents.PRUNED).order_by(
            PlatformAuditEvent.seq))]


def test_prune_deletes_objects_manifests_and_records_and_audits_it(world, database_url,
                                                                    redis_url, settings):
    made = [backup_tenant(world.services.session_factory, world.services.tenant_connections,
                          world.destination, world.tenant_id, actor=ACTOR).backup_id
            for _ in range(3)]
    other = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                          world.destination, world.other_id, actor=ACTOR).backup_id
    assert all(p.exists() for b in made for p in _files(world, world.tenant_id, b))

    pruned = prune(world.services.session_factory, world.opener, world.tenant_id,
                   actor=ACTOR, daily=2, monthly=0)
    assert pruned == [made[0]]  # the oldest
    assert not any(p.exists() for p in _files(world, world.tenant_id, made[0]))
    assert all(p.exists() for b in made[1:] for p in _files(world, world.tenant_id, b))
    with world.services.session_factory() as s:
        assert s.get(Backup, made[0]) is None  # its wrapped key went with it
    [event] = _pruned_events(world)
    assert event == {"backup_id": made[0], "destination": str(world.folder)}

    env = {"MAGISTRATE_DATABASE_URL": database_url, "MAGISTRATE_REDIS_URL": redis_url,
           "MAGISTRATE_SECRET_KEY": TEST_SECRET_KEY, "MAGISTRATE_HOME": str(settings.home),
           "MAGISTRATE_ENV": "test"}
    done = run("backup", "prune", "--daily", "1", "--monthly", "0", env=env)
    assert done.returncode == 0, done.stderr
    assert f"pruned {made[1]} ({world.tenant_id})" in done.stdout
    assert "1 backup(s) pruned" in done.stdout  # the other tenant's single backup is kept
    assert not any(p.exists() for p in _files(world, world.tenant_id, made[1]))
    assert all(p.exists() for p in _files(world, world.tenant_id, made[2]))
    assert all(p.exists() for p in _files(world, world.other_id, other))
    with world.services.session_factory() as s:
        left = set(s.scalars(select(Backup.id)))
    assert left == {made[2], other}
    assert [e["backup_id"] for e in _pruned_events(world)] == [made[0], made[1]]
