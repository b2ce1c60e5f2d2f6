"""The MCP authorization server end to end: the official SDK's OAuth client (PKCE, dynamic
registration, resource indicators) connects to Magistrate under uvicorn; a signed-in member
approves on the consent page; the client then calls tools through a real upstream MCP server.
The refusals are driven by hand against the same live server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import anyio
import httpx2
import pytest
from sqlalchemy import select, update

from control_plane.db import utcnow
from control_plane.mcp_oauth import service as oauth
from control_plane.mcp_oauth.models import OAuthClient, OAuthGrant, OAuthToken
from control_plane.models import PlatformAuditEvent
from tenant_runtime.mcp.models import McpClient
from tests.conftest import make_settings
from tests.control_plane.approvals.helpers import Team, make_team
from tests.control_plane.mcp_oauth.helpers import (
    REDIRECT_URI,
    Browser,
    SdkClient,
    authorize_url,
    code_of,
    hand_flow,
    pkce,
    register,
    token,
    tokens_of,
)
from tests.factories import csrf_from
from tests.live_server import Port, serve_app
from tests.tenant_runtime.mcp.helpers import mcp_client, serve_upstream, text_of
from tests.tenant_runtime.mcp.test_endpoint import decide
from tests.tenant_runtime.mcp.test_endpoint import register as register_upstream

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def port() -> Iterator[Port]:
    with Port() as held:
        yield held


@pytest.fixture
def settings(tmp_path, port):
    # the issuer and resources are this live server's address; the upstream is on loopback
    return make_settings(home=tmp_path / "home", public_url=port.url,
                         gateway_private_networks=("127.0.0.0/8",))


@pytest.fixture
def base(services, port):
    from control_plane.web.app import build_app

    with serve_app(build_app(services), port) as url:
        yield url


@pytest.fixture
def team(services, db, database_url, primary_server, local_kek) -> Team:
    return make_team(services, db, database_url)


@pytest.fixture
def other(services, db, database_url, primary_server, local_kek, team) -> Team:
    return make_team(services, db, database_url, slug="globex", prefix="g-")


@pytest.fixture
def owner(base, team):
    browser = Browser(base, team.users["owner"].email)
    yield browser
    browser.close()


@pytest.fixture
def upstream(team):
    with serve_upstream() as up:
        register_upstream(team, up)
        yield up


def resource(base: str, team: Team) -> str:
    return f"{base}/mcp/{team.slug}"


def initialize(url: str, credential: str | None) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    return httpx2.post(url, headers=headers, timeout=30, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "probe", "version": "1"}}})


def events(db, kind: str) -> list[dict[str, Any]]:
    with db() as s:
        return [e.details for e in s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == kind).order_by(PlatformAuditEvent.seq))]


# ------------------------------------------------------------------------------- discovery


def test_the_401_leads_a_client_to_both_metadata_documents(base, team):
    answer = initialize(resource(base, team), None)
    assert answer.status_code == 401
    challenge = answer.headers["www-authenticate"]
    prm_url = f"{base}/.well-known/oauth-protected-resource/mcp/{team.slug}"
    assert f'resource_metadata="{prm_url}"' in challenge
    prm = httpx2.get(prm_url).json()
    assert prm["resource"] == resource(base, team)
    assert prm["authorization_servers"] == [base]
    asm = httpx2.get(f"{base}/.well-known/oauth-authorization-server").json()
    assert asm["issuer"] == base
    assert asm["code_challenge_methods_supported"] == ["S256"]
    assert asm["client_id_metadata_document_supported"] is True
    assert asm["registration_endpoint"] == f"{base}/oauth/register"
    assert asm["token_endpoint_auth_methods_supported"] == ["none"]
    # a presented but unknown token says so in the challenge
    answer = initialize(resource(base, team), "mgo_at_nothing")
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


# ------------------------------------------------------------------------------- the SDK's flow


def test_the_sdk_client_connects_with_oauth_and_calls_a_tool(base, team, owner, upstream, db,
                                                            services):
    url = resource(base, team)
    client = SdkClient(owner)

    async def first_session() -> list[str]:
        async with client.session(url) as session:
            names = sorted(t.name for t in (await session.list_tools()).tools)
            return names

    assert anyio.run(first_session) == []  # new tools start denied
    decide(team, "search", "allowed")

    async def call() -> str:
        async with client.session(url) as session:
            return text_of(await session.call_tool("crm__search", {"query": "acme"}))

    assert anyio.run(call) == "results for acme"
    assert upstream.called("search") == [{"query": "acme"}]
    # one consent only: the second session reused the stored token
    assert len(client.authorization_urls) == 1
    assert "code_challenge_method=S256" in client.authorization_urls[0]
    assert f"resource={httpx2.URL(url)}".replace(":", "%3A").replace("/", "%2F") \
        in client.authorization_urls[0]
    # the upstream got its registered credential, never the client's token
    assert all("mgo_" not in h.get("authorization", "") for h in upstream.headers)
    with db() as s:
        grant = s.scalars(select(OAuthGrant)).one()
        assert (grant.client_name, grant.resource) == ("Desk client", url)
        assert grant.last_used_at is not None
        stored = [t.token_hash for t in s.scalars(select(OAuthToken))]
        assert client.storage.tokens is not None
        assert client.storage.tokens.access_token not in stored  # digests only
        assert oauth.digest(client.storage.tokens.access_token) in stored
        assert client.storage.tokens.expires_in <= 3600
    with team.system().session() as ts:
        bound = ts.scalars(select(McpClient).where(McpClient.api_key_id == -grant.id)).one()
        assert bound.agent_id == grant.agent_id
    assert [e["client_name"] for e in events(db, oauth.McpOAuthEvents.GRANT_CREATED)] \
        == ["Desk client"]


def test_the_sdk_client_refreshes_an_expired_access_token(base, team, owner, upstream, db):
    url = resource(base, team)
    client = SdkClient(owner)

    async def call(query: str) -> str:
        async with client.session(url) as session:
            await session.list_tools()
            return text_of(await session.call_tool("crm__search", {"query": query}))

    assert "not allowed" in anyio.run(call, "zero")  # the first listing fills the catalogue
    decide(team, "search", "allowed")
    assert anyio.run(call, "one") == "results for one"
    first = client.storage.tokens
    assert first is not None
    # the access token expires: the server refuses it, the SDK refreshes, rotating
    with db() as s, s.begin():
        s.execute(update(OAuthToken).where(OAuthToken.kind == "access")
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert initialize(url, first.access_token).status_code == 401
    # the client's clock says so too (an hour has passed): it refreshes before calling
    client.provider(url).context.token_expiry_time = time.time() - 1
    assert anyio.run(call, "two") == "results for two"
    second = client.storage.tokens
    assert second is not None and second.refresh_token != first.refresh_token
    assert len(client.authorization_urls) == 1  # refreshed, not re-authorized
    assert upstream.called("search") == [{"query": "one"}, {"query": "two"}]


# ------------------------------------------------------------------------ PKCE, redirect, resource


def test_pkce_plain_and_a_missing_method_are_refused(base, team, owner):
    client_id = register(base).json()["client_id"]
    verifier, challenge = pkce()
    for method in ("plain", ""):
        page = owner.page(authorize_url(base, client_id, challenge, resource(base, team),
                                        code_challenge_method=method))
        assert page.status_code == 400
        assert "S256 is required" in page.text


def test_a_wrong_verifier_is_refused_and_spends_the_code(base, team, owner):
    flow = hand_flow(base, owner, resource(base, team))
    answer = flow.exchange(base, code_verifier=pkce()[0])
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"
    assert "code_verifier does not match" in answer.json()["error_description"]
    assert answer.headers["cache-control"] == "no-store"
    # the right verifier now finds the code spent, and its grant is revoked
    again = flow.exchange(base)
    assert again.status_code == 400
    assert "already used" in again.json()["error_description"]


def test_the_redirect_uri_must_match_exactly(base, team, owner):
    client_id = register(base).json()["client_id"]
    verifier, challenge = pkce()
    page = owner.page(authorize_url(base, client_id, challenge, resource(base, team),
                                    redirect_uri=REDIRECT_URI + "/other"))
    assert page.status_code == 400
    assert "must match one of them exactly" in page.text
    flow = hand_flow(base, owner, resource(base, team))
    answer = flow.exchange(base, redirect_uri="http://127.0.0.1:9/elsewhere")
    assert answer.status_code == 400
    assert "redirect_uri differs" in answer.json()["error_description"]


def test_the_resource_is_required_and_bound(base, team, other, owner):
    client_id = register(base).json()["client_id"]
    verifier, challenge = pkce()
    for wrong, sentence in (("", "Give the resource parameter"),
                            ("https://elsewhere.example/mcp/acme", "not an MCP endpoint"),
                            (f"{base}/mcp/nobody", "names no active tenant")):
        page = owner.page(authorize_url(base, client_id, challenge, wrong))
        assert page.status_code == 400, wrong
        assert sentence in page.text
    flow = hand_flow(base, owner, resource(base, team))
    answer = flow.exchange(base, resource=resource(base, other))
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_target"


def test_a_token_for_one_tenant_is_a_404_at_another(base, team, other, owner):
    _, tokens = tokens_of(base, owner, resource(base, team))
    assert initialize(resource(base, team), tokens["access_token"]).status_code == 200
    assert initialize(resource(base, other), tokens["access_token"]).status_code == 404
    assert initialize(f"{base}/mcp/nobody", tokens["access_token"]).status_code == 404


def test_an_expired_access_token_is_refused(base, team, owner, db):
    _, tokens = tokens_of(base, owner, resource(base, team))
    with db() as s, s.begin():
        s.execute(update(OAuthToken).where(OAuthToken.token_hash
                                           == oauth.digest(tokens["access_token"]))
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    answer = initialize(resource(base, team), tokens["access_token"])
    assert answer.status_code == 401
    assert "expired" in answer.json()["error"]
    assert "resource_metadata=" in answer.headers["www-authenticate"]


def test_a_grants_session_answers_its_refreshed_token_and_no_api_key(base, team, owner):
    flow, tokens = tokens_of(base, owner, resource(base, team))
    opened = initialize(flow.resource, tokens["access_token"])
    session_id = opened.headers["mcp-session-id"]
    key = team.api_key("desk-agent", who="owner", scopes=("mcp",))

    def listed(credential: str) -> httpx2.Response:
        return httpx2.post(flow.resource, timeout=30, json={
            "jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}, headers={
            "Accept": "application/json, text/event-stream", "Mcp-Session-Id": session_id,
            "Authorization": f"Bearer {credential}"})

    note = httpx2.post(flow.resource, timeout=30, json={
        "jsonrpc": "2.0", "method": "notifications/initialized"}, headers={
        "Accept": "application/json, text/event-stream", "Mcp-Session-Id": session_id,
        "Authorization": f"Bearer {tokens['access_token']}"})
    assert note.status_code == 202
    # the same human's API key is another principal: the session does not exist for it
    assert listed(key).status_code == 404
    assert listed(tokens["access_token"]).status_code == 200
    rotated = token(base, refresh_token=tokens["refresh_token"], grant_type="refresh_token",
                    client_id=flow.client_id, resource=flow.resource)
    assert listed(rotated.json()["access_token"]).status_code == 200  # the same grant


# ------------------------------------------------------------------------------- refresh, revoke


def test_a_reused_refresh_token_revokes_the_whole_grant(base, team, owner, db):
    flow, tokens = tokens_of(base, owner, resource(base, team))
    form = {"grant_type": "refresh_token", "client_id": flow.client_id,
            "resource": flow.resource}
    rotated = token(base, refresh_token=tokens["refresh_token"], **form)
    assert rotated.status_code == 200
    fresh = rotated.json()
    assert fresh["refresh_token"] != tokens["refresh_token"]
    assert initialize(flow.resource, fresh["access_token"]).status_code == 200
    # the old refresh token again: the grant goes, with every token of it
    replay = token(base, refresh_token=tokens["refresh_token"], **form)
    assert replay.status_code == 400
    assert "whole grant is revoked" in replay.json()["error_description"]
    assert initialize(flow.resource, fresh["access_token"]).status_code == 401
    assert token(base, refresh_token=fresh["refresh_token"], **form).status_code == 400
    assert [e["reason"] for e in events(db, oauth.McpOAuthEvents.GRANT_REVOKED)] \
        == ["refresh_token_reuse"]


def test_a_revoked_grant_is_refused_on_the_next_request(base, team, owner, db):
    _, tokens = tokens_of(base, owner, resource(base, team))
    url = resource(base, team)
    assert initialize(url, tokens["access_token"]).status_code == 200
    with db() as s:
        grant_id = s.scalars(select(OAuthGrant.id)).one()
    page = owner.page(f"/tenants/{team.tenant_id}/connections")
    assert page.status_code == 200
    assert "Hand client" in page.text and "data-confirm=" in page.text
    answer = owner.http.post(f"/tenants/{team.tenant_id}/connections/{grant_id}/revoke",
                             data={"csrf_token": csrf_from(page.text)})
    assert answer.status_code == 200
    assert "is revoked" in answer.text
    refused = initialize(url, tokens["access_token"])
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]
    assert [e["reason"] for e in events(db, oauth.McpOAuthEvents.GRANT_REVOKED)] \
        == ["revoked_by_member"]


def test_another_tenants_grant_cannot_be_revoked_from_here(base, team, other, owner, db):
    other_owner = Browser(base, other.users["owner"].email)
    try:
        tokens_of(base, other_owner, resource(base, other))
    finally:
        other_owner.close()
    with db() as s:
        grant_id = s.scalars(select(OAuthGrant.id)).one()
    page = owner.page(f"/tenants/{team.tenant_id}/connections")
    answer = owner.http.post(f"/tenants/{team.tenant_id}/connections/{grant_id}/revoke",
                             data={"csrf_token": csrf_from(page.text)})
    assert answer.status_code == 404
    with db() as s:
        assert s.get(OAuthGrant, grant_id).revoked_at is None


# ------------------------------------------------------------------------------- consent


def test_a_member_who_may_not_connect_agents_sees_why(base, team):
    viewer = Browser(base, team.users["viewer"].email)
    try:
        client_id = register(base).json()["client_id"]
        _, challenge = pkce()
        page = viewer.page(authorize_url(base, client_id, challenge, resource(base, team)))
        assert page.status_code == 403
        assert "may not connect agents" in page.text
    finally:
        viewer.close()


def test_deny_sends_access_denied_and_makes_no_grant(base, team, owner, db):
    client_id = register(base).json()["client_id"]
    _, challenge = pkce()
    params = code_of(owner.consent(authorize_url(base, client_id, challenge,
                                                 resource(base, team)), decision="deny"))
    assert params == {"error": "access_denied", "state": "st-1"}
    with db() as s:
        assert s.scalars(select(OAuthGrant)).all() == []
    assert len(events(db, oauth.McpOAuthEvents.CONSENT_DENIED)) == 1


def test_signed_out_the_consent_page_asks_to_sign_in_first(base, team):
    client_id = register(base).json()["client_id"]
    _, challenge = pkce()
    answer = httpx2.get(authorize_url(base, client_id, challenge, resource(base, team)))
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/sign-in?next=/oauth/authorize")


def test_a_second_client_may_act_as_the_members_earlier_agent(base, team, owner, db):
    tokens_of(base, owner, resource(base, team))
    with db() as s:
        first = s.scalars(select(OAuthGrant)).one()
    client_id = register(base).json()["client_id"]
    verifier, challenge = pkce()
    url = authorize_url(base, client_id, challenge, resource(base, team))
    assert first.agent_name in owner.page(url).text
    code_of(owner.consent(url, agent=str(first.agent_id)))
    with db() as s:
        agents = [g.agent_id for g in s.scalars(select(OAuthGrant).order_by(OAuthGrant.id))]
    assert agents == [first.agent_id, first.agent_id]
    # an agent id the member never connected is refused
    page = owner.consent(authorize_url(base, client_id, challenge, resource(base, team)),
                         agent="999999")
    assert page.status_code == 400
    assert "Pick one of the agents offered" in page.text


# ------------------------------------------------------------------------------- registration


@pytest.mark.parametrize(("uris", "sentence"), [
    (None, "Give redirect_uris"),
    ([], "Give redirect_uris"),
    (["http://example.com/cb"], "must use https"),
    (["https://example.com/cb#frag"], "has a fragment"),
    (["/relative"], "not an absolute URL"),
    (["https://user:pw@example.com/cb"], "user name or password"),
    (["javascript:alert(1)"], "not an absolute URL"),
    ([f"https://example.com/{i}" for i in range(11)], "at most 10 redirect URIs"),
])
def test_registration_refuses_bad_redirect_uris_with_a_sentence(base, uris, sentence):
    body: dict[str, Any] = {"client_name": "x"}
    if uris is not None:
        body["redirect_uris"] = uris
    answer = httpx2.post(f"{base}/oauth/register", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_redirect_uri"
    assert sentence in answer.json()["error_description"]


def test_registration_makes_a_public_client(base, db):
    answer = register(base, redirect_uris=["https://app.example/cb", "http://localhost:7/cb"],
                      token_endpoint_auth_method="client_secret_post", software_id="x")
    assert answer.status_code == 201
    body = answer.json()
    assert body["token_endpoint_auth_method"] == "none" and "client_secret" not in body
    with db() as s:
        row = s.scalars(select(OAuthClient).where(OAuthClient.client_id == body["client_id"])).one()
        assert row.redirect_uris == ["https://app.example/cb", "http://localhost:7/cb"]
    assert answer.headers["cache-control"] == "no-store"


def test_registration_is_rate_limited_and_size_limited(base):
    big = httpx2.post(f"{base}/oauth/register", json={
        "redirect_uris": [REDIRECT_URI], "client_name": "x", "padding": "y" * 20000})
    assert big.status_code == 413
    answers = [register(base).status_code for _ in range(21)]
    assert answers[:20] == [201] * 20 and answers[20] == 429


# ------------------------------------------------------------------------ metadata documents


def test_a_metadata_document_on_a_private_address_is_never_fetched(base, team, owner):
    _, challenge = pkce()
    page = owner.page(authorize_url(base, "https://127.0.0.1:9/client.json", challenge,
                                    resource(base, team)))
    assert page.status_code == 400
    assert "could not be fetched" in page.text


def test_an_api_key_still_works_beside_oauth(base, team, upstream):
    key = team.api_key("desk-agent", who="owner", scopes=("mcp",))

    async def names() -> list[str]:
        async with mcp_client(resource(base, team), key) as session:
            return [t.name for t in (await session.list_tools()).tools]

    assert anyio.run(names) == []


# ------------------------------------------------------------------------------- least privilege


def test_the_member_behind_an_oauth_client_cannot_approve_its_restricted_call(
        base, team, owner, upstream):
    from tenant_runtime.approvals import service as approvals
    from tenant_runtime.approvals.exceptions import SelfApprovalRefused
    from tests.tenant_runtime.mcp.test_endpoint import set_phase

    _, tokens = tokens_of(base, owner, resource(base, team))
    url, access = resource(base, team), tokens["access_token"]

    async def names() -> list[str]:
        async with mcp_client(url, access) as session:
            return [t.name for t in (await session.list_tools()).tools]

    async def delete() -> Any:
        async with mcp_client(url, access) as session:
            return await session.call_tool("crm__delete_records", {"customer_id": 7})

    assert anyio.run(names) == []
    decide(team, "delete_records", "restricted", action_class="crm.delete")
    set_phase(team, "autonomous")
    first = anyio.run(delete)
    assert first.is_error
    rid = first.structured_content["approval"]["id"]
    ctx = team.ctx("owner")  # the member who approved the client asked for it
    with ctx.session() as s, s.begin(), pytest.raises(SelfApprovalRefused):
        approvals.decide(s, ctx, rid, True, None)
    assert upstream.calls == []
    ctx = team.ctx("approver")
    with ctx.session() as s, s.begin():
        approvals.decide(s, ctx, rid, True, None)
    assert text_of(anyio.run(delete)) == "deleted 7"
    assert upstream.called("delete_records") == [{"customer_id": 7}]


def test_a_grant_follows_its_members_current_role_and_account(base, team, db):
    from control_plane.models import Membership, User

    operator = Browser(base, team.users["operator"].email)
    try:
        flow, tokens = tokens_of(base, operator, resource(base, team))
    finally:
        operator.close()
    url, access = resource(base, team), tokens["access_token"]
    assert initialize(url, access).status_code == 200
    who = team.users["operator"].id
    with db() as s, s.begin():
        s.execute(update(Membership).where(Membership.user_id == who)
                  .values(role="Viewer"))
    demoted = initialize(url, access)
    assert demoted.status_code == 403
    assert "never does more than its member" in demoted.json()["error"]
    refresh = token(base, grant_type="refresh_token", refresh_token=tokens["refresh_token"],
                    client_id=flow.client_id)
    assert refresh.status_code == 400
    assert "no longer holds a role" in refresh.json()["error_description"]
    with db() as s, s.begin():
        s.execute(update(Membership).where(Membership.user_id == who)
                  .values(role="Operator"))
        s.execute(update(User).where(User.id == who).values(is_active=False))
    assert initialize(url, access).status_code == 401


def test_removing_the_member_revokes_their_grants_for_good(base, team, owner, db):
    from control_plane.models import Membership, User
    from control_plane.tenancy import service as tenancy

    operator = Browser(base, team.users["operator"].email)
    try:
        _, tokens = tokens_of(base, operator, resource(base, team))
    finally:
        operator.close()
    who = team.users["operator"].id
    with db() as s, s.begin():
        me = s.get(User, team.users["owner"].id)
        access = tenancy.access_tenant(s, team.tenant_id, user=me)
        membership = s.scalars(select(Membership).where(Membership.user_id == who)).one()
        tenancy.do_remove_member(s, access, membership.id, acting_user=me)
    with db() as s:
        grant = s.scalars(select(OAuthGrant).where(OAuthGrant.user_id == who)).one()
        assert grant.revoked_at is not None
    # added back, the old client's token does not come back with the member
    with db() as s, s.begin():
        me = s.get(User, team.users["owner"].id)
        access = tenancy.access_tenant(s, team.tenant_id, user=me)
        tenancy.do_add_member(s, access, email=team.users["operator"].email, role="Operator",
                              acting_user=me)
    assert initialize(resource(base, team), tokens["access_token"]).status_code == 401
