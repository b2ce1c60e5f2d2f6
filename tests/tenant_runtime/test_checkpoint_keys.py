"""Checkpoint key continuity and out-of-band distribution (ops/AUDIT_FORMAT.md, section 2).

- A rotation retires the key at the moment the new one becomes valid, with a rotation
  statement signed by both; an export made after it verifies pinned to the old key or to the
  new one, and a checkpoint of the old key made after its retirement does not.
- A new key's public half goes, through the checkpoint worker, to the tenant's notification
  webhook (HMAC-signed, received by a real HTTP server) and by e-mail to its compliance
  contacts (a real SMTP server); with nowhere to send, the notice is skipped with a reason."""

from __future__ import annotations

import contextlib
import email
import hashlib
import hmac
import io
import json
from email.policy import default as default_policy

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from control_plane.models import Tenant
from tenant_runtime import audit, checkpoints
from tenant_runtime.approvals.classes import do_configure_notifications
from tenant_runtime.audit_export import ExportRange, export_tenant_chain
from tenant_runtime.context import Actor
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.models import CheckpointKey, KeyNotice
from tests.conftest import free_port
from tests.control_plane.approvals.helpers import make_team
from tests.ops.test_verify_audit_chain import dump, parse, verifier
from tests.webhook_receiver import Receiver
from workers.checkpoints import checkpoint_all_tenants


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp():
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def settings(tmp_path, smtp):
    from tests.conftest import make_settings

    return make_settings(home=tmp_path / "home", public_url="https://magistrate.example.com",
                         smtp_host="127.0.0.1", smtp_port=smtp[1], smtp_tls="none",
                         smtp_from="audit@magistrate.example.com",
                         gateway_private_networks=("127.0.0.0/8",))  # the local receiver


@pytest.fixture
def team(services, db, database_url, primary_server, local_kek):
    return make_team(services, db, database_url)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def record(ctx, n: int) -> None:
    with ctx.session() as s, s.begin():
        for i in range(n):
            audit.record(s, "test.event", actor=Actor("system"), details={"i": i})


def verify(tmp_path, body: bytes, pin: str) -> tuple[int, str]:
    path = tmp_path / "export.jsonl"
    path.write_bytes(body)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = verifier.main([str(path), "--pin-key", pin])
    return code, out.getvalue()


def test_an_export_after_a_rotation_verifies_pinned_to_either_key(team, tmp_path):
    ctx = team.system()
    record(ctx, 5)
    with ctx.session() as s, s.begin():
        checkpoints.make_checkpoint(s, ctx, force=True)
        old = checkpoints.public_key(s)
    record(ctx, 3)
    with ctx.session() as s, s.begin():
        rotation = checkpoints.do_rotate_checkpoint_key(s, ctx)
    record(ctx, 4)
    with ctx.session() as s:
        new = checkpoints.public_key(s)
        keys = list(s.scalars(select(CheckpointKey).order_by(CheckpointKey.id)))
    assert old != new and rotation.new_public_key == new
    assert keys[0].retired_at == keys[1].valid_from == rotation.rotated_at
    assert keys[1].retired_at is None

    body = b"".join(export_tenant_chain(ctx, ExportRange()))
    lines = parse(body)
    assert [o["type"] for o in lines][:2] == ["header", "key_rotation"]
    assert lines[-1]["type"] == "statement" and lines[-1]["key_id"] == rotation.new_key_id
    signers = [o["key_id"] for o in lines if o["type"] == "checkpoint"]
    assert signers[0] == rotation.old_key_id and signers[-1] == rotation.new_key_id
    for pin in (old, new):
        code, output = verify(tmp_path, body, pin)
        assert code == 0, output
        assert "through 1 key rotation(s)" in output and "signed by the pinned key" in output

    # the old key cannot vouch for anything after its retirement, nor be brought back
    late = next(o for o in lines if o["type"] == "checkpoint" and o["key_id"] ==
                rotation.new_key_id)
    late["key_id"] = rotation.old_key_id
    code, output = verify(tmp_path, dump(lines), old)
    assert code == 1 and output.startswith(f"FAIL checkpoint at seq {late['seq']}: signed "
                                           f"by key {rotation.old_key_id} at "), output
    lines = parse(body)
    del lines[1]  # the rotation statement removed: the new key is linked to nothing
    code, output = verify(tmp_path, dump(lines), old)
    assert code == 1 and output.startswith(f"FAIL line 1: key {rotation.new_key_id} is not "
                                           "linked to the pinned key"), output


def test_a_tenant_without_a_key_has_nothing_to_rotate(team):
    ctx = team.system()
    with ctx.session() as s, s.begin(), pytest.raises(TenantInvalidInput):
        checkpoints.do_rotate_checkpoint_key(s, ctx)


def test_a_new_key_reaches_the_webhook_and_the_compliance_contacts(services, team, receiver,
                                                                   smtp, tmp_path):
    inbox, _ = smtp
    owner = team.ctx("owner")
    with owner.session() as s, s.begin():
        secret = do_configure_notifications(s, owner, webhook_url=receiver.url,
                                            email_approvers=True)
    record(owner, 3)

    def run():
        return checkpoint_all_tenants(services.session_factory, services.tenant_connections,
                                      services.settings)

    assert run()["written"] == 1  # the first checkpoint makes the key, and its notices
    with owner.session() as s:
        key = s.scalars(select(CheckpointKey)).one()
        notices = {n.kind: n for n in s.scalars(select(KeyNotice))}
    assert {k: (n.status, n.attempts) for k, n in notices.items()} == {
        "webhook": ("sent", 1), "email": ("sent", 1)}

    [(body, headers)] = receiver.received
    assert headers["X-Magistrate-Signature"] == "sha256=" + hmac.new(
        secret.encode(), body, hashlib.sha256).hexdigest()
    notice = json.loads(body)
    assert notice == {"type": "checkpoint_key", "tenant_id": team.tenant_id,
                      "key_id": key.key_id, "public_key": key.public_key,
                      "valid_from": notice["valid_from"], "rotation": None}
    assert verifier.public_key_id(notice["public_key"], "notice") == notice["key_id"]
    [(to, message)] = inbox.messages
    assert to == [team.users["compliance"].email]  # the Compliance member, not the Owner
    assert key.public_key in message.get_content() and key.key_id in message["Subject"]

    run()  # sent once
    assert len(receiver.received) == 1 and len(inbox.messages) == 1

    with owner.session() as s, s.begin():
        rotation = checkpoints.do_rotate_checkpoint_key(s, owner)
    run()
    rotated = json.loads(receiver.received[1][0])
    assert rotated["key_id"] == rotation.new_key_id
    statement = rotated["rotation"]
    signed = verifier.canonical({k: v for k, v in statement.items()
                                 if k not in ("signature", "new_signature")}).encode()
    assert verifier.signature_valid(key.public_key, statement["signature"], signed)
    assert verifier.signature_valid(rotated["public_key"], statement["new_signature"], signed)
    assert rotation.old_key_id in inbox.messages[1][1].get_content()


def test_with_nowhere_to_send_a_notice_is_skipped_with_a_reason(services, db, database_url,
                                                                 primary_server, local_kek):
    from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
    from tests.factories import make_user

    owner = make_user(db, "alone@example.com")
    tenant_id = create_tenant(services, owner.email, "lonely")
    run_pending_jobs(services, database_url)
    with services.session_factory() as s:
        ctx = services.tenant_connections.context(s, s.get(Tenant, tenant_id), Actor("system"))
    record(ctx, 2)
    counts = checkpoint_all_tenants(services.session_factory, services.tenant_connections)
    assert counts["written"] == 1 and counts["failed"] == 0
    with ctx.session() as s:
        notices = {n.kind: (n.status, n.last_error) for n in s.scalars(select(KeyNotice))}
    assert notices == {"webhook": ("skipped", "no notification webhook is configured"),
                       "email": ("skipped", "no SMTP server is configured")}


def test_rotate_key_from_the_shell(services, team, database_url, redis_url, settings):
    import os
    import subprocess
    import sys

    from control_plane.models import PlatformAuditEvent
    from tests.conftest import TEST_SECRET_KEY

    ctx = team.system()
    record(ctx, 2)
    with ctx.session() as s, s.begin():
        checkpoints.make_checkpoint(s, ctx, force=True)
        old = s.scalars(select(CheckpointKey.key_id)).one()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update({"MAGISTRATE_DATABASE_URL": database_url, "MAGISTRATE_REDIS_URL": redis_url,
                "MAGISTRATE_SECRET_KEY": TEST_SECRET_KEY, "MAGISTRATE_HOME": str(settings.home)})
    done = subprocess.run([sys.executable, "-m", "control_plane", "audit", "rotate-key",
                           "--tenant", team.slug], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    with ctx.session() as s:
        keys = {k.key_id: k.retired_at for k in s.scalars(select(CheckpointKey))}
    [new] = [k for k in keys if k != old]
    assert keys[old] is not None and keys[new] is None
    assert done.stdout.startswith(f"tenant {team.slug}: checkpoint key {old} retired, {new} "
                                  "signs from now on")
    with services.session_factory() as s:
        recorded = s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == "audit.checkpoint_key_rotated")).one()
    assert recorded.details == {"old_key_id": old, "key_id": new}
    missing = subprocess.run([sys.executable, "-m", "control_plane", "audit", "rotate-key",
                              "--tenant", "nope"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode != 0 and "no tenant has the slug or id 'nope'" in missing.stderr


def test_verify_now_refuses_a_checkpoint_of_a_retired_key(team):
    import base64
    from datetime import UTC, datetime

    from tenant_runtime.audit_verify import verify_tenant_chain
    from tenant_runtime.models import AuditCheckpoint, AuditEvent

    ctx = team.system()
    record(ctx, 3)
    with ctx.session() as s, s.begin():
        checkpoints.make_checkpoint(s, ctx, force=True)
    with ctx.session() as s, s.begin():
        rotation = checkpoints.do_rotate_checkpoint_key(s, ctx)
    with ctx.session() as s:
        assert verify_tenant_chain(s, team.tenant_id).ok
    record(ctx, 1)
    with ctx.session() as s, s.begin():  # the old key, used after it retired
        old = s.scalars(select(CheckpointKey).where(
            CheckpointKey.key_id == rotation.old_key_id)).one()
        head = s.execute(select(AuditEvent.seq, AuditEvent.chain_hash)
                         .order_by(AuditEvent.seq.desc()).limit(1)).one()
        now = datetime.now(UTC)
        signed = checkpoints.canonical_checkpoint(team.tenant_id, head.seq, head.chain_hash, now)
        s.add(AuditCheckpoint(seq=head.seq, chain_hash=head.chain_hash, created_at=now,
                              key_id=old.key_id, signature=base64.b64encode(
                                  checkpoints._signing_key(ctx, old).sign(signed)).decode()))
    with ctx.session() as s:
        result = verify_tenant_chain(s, team.tenant_id)
    assert not result.ok and result.problem == (
        f"checkpoint at seq {head.seq}: signed by key {old.key_id} outside its validity")
