"""A tenant whose live database is lost is restored: the manifest is verified against the
public checkpoint keys the control plane recorded with the tenant's backups, not against the
database that is gone. ``--replace`` of a lost database restores into its name (nothing live
to overwrite, no chain to hold an approval); ``--as`` makes a copy as usual."""

from __future__ import annotations

import base64
import json

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from control_plane.backups import manifest
from control_plane.backups.events import BackupEvents
from control_plane.backups.exceptions import BackupRefused, BackupUnreadable
from control_plane.backups.replace import live_database_missing, replace_tenant
from control_plane.backups.restore import restore_tenant
from control_plane.backups.restore_as import restore_as
from control_plane.backups.service import backup_tenant
from control_plane.models import BackupSigningKey, Membership, PlatformAuditEvent, Tenant
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.context import Actor
from tests.conftest import drop_database, with_database
from tests.control_plane.backups.conftest import ACTOR, add_events, audit_rows


def _backup(world):
    return backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR)


def _lose_database(world, pg_server_url) -> None:
    world.services.tenant_connections.forget(world.tenant_id)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        drop_database(conn, f"magistrate_t_{world.tenant_id}")


def _public_keys(world) -> dict[str, str]:
    with world.services.session_factory() as s:
        return {k.key_id: k.public_key for k in s.scalars(select(BackupSigningKey).where(
            BackupSigningKey.tenant_id == world.tenant_id))}


def test_the_control_plane_records_the_keys_that_sign_the_manifests(world):
    done = _backup(world)
    document = json.loads((world.folder / f"tenant-{world.tenant_id}" /
                           f"{done.backup_id}.manifest.json").read_text())
    recorded = _public_keys(world)
    signature = document["signature"]
    assert recorded[signature["key_id"]] == signature["public_key"]
    # the other tenant's keys are its own
    with world.services.session_factory() as s:
        assert s.scalars(select(BackupSigningKey).where(
            BackupSigningKey.tenant_id == world.other_id)).first() is None


def test_a_dropped_tenant_database_is_restored_plainly_and_as_a_copy(world, pg_server_url):
    done = _backup(world)
    at_backup = audit_rows(world.services, world.tenant_id)
    _lose_database(world, pg_server_url)
    restored = restore_tenant(world.services.session_factory,
                              world.services.tenant_connections, world.destination, "acme",
                              done.backup_id, actor=ACTOR)
    with psycopg.connect(with_database(pg_server_url, restored.database)) as conn:
        rows = conn.execute("SELECT seq, chain_hash FROM audit_events ORDER BY seq").fetchall()
    assert rows == [(r[0], r[3]) for r in at_backup]
    with world.services.session_factory() as s:
        owner = s.scalars(select(Membership.user_id).where(
            Membership.tenant_id == world.tenant_id, Membership.role == "Owner")).one()
    copy = restore_as(world.services.session_factory, world.services.tenant_connections,
                      world.destination, "acme", done.backup_id, new_slug="acme-again",
                      requested_by=owner)
    assert copy.database == f"magistrate_t_{copy.tenant_id}"
    assert audit_rows(world.services, copy.tenant_id)[len(at_backup)][1] == (
        "tenant.restored_from")


def test_replace_of_a_dropped_database_restores_into_its_name(world, pg_server_url):
    done = _backup(world)
    at_backup = audit_rows(world.services, world.tenant_id)
    add_events(world.services, world.tenant_id, 2, "lost.with.the.database")
    # while the database is there, replacing it needs an approval
    assert not live_database_missing(world.services.session_factory,
                                     world.services.tenant_connections, "acme", done.backup_id)
    with pytest.raises(BackupRefused, match="needs an approved tenant.restore request"):
        replace_tenant(world.services.session_factory, world.services.tenant_connections,
                       world.destination, "acme", done.backup_id, approval_id=None,
                       actor=ACTOR)
    _lose_database(world, pg_server_url)
    assert live_database_missing(world.services.session_factory,
                                 world.services.tenant_connections, "acme", done.backup_id)
    result = replace_tenant(world.services.session_factory, world.services.tenant_connections,
                            world.destination, "acme", done.backup_id, approval_id=None,
                            actor=ACTOR)
    assert result.retained is None and result.approval_id is None
    assert result.database == f"magistrate_t_{world.tenant_id}"
    rows = audit_rows(world.services, world.tenant_id)
    assert rows[:len(at_backup)] == at_backup
    assert rows[len(at_backup)][1] == BackupEvents.RESTORED_OVER
    assert rows[len(at_backup)][2]["live_database_missing"] is True
    assert not any(r[1] == "lost.with.the.database" for r in rows)
    with world.services.session_factory() as s:
        ctx = world.services.tenant_connections.context(
            s, s.get(Tenant, world.tenant_id), Actor("system", None, "test"))
        replaced = s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == BackupEvents.REPLACED)).one()
    with ctx.session() as ts:
        assert verify_tenant_chain(ts, world.tenant_id).ok
    assert replaced.details["live_database_missing"] is True
    # the tenant runs again: a new backup of the restored database is made and verifies
    again = _backup(world)
    assert again.audit_seq > len(at_backup)


def test_a_manifest_signed_by_a_key_the_control_plane_never_recorded_is_refused(
        world, pg_server_url):
    done = _backup(world)
    _lose_database(world, pg_server_url)
    path = world.folder / f"tenant-{world.tenant_id}" / f"{done.backup_id}.manifest.json"
    document = json.loads(path.read_text())
    forger = Ed25519PrivateKey.generate()
    public = base64.b64encode(forger.public_key().public_bytes_raw()).decode()
    # a self-consistent manifest naming its own key: the backup's word is not trusted
    path.write_bytes(manifest.sign(
        document, key_id="forged0000000000", public_key=public,
        signer=lambda data: base64.b64encode(forger.sign(data)).decode()))
    with pytest.raises(BackupUnreadable, match="not a checkpoint key of this chain"):
        restore_tenant(world.services.session_factory, world.services.tenant_connections,
                       world.destination, "acme", done.backup_id, actor=ACTOR)


def test_the_command_restores_a_dropped_database_with_replace(world, pg_server_url,
                                                              database_url, redis_url,
                                                              settings):
    from tests.conftest import TEST_SECRET_KEY
    from tests.control_plane.backups.test_s3_and_cli import run

    done = _backup(world)
    at_backup = audit_rows(world.services, world.tenant_id)
    _lose_database(world, pg_server_url)
    env = {"MAGISTRATE_DATABASE_URL": database_url, "MAGISTRATE_REDIS_URL": redis_url,
           "MAGISTRATE_SECRET_KEY": TEST_SECRET_KEY, "MAGISTRATE_HOME": str(settings.home),
           "MAGISTRATE_ENV": "test"}
    unconfirmed = run("restore", "tenant", "acme", "--backup", done.backup_id, "--replace",
                      env=env)
    assert unconfirmed.returncode == 1 and "not confirmed" in unconfirmed.stderr
    restored = run("restore", "tenant", "acme", "--backup", done.backup_id, "--replace",
                   "--yes", env=env)
    assert restored.returncode == 0, restored.stderr
    assert "the database of tenant acme was missing" in restored.stdout
    assert f"now runs as magistrate_t_{world.tenant_id}" in restored.stdout
    world.services.tenant_connections.forget(world.tenant_id)
    assert audit_rows(world.services, world.tenant_id)[:len(at_backup)] == at_backup
