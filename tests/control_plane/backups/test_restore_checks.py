"""The checks a restore runs on the restored database refuse, each on its own: a chain that
does not verify, a head or last checkpoint that is not the manifest's, row counts that differ,
a sealed value that does not open. Each backup here is made by the code; a manifest is edited
and signed again with the test tenant's own checkpoint key (so its signature and the object's
digest still pass and only the check under test fails), or the data is changed before the
backup. Every refusal drops the new database."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import select

from control_plane.backups import manifest
from control_plane.backups.exceptions import RestoreCheckFailed
from control_plane.backups.restore import restore_tenant
from control_plane.backups.service import backup_tenant
from control_plane.models import Tenant
from tenant_runtime.checkpoints import statement_signer
from tenant_runtime.context import Actor
from tenant_runtime.credentials.service import do_add_credential
from tenant_runtime.models import CheckpointKey
from tests.conftest import drop_database, with_database
from tests.control_plane.backups.conftest import ACTOR, add_events


def _ctx(world):
    with world.services.session_factory() as s:
        return world.services.tenant_connections.context(
            s, s.get(Tenant, world.tenant_id), Actor("system", None, "test"))


def _backup(world):
    return backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR)


def _resign(world, backup_id: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit the manifest of ``backup_id`` and sign it again with the tenant's checkpoint key."""
    path = world.folder / f"tenant-{world.tenant_id}" / f"{backup_id}.manifest.json"
    document = json.loads(path.read_text())
    edit(document)
    ctx = _ctx(world)
    with ctx.session() as ts:
        signer = statement_signer(ts, ctx, datetime.now(UTC))
        public = {k.key_id: k.public_key for k in ts.scalars(select(CheckpointKey))}
    assert signer is not None
    path.write_bytes(manifest.sign(document, key_id=signer.key_id,
                                   public_key=public[signer.key_id], signer=signer.sign))


def _refused(world, pg_server_url, backup_id: str, match: str) -> None:
    with pytest.raises(RestoreCheckFailed, match=match) as got:
        restore_tenant(world.services.session_factory, world.services.tenant_connections,
                       world.destination, "acme", backup_id, actor=ACTOR)
    assert "The new database was dropped." in got.value.message
    with psycopg.connect(pg_server_url) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                            (f"magistrate_t_{world.tenant_id}_r",)).fetchall()
    assert left == []


def _superuser(pg_server_url, world, statement: str) -> None:
    """Change the live tenant database as the server's superuser, triggers off (what an
    intruder on the database server could do), before the backup is made."""
    url = with_database(pg_server_url, f"magistrate_t_{world.tenant_id}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        assert conn.execute(statement).rowcount == 1


def test_a_head_the_restore_does_not_end_at_is_refused(world, pg_server_url):
    done = _backup(world)

    def earlier_head(document: dict[str, Any]) -> None:
        document["audit_head"]["seq"] -= 1

    _resign(world, done.backup_id, earlier_head)
    _refused(world, pg_server_url, done.backup_id, r"The restored audit chain ends at seq \d+, "
                                                   r"the manifest says \d+")


def test_a_last_checkpoint_that_is_not_the_manifests_is_refused(world, pg_server_url):
    done = _backup(world)

    def other_checkpoint(document: dict[str, Any]) -> None:
        document["last_checkpoint"]["signature"] = document["last_checkpoint"]["signature"][::-1]

    _resign(world, done.backup_id, other_checkpoint)
    _refused(world, pg_server_url, done.backup_id,
             "The restored last checkpoint is not the manifest's")


def test_row_counts_that_differ_from_the_manifest_are_refused(world, pg_server_url):
    done = _backup(world)

    def one_more_row(document: dict[str, Any]) -> None:
        document["row_counts"]["gateway_routes"] = document["row_counts"].get(
            "gateway_routes", 0) + 1

    _resign(world, done.backup_id, one_more_row)
    _refused(world, pg_server_url, done.backup_id,
             "Row counts differ from the manifest in gateway_routes")


def test_a_restored_chain_that_does_not_verify_is_refused(world, pg_server_url):
    add_events(world.services, world.tenant_id, 2, "to.be.altered")
    _superuser(pg_server_url, world, "UPDATE audit_events SET details = '{\"i\": 99}' "
                                     "WHERE seq = (SELECT min(seq) FROM audit_events "
                                     "WHERE event_type = 'to.be.altered')")
    done = _backup(world)  # head, checkpoint and counts are the dump's own: they agree
    _refused(world, pg_server_url, done.backup_id, "The restored audit chain does not verify")


def test_a_sealed_value_that_does_not_open_is_refused(world, pg_server_url):
    ctx = _ctx(world)
    with ctx.session() as s, s.begin():
        do_add_credential(s, ctx, name="openai", provider="openai",
                          secret="sk-test-0123456789", contact_email=None)
    # a restore of the intact data opens a value of every sealed column, the credential too
    intact = _backup(world)
    restored = restore_tenant(world.services.session_factory,
                              world.services.tenant_connections, world.destination, "acme",
                              intact.backup_id, actor=ACTOR)
    assert restored.rows > 0
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        drop_database(conn, restored.database)
    # one flipped bit in the credential's sealed secret (its authentication tag)
    _superuser(pg_server_url, world, "UPDATE provider_credentials SET secret_sealed = "
                                     "overlay(secret_sealed placing decode(lpad(to_hex("
                                     "get_byte(secret_sealed, length(secret_sealed) - 1) # 1)"
                                     ", 2, '0'), 'hex') from length(secret_sealed))")
    done = _backup(world)
    _refused(world, pg_server_url, done.backup_id,
             r"A sealed value of the restored database does not open with the tenant's data "
             r"key \(provider_credentials.secret_sealed, row \d+")
