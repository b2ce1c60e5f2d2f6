"""OAuth client credentials towards an upstream: the official SDK client at Magistrate's
endpoint, Magistrate fetching a token from a real authorization server (tests/tenant_runtime/
mcp/oauth_servers.py) by discovery or at a named token endpoint, and a real upstream (the SDK's
MCPServer with a token verifier) taking it."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from joserfc.jwk import ECKey
from sqlalchemy import select
from starlette.testclient import TestClient

from control_plane.web.app import build_app
from tenant_runtime.gateway.egress import EgressRefused
from tenant_runtime.mcp import service
from tenant_runtime.mcp.exceptions import UpstreamInvalid
from tenant_runtime.mcp.models import McpCall, McpUpstream
from tenant_runtime.models import AuditEvent
from tests.factories import post_form, sign_in
from tests.tenant_runtime.mcp.helpers import call, endpoint, list_names, run, text_of
from tests.tenant_runtime.mcp.oauth_servers import (
    CLIENT_ID,
    CLIENT_SECRET,
    authorization_server,
    protected_upstream,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def authz():
    with authorization_server() as server:
        yield server


@pytest.fixture
def secured(authz):
    with protected_upstream(authz) as pair:
        yield pair


def add(team, url: str, **values: Any) -> int:
    ctx = team.ctx("admin")
    values = {"credential_kind": "oauth", "client_id": CLIENT_ID,
              "credential": CLIENT_SECRET, **values}
    with ctx.session() as s, s.begin():
        return service.do_add_upstream(s, ctx, service.UpstreamInput(
            name="crm", url=url, new_tools="allowed", **values)).id


def events(team, event_type: str) -> list[dict[str, Any]]:
    with team.system().session() as s:
        return [e.details for e in s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == event_type).order_by(AuditEvent.seq))]


def test_a_token_found_by_discovery_reaches_the_upstream_and_nothing_else_does(
        team, authz, secured, base, key):
    up, verifier = secured
    add(team, up.url, scope="crm.read crm.write")
    assert run(list_names, endpoint(base, team), key) == ["crm__lookup"]
    result = run(call, endpoint(base, team), key, "crm__lookup", {"customer": "jane"})
    assert not result.is_error and text_of(result) == "found jane"
    assert up.called("lookup") == [{"customer": "jane"}]
    # one token, fetched once (client_secret_basic, the scope, the RFC 8707 resource), reused
    assert authz.requests == [{"method": "client_secret_basic", "grant_type":
                               "client_credentials", "scope": "crm.read crm.write",
                               "resource": up.url, "authenticated": True}]
    assert authz.metadata_requests == ["/.well-known/oauth-authorization-server"]
    sent = {h.get("authorization") for h in up.headers}
    assert sent <= {None, "Bearer tok-0"} and "Bearer tok-0" in sent  # None: the first 401
    assert not any(key in json.dumps(h) for h in up.headers)  # the agent's key never goes
    assert "tok-0" not in result.model_dump_json()  # nor the token back to the agent
    with team.system().session() as s:
        row = s.scalars(select(McpUpstream)).one()
        assert row.credential_sealed is not None
        assert CLIENT_SECRET.encode() not in row.credential_sealed  # ciphertext at rest
        assert (row.oauth_client_id, row.oauth_auth_method, row.oauth_token_endpoint) == (
            CLIENT_ID, "client_secret_basic", None)
    [added] = events(team, service.McpEvents.UPSTREAM_ADDED)
    assert added["client_id"] == CLIENT_ID and CLIENT_SECRET not in json.dumps(added)


def test_an_expiring_token_is_fetched_again_before_it_lapses_and_a_refused_one_once(
        team, authz, secured, base, key):
    up, verifier = secured
    # fetched again 0.3 s before it lapses. 3 s, not less: each run's requests must all be
    # sent within the token's fresh 2.7 s, or one sent just before the refetch could reach the
    # upstream after the lapse (a busy machine's run takes a second or two)
    authz.expires_in = 3
    add(team, up.url, auth_method="client_secret_post")
    assert run(list_names, endpoint(base, team), key) == ["crm__lookup"]
    time.sleep(3.0)
    result = run(call, endpoint(base, team), key, "crm__lookup", {"customer": "a"})
    assert text_of(result) == "found a"
    assert len(authz.requests) == 2 and verifier.refused == []  # no stale token was sent
    authz.expires_in = 3600
    time.sleep(3.0)
    result = run(call, endpoint(base, team), key, "crm__lookup", {"customer": "b"})
    assert len(authz.requests) == 3 and verifier.refused == []
    authz.revoke_all()  # the upstream refuses the cached token: one new token, one retry
    result = run(call, endpoint(base, team), key, "crm__lookup", {"customer": "c"})
    assert text_of(result) == "found c" and len(authz.requests) == 4
    assert verifier.refused == ["tok-2"]
    assert {r["method"] for r in authz.requests} == {"client_secret_post"}
    assert up.called("lookup") == [{"customer": "a"}, {"customer": "b"}, {"customer": "c"}]


def test_a_refused_secret_is_a_clear_tool_error_an_audit_event_and_a_503_in_the_console(
        services, team, authz, secured, base, key):
    up, _ = secured
    upstream_id = add(team, up.url)
    assert run(list_names, endpoint(base, team), key) == ["crm__lookup"]
    authz.secret, _ = "rotated", authz.revoke_all()  # the client's secret no longer works
    result = run(call, endpoint(base, team), key, "crm__lookup", {"customer": "jane"})
    assert result.is_error
    assert ("The authorization server at 127.0.0.1" in text_of(result)
            and "refused Magistrate's client credentials for the upstream crm "
                "(invalid_client: Client authentication failed)" in text_of(result))
    assert up.called("lookup") == []
    with team.system().session() as s:
        assert [c.outcome for c in s.scalars(select(McpCall))] == ["upstream_no_token"]
    refused = events(team, service.McpEvents.UPSTREAM_TOKEN_REFUSED)
    assert refused and refused[-1]["name"] == "crm" and "invalid_client" in refused[-1]["reason"]
    assert CLIENT_SECRET not in json.dumps(refused)
    # tools/list hides the upstream's tools; the console's "Fetch tools" answers 503
    assert run(list_names, endpoint(base, team), key) == []
    web = TestClient(build_app(services), base_url="http://testserver")
    sign_in(web, team.users["admin"].email)
    page = post_form(web, f"/tenants/{team.tenant_id}/mcp/upstreams/{upstream_id}/sync",
                     page=f"/tenants/{team.tenant_id}/mcp")
    assert page.status_code == 503
    assert "refused Magistrate&#39;s client credentials" in page.text
    assert CLIENT_SECRET not in page.text


def test_a_token_the_upstream_still_refuses_after_the_one_retry_is_a_clear_error(
        team, authz, secured, base, key):
    up, _ = secured
    add(team, up.url)
    authz.audience = "http://elsewhere.example/mcp"  # tokens for another resource
    assert run(list_names, endpoint(base, team), key) == []
    assert len(authz.requests) == 1  # one token, one retry with it, no loop
    assert sum(h.get("authorization") == "Bearer tok-0" for h in up.headers) == 1
    [refused] = events(team, service.McpEvents.UPSTREAM_TOKEN_REFUSED)
    assert "The upstream crm refused the token its authorization server" in refused["reason"]


def test_private_key_jwt_at_a_named_token_endpoint_skips_discovery(team, authz, secured, base,
                                                                   key):
    up, _ = secured
    private = ECKey.generate_key("P-256")
    authz.public_key = ECKey.import_key(private.as_dict(private=False))
    pem = private.as_pem(private=True).decode()
    add(team, up.url, auth_method="private_key_jwt", credential=pem,
        token_endpoint=f"{authz.url}/token")
    assert run(list_names, endpoint(base, team), key) == ["crm__lookup"]
    assert text_of(run(call, endpoint(base, team), key, "crm__lookup",
                       {"customer": "x"})) == "found x"
    assert authz.metadata_requests == []  # the named endpoint, no discovery
    assert [r["method"] for r in authz.requests] == ["private_key_jwt"]
    assert authz.requests[0]["authenticated"] and authz.requests[0]["resource"] == up.url
    with team.system().session() as s:
        assert pem.encode() not in s.scalars(select(McpUpstream)).one().credential_sealed


def test_the_token_endpoint_passes_the_egress_policy_and_never_follows_a_redirect(
        team, authz, secured, base, key):
    up, _ = secured
    with pytest.raises(EgressRefused):  # a private address the operator did not allow
        add(team, up.url, token_endpoint="http://10.0.0.1/token")
    authz.redirect_token = True
    add(team, up.url, token_endpoint=f"{authz.url}/token")
    assert run(list_names, endpoint(base, team), key) == []
    assert authz.requests == []  # the redirect was answered, never followed


@pytest.mark.parametrize(("values", "sentence"), [
    ({"client_id": ""}, "Give the OAuth client id"),
    ({"credential": ""}, "Give the OAuth client secret"),
    ({"auth_method": "private_key_jwt", "credential": "not a key"}, "private key in PEM"),
    ({"auth_method": "client_secret_jwt"}, "The client authentication is one of"),
    ({"token_endpoint": "ftp://example.com/token"}, "token endpoint must be an http"),
    ({"token_endpoint": "https://u:p@example.com/token"}, "not in the token endpoint"),
])
def test_bad_oauth_registrations_are_refused_with_a_sentence(team, values, sentence):
    with pytest.raises(UpstreamInvalid, match=sentence):
        add(team, "http://127.0.0.1:9/mcp", **values)


def test_the_console_registers_an_oauth_upstream(services, team):
    web = TestClient(build_app(services), base_url="http://testserver")
    sign_in(web, team.users["admin"].email)
    page = f"/tenants/{team.tenant_id}/mcp"
    form = {"name": "crm", "url": "http://127.0.0.1:9/mcp", "credential_kind": "oauth",
            "client_id": CLIENT_ID, "credential": CLIENT_SECRET, "scope": "crm.read",
            "auth_method": "client_secret_post"}
    answer = post_form(web, f"{page}/upstreams", {**form, "client_id": ""}, page=page)
    assert answer.status_code == 422 and "Give the OAuth client id" in answer.text
    answer = post_form(web, f"{page}/upstreams", form, page=page)
    assert answer.status_code == 201
    assert "OAuth client credentials: client <code>magistrate-crm</code>" in answer.text
    assert "token endpoint discovered" in answer.text and CLIENT_SECRET not in answer.text
