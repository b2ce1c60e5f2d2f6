"""Backup -> change data -> restore into a new database: identical rows, a verifying chain,
and every refusal a damaged or unreadable backup must meet."""

from __future__ import annotations

import json
import os
import stat

import psycopg
import pytest
from sqlalchemy import select

from control_plane.backups.events import BackupEvents
from control_plane.backups.exceptions import (
    BackupKeyUnavailable,
    BackupRefused,
    BackupUnreadable,
)
from control_plane.backups.restore import drill_tenant, restore_tenant
from control_plane.backups.service import backup_tenant
from control_plane.models import Backup, PlatformAuditEvent, Tenant
from tests.conftest import with_database
from tests.control_plane.backups.conftest import ACTOR, add_events, audit_rows


def _backup(world):
    return backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR)


def _restore(world, backup_id, slug="acme"):
    return restore_tenant(world.services.session_factory, world.services.tenant_connections,
                          world.destination, slug, backup_id, actor=ACTOR)


def _paths(world, backup_id):
    folder = world.folder / f"tenant-{world.tenant_id}"
    return folder / f"{backup_id}.mgbk", folder / f"{backup_id}.manifest.json"


def test_round_trip_restores_identical_rows_into_a_new_database(world, pg_server_url):
    before = audit_rows(world.services, world.tenant_id)
    done = _backup(world)
    obj, man = _paths(world, done.backup_id)
    assert stat.S_IMODE(os.stat(world.folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(obj).st_mode) == 0o600
    # the object is ciphertext: no table name of the dump is readable in it
    assert b"audit_events" not in obj.read_bytes() and b"test.event" not in obj.read_bytes()
    document = json.loads(man.read_text())
    assert document["tenant_id"] == world.tenant_id
    assert document["audit_head"]["seq"] == before[-1][0] + 1  # the checkpoint key's event
    # a checkpoint signed just before the dump vouches for the head it records
    assert document["last_checkpoint"]["seq"] == document["audit_head"]["seq"]
    assert document["object"]["size"] == obj.stat().st_size
    assert "wrapped_key" in document["key"] and len(document["key"]["wrapped_key"]) > 40
    # the live tenant changes after the backup
    add_events(world.services, world.tenant_id, 3, "after.backup")
    restored = _restore(world, done.backup_id)
    assert restored.database.startswith(f"magistrate_t_{world.tenant_id}_r")
    url = with_database(pg_server_url, restored.database)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT seq, event_type, details, chain_hash FROM audit_events "
                            "ORDER BY seq").fetchall()
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = "
                             "'audit_events'").fetchone()[0]
        app_can_update = conn.execute(
            "SELECT has_table_privilege(%s, 'audit_events', 'UPDATE')",
            (f"magistrate_t_{world.tenant_id}_app",)).fetchone()[0]
    assert [r[:2] for r in rows[:len(before)]] == [r[:2] for r in before]
    assert [r[3] for r in rows[:len(before)]] == [r[3] for r in before]
    assert not any(r[1] == "after.backup" for r in rows)
    assert owner == f"magistrate_t_{world.tenant_id}_owner" and app_can_update is False
    # the live database still has its newer events
    assert any(r[1] == "after.backup" for r in audit_rows(world.services, world.tenant_id))
    with world.services.session_factory() as s:
        kinds = [e.event_type for e in s.scalars(select(PlatformAuditEvent))]
    assert BackupEvents.CREATED in kinds and BackupEvents.RESTORED in kinds


def test_revoked_key_makes_the_backup_unreadable(world, settings):
    done = _backup(world)
    kek = settings.home / "keys" / "test-kek.key"
    kek.rename(kek.with_suffix(".revoked"))
    world.services.tenant_connections.dek_cache.clear()
    with pytest.raises(BackupKeyUnavailable, match="Tenant key unavailable"):
        _restore(world, done.backup_id)
    with pytest.raises(BackupKeyUnavailable, match="(?i)no backup was made"):
        _backup(world)


def test_flipped_byte_is_refused_before_decrypting(world):
    done = _backup(world)
    obj, _ = _paths(world, done.backup_id)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))
    with pytest.raises(BackupUnreadable, match="does not match its manifest"):
        _restore(world, done.backup_id)


def test_truncated_object_is_refused(world):
    done = _backup(world)
    obj, _ = _paths(world, done.backup_id)
    obj.write_bytes(obj.read_bytes()[:-100])
    with pytest.raises(BackupUnreadable, match="does not match its manifest"):
        _restore(world, done.backup_id)


def test_swapped_manifest_is_refused(world):
    first = _backup(world)
    add_events(world.services, world.tenant_id, 1)
    second = _backup(world)
    _, man1 = _paths(world, first.backup_id)
    _, man2 = _paths(world, second.backup_id)
    man1.write_bytes(man2.read_bytes())
    with pytest.raises(BackupUnreadable, match="swapped manifest"):
        _restore(world, first.backup_id)


def test_edited_manifest_fails_its_signature(world):
    done = _backup(world)
    _, man = _paths(world, done.backup_id)
    document = json.loads(man.read_text())
    document["audit_head"]["seq"] += 1
    man.write_text(json.dumps(document))
    with pytest.raises(BackupUnreadable, match="does not match its signature"):
        _restore(world, done.backup_id)


def test_another_tenants_backup_id_is_not_found(world):
    other = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                          world.destination, world.other_id, actor=ACTOR)
    with pytest.raises(BackupRefused, match="has no backup with the id"):
        _restore(world, other.backup_id)


def test_drill_passes_on_a_healthy_backup_and_fails_on_a_corrupted_one(world, pg_server_url):
    done = _backup(world)
    healthy = drill_tenant(world.services.session_factory, world.services.tenant_connections,
                           world.opener, world.tenant_id, actor=ACTOR)
    assert healthy.ok and healthy.backup_id == done.backup_id, healthy.reason
    obj, _ = _paths(world, done.backup_id)
    data = bytearray(obj.read_bytes())
    data[-5] ^= 0xFF
    obj.write_bytes(bytes(data))
    broken = drill_tenant(world.services.session_factory, world.services.tenant_connections,
                          world.opener, world.tenant_id, actor=ACTOR)
    assert not broken.ok and "does not match its manifest" in broken.reason
    missing = drill_tenant(world.services.session_factory, world.services.tenant_connections,
                           world.opener, world.other_id, actor=ACTOR)
    assert not missing.ok and missing.reason == "the tenant has no backup"
    with world.services.session_factory() as s:
        row = s.get(Backup, done.backup_id)
        assert row.drill_ok is False and "does not match" in row.drill_detail
        events = [(e.event_type, e.details) for e in s.scalars(
            select(PlatformAuditEvent).order_by(PlatformAuditEvent.seq))]
    drills = [e for e in events if e[0].startswith("backup.drill")]
    assert [e[0] for e in drills] == [BackupEvents.DRILL_PASSED, BackupEvents.DRILL_FAILED,
                                      BackupEvents.DRILL_FAILED]
    assert drills[0][1]["backup_age_minutes"] == 0 and drills[0][1]["ok"] is True
    # no throwaway database is left behind
    with psycopg.connect(pg_server_url) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (f"magistrate_t_{world.tenant_id}_d%",)).fetchall()
    assert left == []


def test_deleted_tenant_backups_are_destroyed_with_it(world, database_url):
    from control_plane.models import TenantTombstone
    from control_plane.tenancy.deletion import delete_tenant

    done = _backup(world)
    with world.services.session_factory() as s, s.begin():
        tenant = s.get(Tenant, world.tenant_id)
        tenant.state = "deleted"
        s.add(TenantTombstone(tenant_id=tenant.id, slug=tenant.slug, reason="test"))
    obj, man = _paths(world, done.backup_id)
    assert obj.exists() and man.exists()
    delete_tenant(world.services.session_factory, world.tenant_id,
                  sealer=world.services.sealer, progress=lambda *a: None,
                  backup_destination=world.opener)
    with world.services.session_factory() as s:
        assert s.get(Backup, done.backup_id) is None  # the wrapped key: crypto-shredded
        deleted = s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == "tenant.deleted")).one()
    assert not obj.exists() and not man.exists()  # and the objects themselves are gone
    assert deleted.details["backups_destroyed"] == 1
    assert deleted.details["backup_objects_deleted"] == 1
    with pytest.raises(BackupRefused, match="was deleted at its owner's request; its backups "
                                            "were destroyed with it"):
        _restore(world, done.backup_id)
