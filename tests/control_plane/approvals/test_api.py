"""``POST /api/actions`` and ``POST /api/actions/{id}/execute``: with a tenant API key (no
CSRF), with a session (CSRF applies), bad input answered with a sentence, and another
tenant's ids answering 404."""

from __future__ import annotations

import pytest

from tenant_runtime.approvals import service
from tests.control_plane.approvals.helpers import make_team
from tests.factories import csrf_token, sign_in


@pytest.fixture
def team(services, db, database_url, primary_server, local_kek):
    team = make_team(services, db, database_url)
    team.add_class("deploy.production")
    return team


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def approve(team, request_id, who="approver"):
    ctx = team.ctx(who)
    with ctx.session() as s, s.begin():
        service.decide(s, ctx, request_id, True, None)


def test_an_agent_asks_then_executes_exactly_once(client, team):
    key = bearer(team.api_key())
    asked = client.post("/api/actions", headers=key,
                        json={"action": "deploy.production", "payload": {"service_id": 7}})
    assert asked.status_code == 202, asked.text
    body = asked.json()
    rid = body["id"]
    assert body["state"] == "pending" and asked.headers["location"] == f"/api/actions/{rid}"
    early = client.post(f"/api/actions/{rid}/execute", headers=key)
    assert early.status_code == 409 and "still waiting for approval" in early.json()["error"]
    approve(team, rid)
    assert client.get(f"/api/actions/{rid}", headers=key).json()["state"] == "approved"
    client.cookies.clear()  # the GET set an anonymous cookie; a request with one needs CSRF
    done = client.post(f"/api/actions/{rid}/execute", headers=key)
    assert done.status_code == 200, done.text
    assert (done.json()["state"], done.json()["payload"]) == ("executed", {"service_id": 7})
    again = client.post(f"/api/actions/{rid}/execute", headers=key)
    assert again.status_code == 409
    assert "already used" in again.json()["error"]
    with team.system().session() as s:
        row = service.access_request(s, rid)
        # the human behind the key is the requester (DESIGN.md, invariant 9)
        assert (row.via, row.requested_by_type, row.requested_by_id, row.executed_via) == (
            "api", "user", str(team.users["owner"].id), "api")


def test_bad_input_gets_a_sentence(client, team):
    key = bearer(team.api_key())
    cases = [
        ({"action": "no.such"}, 422, "no action class named 'no.such'"),
        ({"action": "deploy.production", "extra": 1}, 422, "Unknown field 'extra'"),
        ({"payload": {}}, 422, "'action' is required"),
        ({"action": "deploy.production", "payload": [1]}, 422, "payload"),
        ({"action": "deploy.production", "payload": {"api_key": "x"}}, 422, "never secrets"),
    ]
    for body, status, sentence in cases:
        answer = client.post("/api/actions", headers=key, json=body)
        assert answer.status_code == status, (body, answer.text)
        assert sentence in answer.json()["error"], (body, answer.text)
    not_json = client.post("/api/actions", headers={**key, "Content-Type": "application/json"},
                           content=b"{nope")
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["error"]
    form = client.post("/api/actions", headers=key, data={"action": "x"})
    assert form.status_code == 415
    anonymous = client.post("/api/actions", json={"action": "deploy.production"},
                            headers={"Authorization": "Bearer mg_nope_nope"})
    assert anonymous.status_code == 401
    assert client.post("/api/actions/not-a-uuid/execute", headers=key).status_code == 404


def test_a_session_asks_with_csrf_and_the_right_role(client, team):
    url = f"/api/actions?tenant={team.tenant_id}"
    sign_in(client, "operator@example.com")
    refused = client.post(url, json={"action": "deploy.production"})
    assert refused.status_code == 403  # no CSRF token
    token = csrf_token(client, f"/tenants/{team.tenant_id}/approvals")
    asked = client.post(url, json={"action": "deploy.production"},
                        headers={"X-CSRF-Token": token})
    assert asked.status_code == 202, asked.text
    rid = asked.json()["id"]
    missing_tenant = client.post("/api/actions", json={"action": "deploy.production"},
                                 headers={"X-CSRF-Token": token})
    assert missing_tenant.status_code == 422 and "?tenant=" in missing_tenant.json()["error"]
    approve(team, rid)
    done = client.post(f"/api/actions/{rid}/execute?tenant={team.tenant_id}",
                       headers={"X-CSRF-Token": token})
    assert done.status_code == 200
    client.post("/sign-out", data={"csrf_token": token})
    sign_in(client, "viewer@example.com")
    token = csrf_token(client, f"/tenants/{team.tenant_id}/approvals")
    viewer = client.post(url, json={"action": "deploy.production"},
                         headers={"X-CSRF-Token": token})
    assert viewer.status_code == 403


def test_another_tenants_ids_answer_404(client, services, db, database_url, team):
    other = make_team(services, db, database_url, "globex", prefix="g-")
    other.add_class("deploy.production")
    mine, theirs = bearer(team.api_key()), bearer(other.api_key())
    rid = client.post("/api/actions", headers=mine,
                      json={"action": "deploy.production"}).json()["id"]
    approve(team, rid)
    for method, path in (("GET", f"/api/actions/{rid}"),
                         ("POST", f"/api/actions/{rid}/execute")):
        client.cookies.clear()  # a program's client keeps no cookies (the GET sets one)
        assert client.request(method, path, headers=theirs).status_code == 404
    client.cookies.clear()
    named = client.post(f"/api/actions?tenant={team.tenant_id}", headers=theirs,
                        json={"action": "deploy.production"})
    assert named.status_code == 404
    assert client.post(f"/api/actions/{rid}/execute", headers=mine).status_code == 200
