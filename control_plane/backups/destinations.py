"""Where backups are published: a local folder (mode 0700) or an S3-compatible bucket.

A backup is two files under ``<scope>/`` (``tenant-<id>`` or ``control``): ``<id>.mgbk``, the
encrypted object, and ``<id>.manifest.json``, its signed manifest. Publishing is atomic and the
manifest comes last, so a backup killed at any moment has published nothing a restore would
use: the object is written to a staging file (``.partial-<id>`` in the folder, or a local
temporary file for S3) and renamed or uploaded only once complete, then the manifest. A
leftover staging file, an object without its manifest or (S3) an unfinished multipart upload,
older than a day, is swept by ``sweep_unpublished`` before each backup to that scope.

S3 objects get the object-lock retention of ``MAGISTRATE_BACKUP_OBJECT_LOCK`` when set."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from control_plane.backups.exceptions import BackupRefused, BackupUnreadable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from control_plane.settings import Settings

log = logging.getLogger("magistrate.backups")

OBJECT_SUFFIX = ".mgbk"
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_PREFIX = ".partial-"
STALE_SECONDS = 24 * 3600


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def scope_of(tenant_id: int | None) -> str:
    return "control" if tenant_id is None else f"tenant-{tenant_id}"


class Destination(Protocol):
    @property
    def uri(self) -> str: ...

    def staging(self, scope: str, backup_id: str) -> IO[bytes]:
        """A new file, mode 0600, to write the encrypted object into."""

    def publish(self, scope: str, backup_id: str, staged: IO[bytes], manifest: bytes) -> None:
        """Make the staged object and then its manifest visible; the staged file is gone."""

    def discard(self, staged: IO[bytes]) -> None:
        """Drop a staged object that will not be published."""

    def read_manifest(self, scope: str, backup_id: str) -> bytes: ...

    @contextlib.contextmanager
    def open_object(self, scope: str, backup_id: str) -> Iterator[IO[bytes]]: ...

    def delete(self, scope: str, backup_id: str) -> None: ...

    def sweep_unpublished(self, scope: str, *, older_than: float = STALE_SECONDS) -> int:
        """Delete what killed backups of ``scope`` left, older than ``older_than`` seconds (so
        a backup another worker is writing now is never swept): staging files, objects without
        their manifest, and (S3) unfinished multipart uploads. Returns how many went."""


def _missing(backup_id: str, what: str) -> BackupUnreadable:
    return BackupUnreadable(f"The {what} of backup {backup_id} is missing at its destination; "
                            "nothing was restored.")


@dataclass
class LocalFolder:
    root: Path

    @property
    def uri(self) -> str:
        return str(self.root)

    def _folder(self, scope: str) -> Path:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        folder = self.root / scope
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def staging(self, scope: str, backup_id: str) -> IO[bytes]:
        path = self._folder(scope) / f"{PARTIAL_PREFIX}{backup_id}"
        return open(path, "x+b", opener=_private_opener)  # noqa: SIM115 - publish/discard close

    def publish(self, scope: str, backup_id: str, staged: IO[bytes], manifest: bytes) -> None:
        folder = self._folder(scope)
        staged.flush()
        os.fsync(staged.fileno())
        staged.close()
        os.replace(staged.name, folder / f"{backup_id}{OBJECT_SUFFIX}")
        partial = folder / f"{PARTIAL_PREFIX}{backup_id}{MANIFEST_SUFFIX}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(manifest)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, folder / f"{backup_id}{MANIFEST_SUFFIX}")
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def discard(self, staged: IO[bytes]) -> None:
        staged.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged.name)

    def read_manifest(self, scope: str, backup_id: str) -> bytes:
        try:
            return (self.root / scope / f"{backup_id}{MANIFEST_SUFFIX}").read_bytes()
        except FileNotFoundError:
            raise _missing(backup_id, "manifest") from None

    @contextlib.contextmanager
    def open_object(self, scope: str, backup_id: str) -> Iterator[IO[bytes]]:
        try:
            fh = (self.root / scope / f"{backup_id}{OBJECT_SUFFIX}").open("rb")
        except FileNotFoundError:
            raise _missing(backup_id, "encrypted object") from None
        with fh:
            yield fh

    def delete(self, scope: str, backup_id: str) -> None:
        for suffix in (MANIFEST_SUFFIX, OBJECT_SUFFIX):
            try:
                (self.root / scope / f"{backup_id}{suffix}").unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise BackupRefused(f"Backup {backup_id} could not be deleted from "
                                    f"{self.uri} ({exc.strerror}).") from None

    def sweep_unpublished(self, scope: str, *, older_than: float = STALE_SECONDS) -> int:
        folder = self.root / scope
        if not folder.is_dir():
            return 0
        swept = 0
        cutoff = time.time() - older_than
        for path in folder.iterdir():
            stale = path.name.startswith(PARTIAL_PREFIX) and path.stat().st_mtime < cutoff
            orphan = path.name.endswith(OBJECT_SUFFIX) and not path.with_name(
                path.name[:-len(OBJECT_SUFFIX)] + MANIFEST_SUFFIX).exists() \
                and path.stat().st_mtime < cutoff
            if stale or orphan:
                path.unlink(missing_ok=True)
                swept += 1
        return swept


@dataclass
class S3Bucket:
    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str
    object_lock: tuple[str, int] | None
    staging_root: Path

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region)

    def _key(self, scope: str, name: str) -> str:
        return "/".join(p for p in (self.prefix.strip("/"), scope, name) if p)

    def _lock_args(self) -> dict[str, Any]:
        if self.object_lock is None:
            return {}
        mode, days = self.object_lock
        return {"ObjectLockMode": mode,
                "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=days)}

    def staging(self, scope: str, backup_id: str) -> IO[bytes]:
        self.staging_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by publish or discard
            prefix=PARTIAL_PREFIX + backup_id, dir=self.staging_root, delete=False)

    def publish(self, scope: str, backup_id: str, staged: IO[bytes], manifest: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        staged.flush()
        try:
            staged.seek(0)
            client.upload_fileobj(staged, self.bucket,
                                  self._key(scope, backup_id + OBJECT_SUFFIX),
                                  ExtraArgs=self._lock_args())
            client.put_object(Bucket=self.bucket,
                              Key=self._key(scope, backup_id + MANIFEST_SUFFIX), Body=manifest,
                              ContentType="application/json", **self._lock_args())
        except (BotoCoreError, ClientError) as exc:
            raise BackupRefused(f"The backup could not be uploaded to {self.uri} ({exc}); "
                                "nothing was published.") from None
        finally:
            self.discard(staged)

    def discard(self, staged: IO[bytes]) -> None:
        staged.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged.name)

    def read_manifest(self, scope: str, backup_id: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            body = self._client().get_object(
                Bucket=self.bucket, Key=self._key(scope, backup_id + MANIFEST_SUFFIX))["Body"]
            return bytes(body.read())
        except ClientError:
            raise _missing(backup_id, "manifest") from None

    @contextlib.contextmanager
    def open_object(self, scope: str, backup_id: str) -> Iterator[IO[bytes]]:
        """A local copy of the (encrypted) object: its digest is checked before decrypting."""
        from botocore.exceptions import ClientError

        self.staging_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.staging_root) as fh:
            try:
                self._client().download_fileobj(
                    self.bucket, self._key(scope, backup_id + OBJECT_SUFFIX), fh)
            except ClientError:
                raise _missing(backup_id, "encrypted object") from None
            fh.seek(0)
            yield fh

    def delete(self, scope: str, backup_id: str) -> None:
        """Every version of the manifest, then of the object; BackupRefused when the store
        refuses (an object-lock retention not yet over): the caller tries again later."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        try:
            for suffix in (MANIFEST_SUFFIX, OBJECT_SUFFIX):
                key = self._key(scope, backup_id + suffix)
                versions = client.list_object_versions(Bucket=self.bucket, Prefix=key)
                entries = versions.get("Versions", []) + versions.get("DeleteMarkers", [])
                for v in entries:
                    if v["Key"] == key:
                        client.delete_object(Bucket=self.bucket, Key=key,
                                             VersionId=v["VersionId"])
                if not entries:
                    client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise BackupRefused(f"Backup {backup_id} could not be deleted from {self.uri} "
                                f"({exc}).") from None

    def sweep_unpublished(self, scope: str, *, older_than: float = STALE_SECONDS) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        swept = 0
        cutoff = time.time() - older_than
        if self.staging_root.is_dir():
            for path in self.staging_root.iterdir():
                if path.name.startswith(PARTIAL_PREFIX) and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    swept += 1
        client = self._client()
        prefix = self._key(scope, "") + "/"
        stale = datetime.fromtimestamp(cutoff, UTC)
        try:
            names: dict[str, datetime] = {}
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                         Prefix=prefix):
                names.update({o["Key"]: o["LastModified"] for o in page.get("Contents", [])})
            for key, modified in names.items():
                if (key.endswith(OBJECT_SUFFIX) and modified < stale and
                        key[:-len(OBJECT_SUFFIX)] + MANIFEST_SUFFIX not in names):
                    self.delete(scope, key[len(prefix):-len(OBJECT_SUFFIX)])
                    swept += 1
            uploads = client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
            for upload in uploads.get("Uploads", []):
                if upload["Initiated"] < stale:
                    client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                  UploadId=upload["UploadId"])
                    swept += 1
        except (BotoCoreError, ClientError) as exc:
            raise BackupRefused(f"Leftovers of killed backups in {self.uri} could not be "
                                f"swept ({exc}).") from None
        return swept


def sweep_before_backup(destination: Destination, scope: str) -> int:
    """Sweep ``scope`` before a backup to ``destination`` (leftovers older than a day, so a
    backup in flight elsewhere is left alone). A store that refuses (object lock) is logged
    and the backup goes on: the sweep is tried again before the next one."""
    try:
        return destination.sweep_unpublished(scope)
    except BackupRefused as exc:
        log.warning("%s", exc.message)
        return 0


def configured(settings: Settings) -> tuple[str, Callable[[str], Destination]]:
    """The configured destination's URI (``MAGISTRATE_BACKUP_DESTINATION``, by default
    ``$MAGISTRATE_HOME/backups``), and the function that opens any recorded destination."""
    uri = settings.backup_destination or str(settings.home / "backups")

    def opener(where: str) -> Destination:
        return destination_for(where, home=settings.home,
                               endpoint_url=settings.backup_s3_endpoint,
                               region=settings.aws_region, object_lock=settings.backup_object_lock)

    return uri, opener


def recorded_destination(session_factory: sessionmaker[Session], settings: Settings,
                         backup_id: str) -> Destination:
    """Where backup ``backup_id`` was published (the configured destination for an id the
    platform has no record of: the restore then says the backup is not found)."""
    from control_plane.models import Backup

    uri, opener = configured(settings)
    with session_factory() as s:
        row = s.get(Backup, backup_id.strip())
        return opener(row.destination if row is not None else uri)


def destination_for(uri: str, *, home: Path, endpoint_url: str | None, region: str,
                    object_lock: tuple[str, int] | None) -> Destination:
    """The destination a ``MAGISTRATE_BACKUP_DESTINATION`` value (or a backup's recorded
    destination) names."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        if not bucket:
            raise BackupRefused("An S3 backup destination is s3://BUCKET or s3://BUCKET/PREFIX.")
        return S3Bucket(bucket, prefix.strip("/"), endpoint_url, region, object_lock,
                        home / "backup-staging")
    if "://" in uri:
        raise BackupRefused(f"The backup destination {uri!r} is neither a folder nor s3://.")
    return LocalFolder(Path(uri).expanduser().absolute())
