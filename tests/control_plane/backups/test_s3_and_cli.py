"""An S3-compatible destination (moto's server, through boto3) with object lock, and the
``magistrate backup`` / ``restore`` / ``drill`` commands as processes."""

from __future__ import annotations

import os
import subprocess
import sys

import boto3
import pytest
from sqlalchemy import select

from control_plane.backups.destinations import destination_for
from control_plane.backups.exceptions import BackupUnreadable
from control_plane.backups.restore import restore_tenant
from control_plane.backups.retention import prune
from control_plane.backups.service import backup_tenant
from control_plane.models import Backup, PlatformAuditEvent
from tests.conftest import TEST_SECRET_KEY, drop_database
from tests.control_plane.backups.conftest import ACTOR


def test_s3_destination_with_object_lock(world, s3, settings):
    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
    client.create_bucket(Bucket="backups", ObjectLockEnabledForBucket=True)
    destination = destination_for("s3://backups/magistrate", home=settings.home,
                                  endpoint_url=s3, region="us-east-1",
                                  object_lock=("GOVERNANCE", 7))
    done = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         destination, world.tenant_id, actor=ACTOR)
    key = f"magistrate/tenant-{world.tenant_id}/{done.backup_id}"
    head = client.head_object(Bucket="backups", Key=key + ".mgbk")
    assert head["ContentLength"] == done.size and head["ObjectLockMode"] == "GOVERNANCE"
    assert client.head_object(Bucket="backups", Key=key + ".manifest.json")[
        "ObjectLockMode"] == "GOVERNANCE"
    assert not list((settings.home / "backup-staging").iterdir())  # no staging file left
    restored = restore_tenant(world.services.session_factory,
                              world.services.tenant_connections, destination, "acme",
                              done.backup_id, actor=ACTOR)
    assert restored.rows > 0
    # retention cannot delete a locked backup: it stays, recorded, for the next pruning
    second = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                           destination, world.tenant_id, actor=ACTOR)
    pruned = prune(world.services.session_factory, lambda where: destination, world.tenant_id,
                   actor=ACTOR, daily=1, monthly=0)
    assert pruned == []
    with world.services.session_factory() as s:
        kept = {b.id for b in s.scalars(select(Backup))}
    assert {done.backup_id, second.backup_id} <= kept
    # an object replaced in the bucket is refused before decryption
    client.put_object(Bucket="backups", Key=key + ".mgbk", Body=b"MGBK0001" + b"\0" * 64)
    with pytest.raises(BackupUnreadable, match="does not match its manifest"):
        restore_tenant(world.services.session_factory, world.services.tenant_connections,
                       destination, "acme", done.backup_id, actor=ACTOR)


def test_tenant_deletion_deletes_its_backup_objects_from_s3(world, s3, settings):
    from control_plane.models import Tenant, TenantTombstone
    from control_plane.tenancy.deletion import delete_tenant

    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
    client.create_bucket(Bucket="plain")
    client.put_bucket_versioning(Bucket="plain",
                                 VersioningConfiguration={"Status": "Enabled"})

    def opener(where: str):
        return destination_for(where, home=settings.home, endpoint_url=s3,
                               region="us-east-1", object_lock=None)

    destination = opener("s3://plain/mg")
    backup_tenant(world.services.session_factory, world.services.tenant_connections,
                  destination, world.tenant_id, actor=ACTOR)
    kept = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         destination, world.other_id, actor=ACTOR)
    prefix = f"mg/tenant-{world.tenant_id}/"
    assert len(client.list_objects_v2(Bucket="plain", Prefix=prefix)["Contents"]) == 2
    with world.services.session_factory() as s, s.begin():
        tenant = s.get(Tenant, world.tenant_id)
        tenant.state = "deleted"
        s.add(TenantTombstone(tenant_id=tenant.id, slug=tenant.slug, reason="test"))
    delete_tenant(world.services.session_factory, world.tenant_id,
                  sealer=world.services.sealer, progress=lambda *a: None,
                  backup_destination=opener)
    # every version of object and manifest is gone; the other tenant's backup is untouched
    versions = client.list_object_versions(Bucket="plain", Prefix=prefix)
    assert versions.get("Versions", []) == [] and versions.get("DeleteMarkers", []) == []
    other = client.list_objects_v2(Bucket="plain", Prefix=f"mg/tenant-{world.other_id}/")
    assert {o["Key"] for o in other["Contents"]} == {
        f"mg/tenant-{world.other_id}/{kept.backup_id}.mgbk",
        f"mg/tenant-{world.other_id}/{kept.backup_id}.manifest.json"}


def _decide(world, request_id: str) -> None:
    from control_plane.models import Tenant
    from tenant_runtime.approvals import service as approvals
    from tenant_runtime.context import Actor

    with world.services.session_factory() as s:
        approver = world.services.tenant_connections.context(
            s, s.get(Tenant, world.tenant_id), Actor("user", "2", "approver@example.com",
                                                     "Approver"))
    with approver.session() as s, s.begin():
        approvals.decide(s, approver, request_id, True, None)


def _drop_control_restores(database_url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    server = url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False)
    with psycopg.connect(server, autocommit=True) as conn:
        for (made,) in conn.execute("SELECT datname FROM pg_database WHERE starts_with("
                                    "datname, %s)", (f"{url.database}_r",)).fetchall():
            drop_database(conn, made)


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "control_plane", *args], env=full,
                          capture_output=True, text=True, timeout=300)


def test_backup_restore_and_drill_commands(world, database_url, redis_url, settings):
    env = {"MAGISTRATE_DATABASE_URL": database_url, "MAGISTRATE_REDIS_URL": redis_url,
           "MAGISTRATE_SECRET_KEY": TEST_SECRET_KEY, "MAGISTRATE_HOME": str(settings.home),
           "MAGISTRATE_ENV": "test"}
    made = run("backup", "tenant", "--all", env=env)
    assert made.returncode == 0, made.stderr
    assert "of tenant acme" in made.stdout and "of tenant globex" in made.stdout
    control = run("backup", "control", env=env)
    assert control.returncode == 0, control.stderr
    assert "of the control plane" in control.stdout and "local:platform-backups" in control.stdout
    assert (settings.home / "keys" / "platform-backups.key").exists()
    with world.services.session_factory() as s:
        backup_id = s.scalars(select(Backup.id).where(Backup.tenant_id == world.tenant_id)).one()
        control_row = s.scalars(select(Backup).where(Backup.tenant_id.is_(None))).one()
    assert (settings.home / "backups" / "control" / f"{control_row.id}.manifest.json").exists()
    listed = run("backup", "list", "--tenant", "acme", env=env)
    assert backup_id in listed.stdout and "never drilled" in listed.stdout
    unknown = run("restore", "tenant", "acme", "--backup", "nope", env=env)
    assert unknown.returncode == 1 and "has no backup with the id 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    restored = run("restore", "tenant", "acme", "--backup", backup_id, env=env)
    assert restored.returncode == 0, restored.stderr
    assert f"into the new database magistrate_t_{world.tenant_id}_r" in restored.stdout
    drilled = run("drill", env=env)
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    assert drilled.stdout.count("drill passed") == 2
    # over the live database: the first run opens the tenant.restore request (exit 4)
    asked = run("restore", "tenant", "acme", "--backup", backup_id, "--replace", env=env)
    assert asked.returncode == 4, asked.stderr
    assert "tenant.restore always needs an approval" in asked.stdout
    request_id = asked.stdout.split("approval request ")[1].split(" was opened")[0]
    _decide(world, request_id)
    unconfirmed = run("restore", "tenant", "acme", "--backup", backup_id, "--replace",
                      "--approval", request_id, env=env)
    assert unconfirmed.returncode == 1 and "not confirmed" in unconfirmed.stderr
    swapped = run("restore", "tenant", "acme", "--backup", backup_id, "--replace",
                  "--approval", request_id, "--yes", env=env)
    assert swapped.returncode == 0, swapped.stderr
    assert f"approval request {request_id} used" in swapped.stdout
    assert "retained, closed, as magistrate_t_" in swapped.stdout
    control_restored = run("restore", "control", "--backup", control_row.id, env=env)
    assert control_restored.returncode == 0, control_restored.stderr
    assert "To switch, stop Magistrate and set MAGISTRATE_DATABASE_URL=" in \
        control_restored.stdout
    _drop_control_restores(database_url)
    neither = run("backup", "tenant", env=env)
    assert neither.returncode == 1 and "name one tenant" in neither.stderr
    with world.services.session_factory() as s:
        kinds = [e.event_type for e in s.scalars(select(PlatformAuditEvent))]
    assert kinds.count("backup.created") == 3 and kinds.count("backup.drill_passed") == 2
