"""The CSRF exemption and the session come from one reading of the request (DESIGN invariant 11).

Security review finding 4: the middleware decided "no Magistrate cookie" with ``SimpleCookie``,
which drops the whole header when any cookie in it is malformed, while the route found the
session with Starlette's lenient parser; a cross-origin form POST executed an approved action
and a JSON POST created a tenant. Now one parser reads the cookies, the exemption is decided by
how the request authenticates, and the handlers get the session from that same reading.

Every mutating route of the router is walked with a valid session cookie embedded in malformed
``Cookie`` headers of several kinds, with no token and a foreign Origin (and with no Origin at
all), and must be refused with nothing changed; the API's routes with a key and the same junk
still work, without the session."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from control_plane.models import PlatformAuditEvent, Tenant
from control_plane.web.app import build_app
from control_plane.web.security import CSRF_EXEMPT_PREFIXES
from tenant_runtime.approvals import service as approvals
from tenant_runtime.models import AuditEvent
from tests.control_plane.approvals.helpers import make_team
from tests.control_plane.tenancy.conftest import (  # noqa: F401 - fixtures
    local_kek,
    primary_server,
    settings,
)
from tests.control_plane.test_csrf import mutating_routes
from tests.factories import csrf_token, sign_in

ROOT = Path(__file__).resolve().parents[2]
FOREIGN = "https://evil.example"
SESSION = "magistrate_session"


def malformed_headers(session: str) -> dict[str, list[tuple[str, str | bytes]]]:
    """A valid session cookie inside Cookie headers that a strict parser gives up on."""
    pair = f"{SESSION}={session}"
    return {
        "space in a value": [("cookie", f"theme=dark mode; {pair}")],
        "space after the session": [("cookie", f"{pair}; theme=dark mode")],
        "unbalanced quote": [("cookie", f'theme="dark; {pair}')],
        "quoted value": [("cookie", f'theme="a b"; {pair}')],
        "comma": [("cookie", f"a=1,b=2; {pair}")],
        "semicolons only": [("cookie", f";;; ;{pair};;")],
        "no equals sign": [("cookie", f"flag; {pair}")],
        "duplicate name, forged first": [("cookie", f"{SESSION}=forged; {pair}")],
        "duplicate harmless name": [("cookie", f"a=1; a=2; {pair}")],
        "non-ASCII": [("cookie", f"thème=café; {pair}".encode())],
        "brackets and backslash": [("cookie", f'x=[\\"]; {pair}')],
        "two Cookie headers": [("cookie", "theme=dark mode"), ("cookie", pair)],
        "control character": [("cookie", f"x=a\tb; {pair}")],
    }


def concrete(path: str, tenant_id: int) -> str:
    path = path.replace("{tenant_id:int}", str(tenant_id))
    return re.sub(r"\{[^}]+\}", "1", path)


def counts(team) -> tuple[int, int, int]:
    """What any state change leaves behind: an audit event (platform or tenant chain)."""
    with team.services.session_factory() as s:
        platform = s.scalar(select(func.count()).select_from(PlatformAuditEvent))
        tenants = s.scalar(select(func.count()).select_from(Tenant))
    with team.system().session() as s:
        tenant = s.scalar(select(func.count()).select_from(AuditEvent))
    return int(platform or 0), int(tenant or 0), int(tenants or 0)


@pytest.fixture
def team(services, db, database_url, primary_server, local_kek):  # noqa: F811
    team = make_team(services, db, database_url)
    team.add_class("deploy.production")
    return team


def signed_in_session(client: TestClient, email: str = "owner@example.com") -> str:
    assert sign_in(client, email).status_code == 303
    value = client.cookies.get(SESSION)
    assert value
    return value


def test_every_mutating_route_refuses_a_session_inside_a_malformed_cookie_header(
        client, services, team):
    session = signed_in_session(client)
    routes = mutating_routes(build_app(services))
    assert len(routes) >= 40
    before = counts(team)
    refused = 0
    with TestClient(client.app, base_url="http://testserver",
                    raise_server_exceptions=False) as attacker:
        for kind, cookie_headers in malformed_headers(session).items():
            for method, path in routes:
                url = concrete(path, team.tenant_id)
                for origin in ([("origin", FOREIGN)], []):
                    headers = [*cookie_headers, *origin]
                    if path.startswith(CSRF_EXEMPT_PREFIXES):
                        answer = attacker.request(method, url, headers=headers,
                                                  json={"action": "deploy.production",
                                                        "slug": "evil-corp"})
                    else:
                        answer = attacker.request(method, url, headers=headers,
                                                  data={"email": "evil@example.com"})
                    assert answer.status_code == 403, (kind, method, path, origin,
                                                       answer.status_code)
                    assert "another site" in answer.text or "security token" in answer.text
                    refused += 1
    assert refused == len(routes) * len(malformed_headers(session)) * 2
    assert counts(team) == before  # nothing changed anywhere
    assert client.get("/account").status_code == 200  # and the owner is still signed in


def test_the_one_parser_finds_the_session_in_every_malformed_header(client, team):
    """The other half of agreement: a browser with an odd cookie beside ours stays signed in
    (the lenient parser reads past it), so the refusals above are the CSRF check's, not a
    missing session's."""
    session = signed_in_session(client)
    with TestClient(client.app, base_url="http://testserver",
                    follow_redirects=False) as browser:
        for kind, cookie_headers in malformed_headers(session).items():
            page = browser.get("/account", headers=cookie_headers)
            assert page.status_code == 200, (kind, page.status_code)
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token, kind
            # with the page's token and our own Origin, the same header is accepted
            done = browser.post("/account/mfa/start", headers=[
                *cookie_headers, ("origin", "http://testserver"),
                ("x-csrf-token", token.group(1))])
            assert done.status_code == 303, (kind, done.status_code)


def test_a_cross_origin_form_cannot_execute_an_approved_action(client, team):
    """The review's first probe: a form POSTed from another site, riding the session behind
    a malformed cookie, to execute an approved action."""
    session = signed_in_session(client, "operator@example.com")
    token = csrf_token(client, f"/tenants/{team.tenant_id}/approvals")
    asked = client.post(f"/api/actions?tenant={team.tenant_id}",
                        json={"action": "deploy.production"}, headers={"X-CSRF-Token": token})
    assert asked.status_code == 202, asked.text
    rid = asked.json()["id"]
    ctx = team.ctx("approver")
    with ctx.session() as s, s.begin():
        approvals.decide(s, ctx, rid, True, None)
    with TestClient(client.app, base_url="http://testserver") as attacker:
        forged = attacker.post(f"/api/actions/{rid}/execute?tenant={team.tenant_id}",
                               headers={"Cookie": f"theme=dark mode; {SESSION}={session}",
                                        "Origin": FOREIGN},
                               data={"confirm": "yes"})
    assert forged.status_code == 403
    with team.system().session() as s:
        assert approvals.access_request(s, rid).executed_via is None  # still not executed


def test_a_cross_origin_json_post_cannot_create_a_tenant(client, team, local_kek):  # noqa: F811
    """The review's second probe: a JSON POST to /api/tenants with the session behind a
    malformed cookie."""
    session = signed_in_session(client)
    before = counts(team)
    with TestClient(client.app, base_url="http://testserver") as attacker:
        forged = attacker.post("/api/tenants", json={"slug": "evil-corp", "key_provider": "local",
                                                     "key_ref": local_kek},
                               headers={"Cookie": f"theme=dark mode; {SESSION}={session}",
                                        "Origin": FOREIGN})
    assert forged.status_code == 403
    assert counts(team) == before


def test_a_key_with_junk_cookies_is_exempt_and_never_uses_the_session(client, services, team):
    """Exemption by authentication: every mutating API and gateway route, called with a key,
    a foreign Origin and no token, is not refused by CSRF whatever cookies ride along — and a
    route that only a session could authorize does not get the session."""
    session = signed_in_session(client)
    key = team.api_key()
    api_routes = [(m, p) for m, p in mutating_routes(build_app(services))
                  if p.startswith(CSRF_EXEMPT_PREFIXES)]
    assert len(api_routes) >= 5
    before_tenants = counts(team)[2]
    with TestClient(client.app, base_url="http://testserver",
                    raise_server_exceptions=False) as program:
        for kind, cookie_headers in malformed_headers(session).items():
            for method, path in api_routes:
                answer = program.request(
                    method, concrete(path, team.tenant_id),
                    headers=[*cookie_headers, ("origin", FOREIGN),
                             ("authorization", f"Bearer {key}")],
                    json={"model": "nope", "messages": []})
                assert "security token" not in answer.text, (kind, path)
                assert "another site" not in answer.text, (kind, path)
                assert answer.status_code != 500, (kind, path)
            # the key acts, the cookie's session is not consulted
            asked = program.post("/api/actions", json={"action": "deploy.production"},
                                 headers=[*cookie_headers, ("authorization", f"Bearer {key}"),
                                          ("origin", FOREIGN)])
            assert asked.status_code == 202, (kind, asked.text)
            with team.system().session() as s:
                row = approvals.access_request(s, asked.json()["id"])
                # the key asked, on its creator's behalf (the human behind it is the requester)
                event = s.scalars(select(AuditEvent).where(
                    AuditEvent.target_id == str(row.id)).order_by(AuditEvent.seq.desc())).first()
                assert event is not None and event.actor_type == "api_key", kind
                assert row.requested_by_type == "user", kind
            tenant = program.post("/api/tenants", json={"slug": "by-key", "key_provider": "local",
                                                        "key_ref": "k"},
                                  headers=[*cookie_headers, ("authorization", f"Bearer {key}")])
            assert tenant.status_code == 401, (kind, tenant.status_code)
    assert counts(team)[2] == before_tenants


def test_no_module_parses_cookies_but_the_credentials_module():
    """One parser per input: no code outside control_plane/auth/credentials.py reads a
    request's cookies or parses a Cookie header (checked on the syntax tree)."""
    allowed = ROOT / "control_plane" / "auth" / "credentials.py"
    offending = []
    for package in ("control_plane", "tenant_runtime", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == allowed:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr == "cookies":
                    offending.append(f"{path.relative_to(ROOT)}:{node.lineno} .cookies")
                if isinstance(node, ast.Name | ast.alias) and \
                        getattr(node, "id", getattr(node, "name", "")) in {
                            "SimpleCookie", "cookie_parser", "http.cookies"}:
                    offending.append(f"{path.relative_to(ROOT)}:{node.lineno} cookie parser")
                if isinstance(node, ast.Call) and any(
                        isinstance(arg, ast.Constant) and isinstance(arg.value, str | bytes)
                        and arg.value.lower() in ("cookie", b"cookie") for arg in node.args):
                    offending.append(f"{path.relative_to(ROOT)}:{node.lineno} 'cookie' header")
    assert not offending, "\n".join(offending)
