"""The manifest's ``schema_version`` is checked at restore: a backup of an older tenant schema
is restored and then upgraded by the tenant migrations (before any swap or copy), one of a
revision this code does not know (made by a newer version) is refused before decrypting."""

from __future__ import annotations

import psycopg
import pytest
from alembic import command
from alembic.config import Config

from control_plane.backups.exceptions import BackupRefused
from control_plane.backups.restore import restore_tenant
from control_plane.backups.service import backup_tenant
from control_plane.migrations import ALEMBIC_ROOT, head_revision
from control_plane.models import Tenant
from tests.conftest import with_database
from tests.control_plane.backups.conftest import ACTOR
from tests.control_plane.backups.test_restore_checks import _resign


def _restore(world, backup_id: str):
    return restore_tenant(world.services.session_factory, world.services.tenant_connections,
                          world.destination, "acme", backup_id, actor=ACTOR)


def _restores(pg_server_url, world) -> list[str]:
    with psycopg.connect(pg_server_url) as conn:
        return [n for (n,) in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
            (f"magistrate_t_{world.tenant_id}_r",))]


def test_a_backup_of_an_unknown_newer_schema_is_refused(world, pg_server_url):
    done = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR)

    def newer(document):
        document["schema_version"] = "t9999_from_the_future"

    _resign(world, done.backup_id, newer)
    with pytest.raises(BackupRefused, match="made at tenant schema revision "
                                            "'t9999_from_the_future', which this version of "
                                            "Magistrate does not know"):
        _restore(world, done.backup_id)
    assert _restores(pg_server_url, world) == []


def test_a_backup_of_an_older_schema_is_upgraded_after_its_checks(world, pg_server_url):
    head = head_revision("tenant")
    with world.services.session_factory() as s:
        owner_url = world.services.tenant_connections.owner_url(s.get(Tenant, world.tenant_id))
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_ROOT / "tenant"))
    config.attributes["database_url"] = owner_url
    command.downgrade(config, "-1")  # the live tenant one migration behind, then backed up
    live = with_database(pg_server_url, f"magistrate_t_{world.tenant_id}")
    with psycopg.connect(live) as conn:
        older = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert older != head
    done = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR)
    restored = _restore(world, done.backup_id)
    assert restored.upgraded_from == older
    with psycopg.connect(with_database(pg_server_url, restored.database)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == head
        # what the upgrade made belongs to the tenant's owner, as everything else
        owners = {o for (o,) in conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")}
    assert owners == {f"magistrate_t_{world.tenant_id}_owner"}
