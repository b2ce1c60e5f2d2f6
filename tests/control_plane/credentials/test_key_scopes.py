"""API keys are least-privilege (DESIGN.md, invariant 9; review issue 15, finding 2): a key
holds the scopes picked at its creation, never one its creator's role lacks, and on every use
its creator's *current* role is checked again. Every route of the app's route table is walked:
a route that takes keys refuses a key without its scope with a sentence naming the scope, and
every other route accepts no key at all."""

from __future__ import annotations

import html
import re

from sqlalchemy import select, update
from starlette.routing import Mount, Route

from control_plane.exceptions import Forbidden
from control_plane.models import ApiKey, PlatformAuditEvent, User
from control_plane.tenancy import api_keys, service
from control_plane.web import access
from control_plane.web.app import build_app
from tests.control_plane.credentials.helpers import (
    bearer,
    make_key,
    message,
    provisioned,
    set_role,
)
from tests.control_plane.tenancy.test_isolation import fill
from tests.factories import csrf_token, sign_in

# a body each key-taking POST route parses after the key is settled (none needs to succeed)
BODIES = {"/api/actions": {"action": "no.such.action", "payload": {}},
          "/api/agents/{agent_id}/shadow-runs": {"proposed": "p", "actual": "a",
                                                 "agreed": True},
          "/v1/chat/completions": {}, "/v1/messages": {}}
ALL = tuple(api_keys.SCOPES)


def _call(client, route: Route, key_name: str, tenant_id: int, key: str):
    method, path = key_name.split(" ", 1)
    url = fill(route.path, tenant_id)
    body = BODIES.get(route.path)
    client.cookies.clear()
    return client.request(method, url, headers=bearer(key),
                          json=body if method == "POST" else None, follow_redirects=False)


def test_every_route_that_takes_keys_refuses_a_key_without_its_scope_and_no_other_takes_one(
        services, db, database_url, primary_server, local_kek, client):
    tenant_id = provisioned(services, db, database_url)
    owner = "owner@cred.example"
    full = make_key(services, tenant_id, owner, ALL, name="everything")
    app = build_app(services)
    taking = {k: r for r in app.routes for k in access.route_keys(r) if k in access.KEY_SCOPES}
    assert set(taking) == set(access.KEY_SCOPES), "KEY_SCOPES names a route that does not exist"
    assert len(taking) >= 10
    problems: list[str] = []
    for name, route in taking.items():
        assert isinstance(route, Route)
        accepted = _call(client, route, name, tenant_id, full)
        if accepted.status_code in (401, 403) and "API key" in message(accepted):
            problems.append(f"{name} refused a key with every scope: {message(accepted)}")
        wanted = access.KEY_SCOPES[name]
        if not wanted:  # /api/whoami: any valid key (it shows only the key itself)
            continue
        lacking = make_key(services, tenant_id, owner,
                           [s for s in ALL if s not in wanted], name=f"no {wanted[0]}")
        refused = _call(client, route, name, tenant_id, lacking)
        sentence = message(refused)
        if refused.status_code != 403 or not all(f"'{s}'" in sentence for s in wanted) \
                or "lacks the scope" not in sentence:
            problems.append(f"{name} answered a key without {wanted}: "
                            f"{refused.status_code} {sentence[:200]}")
        for scope in wanted:  # each scope it names opens it on its own
            alone = make_key(services, tenant_id, owner, [scope], name=f"only {scope}")
            answer = _call(client, route, name, tenant_id, alone)
            if answer.status_code in (401, 403) and "API key" in message(answer):
                problems.append(f"{name} refused a key holding only {scope}")
    # every other route (bar the public ones) takes no key, whatever scopes it holds
    for route in app.routes:
        if isinstance(route, Mount):
            continue
        for name in access.route_keys(route):
            if name in access.KEY_SCOPES or access.decision_of(route, name) == access.PUBLIC:
                continue
            answer = _call(client, route, name, tenant_id, full)
            if 200 <= answer.status_code < 300:
                problems.append(f"{name} accepted a bare API key: {answer.status_code}")
    assert not problems, "\n".join(problems)


def test_a_key_loses_what_its_creators_new_role_lacks_on_the_next_call(
        services, db, database_url, primary_server, local_kek, client):
    tenant_id = provisioned(services, db, database_url, members=[("second", "Owner")])
    owner, second = "owner@cred.example", "second@cred.example"
    key = bearer(make_key(services, tenant_id, owner, ["audit:export", "gateway",
                                                       "actions:request"]))
    assert client.get("/api/audit/export", headers=key).status_code == 200
    set_role(services, tenant_id, second, owner, "Admin")
    client.cookies.clear()
    refused = client.get("/api/audit/export", headers=key)
    assert refused.status_code == 403
    assert message(refused) == (
        "This API key holds the scope 'audit:export', but its creator's role is now Admin, "
        "which may not export the audit log and the tenant's data; a key never does more than "
        "its creator.")
    assert client.get("/v1/models", headers=key).status_code == 200  # Admin still calls models
    set_role(services, tenant_id, second, owner, "Approver")
    client.cookies.clear()
    for method, url, body in (("GET", "/v1/models", None),
                              ("POST", "/api/actions", {"action": "x", "payload": {}})):
        answer = client.request(method, url, headers=key, json=body)
        assert answer.status_code == 403, (url, answer.text)
        assert "its creator's role is now Approver" in message(answer)
    whoami = client.get("/api/whoami", headers=key).json()["api_key"]
    assert (whoami["creator_role"], whoami["scopes"]) == (
        "Approver", ["actions:request", "audit:export", "gateway"])


def test_an_admins_key_cannot_export_the_audit_log(services, db, database_url, primary_server,
                                                  local_kek, client):
    """The review's probe: an Admin (who may not export the audit log) mints a key and calls
    /api/audit/export."""
    tenant_id = provisioned(services, db, database_url, members=[("admin", "Admin")])
    admin = "admin@cred.example"
    with services.session_factory() as s, s.begin():
        me = s.scalars(select(User).where(User.email == admin)).one()
        mine = service.access_tenant(s, tenant_id, user=me)
        try:
            api_keys.do_create_api_key(s, mine, name="x", acting_user=me,
                                       scopes=["audit:export"])
            raise AssertionError("an Admin gave a key the audit:export scope")
        except Forbidden as exc:
            assert exc.message == ("Your role (Admin) may not give a key the scope "
                                   "'audit:export': a key never holds more than its creator's "
                                   "role.")
    # the dashboard offers an Admin only what the Admin's role holds, and refuses the rest
    sign_in(client, admin)
    page = client.get(f"/tenants/{tenant_id}/settings").text
    offered = set(re.findall(r'name="scopes" value="([^"]+)"', page))
    assert offered == set(ALL) - {"audit:export"}
    token = csrf_token(client, f"/tenants/{tenant_id}")
    forged = client.post(f"/tenants/{tenant_id}/api-keys",
                         data={"csrf_token": token, "name": "x", "expires_in_days": "",
                               "scopes": ["gateway", "audit:export"]})
    assert forged.status_code == 403
    assert "may not give a key the scope 'audit:export'" in html.unescape(forged.text)
    none = client.post(f"/tenants/{tenant_id}/api-keys",
                       data={"csrf_token": token, "name": "x", "expires_in_days": ""})
    assert none.status_code == 422 and "Pick at least one scope" in html.unescape(none.text)
    made = client.post(f"/tenants/{tenant_id}/api-keys",
                       data={"csrf_token": token, "name": "ci", "expires_in_days": "",
                             "scopes": ["gateway", "read"]})
    assert made.status_code == 201
    key = re.search(r'data-testid="new-api-key">([^<]+)<', made.text).group(1)
    row = re.search(r'<tr data-key="[0-9a-f]+"><td>ci</td>.*?</tr>', made.text, re.S).group(0)
    assert "gateway, read" in row and admin in row  # the page shows each key's scopes
    with services.session_factory() as s:
        event = s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == "api_key.created")).one()
        assert event.details["scopes"] == ["gateway", "read"]
    # a key with the scope written straight into the database still cannot export: the role
    # of its creator is checked on every use
    with services.session_factory() as s, s.begin():
        s.execute(update(ApiKey).values(scopes=list(ALL)))
    client.cookies.clear()
    refused = client.get("/api/audit/export", headers=bearer(key))
    assert refused.status_code == 403
    assert "its creator's role is now Admin, which may not export" in message(refused)
