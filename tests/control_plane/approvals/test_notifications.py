"""Approval notifications through the worker's delivery task: e-mail received by a real SMTP
server (aiosmtpd) on a free port, the tenant's HMAC-signed webhook and the signed
``action.execute`` webhook received by a local HTTP server, each retried while its receiver
is down and sent once."""

from __future__ import annotations

import email
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from email.policy import default as default_policy

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from tenant_runtime.approvals import classes, service
from tenant_runtime.approvals.models import ApprovalOutbox
from tests.conftest import free_port
from tests.control_plane.approvals.helpers import Receiver, make_team
from tests.fakes.redirects import REFUSED_HOST, Redirector, Trap
from workers.approvals import deliver_all_tenants

LATER = timedelta(hours=2)  # past any retry's backoff


class Inbox:
    """What a real SMTP server received: (envelope recipients, parsed message)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_port() -> int:
    return free_port()


@pytest.fixture
def settings(tmp_path, smtp_port):
    from tests.conftest import make_settings

    return make_settings(home=tmp_path / "home", public_url="https://magistrate.example.com",
                         smtp_host="127.0.0.1", smtp_port=smtp_port, smtp_tls="none",
                         smtp_from="approvals@magistrate.example.com",
                         gateway_private_networks=("127.0.0.0/8",))  # the local receiver


@pytest.fixture
def team(services, db, database_url, primary_server, local_kek):
    return make_team(services, db, database_url)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def start_smtp(port: int) -> tuple[Controller, Inbox]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, inbox


def deliver(services, *, at: datetime | None = None):
    return deliver_all_tenants(services.session_factory, services.tenant_connections,
                               services.settings, now=(lambda: at) if at else None)


def ask(team, action="deploy.production", payload=None):
    ctx = team.ctx("operator")
    with ctx.session() as s, s.begin():
        return service.request_action(s, ctx, action, payload or {"service_id": 7},
                                      via="api").id


def outbox(team):
    with team.system().session() as s:
        return {r.kind: r for r in s.scalars(select(ApprovalOutbox))}


def test_approvers_get_an_email_with_the_link_and_no_secrets_after_smtp_was_down(
        services, team, smtp_port):
    team.add_class("deploy.production", description="Deploy the production stack.")
    rid = ask(team, payload={"service_id": 7, "build": "b-8812"})
    first = deliver(services)  # nothing listens on the SMTP port yet
    assert first["sent"] == 0
    row = outbox(team)["email"]
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "ConnectionRefusedError")
    controller, inbox = start_smtp(smtp_port)
    try:
        assert deliver(services)["sent"] == 0  # the retry is not due yet
        assert deliver(services, at=datetime.now(UTC) + LATER)["sent"] == 1
        assert deliver(services, at=datetime.now(UTC) + 2 * LATER)["sent"] == 0  # sent once
    finally:
        controller.stop()
    [(recipients, message)] = inbox.messages
    # the Approver role and the tenant's Owner; not the requester, not the other roles
    assert sorted(recipients) == ["approver2@example.com", "approver@example.com",
                                  "owner@example.com"]
    assert message["From"] == "approvals@magistrate.example.com"
    assert message["Subject"] == "Approval requested: deploy.production (acme)"
    body = message.get_content()
    link = f"https://magistrate.example.com/tenants/{team.tenant_id}/approvals/{rid}"
    assert link in body and "sign in" in body
    assert "operator@example.com asked to run" in body
    assert "b-8812" not in body and "approver@example.com" not in str(message)
    assert outbox(team)["email"].recipients == 3


def test_the_notification_webhook_is_signed_and_retried(services, team, receiver):
    ctx = team.ctx("owner")
    with ctx.session() as s, s.begin():
        secret = classes.do_configure_notifications(s, ctx, webhook_url=receiver.url,
                                                    email_approvers=False)
    team.add_class("deploy.production")
    rid = ask(team)
    receiver.fail = True
    assert deliver(services)["sent"] == 0
    assert outbox(team)["webhook"].last_error == "HTTP 503"
    receiver.fail = False
    assert deliver(services, at=datetime.now(UTC) + LATER)["sent"] == 1
    assert deliver(services, at=datetime.now(UTC) + 2 * LATER)["sent"] == 0
    [(body, headers)] = receiver.received
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Magistrate-Signature"] == expected
    assert headers["X-Magistrate-Event"] == "approval.requested"
    document = json.loads(body)
    assert document["request_id"] == str(rid) and document["action"] == "deploy.production"
    assert document["url"].endswith(f"/tenants/{team.tenant_id}/approvals/{rid}")
    assert "service_id" not in body.decode()
    assert "email" not in outbox(team)  # e-mail to approvers is turned off for this tenant


def test_an_approved_action_is_sent_to_its_execution_url_once(services, team, receiver):
    _, secret = team.add_class("deploy.production", execution_url=receiver.url)
    assert secret
    rid = ask(team, payload={"service_id": 7})
    ctx = team.ctx("approver")
    with ctx.session() as s, s.begin():
        assert service.decide(s, ctx, rid, True, "ship it").state == "executed"
    receiver.fail = True
    deliver(services)
    receiver.fail = False
    for offset in (1, 2, 3):
        deliver(services, at=datetime.now(UTC) + offset * LATER)
    [(body, headers)] = receiver.received
    assert headers["Idempotency-Key"] == str(rid)
    assert headers["X-Magistrate-Event"] == "action.execute"
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Magistrate-Signature"] == expected
    document = json.loads(body)
    assert (document["type"], document["payload"], document["approved_by"]) == (
        "action.execute", {"service_id": 7}, ["approver@example.com"])
    assert "ship it" not in body.decode()
    view_ctx = team.ctx("viewer")
    with view_ctx.session() as s:
        view = service.request_view(s, view_ctx, rid)
    assert "Action sent to the execution URL" in [e.what for e in view.timeline]


def test_webhooks_that_redirect_are_not_followed_and_the_outbox_says_so(services, team):
    """Security review issue 15, finding 1, for both approval webhook senders: the tenant's
    notification webhook (307) and a class's execution URL (303) point at receivers that
    redirect to an address the egress policy refuses; nothing reaches it."""
    with Trap() as trap, Redirector(307, trap.url("/notify")) as hook, \
            Redirector(303, trap.url("/execute")) as execute:
        ctx = team.ctx("owner")
        with ctx.session() as s, s.begin():
            classes.do_configure_notifications(s, ctx, webhook_url=hook.base_url + "/hook",
                                               email_approvers=False)
        team.add_class("deploy.production", execution_url=execute.base_url + "/run")
        rid = ask(team)
        assert deliver(services)["sent"] == 0
        approver = team.ctx("approver")
        with approver.session() as s, s.begin():
            assert service.decide(s, approver, rid, True, "ship it").state == "executed"
        assert deliver(services)["sent"] == 0
        assert (hook.requests, execute.requests) == ([("POST", "/hook")], [("POST", "/run")])
    assert (trap.connections, trap.data) == (0, b"")
    rows = outbox(team)
    for kind, status, path in (("webhook", 307, "/notify"), ("execute", 303, "/execute")):
        assert rows[kind].status == "pending"  # retried later, refused again
        assert rows[kind].last_error == (
            f"The upstream answered with a redirect (HTTP {status}) to "
            f"http://{REFUSED_HOST}:{trap.port}{path}, which Magistrate does not follow.")
