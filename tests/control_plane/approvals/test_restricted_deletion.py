"""A tenant that makes ``tenant.delete`` a restricted action: the Owner's deletion opens an
approval request and deletes nothing; with the approved request's id it goes ahead, once."""

from __future__ import annotations

import html

from control_plane.models import Tenant
from tenant_runtime.approvals import service as approvals
from tests.control_plane.approvals.helpers import make_team
from tests.factories import csrf_token, sign_in


def delete(client, tenant_id: int, slug: str, approval_id: str = ""):
    token = csrf_token(client, f"/tenants/{tenant_id}")
    return client.post(f"/tenants/{tenant_id}/delete", data={
        "csrf_token": token, "confirm_slug": slug, "reason": "closing the account",
        "approval_id": approval_id})


def state(services, tenant_id: int) -> str:
    with services.session_factory() as s:
        return s.get(Tenant, tenant_id).state


def test_a_restricted_deletion_waits_for_an_approval_and_uses_it_once(
        client, services, db, database_url, primary_server, local_kek):
    team = make_team(services, db, database_url)
    team.add_class("tenant.delete", description="Deleting this tenant")
    sign_in(client, team.users["owner"].email)
    pending = delete(client, team.tenant_id, team.slug)
    assert pending.status_code == 202 and state(services, team.tenant_id) == "active"
    text = html.unescape(pending.text)
    request_id = text.split("approval request ")[1].split(" was opened")[0]
    refused = delete(client, team.tenant_id, team.slug, request_id)  # not approved yet
    assert refused.status_code == 409, (request_id, refused.status_code)
    assert state(services, team.tenant_id) == "active"
    approver = team.ctx("approver")
    with approver.session() as s, s.begin():
        approvals.decide(s, approver, request_id, True, "confirmed with the customer")
    done = delete(client, team.tenant_id, team.slug, request_id)
    assert done.status_code == 200 and state(services, team.tenant_id) == "deleted"


def test_an_unrestricted_tenant_deletes_at_once(client, services, db, database_url,
                                                primary_server, local_kek):
    team = make_team(services, db, database_url)
    sign_in(client, team.users["owner"].email)
    assert delete(client, team.tenant_id, team.slug).status_code == 200
    assert state(services, team.tenant_id) == "deleted"
