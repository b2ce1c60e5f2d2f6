"""Checkpoints sent out by an HMAC-signed webhook (retried until delivered), and retention that
prunes only up to a signed checkpoint, after which the chain still verifies."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import func, select

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


def test_retention_prunes_only_up_to_a_checkpoint(tenant):
    _, tenant_id, ctx, owner_url = tenant
    record_events(ctx, 40)
    later = datetime.now(UTC) + timedelta(days=400)
    with ctx.session() as s, s.begin():  # everything is "old", but no checkpoint yet
        result = prune(s, ctx, now=later)
    assert result.removed == 0 and "no signed checkpoint" in result.reason
    with ctx.session() as s, s.begin():
        checkpoint = make_checkpoint(s, ctx, force=True)
    record_events(ctx, 10)
    with ctx.session() as s, s.begin():
        result = prune(s, ctx, now=later)
    assert result.upto_seq == checkpoint.seq and result.removed == checkpoint.seq
    with ctx.session() as s:
        first = s.scalar(select(func.min(AuditEvent.seq)))
        assert first == checkpoint.seq + 1  # sequence numbers keep counting up
        verdict = verify_tenant_chain(s, tenant_id)
    assert verdict.ok, verdict.problem
    # nobody deletes around the procedure: the app role lacks the privilege, the owner hits
    # the trigger, and the procedure refuses a cut that is not a checkpoint
    with services_app(ctx) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM audit_events")
        conn.rollback()
        with pytest.raises(psycopg.errors.RaiseException, match="no signed checkpoint"):
            conn.execute("SELECT prune_audit_events(%s)", (checkpoint.seq + 3,))
    with psycopg.connect(owner_url) as conn, pytest.raises(
            psycopg.errors.RaiseException, match="append-only"):
        conn.execute("DELETE FROM audit_events")


def services_app(ctx):
    engine = ctx.session_factory.kw["bind"]
    url = engine.url.render_as_string(hide_password=False).replace("+psycopg", "")
    return psycopg.connect(url)


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
