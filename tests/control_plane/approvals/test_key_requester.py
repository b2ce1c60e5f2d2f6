"""The human behind an API key is the requester (DESIGN.md, invariants 5 and 9; review issue
15, finding 3): what a key asks for is recorded as asked by the key's creator, who can never
approve it, from the dashboard, whichever of her keys asked; nor does it reach her inbox or her
e-mail. A request recorded with a key as requester (before keys named their creator) is
approved by nobody."""

from __future__ import annotations

import html

import pytest
from sqlalchemy import update

from tenant_runtime.approvals import service
from tenant_runtime.approvals.exceptions import SelfApprovalRefused
from tenant_runtime.approvals.models import ApprovalRequest
from tests.control_plane.approvals.helpers import make_team
from tests.factories import csrf_token, sign_in
from workers.approvals import recipients_in


@pytest.fixture
def team(services, db, database_url, primary_server, local_kek):
    team = make_team(services, db, database_url)
    # the Admin role approves: the only thing that stops the admin is being the requester
    team.add_class("deploy.production", approver_role="Admin")
    return team


def ask(client, key: str) -> str:
    client.cookies.clear()
    asked = client.post("/api/actions", headers={"Authorization": f"Bearer {key}"},
                        json={"action": "deploy.production", "payload": {"service_id": 7}})
    assert asked.status_code == 202, asked.text
    return asked.json()["id"]


def test_self_approval_through_ones_own_key_or_a_second_key_is_refused(client, team, services):
    first = team.api_key("ci", who="admin", scopes=("actions:request",))
    second = team.api_key("laptop", who="admin", scopes=("actions:request",))
    admin_id = str(team.users["admin"].id)
    requests = [ask(client, first), ask(client, second)]
    with team.system().session() as s:
        rows = [service.access_request(s, rid) for rid in requests]
    assert [(r.requested_by_type, r.requested_by_id) for r in rows] == [("user", admin_id)] * 2
    assert rows[0].requested_by_name == "admin@example.com (API key ci)"
    # the dashboard: refused with the sentence, and nothing recorded
    sign_in(client, "admin@example.com")
    for rid in requests:
        token = csrf_token(client, f"/tenants/{team.tenant_id}/approvals/{rid}")
        page = client.get(f"/tenants/{team.tenant_id}/approvals/{rid}").text
        assert f"/approvals/{rid}/approve" not in page  # no button to press
        refused = client.post(f"/tenants/{team.tenant_id}/approvals/{rid}/approve",
                              data={"csrf_token": token, "comment": ""})
        assert refused.status_code == 403
        assert "You asked for this action, so someone else must approve it." in \
            html.unescape(refused.text)
        ctx = team.ctx("admin")
        with ctx.session() as s, s.begin(), pytest.raises(SelfApprovalRefused):
            service.decide(s, ctx, rid, True, None)
    with team.ctx("admin").session() as s:
        assert service.inbox(s, user_id=admin_id, role="Admin") == []
        assert service.current_state(s, requests[0]) == "pending"
    # nor is she e-mailed about her own request; the Owner is
    recipients = recipients_in(services.session_factory, team.tenant_id)
    with team.system().session() as s:
        assert recipients(service.access_request(s, requests[0])) == ["owner@example.com"]
    # someone else approves, and the key executes exactly once
    ctx = team.ctx("owner")
    with ctx.session() as s, s.begin():
        assert service.decide(s, ctx, requests[0], True, None).state == "approved"


def test_a_request_recorded_with_a_key_as_requester_is_approved_by_nobody(client, team):
    key = team.api_key("ci", who="admin", scopes=("actions:request",))
    rid = ask(client, key)
    with team.system().session() as s, s.begin():  # as rows made before this upgrade look
        s.execute(update(ApprovalRequest).where(ApprovalRequest.id == rid).values(
            requested_by_type="api_key", requested_by_id="1"))
    for who in ("owner", "admin"):
        ctx = team.ctx(who)
        with ctx.session() as s, s.begin(), pytest.raises(SelfApprovalRefused):
            service.decide(s, ctx, rid, True, None)
        with ctx.session() as s:
            assert service.inbox(s, user_id=ctx.actor.id, role=ctx.actor.role) == []
