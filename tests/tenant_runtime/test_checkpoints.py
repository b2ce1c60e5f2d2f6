"""Signed audit checkpoints: when one is due, that its signature verifies with the tenant's
published key (and only for exactly what was signed), that the private key is sealed and bound
to its tenant, that checkpoints are append-only, and that the periodic task carries on past a
tenant whose customer key is unavailable."""

from __future__ import annotations

import base64
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from control_plane.keys.local import LocalKeyProvider
from control_plane.migrations import ALEMBIC_ROOT, upgrade_tenant
from control_plane.models import Tenant
from control_plane.tenancy.rotation import reencrypt
from control_plane.web.templating import templates
from tenant_runtime import audit
from tenant_runtime.audit import CheckpointEvents
from tenant_runtime.checkpoints import (
    CheckpointPublicKey,
    active_public_key,
    canonical_checkpoint,
    ensure_checkpoint_key,
    key_id_of,
    make_checkpoint,
    public_key,
    verify_checkpoint,
)
from tenant_runtime.context import Actor
from tenant_runtime.exceptions import SealedValueRefused
from tenant_runtime.models import AuditCheckpoint, AuditEvent, CheckpointKey
from tenant_runtime.sealing import TenantSealer
from tests.control_plane.tenancy.helpers import (
    configure_worker,
    create_tenant,
    run_pending_jobs,
    tenant_state,
)
from tests.factories import make_user
from tests.locks import wait_for_lock_waiter
from workers.checkpoints import checkpoint_all_tenants, close_connections, run_checkpoints

SYSTEM = Actor("system")


@pytest.fixture
def tenants(services, db, database_url, settings, primary_server, local_kek) -> dict[str, int]:
    """Two tenants, each under its own KEK, so one can be revoked without the other."""
    LocalKeyProvider(settings.home / "keys").create_key("bravo-kek")
    owner = make_user(db)
    ids = {"alpha": create_tenant(services, owner.email, "alpha"),
           "bravo": create_tenant(services, owner.email, "bravo", key_ref="bravo-kek")}
    run_pending_jobs(services, database_url)
    assert {tenant_state(services, i) for i in ids.values()} == {"active"}
    return ids


def context(services, tenant_id: int):
    with services.session_factory() as s:
        return services.tenant_connections.context(s, s.get(Tenant, tenant_id), SYSTEM)


def owner_url(services, tenant_id: int) -> str:
    with services.session_factory() as s:
        return services.tenant_connections.owner_url(s.get(Tenant, tenant_id))


def app_url(services, tenant_id: int) -> str:
    with services.session_factory() as s:
        return services.tenant_connections.app_url(s.get(Tenant, tenant_id))


def add_events(ctx, n: int) -> None:
    with ctx.session() as s, s.begin():
        for i in range(n):
            audit.record(s, "test.event", actor=SYSTEM, details={"i": i})


def checkpoint(ctx, **kwargs):
    with ctx.session() as s, s.begin():
        return make_checkpoint(s, ctx, **kwargs)


def head(ctx) -> tuple[int, str]:
    with ctx.session() as s:
        row = s.execute(select(AuditEvent.seq, AuditEvent.chain_hash)
                        .order_by(AuditEvent.seq.desc()).limit(1)).one()
        return row.seq, row.chain_hash


def stored_checkpoints(ctx) -> list[AuditCheckpoint]:
    with ctx.session() as s:
        return list(s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)))


def published_key(ctx) -> str:
    with ctx.session() as s:
        key = public_key(s)
    assert key is not None
    return key


# ------------------------------------------------------------------------------- encoding


def test_canonical_bytes_signature_and_key_id_follow_the_published_encoding():
    chain_hash = "ab" * 32
    at = datetime(2026, 11, 27, 11, 0, 0, 1, tzinfo=timezone(timedelta(hours=1)))
    assert canonical_checkpoint(7, 5, chain_hash, at) == (
        b'{"chain_hash":"' + chain_hash.encode() + b'","created_at":"2026-11-27T10:00:00.000001Z",'
        b'"seq":5,"tenant_id":7}')
    with pytest.raises(ValueError, match="timezone-aware"):
        canonical_checkpoint(7, 5, chain_hash, datetime(2026, 11, 27))  # noqa: DTZ001
    with pytest.raises(ValueError, match="64 lowercase hex"):
        canonical_checkpoint(7, 5, chain_hash.upper(), at)

    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    raw_public = private.public_key().public_bytes_raw()
    public_b64 = base64.b64encode(raw_public).decode()
    signature = base64.b64encode(private.sign(canonical_checkpoint(7, 5, chain_hash, at)))
    assert verify_checkpoint(public_b64, 7, 5, chain_hash, at, signature.decode())
    assert key_id_of(public_b64) == hashlib.sha256(raw_public).hexdigest()[:16]
    for bad in ("", "not base64!", base64.b64encode(b"short").decode()):
        assert not verify_checkpoint(bad, 7, 5, chain_hash, at, signature.decode())
        assert not verify_checkpoint(public_b64, 7, 5, chain_hash, at, bad)


# ------------------------------------------------------------------------------- when


def test_an_empty_chain_gets_no_checkpoint_and_no_key(services, tenants):
    ctx = context(services, tenants["alpha"])
    assert checkpoint(ctx) is None
    assert checkpoint(ctx, force=True) is None
    with ctx.session() as s:
        assert public_key(s) is None and active_public_key(s) is None
        assert s.scalars(select(CheckpointKey)).all() == []
    assert stored_checkpoints(ctx) == []


def test_the_first_event_makes_a_signed_checkpoint_due(services, tenants):
    ctx = context(services, tenants["alpha"])
    add_events(ctx, 1)
    written = checkpoint(ctx)
    assert written is not None
    # the key was made for it, and its creation is itself in the chain, under the checkpoint
    with ctx.session() as s:
        key_event = s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == CheckpointEvents.KEY_CREATED)).one()
        key = active_public_key(s)
    assert key is not None and key_event.seq == 2
    assert key_event.details == {"key_id": key.key_id, "public_key": key.public_key}
    assert (written.seq, written.chain_hash) == head(ctx) == (2, key_event.chain_hash)
    assert (written.tenant_id, written.key_id) == (tenants["alpha"], key.key_id)
    assert key.key_id == key_id_of(key.public_key)
    [row] = stored_checkpoints(ctx)
    assert (row.seq, row.chain_hash, row.created_at, row.signature, row.key_id) == (
        written.seq, written.chain_hash, written.created_at, written.signature, written.key_id)
    assert checkpoint(ctx) is None  # nothing new since
    assert checkpoint(ctx, force=True) is None  # nothing new: nothing to vouch for


def test_a_checkpoint_is_due_after_1000_events_or_10_minutes(services, tenants):
    ctx = context(services, tenants["alpha"])
    add_events(ctx, 1)
    first = checkpoint(ctx)
    assert first is not None and first.seq == 2

    add_events(ctx, 999)
    assert checkpoint(ctx) is None
    assert checkpoint(ctx, now=first.created_at + timedelta(minutes=9, seconds=59)) is None
    add_events(ctx, 1)
    second = checkpoint(ctx)
    assert second is not None and second.seq == 1002

    add_events(ctx, 1)
    assert checkpoint(ctx) is None
    late = second.created_at + timedelta(minutes=10)
    third = checkpoint(ctx, now=late)
    assert third is not None and (third.seq, third.created_at) == (1003, late)

    add_events(ctx, 1)
    forced = checkpoint(ctx, force=True)
    assert forced is not None and forced.seq == 1004
    assert [c.seq for c in stored_checkpoints(ctx)] == [2, 1002, 1003, 1004]


def test_two_writers_at_once_write_one_checkpoint(services, tenants):
    ctx = context(services, tenants["alpha"])
    add_events(ctx, 1)
    with ctx.session() as s, s.begin():  # the key first: the race is about the checkpoint
        ensure_checkpoint_key(s, ctx)
    # the session closes (and lets go of its lock) before the pool waits for the second writer
    with ThreadPoolExecutor(max_workers=1) as pool, ctx.session() as first:
        first.begin()
        assert make_checkpoint(first, ctx) is not None
        second = pool.submit(checkpoint, ctx)
        with ctx.session() as watcher:  # the second writer waits on the checkpoint's lock
            wait_for_lock_waiter(watcher)
        assert not second.done()
        first.commit()
        assert second.result(timeout=60) is None
    assert len(stored_checkpoints(ctx)) == 1


# ------------------------------------------------------------------------------- signatures


def test_the_signature_verifies_only_for_what_was_signed_and_with_this_tenants_key(
        services, tenants):
    alpha, bravo = context(services, tenants["alpha"]), context(services, tenants["bravo"])
    for ctx in (alpha, bravo):
        add_events(ctx, 3)
    written = checkpoint(alpha)
    assert checkpoint(bravo) is not None
    key, other_key = published_key(alpha), published_key(bravo)
    assert key != other_key

    def verifies(**changes) -> bool:
        fields = {"public_key_b64": key, "tenant_id": written.tenant_id, "seq": written.seq,
                  "chain_hash": written.chain_hash, "created_at": written.created_at,
                  "signature": written.signature, **changes}
        return verify_checkpoint(**fields)

    assert verifies()
    [row] = stored_checkpoints(alpha)  # as read back from the database
    assert verify_checkpoint(key, tenants["alpha"], row.seq, row.chain_hash, row.created_at,
                             row.signature)
    assert not verifies(seq=written.seq - 1)
    assert not verifies(chain_hash=audit.GENESIS_HASH)
    assert not verifies(created_at=written.created_at + timedelta(microseconds=1))
    assert not verifies(tenant_id=tenants["bravo"])
    assert not verifies(public_key_b64=other_key)
    tampered = bytearray(base64.b64decode(written.signature))
    tampered[0] ^= 1
    assert not verifies(signature=base64.b64encode(bytes(tampered)).decode())


def test_the_private_key_is_stored_only_sealed(services, tenants):
    ctx = context(services, tenants["alpha"])
    add_events(ctx, 1)
    assert checkpoint(ctx) is not None
    with psycopg.connect(owner_url(services, tenants["alpha"])) as conn:
        key_row_id, sealed, stored_public = conn.execute(
            "SELECT id, private_key_sealed, public_key FROM checkpoint_keys").fetchone()
        tables = [t for (t,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        dump = "".join(conn.execute(f"SELECT coalesce(string_agg(t::text, ''), '') "  # noqa: S608
                                    f'FROM "{table}" t').fetchone()[0] for table in tables)
    raw = ctx.sealer.open(bytes(sealed), table="checkpoint_keys", column="private_key_sealed",
                          row_key=key_row_id)
    # it is the private half of the published key ...
    derived = Ed25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    assert base64.b64encode(derived).decode() == stored_public
    # ... and no table holds it in any plain encoding
    assert bytes(sealed).startswith(b"S1") and raw not in bytes(sealed)
    for encoded in (raw.hex(), base64.b64encode(raw).decode(), raw.hex().upper()):
        assert encoded not in dump
    assert "checkpoint_keys" in tables and stored_public in dump  # the dump did see the table


def test_a_sealed_private_key_copied_from_another_tenant_does_not_open(services, tenants):
    alpha, bravo = context(services, tenants["alpha"]), context(services, tenants["bravo"])
    for ctx in (alpha, bravo):
        add_events(ctx, 1)
        assert checkpoint(ctx) is not None
    with psycopg.connect(owner_url(services, tenants["bravo"])) as conn:
        bravo_row = conn.execute("SELECT id, private_key_sealed, public_key "
                                 "FROM checkpoint_keys").fetchone()
    with psycopg.connect(app_url(services, tenants["alpha"])) as conn:
        assert conn.execute("SELECT id FROM checkpoint_keys").fetchone() == (bravo_row[0],)
        conn.execute("UPDATE checkpoint_keys SET private_key_sealed = %s", (bravo_row[1],))
    add_events(alpha, 1)
    with pytest.raises(SealedValueRefused):
        checkpoint(alpha, force=True)
    # the same id, the same table and column: only the tenant (and its data key) differ
    assert len(stored_checkpoints(alpha)) == 1

    # and a private key that does not belong to the published public key is refused too
    with psycopg.connect(app_url(services, tenants["alpha"])) as conn:
        conn.execute("UPDATE checkpoint_keys SET private_key_sealed = %s",
                     (alpha.sealer.seal(Ed25519PrivateKey.generate().private_bytes_raw(),
                                        table="checkpoint_keys", column="private_key_sealed",
                                        row_key=bravo_row[0]),))
    with pytest.raises(SealedValueRefused, match="does not match its public key"):
        checkpoint(alpha, force=True)
    assert len(stored_checkpoints(alpha)) == 1


def test_key_rotation_moves_the_private_key_and_signing_goes_on(services, tenants):
    ctx = context(services, tenants["alpha"])
    add_events(ctx, 1)
    first = checkpoint(ctx)
    assert first is not None
    report = reencrypt(services.session_factory, tenants["alpha"], services.tenant_connections)
    assert report.to_version == 2 and not report.failed
    with psycopg.connect(owner_url(services, tenants["alpha"])) as conn:
        (sealed,) = conn.execute("SELECT private_key_sealed FROM checkpoint_keys").fetchone()
    assert TenantSealer.version_of(bytes(sealed)) == 2
    ctx = context(services, tenants["alpha"])  # the sealer of the new version
    add_events(ctx, 1)
    second = checkpoint(ctx, force=True)
    assert second is not None and second.key_id == first.key_id  # the same signing key
    assert verify_checkpoint(published_key(ctx), tenants["alpha"], second.seq,
                             second.chain_hash, second.created_at, second.signature)


# ------------------------------------------------------------------------------- append-only


def assert_append_only(services, tenant_id: int) -> None:
    with psycopg.connect(app_url(services, tenant_id)) as conn:
        for statement in ("UPDATE audit_checkpoints SET chain_hash = repeat('0', 64)",
                          "DELETE FROM audit_checkpoints", "TRUNCATE audit_checkpoints"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
    with psycopg.connect(owner_url(services, tenant_id)) as conn:
        for statement in ("UPDATE audit_checkpoints SET chain_hash = repeat('0', 64)",
                          "DELETE FROM audit_checkpoints"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
            conn.rollback()


def test_no_role_can_change_or_remove_checkpoints(services, tenants):
    ctx = context(services, tenants["alpha"])
    add_events(ctx, 1)
    assert checkpoint(ctx) is not None
    assert_append_only(services, tenants["alpha"])
    assert len(stored_checkpoints(ctx)) == 1


def test_a_tenant_upgraded_in_place_gets_the_same_append_only_checkpoints(services, tenants):
    """What `magistrate migrate` does to a tenant provisioned before checkpoints existed: its
    owner runs the migration, and the service role still gets INSERT and SELECT only."""
    url = owner_url(services, tenants["alpha"])
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_ROOT / "tenant"))
    cfg.attributes["database_url"] = url
    command.downgrade(cfg, "t0001")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('audit_checkpoints')").fetchone() == (None,)
    upgrade_tenant(url)
    ctx = context(services, tenants["alpha"])
    add_events(ctx, 1)
    assert checkpoint(ctx) is not None  # the service role can use the new tables
    assert_append_only(services, tenants["alpha"])


# ------------------------------------------------------------------------------- the worker


def test_the_periodic_task_checkpoints_every_tenant_past_one_whose_key_is_unavailable(
        services, database_url, settings, tenants, caplog):
    alpha, bravo = context(services, tenants["alpha"]), context(services, tenants["bravo"])
    for ctx in (alpha, bravo):
        add_events(ctx, 2)
    kek = LocalKeyProvider(settings.home / "keys").path("bravo-kek")
    aside = kek.with_name("bravo-kek.revoked")
    kek.rename(aside)  # the customer revokes bravo's key
    services.dek_cache.clear()  # what the cache's TTL does on its own

    with caplog.at_level(logging.INFO, logger="magistrate.checkpoints"):
        counts = checkpoint_all_tenants(services.session_factory, services.tenant_connections)
    assert counts == {"tenants": 2, "written": 1, "not_due": 0, "failed": 1}
    assert [c.seq for c in stored_checkpoints(alpha)] == [3]
    assert stored_checkpoints(bravo) == []
    with bravo.session() as s:  # nothing half-made: the key was not created either
        assert public_key(s) is None
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 1
    assert failures[0].startswith(f"checkpoint of tenant {tenants['bravo']} failed: Tenant key "
                                  "unavailable")

    aside.rename(kek)  # the key is back: the next run of the worker's task catches up
    configure_worker(services, database_url)
    try:
        assert run_checkpoints() == {"tenants": 2, "written": 1, "not_due": 1, "failed": 0}
        assert run_checkpoints() == {"tenants": 2, "written": 0, "not_due": 2, "failed": 0}
    finally:
        close_connections()
    assert [c.seq for c in stored_checkpoints(bravo)] == [3]
    assert verify_checkpoint(published_key(bravo), tenants["bravo"], 3, head(bravo)[1],
                             stored_checkpoints(bravo)[0].created_at,
                             stored_checkpoints(bravo)[0].signature)


def test_suspended_tenants_are_not_checkpointed(services, tenants):
    alpha = context(services, tenants["alpha"])
    add_events(alpha, 1)
    with services.session_factory() as s, s.begin():
        s.get(Tenant, tenants["alpha"]).state = "suspended"
    counts = checkpoint_all_tenants(services.session_factory, services.tenant_connections)
    assert counts == {"tenants": 1, "written": 0, "not_due": 1, "failed": 0}
    assert stored_checkpoints(alpha) == []


# ------------------------------------------------------------------------------- dashboard


def test_the_key_card_shows_the_key_to_pin():
    card = templates.get_template("tenants/_audit_key.html")
    key = CheckpointPublicKey("0123456789abcdef", "QUJD" * 11, datetime(2026, 11, 27, tzinfo=UTC))
    html = card.render(checkpoint_key=key)
    assert 'data-testid="audit-key-id">0123456789abcdef<' in html
    assert f'data-testid="audit-public-key">{key.public_key}<' in html
    assert "pin it" in html and "2026-11-27 00:00 UTC" in html
    assert 'data-testid="audit-key-none"' in card.render(checkpoint_key=None)
