"""The approvals pages: Owners and Admins configure action classes (audited, validated with
sentences); an operator asks in the dashboard; an approver sees it in the inbox and the
navigation's count, decides it, and the request's timeline tells the story. Expired requests
say so; another tenant's request ids answer 404."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tenant_runtime.approvals import service
from tenant_runtime.approvals.models import ActionClass
from tenant_runtime.models import AuditEvent
from tests.control_plane.approvals.helpers import make_team
from tests.factories import csrf_token, sign_in


@pytest.fixture
def team(services, db, database_url, primary_server, local_kek):
    return make_team(services, db, database_url)


def post(client, team, path, data, page="/approvals"):
    token = csrf_token(client, f"/tenants/{team.tenant_id}{page}")
    return client.post(f"/tenants/{team.tenant_id}{path}", data={"csrf_token": token, **data},
                       follow_redirects=False)


def switch(client, email):
    client.cookies.clear()
    sign_in(client, email)


CLASS = {"name": "Deploy.Production", "description": "Ship the production stack",
         "restricted": "true", "approver_role": "Approver", "expiry_hours": "24",
         "approvals_needed": "1", "execution_url": ""}


def test_owners_and_admins_configure_action_classes(client, team):
    sign_in(client, "admin@example.com")
    page = "/approvals/classes"
    assert post(client, team, page, CLASS, page).status_code == 200
    again = post(client, team, page, CLASS, page)
    assert again.status_code == 422
    assert "already an action class named 'deploy.production'" in html.unescape(again.text)
    bad_url = post(client, team, page, {**CLASS, "name": "x", "execution_url": "http://10.0.0.1/"},
                   page)
    assert bad_url.status_code == 422 and "https://" in bad_url.text
    bad_role = post(client, team, page, {**CLASS, "name": "y", "approver_role": "Viewer"}, page)
    assert bad_role.status_code == 422 and "approving role must be one of" in bad_role.text
    too_many = post(client, team, page, {**CLASS, "name": "z", "approvals_needed": "50"}, page)
    assert too_many.status_code == 422 and "approvals_needed" in too_many.text
    ctx = team.system()
    with ctx.session() as s:
        row = s.scalars(select(ActionClass)).one()
    changed = post(client, team, f"{page}/{row.id}",
                   {k: v for k, v in CLASS.items() if k != "name"} | {"approvals_needed": "2",
                                                                        "execution_url":
                                                                        "https://ci.example.com/run"},
                   page)
    assert changed.status_code == 200
    secret = re.search(r'data-testid="signing-secret">([^<]+)<', changed.text).group(1)
    assert len(secret) > 30
    with ctx.session() as s:
        row = s.scalars(select(ActionClass)).one()
        assert (row.approvals_needed, row.execution_url) == (2, "https://ci.example.com/run")
        assert secret.encode() not in row.execution_secret_sealed
        kinds = list(s.scalars(select(AuditEvent.event_type).where(
            AuditEvent.event_type.like("approval.%")).order_by(AuditEvent.seq)))
    assert kinds == ["approval.class_added", "approval.class_changed"]
    switch(client, "operator@example.com")
    assert post(client, team, page, {**CLASS, "name": "w"}, page).status_code == 403
    assert client.get(f"/tenants/{team.tenant_id}{page}").status_code == 200  # may look


def test_an_operator_asks_and_an_approver_decides_in_the_inbox(client, team):
    team.add_class("deploy.production", description="Ship the production stack")
    sign_in(client, "operator@example.com")
    bad = post(client, team, "/approvals/requests", {"action": "deploy.production",
                                                      "payload": "[1, 2]"})
    assert bad.status_code == 422 and "must be a JSON object" in bad.text
    asked = post(client, team, "/approvals/requests", {"action": "deploy.production",
                                                        "payload": '{"service_id": 7}'})
    assert asked.status_code == 303
    request_path = asked.headers["location"]
    page = client.get(request_path)
    assert 'data-testid="request-state">pending<' in page.text
    assert "Your decision" not in page.text  # the requester cannot decide
    refused = post(client, team, request_path.split(str(team.tenant_id), 1)[1] + "/approve",
                   {"comment": ""})
    assert refused.status_code == 403  # the requester may not decide
    assert "someone else must approve it" in html.unescape(refused.text)

    switch(client, "approver@example.com")
    nav = client.get("/approvals/nav", headers={"HX-Request": "true"})
    assert 'data-testid="approvals-count"' in nav.text and ">1<" in nav.text
    assert 'href="/approvals"' in nav.text  # the global page, which names the tenant
    across = client.get("/approvals").text
    waiting = across.split('data-testid="across-waiting"', 1)[1].split("</table>", 1)[0]
    assert f'href="/tenants/{team.tenant_id}/approvals"' in waiting
    assert "deploy.production" in waiting and '{"service_id": 7}' in waiting
    inbox = client.get(f"/tenants/{team.tenant_id}/approvals", headers={"HX-Request": "true"})
    assert inbox.text.lstrip().startswith('<section class="card" id="inbox"')
    assert "deploy.production" in inbox.text and "operator@example.com" in inbox.text
    payload = inbox.text.split('data-testid="inbox-payload">', 1)[1].split("</td>", 1)[0]
    assert payload == '<code>{"service_id": 7}</code>'  # what the approver approves
    rid = request_path.rsplit("/", 1)[1]
    token = csrf_token(client, f"/tenants/{team.tenant_id}/approvals")
    no_reason = client.post(f"/tenants/{team.tenant_id}/approvals/{rid}/reject",
                            data={"csrf_token": token, "reason": ""},
                            headers={"HX-Request": "true", "HX-Target": "inbox"})
    assert no_reason.status_code == 422 and "A rejection needs a reason" in no_reason.text
    approved = client.post(f"/tenants/{team.tenant_id}/approvals/{rid}/approve",
                           data={"csrf_token": token, "comment": "Checked the diff"},
                           headers={"HX-Request": "true", "HX-Target": "inbox"})
    assert approved.status_code == 200 and "Nothing is waiting for you" in approved.text
    nav = client.get("/approvals/nav", headers={"HX-Request": "true"})
    assert 'data-testid="approvals-count"' not in nav.text
    no_csrf = client.post(f"/tenants/{team.tenant_id}/approvals/{rid}/approve",
                          data={"comment": "again"})
    assert no_csrf.status_code == 403

    switch(client, "viewer@example.com")
    page = client.get(request_path)
    assert 'data-testid="request-state">approved<' in page.text
    timeline = html.unescape(page.text.split('data-testid="timeline"', 1)[1])
    assert "Requested deploy.production (dashboard)" in timeline
    assert "approver@example.com" in timeline and "Checked the diff" in timeline
    with team.system().session() as s:
        kinds = list(s.scalars(select(AuditEvent.event_type).where(
            AuditEvent.target_id == rid).order_by(AuditEvent.seq)))
    assert kinds == ["approval.requested", "approval.approved"]


def test_an_expired_request_says_so_and_refuses_approval(client, team):
    team.add_class("deploy.production")
    ctx = team.ctx("operator")
    with ctx.session() as s, s.begin():  # asked 25 hours ago on the service's clock
        rid = service.request_action(s, ctx, "deploy.production", {}, via="dashboard",
                                     now=datetime.now(UTC) - timedelta(hours=25)).id
    sign_in(client, "approver@example.com")
    page = client.get(f"/tenants/{team.tenant_id}/approvals/{rid}")
    assert 'data-testid="request-state">expired<' in page.text
    assert "Your decision" not in page.text
    late = post(client, team, f"/approvals/{rid}/approve", {"comment": ""})
    assert late.status_code == 409 and "expired before it was decided" in late.text
    assert 'data-testid="request-state">expired<' in late.text
    assert "Nothing is waiting for you" in client.get(
        f"/tenants/{team.tenant_id}/approvals").text


def test_another_tenants_requests_answer_404(client, services, db, database_url, team):
    other = make_team(services, db, database_url, "globex", prefix="g-")
    other.add_class("deploy.production")
    ctx = other.ctx("operator")
    with ctx.session() as s, s.begin():
        theirs = service.request_action(s, ctx, "deploy.production", {}, via="dashboard").id
    sign_in(client, "owner@example.com")  # the Owner of acme, not a member of globex
    for tenant_id in (other.tenant_id, team.tenant_id):
        assert client.get(f"/tenants/{tenant_id}/approvals/{theirs}").status_code == 404
    # their id under my own tenant: not found here either (separate databases)
    assert post(client, team, f"/approvals/{theirs}/approve", {"comment": ""}).status_code == 404
    token = csrf_token(client, f"/tenants/{team.tenant_id}/approvals")
    response = client.post(f"/tenants/{other.tenant_id}/approvals/{theirs}/approve",
                           data={"csrf_token": token, "comment": ""})
    assert response.status_code == 404
    with other.system().session() as s:
        assert service.current_state(s, theirs) == "pending"
