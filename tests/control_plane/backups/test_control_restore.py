"""The control-plane backup restored into a new database (platform chain, checkpoints and row
counts checked), under the platform backup key or age recipients (pyrage)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
from pyrage import x25519
from sqlalchemy import select
from sqlalchemy.engine import make_url

from control_plane.backups.control_restore import restore_control
from control_plane.backups.events import BackupEvents
from control_plane.backups.exceptions import BackupKeyUnavailable, BackupRefused, BackupUnreadable
from control_plane.backups.service import backup_control
from control_plane.models import Backup, PlatformAuditEvent, User
from tests.conftest import drop_database
from tests.control_plane.backups.conftest import ACTOR


@pytest.fixture
def control(world, database_url, pg_server_url) -> Iterator[str]:
    name = make_url(database_url).database
    yield database_url
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        for (made,) in conn.execute("SELECT datname FROM pg_database WHERE starts_with("
                                    "datname, %s)", (f"{name}_r",)).fetchall():
            drop_database(conn, made)


def _backup(world, url, **kw):
    return backup_control(world.services.session_factory, url, world.services.sealer,
                          world.services.tenant_connections.providers, world.destination,
                          key_provider="local", key_ref="platform-backups", actor=ACTOR, **kw)


def _restore(world, url, backup_id, **kw):
    return restore_control(world.services.session_factory, url,
                           world.services.tenant_connections.providers, world.destination,
                           backup_id, actor=ACTOR, **kw)


def _users(url: str) -> list[str]:
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain) as conn:
        return [str(r[0]) for r in conn.execute("SELECT email FROM users ORDER BY id")]


def test_control_backup_restores_into_a_new_database_and_refuses_damage(world, control):
    done = _backup(world, control)
    before = _users(control)
    with world.services.session_factory() as s, s.begin():
        s.add(User(email="after-backup@example.com", display_name="After", password_hash=""))
    result = _restore(world, control, done.backup_id)
    assert result.signature_checked_by == "the running control plane"
    assert result.database.startswith(make_url(control).database + "_r")
    assert result.url.endswith("/" + result.database)
    restored_url = control.rsplit("/", 1)[0] + "/" + result.database
    assert _users(restored_url) == before  # the row added after the backup is not there
    with world.services.session_factory() as s:
        kinds = [e.event_type for e in s.scalars(select(PlatformAuditEvent))]
    assert BackupEvents.CONTROL_RESTORED in kinds
    # a flipped byte in the object: refused before decrypting, no database made
    obj = world.folder / "control" / f"{done.backup_id}.mgbk"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 1
    obj.write_bytes(bytes(data))
    with pytest.raises(BackupUnreadable, match="does not match its manifest"):
        _restore(world, control, done.backup_id)
    with pytest.raises(BackupUnreadable, match="is missing at its destination"):
        _restore(world, control, "20260101T000000Z-000000")


def test_age_recipients_round_trip_and_the_identity_is_required(world, control, tmp_path):
    identity, stranger = x25519.Identity.generate(), x25519.Identity.generate()
    with pytest.raises(BackupRefused, match="is not an age X25519 recipient"):
        _backup(world, control, age_recipients=["age1nope"])
    done = _backup(world, control, age_recipients=[str(identity.to_public())])
    document = json.loads((world.folder / "control" / f"{done.backup_id}.manifest.json")
                          .read_text())
    assert document["key"]["provider"] == "age"
    assert document["key"]["recipients"] == [str(identity.to_public())]
    with world.services.session_factory() as s:
        assert s.get(Backup, done.backup_id).key_provider == "age"
    with pytest.raises(BackupKeyUnavailable, match="give --age-identity FILE"):
        _restore(world, control, done.backup_id)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(f"# someone else\n{stranger}\n")
    with pytest.raises(BackupKeyUnavailable, match="is one of this backup's age recipients"):
        _restore(world, control, done.backup_id, age_identity=wrong)
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("not a key\n")
    with pytest.raises(BackupKeyUnavailable, match="not an age X25519 identity"):
        _restore(world, control, done.backup_id, age_identity=garbage)
    right = tmp_path / "identity.txt"
    right.write_text(f"# created: now\n{stranger}\n{identity}\n")
    result = _restore(world, control, done.backup_id, age_identity=right)
    assert result.rows > 0 and result.audit_seq > 0
