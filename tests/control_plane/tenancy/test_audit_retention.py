"""Checkpoints sent out by an HMAC-signed webhook (retried until delivered), and retention that
prunes only up to a signed checkpoint, after which the chain still verifies.

The retention guard is probed with real connections as the tenant's two roles: the service
role removes audit rows by no route; the owner removes only a prefix of the chain ending at a
checkpoint that matches it, and retention also checks that checkpoint's signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import ProgrammingError

from control_plane.migrations import head_revision
from control_plane.models import Tenant
from tenant_runtime import audit
from tenant_runtime.audit_retention import deliver_checkpoints, do_configure_audit, prune
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.checkpoints import make_checkpoint, verify_checkpoint
from tenant_runtime.context import Actor
from tenant_runtime.models import AuditEvent, CheckpointDelivery, CheckpointKey
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user, post_form, sign_in
from tests.fakes.redirects import REFUSED_HOST, Redirector, Trap
from tests.webhook_receiver import Receiver
from workers.checkpoints import prune_all_tenants


@pytest.fixture
def settings():
    from tests.conftest import make_settings

    return make_settings(gateway_private_networks=("127.0.0.0/8",))  # the local receiver


@pytest.fixture
def receiver():
    r = Receiver("/checkpoints")
    yield r
    r.stop()


@pytest.fixture
def tenant(services, db, database_url, primary_server, local_kek):
    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "retained")
    run_pending_jobs(services, database_url)
    with services.session_factory() as s:
        t = s.get(Tenant, tenant_id)
        ctx = services.tenant_connections.context(s, t, Actor("user", "1", owner.email, "Owner"))
        owner_url = services.tenant_connections.owner_url(t)
    return owner, tenant_id, ctx, owner_url


def record_events(ctx, n: int) -> None:
    with ctx.session() as s, s.begin():
        for i in range(n):
            audit.record(s, "test.event", actor=Actor("system"), details={"i": i})


def test_checkpoints_go_out_signed_and_are_retried(client, tenant, receiver):
    owner, tenant_id, ctx, _ = tenant
    sign_in(client, owner.email)
    page = f"/tenants/{tenant_id}/audit"
    saved = post_form(client, page + "/settings", {"webhook_url": receiver.url,
                                                   "retention_days": "396"}, page=page)
    assert saved.status_code == 200
    secret = re.search(r'data-testid="webhook-secret">([^<]+)<', saved.text).group(1)
    refused = post_form(client, page + "/settings", {"webhook_url": "http://10.1.2.3/x",
                                                     "retention_days": "396"}, page=page)
    assert refused.status_code == 422 and "https://" in refused.text

    record_events(ctx, 5)
    receiver.fail = True
    with ctx.session() as s, s.begin():
        make_checkpoint(s, ctx, force=True)
        result = deliver_checkpoints(s, ctx)
    assert (result.sent, result.failed, receiver.received) == (0, 1, [])
    receiver.fail = False
    with ctx.session() as s, s.begin():
        assert deliver_checkpoints(s, ctx).sent == 1
        assert deliver_checkpoints(s, ctx).sent == 0  # delivered once
    body, headers = receiver.received[0]
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Magistrate-Signature"] == expected
    line = json.loads(body)
    with ctx.session() as s:
        public = s.scalars(select(CheckpointKey.public_key)).one()
    created = datetime.strptime(line["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert verify_checkpoint(public, tenant_id, line["seq"], line["chain_hash"], created,
                             line["signature"])


@contextmanager
def owner_context(services, tenant_id: int):
    """What the retention worker uses: a context on the tenant's database as its owner role."""
    with services.session_factory() as s, services.tenant_connections.owner_context(
            s, s.get(Tenant, tenant_id), Actor("system", None, "retention")) as ctx:
        yield ctx


def app_url(services, tenant_id: int) -> str:
    with services.session_factory() as s:
        return services.tenant_connections.app_url(s.get(Tenant, tenant_id))


def event_count(ctx) -> int:
    with ctx.session() as s:
        return s.scalar(select(func.count()).select_from(AuditEvent))


def test_retention_prunes_only_up_to_a_checkpoint(services, tenant):
    _, tenant_id, ctx, owner_url = tenant
    record_events(ctx, 40)
    later = datetime.now(UTC) + timedelta(days=400)
    with owner_context(services, tenant_id) as octx, octx.session() as s, s.begin():
        result = prune(s, octx, now=later)  # everything is "old", but no checkpoint yet
    assert result.removed == 0 and "no signed checkpoint" in result.reason
    with ctx.session() as s, s.begin():
        checkpoint = make_checkpoint(s, ctx, force=True)
    record_events(ctx, 10)
    with owner_context(services, tenant_id) as octx, octx.session() as s, s.begin():
        result = prune(s, octx, now=later)
    assert result.upto_seq == checkpoint.seq and result.removed == checkpoint.seq
    with ctx.session() as s:
        first = s.scalar(select(func.min(AuditEvent.seq)))
        assert first == checkpoint.seq + 1  # sequence numbers keep counting up
        pruned = s.scalars(select(AuditEvent).where(AuditEvent.event_type == "audit.pruned")
                           ).one()
        assert pruned.details["upto_seq"] == checkpoint.seq
        verdict = verify_tenant_chain(s, tenant_id)
    assert verdict.ok, verdict.problem


def test_the_service_role_cannot_prune_even_with_the_procedure(services, tenant):
    """Finding 10, the app role's half: the procedure was SECURITY DEFINER and PUBLIC could
    call it, so the service role pruned through it. Now the service role (the one the web app
    and the workers run as) prunes by no route: retention refuses before it cuts."""
    _, tenant_id, ctx, _ = tenant
    record_events(ctx, 5)
    with ctx.session() as s, s.begin():
        checkpoint = make_checkpoint(s, ctx, force=True)
    later = datetime.now(UTC) + timedelta(days=400)
    with ctx.session() as s, s.begin(), pytest.raises(ProgrammingError,
                                                      match="permission denied for function"):
        prune(s, ctx, now=later)
    with psycopg.connect(app_url(services, tenant_id)) as conn, pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
        conn.execute("SELECT prune_audit_events(%s)", (checkpoint.seq,))
    assert event_count(ctx) == checkpoint.seq


APP_ROLE_PROBES = (
    # the session variable that used to switch the guard off, then a DELETE
    ("SELECT set_config('magistrate.audit_retention', 'on', true); DELETE FROM audit_events",
     "permission denied for table audit_events"),
    ("DELETE FROM audit_events WHERE seq <= 1", "permission denied for table audit_events"),
    ("UPDATE audit_events SET event_type = 'x'", "permission denied for table audit_events"),
    ("TRUNCATE audit_events", "permission denied for table audit_events"),
    ("SELECT prune_audit_events(1)", "permission denied for function prune_audit_events"),
    ("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only",
     "must be owner of table audit_events"),
    ("ALTER TABLE audit_events DISABLE TRIGGER ALL", "must be owner of table audit_events"),
    ("DROP TRIGGER audit_events_append_only ON audit_events",
     "must be owner of (table|relation) audit_events"),
    ("CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql "
     "AS $$ BEGIN RETURN OLD; END $$", "permission denied for schema public"),
    ("UPDATE audit_checkpoints SET seq = seq", "permission denied for table audit_checkpoints"),
    ("DELETE FROM audit_checkpoints", "permission denied for table audit_checkpoints"),
    ("UPDATE alembic_version SET version_num = 't0001'",
     "permission denied for table alembic_version"),
    ("DELETE FROM alembic_version", "permission denied for table alembic_version"),
    ("INSERT INTO alembic_version VALUES ('t0001')",
     "permission denied for table alembic_version"),
    ("TRUNCATE alembic_version", "permission denied for table alembic_version"),
)


def test_every_route_around_the_guard_is_refused_to_the_service_role(services, tenant):
    _, tenant_id, ctx, _ = tenant
    record_events(ctx, 5)
    with ctx.session() as s, s.begin():
        make_checkpoint(s, ctx, force=True)
    before = event_count(ctx)
    with psycopg.connect(app_url(services, tenant_id)) as conn:
        for statement, message in APP_ROLE_PROBES:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=message):
                conn.execute(statement)
            conn.rollback()
        # what it may do: read the revision, and append
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == \
            head_revision("tenant")
    assert event_count(ctx) == before


SWITCH_ON = "SELECT set_config('magistrate.audit_retention', 'on', false)"


def owner_probes(cp: int) -> tuple[tuple[tuple[str, ...], int | None, str], ...]:
    """(statements, the seq parameter of the last one, the refusal expected) around a
    checkpoint at seq ``cp``."""
    refused = "audit_events is append-only"
    return (
        # finding 10 as reported: the session variable no longer switches anything off
        ((SWITCH_ON, "DELETE FROM audit_events"), None, refused),
        ((SWITCH_ON, "DELETE FROM audit_events WHERE seq <= %s"), cp + 2, refused),
        (("DELETE FROM audit_events WHERE seq = %s",), cp + 1, refused),  # past the checkpoint
        (("DELETE FROM audit_events WHERE seq = %s",), 2, "seq 2 is not one"),  # a hole
        (("DELETE FROM audit_events WHERE seq = %s",), cp,  # at it, but leaving rows below
         "removes every event up to its checkpoint"),
        (("DELETE FROM audit_events WHERE seq <= %s",), cp - 1,  # a prefix, not at a checkpoint
         f"seq {cp - 1} is not one"),
        (("UPDATE audit_events SET event_type = 'x' WHERE seq = %s",), 1, refused),
        (("TRUNCATE audit_events",), None, "audit_events is append-only (TRUNCATE refused)"),
        (("TRUNCATE audit_checkpoints",), None,
         "audit_checkpoints is append-only (TRUNCATE refused)"),
        (("DELETE FROM audit_checkpoints",), None, "audit_checkpoints is append-only"),
        (("SELECT prune_audit_events(%s)",), cp + 2, "no signed checkpoint at seq"),
    )


def test_the_owner_cuts_only_a_prefix_ending_at_a_checkpoint(services, tenant):
    """Finding 10, the owner's half: ``set_config('magistrate.audit_retention', 'on')`` then a
    DELETE used to remove anything. Now every cut but a prefix ending at a checkpoint that
    matches the chain is refused by the database; that one cut still works."""
    _, tenant_id, ctx, owner_url = tenant
    record_events(ctx, 8)
    with ctx.session() as s, s.begin():
        checkpoint = make_checkpoint(s, ctx, force=True)
    record_events(ctx, 4)
    before = event_count(ctx)
    with psycopg.connect(owner_url) as conn:
        for statements, seq, message in owner_probes(checkpoint.seq):
            *before_last, last = statements
            for statement in before_last:
                conn.execute(statement)
            with pytest.raises(psycopg.errors.RaiseException, match=re.escape(message)):
                conn.execute(last, () if seq is None else (seq,))
            conn.rollback()
        # a checkpoint row that does not match the chain opens no cut either (the owner and
        # the service role may append checkpoint rows)
        forged_seq = checkpoint.seq + 2
        conn.execute("INSERT INTO audit_checkpoints (seq, chain_hash, created_at, signature, "
                     "key_id) VALUES (%s, repeat('0', 64), now(), 'forged', %s)",
                     (forged_seq, checkpoint.key_id))
        conn.commit()
        with pytest.raises(psycopg.errors.RaiseException, match="does not match the chain"):
            conn.execute("SELECT prune_audit_events(%s)", (forged_seq,))
        conn.rollback()
        with pytest.raises(psycopg.errors.RaiseException, match="is not one"):
            conn.execute("DELETE FROM audit_events WHERE seq <= %s", (forged_seq,))
        conn.rollback()
    assert event_count(ctx) == before
    with psycopg.connect(owner_url) as conn:  # the legitimate cut
        assert conn.execute("SELECT prune_audit_events(%s)", (checkpoint.seq,)
                            ).fetchone()[0] == checkpoint.seq
    assert event_count(ctx) == before - checkpoint.seq
    with ctx.session() as s:  # the chain is whole; the forged checkpoint row stands out
        verdict = verify_tenant_chain(s, tenant_id)
    assert verdict.problem == f"checkpoint at seq {forged_seq}: signature invalid"


def test_retention_refuses_a_checkpoint_whose_signature_does_not_verify(services, tenant):
    """The database cannot check an Ed25519 signature, so retention does before it cuts: a
    checkpoint row that matches the chain but that the tenant's key did not sign (the service
    role may insert checkpoint rows) removes nothing, and the refusal is audited."""
    _, tenant_id, ctx, _ = tenant
    record_events(ctx, 6)
    with ctx.session() as s, s.begin():
        genuine = make_checkpoint(s, ctx, force=True)
    record_events(ctx, 3)
    with ctx.session() as s:
        head_seq, head_hash = s.execute(select(AuditEvent.seq, AuditEvent.chain_hash)
                                        .order_by(AuditEvent.seq.desc()).limit(1)).one()
    with psycopg.connect(app_url(services, tenant_id)) as conn:
        conn.execute("INSERT INTO audit_checkpoints (seq, chain_hash, created_at, signature, "
                     "key_id) VALUES (%s, %s, now(), %s, %s)",
                     (head_seq, head_hash, genuine.signature, genuine.key_id))
    record_events(ctx, 1)
    later = datetime.now(UTC) + timedelta(days=400)
    with owner_context(services, tenant_id) as octx, octx.session() as s, s.begin():
        result = prune(s, octx, now=later)
    assert (result.removed, result.reason) == (0, "the checkpoint's signature does not verify")
    with ctx.session() as s:
        assert s.scalar(select(func.min(AuditEvent.seq))) == 1
        refused = s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "audit.prune_refused")).one()
    assert refused.details["reason"] == "bad signature"
    assert refused.details["checkpoint_seq"] == head_seq


def test_the_worker_prunes_every_tenant_as_its_owner(services, tenant):
    _, tenant_id, ctx, _ = tenant
    record_events(ctx, 5)
    with ctx.session() as s, s.begin():
        checkpoint = make_checkpoint(s, ctx, force=True)
    record_events(ctx, 2)
    with ctx.session() as s, s.begin():
        s.execute(text("UPDATE audit_settings SET retention_days = 30"))
        s.execute(text("INSERT INTO audit_settings (id, retention_days) SELECT 1, 30 "
                       "WHERE NOT EXISTS (SELECT 1 FROM audit_settings)"))
    # the checkpoint and the events before it are old: move the clock, not the rows
    counts = prune_all_tenants(services.session_factory, services.tenant_connections,
                               now=datetime.now(UTC) + timedelta(days=31))
    assert counts == {"tenants": 1, "removed": checkpoint.seq, "failed": 0}
    with ctx.session() as s:
        assert s.scalar(select(func.min(AuditEvent.seq))) == checkpoint.seq + 1


def test_a_cut_keeps_the_newest_event_so_sequence_numbers_never_restart(services, tenant):
    """Appends continue from the newest event; a cut that removed it would restart the chain
    at seq 1 (over the checkpoints' seqs). The database refuses such a cut, and retention,
    whose own event is recorded first, still prunes an idle tenant up to its head."""
    _, tenant_id, ctx, owner_url = tenant
    record_events(ctx, 3)
    with ctx.session() as s, s.begin():
        head = make_checkpoint(s, ctx, force=True).seq  # the checkpoint is the head
    with psycopg.connect(owner_url) as conn, pytest.raises(
            psycopg.errors.RaiseException, match=f"keeps the newest event, and seq {head}"):
        conn.execute("SELECT prune_audit_events(%s)", (head,))
    later = datetime.now(UTC) + timedelta(days=400)
    with owner_context(services, tenant_id) as octx, octx.session() as s, s.begin():
        result = prune(s, octx, now=later)
    assert (result.upto_seq, result.removed) == (head, head)
    record_events(ctx, 1)
    with ctx.session() as s:
        assert s.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)).all() == [
            head + 1, head + 2]
        assert verify_tenant_chain(s, tenant_id).ok


def test_a_checkpoint_webhook_that_redirects_is_not_followed(tenant):
    """Security review issue 15, finding 1, for the checkpoint sender."""
    _, _, ctx, _ = tenant
    record_events(ctx, 2)
    with Trap() as trap, Redirector(308, trap.url("/elsewhere")) as hook:
        with ctx.session() as s, s.begin():
            do_configure_audit(s, ctx, webhook_url=hook.base_url + "/checkpoints",
                               retention_days=396)
            make_checkpoint(s, ctx, force=True)
            result = deliver_checkpoints(s, ctx)
        assert hook.requests == [("POST", "/checkpoints")]
    assert (result.sent, result.failed) == (0, 1)
    assert (trap.connections, trap.data) == (0, b"")
    with ctx.session() as s:
        (delivery,) = s.scalars(select(CheckpointDelivery))
    assert delivery.delivered_at is None
    assert delivery.last_error == (
        f"The upstream answered with a redirect (HTTP 308) to http://{REFUSED_HOST}:"
        f"{trap.port}/elsewhere, which Magistrate does not follow.")
