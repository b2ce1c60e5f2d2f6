"""OpenID Connect single sign-on against a real provider on a loopback port
(tests/fakes/oidc_provider.py), through the real app: the browser's steps are the test
client's requests, the provider's redirect is followed by hand, and every call of ours to the
provider (discovery, JWKS, token) goes over HTTP through the checked client."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from control_plane.identity import oidc
from control_plane.identity.oidc import OidcClient, OidcError
from control_plane.models import (
    ExternalIdentity,
    IdentityProvider,
    Membership,
    PlatformAuditEvent,
    Tenant,
    User,
    WebSession,
)
from control_plane.web.app import build_app
from tenant_runtime.gateway.egress import EgressPolicy
from tests.factories import (
    DEFAULT_PASSWORD,
    csrf_token,
    enable_mfa,
    make_user,
    next_code,
    post_form,
    sign_in,
)
from tests.fakes.oidc_provider import FakeOpenIDProvider

ALICE = {"sub": "alice-0001", "email": "alice@corp.example", "email_verified": True,
         "name": "Alice", "sid": "op-session-1"}


def add_provider(client: TestClient, db, op: FakeOpenIDProvider, **fields: str) -> int:
    make_user(db, "root@magistrate.example")
    assert sign_in(client, "root@magistrate.example").status_code == 303
    data = {"name": "corp", "discovery_url": op.discovery_url, "client_id": op.client_id,
            "client_secret": op.client_secret, "create_accounts": "true", **fields}
    response = post_form(client, "/sso/providers", data, page="/sso")
    assert response.status_code == 201, response.text
    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/account")})
    client.cookies.clear()
    with db() as s:
        return s.scalars(select(IdentityProvider.id)).one()


def sso(client: TestClient, op: FakeOpenIDProvider, provider_id: int,
        claims: dict[str, Any] | None = None, *, fault: str | None = None):  # noqa: ANN201
    """The whole browser round trip; answers our response to the provider's redirect."""
    op.next_claims = dict(ALICE if claims is None else claims)
    op.fault = fault
    client.get("/sign-in")  # a browser has its cookie before it follows a link
    start = client.get(f"/sign-in/sso/{provider_id}?next=/tenants", follow_redirects=False)
    assert start.status_code == 303, start.text
    assert start.headers["location"].startswith(op.issuer + "/authorize?")
    at_provider = httpx2.get(start.headers["location"], follow_redirects=False)
    assert at_provider.status_code == 302
    back = urlsplit(at_provider.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == "http://testserver/sign-in/sso/callback"
    return client.get(f"{back.path}?{back.query}", follow_redirects=False)


def events(db, event_type: str) -> list[PlatformAuditEvent]:
    with db() as s:
        return list(s.scalars(select(PlatformAuditEvent)
                              .where(PlatformAuditEvent.event_type == event_type)
                              .order_by(PlatformAuditEvent.seq)))


def signed_in(client: TestClient) -> bool:
    return client.get("/account", follow_redirects=False).status_code == 200


# ------------------------------------------------------------------------------- providers


def test_an_owner_adds_a_provider_whose_issuer_is_discovered_and_secret_sealed(client, db, op):
    provider_id = add_provider(client, db, op, allowed_domains="corp.example")
    with db() as s:
        row = s.get(IdentityProvider, provider_id)
        assert row is not None
        assert row.issuer == op.issuer and row.allowed_domains == ["corp.example"]
        assert row.client_secret_sealed is not None
        assert op.client_secret.encode() not in row.client_secret_sealed
    created = events(db, "sso.provider_created")
    assert len(created) == 1 and created[0].details["issuer"] == op.issuer
    assert "secret" not in str(created[0].details).lower().replace("client_secret", "")
    # the sign-in page offers it
    assert f'href="/sign-in/sso/{provider_id}?next=/"' in client.get("/sign-in").text


def test_a_member_who_is_not_an_owner_cannot_add_a_provider(client, db, op):
    make_user(db, "member@corp.example", is_owner=False)
    sign_in(client, "member@corp.example")
    response = post_form(client, "/sso/providers",
                         {"name": "x", "discovery_url": op.discovery_url, "client_id": "c"},
                         page="/account")
    assert response.status_code == 403


def test_the_egress_policy_refuses_a_provider_on_a_private_address():
    client = OidcClient(EgressPolicy(), allow_http=True)
    provider = FakeOpenIDProvider().start()
    try:
        with pytest.raises(OidcError) as refused:
            client.fetch_issuer(provider.discovery_url)
        assert refused.value.reason == "egress_refused"
        assert provider.requests == []  # not one byte reached it
    finally:
        provider.stop()


# ------------------------------------------------------------------------------- sign-in


def test_first_sign_in_creates_an_account_without_roles_and_a_bound_session(client, db, op):
    provider_id = add_provider(client, db, op)
    response = sso(client, op, provider_id)
    assert response.status_code == 303 and response.headers["location"] == "/tenants"
    assert signed_in(client)
    with db() as s:
        user = s.scalars(select(User).where(User.email == "alice@corp.example")).one()
        identity = s.scalars(select(ExternalIdentity)).one()
        assert (identity.issuer, identity.subject, identity.user_id) == (
            op.issuer, "alice-0001", user.id)
        assert s.scalars(select(Membership).where(Membership.user_id == user.id)).all() == []
        session = s.scalars(select(WebSession).where(WebSession.revoked_at.is_(None))).one()
        assert (session.sso_provider_id, session.sso_subject, session.sso_sid) == (
            provider_id, "alice-0001", "op-session-1")
    assert len(events(db, "sso.account_created")) == 1
    assert len(events(db, "sso.sign_in")) == 1
    # the token request proved the PKCE verifier and the client secret (the fake checks both)
    assert ("POST", "/token") in op.requests


def test_the_identity_is_the_subject_not_the_email(client, db, op):
    provider_id = add_provider(client, db, op)
    assert sso(client, op, provider_id).status_code == 303
    client.cookies.clear()
    # the same e-mail under another subject is not Alice: it waits for Alice's password
    other = dict(ALICE, sub="mallory-9")
    response = sso(client, op, provider_id, other)
    assert response.status_code == 200 and "Link your account" in response.text
    assert not signed_in(client)


def test_an_unknown_subject_is_refused_when_the_provider_creates_no_accounts(client, db, op):
    provider_id = add_provider(client, db, op, create_accounts="false")
    response = sso(client, op, provider_id)
    assert response.status_code == 403
    assert "does not create accounts" in response.text
    assert events(db, "sso.sign_in_refused")[-1].details["reason"] == "unknown_account"
    with db() as s:
        assert s.scalars(select(User).where(User.email == "alice@corp.example")).first() is None


@pytest.mark.parametrize(("fault", "reason", "sentence"), [
    ("wrong_issuer", "wrong_issuer", "another issuer"),
    ("wrong_audience", "wrong_audience", "another application"),
    ("expired", "expired", "has expired"),
    ("bad_signature", "bad_signature", "signature does not verify"),
    ("alg_none", "algorithm_refused", "(none) is not accepted"),
    ("hs256_public_key", "algorithm_refused", "(HS256) is not accepted"),
])
def test_a_bad_id_token_is_refused_with_a_page_and_an_audit_event(client, db, op, fault,
                                                                  reason, sentence):
    provider_id = add_provider(client, db, op)
    response = sso(client, op, provider_id, fault=fault)
    assert response.status_code == 403, response.text
    assert "Single sign-on refused" in response.text and sentence in response.text
    refused = events(db, "sso.sign_in_refused")
    assert [e.details["reason"] for e in refused] == [reason]
    assert refused[0].target_id == str(provider_id)
    assert not signed_in(client)
    with db() as s:
        assert s.scalars(select(ExternalIdentity)).first() is None


def test_a_replayed_nonce_is_refused(client, db, op):
    provider_id = add_provider(client, db, op)
    assert sso(client, op, provider_id).status_code == 303
    client.cookies.clear()
    response = sso(client, op, provider_id, fault="replay_nonce")
    assert response.status_code == 403 and "nonce differs" in response.text
    assert events(db, "sso.sign_in_refused")[-1].details["reason"] == "nonce_mismatch"


def test_a_state_from_another_browser_a_forged_one_or_a_reused_one_is_refused(client, db, op,
                                                                             services):
    provider_id = add_provider(client, db, op)
    op.next_claims = dict(ALICE)
    client.get("/sign-in")
    start = client.get(f"/sign-in/sso/{provider_id}", follow_redirects=False)
    back = urlsplit(httpx2.get(start.headers["location"]).headers["location"])
    answer = f"{back.path}?{back.query}"
    # another browser (login CSRF: an attacker's answer planted in a victim's browser)
    with TestClient(build_app(services), base_url="http://testserver") as other:
        other.get("/sign-in")
        refused = other.get(answer, follow_redirects=False)
        assert refused.status_code == 403 and "state differs" in refused.text
    # a forged state in the right browser
    code = parse_qs(back.query)["code"][0]
    forged = client.get(f"/sign-in/sso/callback?code={code}&state=forged")
    assert forged.status_code == 403
    # the real answer works once, then never again
    assert client.get(answer, follow_redirects=False).status_code == 303
    client.cookies.clear()
    client.get("/sign-in")
    assert client.get(answer, follow_redirects=False).status_code == 403
    reasons = [e.details["reason"] for e in events(db, "sso.sign_in_refused")]
    assert reasons == ["state_mismatch", "state_mismatch", "state_mismatch"]


def test_an_error_answer_from_the_provider_is_a_page_not_a_crash(client, db, op):
    add_provider(client, db, op)
    response = client.get("/sign-in/sso/callback?error=access_denied&state=x"
                          "&error_description=The+user+said+no")
    assert response.status_code == 403 and "The user said no" in response.text
    assert events(db, "sso.sign_in_refused")[-1].details["reason"] == "provider_error"


def test_an_unverified_email_is_refused(client, db, op):
    provider_id = add_provider(client, db, op)
    response = sso(client, op, provider_id, dict(ALICE, email_verified=False))
    assert response.status_code == 403 and "not verified this e-mail" in response.text
    assert events(db, "sso.sign_in_refused")[-1].details["reason"] == "email_unverified"


def test_a_domain_that_is_not_allowed_is_refused(client, db, op):
    provider_id = add_provider(client, db, op, allowed_domains="corp.example")
    ok = sso(client, op, provider_id)
    assert ok.status_code == 303
    client.cookies.clear()
    response = sso(client, op, provider_id, dict(ALICE, sub="eve", email="eve@else.example"))
    assert response.status_code == 403 and "else.example may not sign in" in response.text
    assert events(db, "sso.sign_in_refused")[-1].details["reason"] == "domain_not_allowed"


def test_a_rotated_key_is_fetched_again_and_an_unpublished_one_refused(client, db, op):
    provider_id = add_provider(client, db, op)
    assert sso(client, op, provider_id).status_code == 303
    fetched = op.requests.count(("GET", "/jwks"))
    op.rotate()
    time.sleep(oidc.JWKS_REFETCH_SECONDS + 0.1)
    client.cookies.clear()
    assert sso(client, op, provider_id).status_code == 303  # the new kid: fetched again
    assert op.requests.count(("GET", "/jwks")) == fetched + 1
    # a key the provider does not publish (a forger's), even after another fetch
    op.keys = [FakeOpenIDProvider._new_key()]
    time.sleep(oidc.JWKS_REFETCH_SECONDS + 0.1)
    client.cookies.clear()
    response = sso(client, op, provider_id)
    assert response.status_code == 403 and "does not publish" in response.text
    assert events(db, "sso.sign_in_refused")[-1].details["reason"] == "unknown_key"


# ------------------------------------------------------------------------------- linking


def test_an_existing_account_is_linked_only_after_its_password(client, db, op):
    local = make_user(db, "alice@corp.example", is_owner=False)
    provider_id = add_provider(client, db, op)
    response = sso(client, op, provider_id)
    assert response.status_code == 200 and "Link your account" in response.text
    assert not signed_in(client)  # no takeover by e-mail
    link = response.text.split('name="link" value="')[1].split('"')[0]
    token = csrf_token(client)
    wrong = client.post("/sign-in/sso/link", data={"csrf_token": token, "link": link,
                                                   "password": "not it"})
    assert wrong.status_code == 401 and not signed_in(client)
    assert len(events(db, "sso.link_failed")) == 1
    right = client.post("/sign-in/sso/link",
                        data={"csrf_token": csrf_token(client), "link": link,
                              "password": DEFAULT_PASSWORD}, follow_redirects=False)
    assert right.status_code == 303 and signed_in(client)
    with db() as s:
        identity = s.scalars(select(ExternalIdentity)).one()
        assert identity.user_id == local.id
    assert len(events(db, "sso.identity_linked")) == 1
    # the link is spent, and the next sign-in needs no password
    client.cookies.clear()
    assert sso(client, op, provider_id).status_code == 303 and signed_in(client)


def test_a_link_started_in_one_browser_cannot_be_finished_in_another(client, db, op,
                                                                     services):
    make_user(db, "alice@corp.example", is_owner=False)
    provider_id = add_provider(client, db, op)
    link = sso(client, op, provider_id).text.split('name="link" value="')[1].split('"')[0]
    with TestClient(build_app(services), base_url="http://testserver") as other:
        response = other.post("/sign-in/sso/link",
                              data={"csrf_token": csrf_token(other), "link": link,
                                    "password": DEFAULT_PASSWORD})
        assert response.status_code == 403 and "no longer open" in response.text


# ------------------------------------------------------------------------------- groups


def _tenant(db, slug: str) -> int:
    with db() as s, s.begin():
        tenant = Tenant(slug=slug, name=slug.title(), state="active")
        s.add(tenant)
        s.flush()
        return tenant.id


def _roles(db, email: str) -> dict[str, str]:
    with db() as s:
        rows = s.execute(select(Tenant.slug, Membership.role)
                         .join(Membership, Membership.tenant_id == Tenant.id)
                         .join(User, User.id == Membership.user_id)
                         .where(User.email == email)).all()
        return dict(rows)  # type: ignore[arg-type]


def test_groups_map_to_roles_at_every_sign_in_and_a_lost_group_loses_the_role(client, db, op):
    _tenant(db, "acme")
    beta = _tenant(db, "beta")
    provider_id = add_provider(
        client, db, op, groups_claim="groups",
        group_roles="ops = acme : Operator\nadmins = acme : Admin\nops = beta : Viewer")
    assert sso(client, op, provider_id, dict(ALICE, groups=["ops"])).status_code == 303
    assert _roles(db, "alice@corp.example") == {"acme": "Operator", "beta": "Viewer"}
    assert len(events(db, "sso.role_granted")) == 2
    # a role given by hand in beta is the Owners' business, never the mapping's
    with db() as s, s.begin():
        membership = s.scalars(select(Membership).where(Membership.tenant_id == beta)).one()
        membership.sso_provider_id = None
        membership.role = "Approver"
    client.cookies.clear()
    assert sso(client, op, provider_id, dict(ALICE, groups=["ops", "admins"])).status_code == 303
    assert _roles(db, "alice@corp.example") == {"acme": "Admin", "beta": "Approver"}
    changed = events(db, "sso.role_changed")
    assert [(e.details["from"], e.details["to"]) for e in changed] == [("Operator", "Admin")]
    client.cookies.clear()
    assert sso(client, op, provider_id, dict(ALICE, groups=[])).status_code == 303
    assert _roles(db, "alice@corp.example") == {"beta": "Approver"}
    removed = events(db, "sso.role_removed")
    assert len(removed) == 1 and removed[0].actor_name == "corp"
    # the same groups again: nothing changes, nothing is audited
    before = len(events(db, "sso.role_granted"))
    client.cookies.clear()
    assert sso(client, op, provider_id, dict(ALICE, groups=[])).status_code == 303
    assert len(events(db, "sso.role_granted")) == before


def test_a_bad_group_mapping_line_is_refused_with_a_sentence(client, db, op):
    make_user(db, "root@magistrate.example")
    sign_in(client, "root@magistrate.example")
    response = post_form(client, "/sso/providers",
                         {"name": "corp", "discovery_url": op.discovery_url,
                          "client_id": op.client_id, "group_roles": "ops = nowhere : Admin"},
                         page="/sso")
    assert response.status_code == 422 and "no tenant has the slug" in response.text


# ------------------------------------------------------------------------------- MFA and policy


def test_totp_is_still_asked_unless_the_provider_s_amr_is_trusted(client, db, op, services):
    made = enable_mfa(db, make_user(db, "alice@corp.example", is_owner=False), services.sealer)
    provider_id = add_provider(client, db, op)
    link = sso(client, op, provider_id).text.split('name="link" value="')[1].split('"')[0]
    response = client.post("/sign-in/sso/link",
                           data={"csrf_token": csrf_token(client), "link": link,
                                 "password": DEFAULT_PASSWORD}, follow_redirects=False)
    assert response.headers["location"].startswith("/sign-in/mfa")
    assert not signed_in(client)
    assert made.totp_secret is not None
    passed = client.post("/sign-in/mfa", data={"csrf_token": csrf_token(client, "/sign-in/mfa"),
                                               "code": next_code(made.totp_secret)},
                         follow_redirects=False)
    assert passed.status_code == 303 and signed_in(client)
    with db() as s:  # the full session still carries the provider's sid
        session = s.scalars(select(WebSession).where(WebSession.revoked_at.is_(None))).one()
        assert session.sso_sid == "op-session-1"
    # a provider trusted for MFA whose token says so: no TOTP
    with db() as s, s.begin():
        s.get(IdentityProvider, provider_id).trust_idp_mfa = True  # type: ignore[union-attr]
    client.cookies.clear()
    direct = sso(client, op, provider_id, dict(ALICE, amr=["pwd", "mfa"]))
    assert direct.status_code == 303 and direct.headers["location"] == "/tenants"
    client.cookies.clear()
    asked = sso(client, op, provider_id, dict(ALICE, amr=["pwd"]))
    assert asked.headers["location"].startswith("/sign-in/mfa")


def test_sso_required_refuses_passwords_except_the_break_glass_owner(client, db, op, services):
    enable_mfa(db, make_user(db, "glass@magistrate.example"), services.sealer)
    make_user(db, "bob@magistrate.example", is_owner=False)
    add_provider(client, db, op)
    sign_in(client, "root@magistrate.example")
    refused = post_form(client, "/sso/policy", {"sso_required": "true"}, page="/sso")
    assert refused.status_code == 422 and "break-glass" in refused.text
    saved = post_form(client, "/sso/policy", {"sso_required": "true",
                                              "break_glass_email": "glass@magistrate.example"},
                      page="/sso")
    assert saved.status_code == 200 and "policy was saved" in saved.text
    assert events(db, "sso.policy_changed")[-1].details["sso_required"] is True
    client.cookies.clear()
    bob = sign_in(client, "bob@magistrate.example")
    assert bob.status_code == 403 and "requires single sign-on" in bob.text
    assert not signed_in(client)
    wrong = sign_in(client, "bob@magistrate.example", "wrong password")
    assert wrong.status_code == 401  # a wrong password says nothing about the policy
    glass = sign_in(client, "glass@magistrate.example")
    assert glass.status_code == 303 and glass.headers["location"].startswith("/sign-in/mfa")
    failed = events(db, "auth.sign_in_failed")
    assert [e.details["reason"] for e in failed][-2:] == ["sso_required", "bad_password"]


# ------------------------------------------------------------------------------- sign-out


def test_back_channel_logout_revokes_the_named_sessions_at_once(client, db, op, services):
    provider_id = add_provider(client, db, op)
    assert sso(client, op, provider_id).status_code == 303 and signed_in(client)
    with TestClient(build_app(services), base_url="http://testserver") as idp:
        # a token that is not a logout token, and one signed with alg=none: refused, 400
        not_logout = idp.post(f"/sso/backchannel-logout/{provider_id}",
                              data={"logout_token": op.logout_token(sid="op-session-1",
                                                                    events=False)})
        assert not_logout.status_code == 400
        op.fault = "alg_none"
        unsigned = idp.post(f"/sso/backchannel-logout/{provider_id}",
                            data={"logout_token": op.logout_token(sid="op-session-1")})
        assert unsigned.status_code == 400
        op.fault = None
        assert signed_in(client)
        other_sid = idp.post(f"/sso/backchannel-logout/{provider_id}",
                             data={"logout_token": op.logout_token(sid="another")})
        assert other_sid.status_code == 200 and signed_in(client)
        done = idp.post(f"/sso/backchannel-logout/{provider_id}",
                        data={"logout_token": op.logout_token(sid="op-session-1")})
        assert done.status_code == 200 and done.headers["cache-control"] == "no-store"
    assert not signed_in(client)
    refusals = events(db, "sso.backchannel_logout_refused")
    assert [e.details["reason"] for e in refusals] == ["not_logout_token", "algorithm_refused"]
    assert [e.details["sessions"] for e in events(db, "sso.backchannel_logout")] == [0, 1]


def test_back_channel_logout_by_subject_ends_every_session_of_it(client, db, op, services):
    provider_id = add_provider(client, db, op)
    assert sso(client, op, provider_id).status_code == 303
    with TestClient(build_app(services), base_url="http://testserver") as second:
        second.get("/sign-in")
        assert sso(second, op, provider_id, dict(ALICE, sid="op-session-2")).status_code == 303
        with TestClient(build_app(services), base_url="http://testserver") as idp:
            response = idp.post(f"/sso/backchannel-logout/{provider_id}",
                                data={"logout_token": op.logout_token(sub="alice-0001")})
            assert response.status_code == 200
        assert not signed_in(second)
    assert not signed_in(client)


def test_signing_out_of_an_sso_session_goes_on_to_the_provider(client, db, op):
    provider_id = add_provider(client, db, op)
    assert sso(client, op, provider_id).status_code == 303
    response = client.post("/sign-out", data={"csrf_token": csrf_token(client, "/account")},
                           follow_redirects=False)
    target = urlsplit(response.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == op.issuer + "/end-session"
    query = parse_qs(target.query)
    assert query["client_id"] == [op.client_id]
    assert query["post_logout_redirect_uri"] == ["http://testserver/sign-in"]
    assert not signed_in(client)


def test_an_account_the_provider_provisioned_over_scim_is_bound_at_first_sign_in(client, db,
                                                                               op):
    from control_plane.scim import service as scim

    provider_id = add_provider(client, db, op, create_accounts="false")
    with db() as s, s.begin():
        owner = s.scalars(select(User).where(User.email == "root@magistrate.example")).one()
        provider = s.get(IdentityProvider, provider_id)
        assert provider is not None
        _, secret = scim.do_create_token(s, provider, label="corp-scim", acting_user=owner)
    created = client.post("/scim/v2/Users", json={
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "alice@corp.example"}, headers={"Authorization": f"Bearer {secret}"})
    assert created.status_code == 201
    response = sso(client, op, provider_id)
    assert response.status_code == 303 and signed_in(client)  # no password asked
    with db() as s:
        assert s.scalars(select(ExternalIdentity)).one().user_id == int(created.json()["id"])
    assert events(db, "sso.identity_linked")[-1].details["by"] == "scim"
