"""The permission matrix decides every route: each route of the app (enumerated from the router,
so routes added later join automatically) has a decision, and every tenant route answers each
of the six roles as ``tenant_runtime/permissions.MATRIX`` says: a role outside the permission
gets 403 with the matrix's sentence and exactly one new ``access.scope_denied`` audit event (and
nothing else); a role inside it gets anything but 403 or 404. docs/roles.md's table is MATRIX."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from control_plane.models import PlatformAuditEvent, Tenant, User
from control_plane.tenancy import service
from control_plane.tenancy.servers import ensure_primary_server
from control_plane.web import access
from control_plane.web.app import build_app
from tenant_runtime import permissions
from tenant_runtime.models import AuditEvent
from tenant_runtime.permissions import MATRIX, ROLES, AccessEvents
from tests.conftest import make_settings
from tests.control_plane.tenancy.conftest import drop_tenant_leftovers
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.control_plane.tenancy.test_isolation import SAMPLES, fill
from tests.factories import csrf_token, make_user, sign_in

ROLES_PAGE = Path(__file__).resolve().parents[2] / "docs" / "roles.md"
# path parameters other than the tenant's id name sub-resources the walk does not create (it
# fills them with 1): an allowed role may meet a 404 for them
SUB_ID = re.compile(r"\{(?!tenant_id)\w+")
# samples that would meet a rule other than the permission (only an Owner may add an Owner)
FORM_OVERRIDES = {"/tenants/{tenant_id:int}/members": {"role": "Viewer"}}
# a sub-resource id of 1 is the Owner's membership: an allowed Admin meets the rank rule
# (tests/control_plane/credentials/test_member_ranks.py), not the permission
OTHER_RULES = ("that member's role outranks yours",)
# JSON bodies of the tenant JSON APIs' POST routes (a valid body: they parse it first)
JSON_SAMPLES = {
    "/api/actions": {"action": "a", "payload": {}},
    "/api/actions/{request_id}/execute": None,
    "/api/agents/{agent_id}/shadow-runs": {"proposed": "p", "actual": "a", "agreed": True},
    "/api/tenants/{tenant_id:int}/members/{membership_id:int}/role": {"role": "Viewer"},
}


@pytest.fixture
def settings(tmp_path):
    return make_settings(home=tmp_path / "home")


@pytest.fixture
def tenancy(services, pg_server_url, settings):
    """The test server as the primary database server and a local KEK (as the tenancy tests'
    fixtures do)."""
    from control_plane.keys.local import LocalKeyProvider

    LocalKeyProvider(settings.home / "keys").create_key("test-kek")
    drop_tenant_leftovers(pg_server_url)
    with services.session_factory() as s, s.begin():
        ensure_primary_server(s, url=pg_server_url, sealer=services.sealer)
    yield
    services.tenant_connections.close()
    drop_tenant_leftovers(pg_server_url)


def all_keys(app) -> list[tuple[object, str]]:
    return [(route, key) for route in app.routes for key in access.route_keys(route)]


# ------------------------------------------------------------------------------- decisions


def test_every_route_has_a_decision_and_every_decision_names_a_route(services):
    app = build_app(services)
    keys = all_keys(app)
    assert len(keys) > 60
    missing = [key for route, key in keys if access.decision_of(route, key) is None]
    assert not missing, ("these routes have no access decision; name a permission= in their "
                         "TenantRoute, or add them to DECISIONS in control_plane/web/access.py: "
                         f"{missing}")
    for route, key in keys:
        decision = access.decision_of(route, key)
        assert decision in MATRIX or decision in access.NON_TENANT, (key, decision)
    stale = set(access.DECISIONS) - {key for _, key in keys}
    assert not stale, f"DECISIONS lists routes that do not exist: {sorted(stale)}"
    # a route about one tenant is decided by a tenant permission, never by a looser decision
    for route, key in keys:
        if "{tenant_id" in key:
            assert access.is_tenant_permission(access.decision_of(route, key)), key


def test_a_tenant_route_cannot_be_declared_without_a_known_permission():
    from tenant_runtime.routing import TenantRoute

    def handler(request, ctx):  # pragma: no cover - never called
        raise AssertionError

    with pytest.raises(TypeError):
        TenantRoute("/x", handler, "GET")  # type: ignore[call-arg]
    with pytest.raises(TypeError):  # the old positional role tuple
        TenantRoute("/x", handler, "POST", ("Owner",), permission="tenant.view")  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown permission 'tenant.everything'"):
        TenantRoute("/x", handler, permission="tenant.everything")


def test_the_readme_table_is_the_matrix():
    text = ROLES_PAGE.read_text(encoding="utf-8")
    match = re.search(r"^#{1,3} Roles and permissions[ \t]*\n(.*?)(?=^#{1,3} |\Z)", text,
                      flags=re.MULTILINE | re.DOTALL)
    assert match is not None, "docs/roles.md has no 'Roles and permissions' section"
    table: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            name = cells[0].strip("`")
            assert name not in table, f"{name} is in docs/roles.md's table twice"
            table[name] = (cells[1], tuple(r.strip() for r in cells[2].split(",")))
    assert table == {p.name: (p.means, p.roles) for p in MATRIX.values()}


def test_refusal_names_what_is_refused_and_who_may():
    sentence = permissions.refusal("members.manage", "Viewer")
    assert sentence.startswith("Your role (Viewer) may not add and remove members")
    assert "Owner or Admin" in sentence


# ------------------------------------------------------------------------------- the walk


def _tenant_session(services, tenant_id: int):
    """A session on the tenant's database, from the app's own (current) engine: suspending
    the tenant makes the app forget its engine, so none is kept across requests."""
    with services.session_factory() as s:
        return services.tenant_connections.session_factory(s.get(Tenant, tenant_id))()


def _audit_heads(services, tenant_id: int) -> tuple[int, int]:
    with services.session_factory() as s:
        platform = s.scalar(select(func.coalesce(func.max(PlatformAuditEvent.seq), 0)))
    with _tenant_session(services, tenant_id) as ts:
        tenant = ts.scalar(select(func.coalesce(func.max(AuditEvent.seq), 0)))
    return platform, tenant


def _events_since(services, tenant_id: int, heads: tuple[int, int]) -> list[tuple[str, str,
                                                                                  dict]]:
    with services.session_factory() as s:
        platform = [("platform", e.event_type, e.details) for e in s.scalars(
            select(PlatformAuditEvent).where(PlatformAuditEvent.seq > heads[0]))]
    with _tenant_session(services, tenant_id) as ts:
        tenant = [("tenant", e.event_type, e.details) for e in ts.scalars(
            select(AuditEvent).where(AuditEvent.seq > heads[1]))]
    return platform + tenant


def _message(response) -> str:
    if response.headers.get("content-type", "").startswith("application/json"):
        return str(response.json().get("error", ""))
    body = re.sub(r"(?s)<head>.*?</head>|<[^>]+>", " ", response.text)
    return " ".join(html.unescape(body).split())


def _tenant_requests(app, tenant_id: int) -> list[tuple]:
    """(permission, method, route path, url, form, JSON body) of every tenant route."""
    found = []
    for route, key in all_keys(app):
        decision = access.decision_of(route, key)
        if not access.is_tenant_permission(decision) or not isinstance(route, Route):
            continue
        method = key.split(" ", 1)[0]
        url = fill(route.path, tenant_id)
        if "{tenant_id" not in route.path:  # a tenant JSON API: a session names the tenant
            url += f"?tenant={tenant_id}"
        model = getattr(route.endpoint, "form_model", None)
        form = None if model is None else {
            name: SAMPLES[name] for name in model.model_fields if name != "csrf_token"}
        if form is not None:
            form.update(FORM_OVERRIDES.get(route.path, {}))
        body = None
        if method == "POST" and model is None:
            assert route.path in JSON_SAMPLES, f"add a valid JSON body for {key} to JSON_SAMPLES"
            body = JSON_SAMPLES[route.path]
        found.append((decision, method, route.path, url, form, body))
    return found


def test_every_tenant_route_answers_each_role_as_the_matrix_says(services, db, database_url,
                                                                tenancy):
    owner = make_user(db, "owner@perm.example")
    tenant_id = create_tenant(services, owner.email, "perm")
    run_pending_jobs(services, database_url)
    for role in ROLES[1:]:
        make_user(db, f"{role.lower()}@perm.example", is_owner=False)
    with services.session_factory() as s, s.begin():
        me = s.get(User, owner.id)
        tenant_access = service.access_tenant(s, tenant_id, user=me)
        assert tenant_access.tenant.state == "active"
        for role in ROLES[1:]:
            service.do_add_member(s, tenant_access, email=f"{role.lower()}@perm.example",
                                  role=role, acting_user=me)
    app = build_app(services)
    requests = _tenant_requests(app, tenant_id)
    assert len(requests) >= 50
    assert {p for p, *_ in requests} >= {"tenant.lifecycle", "audit.export", "gateway.spend",
                                         "approvals.request", "agents.view", "tasks.view"}
    problems: list[str] = []
    with (TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as c0,
          TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as c1,
          TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as c2,
          TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as c3,
          TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as c4,
          TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as c5):
        clients = dict(zip(ROLES, (c0, c1, c2, c3, c4, c5), strict=True))
        tokens = {}
        for role, client in clients.items():
            sign_in(client, f"{role.lower()}@perm.example")
            tokens[role] = csrf_token(client, "/tenants")
        for permission, method, path, url, form, body in requests:
            for role, client in clients.items():
                heads = _audit_heads(services, tenant_id)
                kwargs: dict = {"headers": {"X-CSRF-Token": tokens[role]}}
                if form is not None:
                    kwargs["data"] = {"csrf_token": tokens[role], **form}
                elif body is not None:
                    kwargs["json"] = body
                response = client.request(method, url, **kwargs)
                where = f"{method} {path} as {role}: {response.status_code}"
                if permissions.allows(role, permission):
                    sub_id = SUB_ID.search(path) is not None
                    other_rule = any(rule in _message(response) for rule in OTHER_RULES)
                    if (response.status_code == 403 and not other_rule) or (
                            response.status_code == 404 and not sub_id):
                        problems.append(f"{where}, but {permission} allows {role}: "
                                        f"{_message(response)[:200]}")
                    _keep_active(services, tenant_id, owner.id)
                    continue
                if response.status_code != 403:
                    problems.append(f"{where}, but {permission} refuses {role}")
                    continue
                if permissions.refusal(permission, role) not in _message(response):
                    problems.append(f"{where} without the matrix's sentence")
                events = _events_since(services, tenant_id, heads)
                expected = ("tenant", AccessEvents.SCOPE_DENIED,
                            {"permission": permission, "method": method, "path": path,
                             "role": role})
                if events != [expected]:
                    problems.append(f"{where} wrote {events}, not one scope denial")
        # the tenant page links exactly the pages each role may open, by the same matrix
        for role, client in clients.items():
            page = client.get(f"/tenants/{tenant_id}").text
            linked = set(re.findall(rf'href="/tenants/{tenant_id}(/[a-z]+)"', page))
            shown = {p.path for p in permissions.pages_for(role)}
            if not shown <= linked or linked & ({p.path for p in permissions.PAGES} - shown):
                problems.append(f"the tenant page as {role} links {sorted(linked)}, "
                                f"the matrix allows {sorted(shown)}")
    routes = {(p, m, path) for p, m, path, *_ in requests}
    for page in permissions.PAGES:
        if (page.permission, "GET", "/tenants/{tenant_id:int}" + page.path) not in routes:
            problems.append(f"PAGES names {page.path} under {page.permission}, which is not "
                            "the permission of a GET route of that path")
    assert not problems, "\n".join(problems)


def _keep_active(services, tenant_id: int, owner_id: int) -> None:
    """An allowed Owner's "suspend" really suspends: resume, so the walk goes on."""
    with services.session_factory() as s, s.begin():
        tenant = s.get(Tenant, tenant_id)
        if tenant.state == "suspended":
            me = s.get(User, owner_id)
            service.do_resume_tenant(s, service.access_tenant(s, tenant_id, user=me),
                                     acting_user=me)
        assert tenant.state == "active", tenant.state


def test_a_denial_on_a_suspended_tenant_goes_to_the_platform_chain_and_other_ids_stay_404(
        services, db, database_url, tenancy, client):
    owner = make_user(db, "owner@perm.example")
    make_user(db, "viewer@perm.example", is_owner=False)
    make_user(db, "other@perm.example")
    tenant_id = create_tenant(services, owner.email, "perm")
    other_id = create_tenant(services, "other@perm.example", "other")
    run_pending_jobs(services, database_url)
    with services.session_factory() as s, s.begin():
        me = s.get(User, owner.id)
        mine = service.access_tenant(s, tenant_id, user=me)
        service.do_add_member(s, mine, email="viewer@perm.example", role="Viewer",
                              acting_user=me)
        service.do_suspend_tenant(s, mine, reason="r", acting_user=me)

    def platform_events() -> list[tuple[str, str | None, dict]]:
        with db() as s:
            return [(e.event_type, e.target_id, e.details) for e in s.scalars(
                select(PlatformAuditEvent).order_by(PlatformAuditEvent.seq))]

    sign_in(client, "viewer@perm.example")
    token = csrf_token(client, "/tenants")
    before = platform_events()
    refused = client.post(f"/tenants/{tenant_id}/resume", data={"csrf_token": token})
    assert refused.status_code == 403
    assert "Your role (Viewer) may not suspend, resume or delete the tenant" in refused.text
    assert platform_events()[len(before):] == [
        (AccessEvents.SCOPE_DENIED, str(tenant_id),
         {"permission": "tenant.lifecycle", "method": "POST",
          "path": "/tenants/{tenant_id:int}/resume", "role": "Viewer"})]
    with db() as s:
        assert s.get(Tenant, tenant_id).state == "suspended"
    # another tenant's id: a plain 404, audited nowhere
    before = platform_events()
    with services.session_factory() as s:
        other_factory = services.tenant_connections.session_factory(s.get(Tenant, other_id))
    with other_factory() as ts:
        other_before = ts.scalar(select(func.count()).select_from(AuditEvent))
    for url in (f"/tenants/{other_id}/resume", f"/tenants/{other_id}/audit/verify"):
        assert client.post(url, data={"csrf_token": token}).status_code == 404
    assert client.get(f"/tenants/{other_id}/gateway").status_code == 404
    assert platform_events() == before
    with other_factory() as ts:
        assert ts.scalar(select(func.count()).select_from(AuditEvent)) == other_before


# ------------------------------------------------------------------------------- non-tenant


def test_non_tenant_decisions_hold_for_anonymous_callers_and_members(services, db, client):
    make_user(db, "member@perm.example", is_owner=False)
    app = build_app(services)
    gets = [(key.split(" ", 1)[1], access.decision_of(route, key))
            for route, key in all_keys(app)
            if key.startswith("GET ") and not isinstance(route, Mount) and "{" not in key
            and access.decision_of(route, key) in access.NON_TENANT]
    assert len(gets) >= 10
    for path, decision in gets:
        response = client.get(path, follow_redirects=False)
        to_sign_in = (response.status_code == 303
                      and response.headers["location"].startswith("/sign-in?next="))
        if decision == access.PUBLIC:
            assert response.status_code < 400 and not to_sign_in, (path, response.status_code)
        elif decision == access.API_KEY:
            assert response.status_code == 401, (path, response.status_code)
        elif decision == access.METRICS_TOKEN:  # no token configured here: no such route
            assert response.status_code == 404, (path, response.status_code)
        else:  # signed-in, installation-owner: a page sends to sign-in, the JSON API says 401
            assert to_sign_in or response.status_code == 401, (path, response.status_code)
    sign_in(client, "member@perm.example")
    for path, decision in gets:
        response = client.get(path, follow_redirects=False)
        if decision == access.INSTALLATION_OWNER:
            assert response.status_code == 403, (path, response.status_code)
        elif decision == access.SIGNED_IN:  # (/account/mfa sends back to /account when idle)
            assert response.status_code < 400, (path, response.status_code)
            assert not response.headers.get("location", "").startswith("/sign-in"), path
    assert client.get("/static/app.css").status_code == 200


# ------------------------------------------------------------------------------- API keys


def test_every_key_route_answers_every_scope_held_by_every_role(services, db, database_url,
                                                                tenancy):
    """Every route that takes an API key x every scope x every role of the key's creator (a
    key of a Viewer is what an Owner's key becomes when its Owner is made a Viewer): the key is
    accepted exactly when it holds one of the route's scopes, its creator's role still holds
    that scope's permission, and the role holds the route's own permission; otherwise 403 with
    a sentence about the key."""
    import secrets as _secrets

    from control_plane.models import ApiKey
    from control_plane.tenancy import api_keys

    owner = make_user(db, "owner@perm.example")
    tenant_id = create_tenant(services, owner.email, "perm")
    run_pending_jobs(services, database_url)
    for role in ROLES[1:]:
        make_user(db, f"{role.lower()}@perm.example", is_owner=False)
    keys: dict[tuple[str, str], str] = {}
    with services.session_factory() as s, s.begin():
        me = s.get(User, owner.id)
        tenant_access = service.access_tenant(s, tenant_id, user=me)
        for role in ROLES[1:]:
            service.do_add_member(s, tenant_access, email=f"{role.lower()}@perm.example",
                                  role=role, acting_user=me)
        for role in ROLES:
            creator = s.scalars(select(User).where(
                User.email == f"{role.lower()}@perm.example")).one()
            for scope in api_keys.SCOPES:
                prefix = _secrets.token_hex(6)
                secret = f"mg_{prefix}_{_secrets.token_urlsafe(32)}"
                s.add(ApiKey(tenant_id=tenant_id, name=f"{role} {scope}", prefix=prefix,
                             secret_hash=api_keys.key_hash(secret), created_by=creator.id,
                             scopes=[scope]))
                keys[(role, scope)] = secret
    app = build_app(services)
    routes = [(route, key) for route, key in all_keys(app) if key in access.KEY_SCOPES]
    assert len(routes) == len(access.KEY_SCOPES)
    bodies = {"/api/actions": {"action": "no.such", "payload": {}},
              "/api/agents/{agent_id}/shadow-runs": JSON_SAMPLES[
                  "/api/agents/{agent_id}/shadow-runs"],
              "/v1/chat/completions": {}, "/v1/messages": {}}
    problems: list[str] = []
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as c:
        for route, name in routes:
            method = name.split(" ", 1)[0]
            rule = access.KEY_SCOPES[name]
            permission = access.key_rule_for(name).permission
            for (role, scope), secret in keys.items():
                c.cookies.clear()
                answer = c.request(method, fill(route.path, tenant_id),
                                   headers={"Authorization": f"Bearer {secret}"},
                                   json=bodies.get(route.path) if method == "POST" else None)
                held = not rule or scope in rule
                allowed = (held and permissions.allows(role, permission)
                           and (not rule or permissions.allows(
                               role, api_keys.SCOPES[scope].permission)))
                text = _message(answer) or str(answer.json().get("error", {}))
                if allowed and answer.status_code in (401, 403) and "API key" in text:
                    problems.append(f"{name}, a {role}'s key with {scope}: refused: {text}")
                if not allowed and (answer.status_code != 403 or "API key" not in text):
                    problems.append(f"{name}, a {role}'s key with {scope}: "
                                    f"{answer.status_code}, expected a 403 about the key")
    assert not problems, "\n".join(problems)
