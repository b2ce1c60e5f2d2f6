"""The drive layer's JSON API: an agent reads its phase and tools, and records shadow runs with
its tenant API key; bad input answers a clear 4xx; another tenant's agent is 404."""

from __future__ import annotations

from control_plane.models import Tenant, User
from control_plane.tenancy import api_keys, service
from tenant_runtime.agents import service as agents
from tenant_runtime.context import Actor
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user


def setup(services, db, database_url, slug: str, email: str,
          agents_before: int = 0) -> tuple[int, int, str]:
    owner = make_user(db, email)
    tid = create_tenant(services, owner.email, slug)
    run_pending_jobs(services, database_url)
    with services.session_factory() as s, s.begin():
        user = s.get(User, owner.id)
        access = service.access_tenant(s, tid, user=user)
        _, key = api_keys.do_create_api_key(s, access, name="agent", acting_user=user,
                                            scopes=["agents"])
        ctx = services.tenant_connections.context(
            s, s.get(Tenant, tid), Actor("user", str(user.id), user.email, "Owner"))
    with ctx.session() as ts, ts.begin():
        for i in range(agents_before):
            agents.create_placeholder(ts, ctx, name=f"{slug}-earlier-{i}", task_id=None)
        agent = agents.create_placeholder(ts, ctx, name=f"{slug}-agent", task_id=None)
        agent.phase = "shadow"
        agent_id = agent.id
    return tid, agent_id, key


def test_an_agent_reads_its_scope_and_records_shadow_runs(client, services, db, database_url,
                                                          primary_server, local_kek):
    _, agent_id, key = setup(services, db, database_url, "acme", "a@example.com")
    # ids are per tenant database: globex's agent is id 3, which acme does not have
    _, other_agent, _ = setup(services, db, database_url, "globex", "b@example.com",
                              agents_before=2)
    auth = {"Authorization": f"Bearer {key}"}
    client.cookies.clear()  # a program: a key and no cookie (else CSRF applies)
    got = client.get(f"/api/agents/{agent_id}", headers=auth)
    client.cookies.clear()
    assert got.status_code == 200
    assert got.json()["phase"] == "shadow" and "send_message" not in got.json()["tools"]
    for _ in range(3):
        made = client.post(f"/api/agents/{agent_id}/shadow-runs", headers=auth, json={
            "proposed": "refund $20", "actual": "refund $20", "agreed": True,
            "ground_truth_score": 1})
        assert made.status_code == 201, made.text
    evidence = made.json()["agent"]["evidence"]
    assert (evidence["runs"], evidence["agreed"], evidence["scored"]) == (3, 3, 3)
    assert evidence["promotion_possible"] is False
    assert "at least 30 are needed" in evidence["blocked_by"][0]
    for body, status in (({"proposed": "x"}, 422),
                         ({"proposed": "x", "actual": "y", "agreed": True, "extra": 1}, 422),
                         ({"proposed": "x", "actual": "y", "agreed": True,
                           "ground_truth_score": 2}, 422)):
        assert client.post(f"/api/agents/{agent_id}/shadow-runs", headers=auth,
                           json=body).status_code == status
    wrong_type = client.post(f"/api/agents/{agent_id}/shadow-runs", headers=auth,
                             content=b"x")
    assert wrong_type.status_code == 415
    # another tenant's agent, and a missing one, are the same 404
    assert client.get(f"/api/agents/{other_agent}", headers=auth).status_code == 404
    assert client.get("/api/agents/999999", headers=auth).status_code == 404
    assert client.get("/api/agents/nope", headers=auth).status_code == 422
    assert client.get(f"/api/agents/{agent_id}").status_code == 401
