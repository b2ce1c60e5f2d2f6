"""The encrypted object format and retention, without a database."""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime, timedelta

import pytest
from pyrage import x25519

from control_plane.backups import envelope
from control_plane.backups.envelope import EnvelopeWriter, decrypt_chunks
from control_plane.backups.exceptions import BackupUnreadable
from control_plane.backups.retention import to_prune

KEY = bytes(range(32))


def seal(data: bytes, backup_id: str = "b1") -> bytes:
    out = io.BytesIO()
    writer = EnvelopeWriter(out, KEY, backup_id)
    for i in range(0, len(data), 70_000):
        writer.write(data[i:i + 70_000])
    writer.close()
    assert writer.written == len(out.getvalue())
    return out.getvalue()


def open_all(sealed: bytes, backup_id: str = "b1") -> bytes:
    return b"".join(decrypt_chunks(io.BytesIO(sealed), KEY, backup_id))


@pytest.mark.parametrize("size", [0, 1, envelope.CHUNK, envelope.CHUNK + 1, 3 * envelope.CHUNK])
def test_round_trip_of_any_size(size):
    data = os.urandom(size)
    assert open_all(seal(data)) == data


def chunk_bounds(sealed: bytes) -> list[tuple[int, int]]:
    bounds, at = [], len(envelope.MAGIC) + 8
    while at < len(sealed):
        (word,) = envelope._LEN.unpack(sealed[at:at + 4])
        end = at + 4 + (word & ~envelope.LAST)
        bounds.append((at, end))
        at = end
    return bounds


def test_every_kind_of_damage_is_refused():
    data = os.urandom(2 * envelope.CHUNK + 10)
    sealed = seal(data)
    bounds = chunk_bounds(sealed)
    assert len(bounds) == 3
    flipped = bytearray(sealed)
    flipped[bounds[1][0] + 100] ^= 1
    cases = {
        "altered": bytes(flipped),
        "truncated": sealed[:bounds[2][0]],  # cut exactly at a chunk boundary
        "truncated inside": sealed[:-7],
        "reordered": sealed[:bounds[0][0]] + sealed[bounds[1][0]:bounds[1][1]]
        + sealed[bounds[0][0]:bounds[0][1]] + sealed[bounds[2][0]:],
        "extended": sealed + b"x",
        "not ours": b"PGDMP" + sealed[5:],
    }
    for name, damaged in cases.items():
        with pytest.raises(BackupUnreadable):
            open_all(damaged)
        assert name
    with pytest.raises(BackupUnreadable, match="altered"):
        open_all(sealed, backup_id="another backup")  # a chunk moved to another backup


def test_retention_keeps_30_daily_and_the_first_of_12_months():
    start = datetime(2025, 1, 1, 3, tzinfo=UTC)
    created = [(f"b{i:03d}", start + timedelta(days=i)) for i in range(500)]
    pruned = set(to_prune(created))
    kept = [c for c in created if c[0] not in pruned]
    newest = sorted(created, key=lambda c: c[1])[-30:]
    assert set(newest) <= set(kept)
    monthly = [c for c in kept if c not in newest]
    assert len(monthly) == 12
    assert all(c[1].day == 1 for c in monthly)  # the first backup of each month
    assert to_prune(created[:10]) == []


def test_backup_settings_are_read_and_bad_values_named():
    from control_plane.settings import Settings, SettingsError

    read = Settings.from_env({"MAGISTRATE_BACKUP_DESTINATION": "s3://b/p",
                              "MAGISTRATE_BACKUP_OBJECT_LOCK": "compliance:30",
                              "MAGISTRATE_BACKUP_KEY_PROVIDER": "aws-kms",
                              "MAGISTRATE_BACKUP_KEY_REF": "alias/backups"})
    assert (read.backup_destination, read.backup_object_lock, read.backup_key_provider,
            read.backup_key_ref) == ("s3://b/p", ("COMPLIANCE", 30), "aws-kms", "alias/backups")
    assert read.backup_age_recipients == ()
    first, second = (str(x25519.Identity.generate().to_public()) for _ in range(2))
    ages = Settings.from_env({"MAGISTRATE_BACKUP_AGE_RECIPIENTS": f" {first}, {second} "})
    assert ages.backup_age_recipients == (first, second)
    for name, value in (("MAGISTRATE_BACKUP_OBJECT_LOCK", "forever"),
                        ("MAGISTRATE_BACKUP_OBJECT_LOCK", "GOVERNANCE:0"),
                        ("MAGISTRATE_BACKUP_KEY_PROVIDER", "vault"),
                        ("MAGISTRATE_BACKUP_AGE_RECIPIENTS", "ssh-ed25519 AAAA")):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


def test_a_destination_that_is_neither_folder_nor_s3_is_refused(tmp_path):
    from control_plane.backups.destinations import destination_for
    from control_plane.backups.exceptions import BackupRefused

    for uri in ("ftp://host/x", "s3://"):
        with pytest.raises(BackupRefused):
            destination_for(uri, home=tmp_path, endpoint_url=None, region="us-east-1",
                            object_lock=None)
