"""What killed backups leave (staging files, objects without a manifest, unfinished S3
multipart uploads) is swept before the next backup to that scope, once older than a day, so a
backup another worker is writing now is left alone."""

from __future__ import annotations

import os
import time

import boto3
from sqlalchemy import select

from control_plane.backups.destinations import STALE_SECONDS, destination_for
from control_plane.backups.events import BackupEvents
from control_plane.backups.service import backup_tenant
from control_plane.models import PlatformAuditEvent
from tests.control_plane.backups.conftest import ACTOR


def _aged(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_backup_sweeps_leftovers_older_than_a_day_from_its_folder(world):
    first = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                          world.destination, world.tenant_id, actor=ACTOR)
    folder = world.folder / f"tenant-{world.tenant_id}"
    published = [folder / f"{first.backup_id}.mgbk", folder / f"{first.backup_id}.manifest.json"]
    old_partial = folder / ".partial-20261101T000000Z-aaaaaa"
    old_orphan = folder / "20261101T000000Z-bbbbbb.mgbk"  # a manifest was never published
    in_flight = folder / ".partial-20261207T000000Z-cccccc"  # another worker's, just begun
    other_scope = world.folder / f"tenant-{world.other_id}"
    other_scope.mkdir(mode=0o700)
    other_partial = other_scope / ".partial-20261101T000000Z-dddddd"
    for path in (old_partial, old_orphan, in_flight, other_partial):
        path.write_bytes(b"ciphertext")
    for path in (old_partial, old_orphan, other_partial, *published):
        _aged(path, STALE_SECONDS + 3600)
    _aged(in_flight, STALE_SECONDS - 3600)

    done = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR)
    assert not old_partial.exists() and not old_orphan.exists()
    assert in_flight.exists() and other_partial.exists()  # too young; another scope
    assert all(p.exists() for p in published)  # a published backup is not a leftover
    with world.services.session_factory() as s:
        created = {e.details["backup_id"]: e.details for e in s.scalars(select(
            PlatformAuditEvent).where(PlatformAuditEvent.event_type == BackupEvents.CREATED))}
    assert created[first.backup_id]["unpublished_swept"] == 0
    assert created[done.backup_id]["unpublished_swept"] == 2


def test_s3_objects_without_manifests_and_stale_multipart_uploads_are_swept(world, s3,
                                                                             settings):
    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
    client.create_bucket(Bucket="sweep")
    destination = destination_for("s3://sweep/mg", home=settings.home, endpoint_url=s3,
                                  region="us-east-1", object_lock=None)
    done = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         destination, world.tenant_id, actor=ACTOR)
    scope, other = f"tenant-{world.tenant_id}", f"tenant-{world.other_id}"
    orphan = f"mg/{scope}/20261101T000000Z-bbbbbb.mgbk"
    client.put_object(Bucket="sweep", Key=orphan, Body=b"ciphertext")
    client.put_object(Bucket="sweep", Key=f"mg/{other}/20261101T000000Z-eeeeee.mgbk",
                      Body=b"ciphertext")
    upload = client.create_multipart_upload(Bucket="sweep",
                                            Key=f"mg/{scope}/20261101T000000Z-ffffff.mgbk")
    # the orphan object is younger than a day (an upload in flight elsewhere): left alone;
    # moto lists every multipart upload as initiated on 2010-11-10, so that one is stale
    assert destination.sweep_unpublished(scope) == 1
    assert client.list_multipart_uploads(Bucket="sweep").get("Uploads", []) == []
    assert orphan in {o["Key"] for o in client.list_objects_v2(Bucket="sweep")["Contents"]}
    time.sleep(1.1)  # S3 times are whole seconds: the orphan becomes older than the cutoff
    assert destination.sweep_unpublished(scope, older_than=1) == 1
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="sweep")["Contents"]}
    assert keys == {f"mg/{scope}/{done.backup_id}.mgbk",
                    f"mg/{scope}/{done.backup_id}.manifest.json",
                    f"mg/{other}/20261101T000000Z-eeeeee.mgbk"}
    assert upload["UploadId"]
