"""Single sign-on required per tenant (with its break-glass Owner), the provider's second
factor as its configuration accepts it (``amr``/``acr``), and replayed tokens, through the real
app and a real OpenID provider on a loopback port (tests/fakes/oidc_provider.py)."""

from __future__ import annotations

import ast
import time
from pathlib import Path

from sqlalchemy import select
from starlette.testclient import TestClient

import control_plane
from control_plane.identity import replay
from control_plane.models import IdentityProvider, Membership, Tenant, User, WebSession
from control_plane.web.access import DECISIONS, PUBLIC
from control_plane.web.app import build_app
from tests.control_plane.identity.test_oidc import (
    ALICE,
    _tenant,
    add_provider,
    events,
    signed_in,
    sso,
)
from tests.factories import (
    DEFAULT_PASSWORD,
    csrf_token,
    enable_mfa,
    make_user,
    next_code,
    post_form,
    sign_in,
)


def _tenant_without_database(db, slug: str) -> int:
    """A tenant whose database these tests never open: suspended, so a refused role's audit
    event goes to the platform chain."""
    tenant_id = _tenant(db, slug)
    with db() as s, s.begin():
        s.get(Tenant, tenant_id).state = "suspended"  # type: ignore[union-attr]
    return tenant_id


def _member(db, email: str, tenant_id: int, role: str) -> None:
    with db() as s, s.begin():
        user = s.scalars(select(User).where(User.email == email)).one()
        s.add(Membership(user_id=user.id, tenant_id=tenant_id, role=role))


def _full_sign_in(client: TestClient, email: str, secret: str) -> None:
    assert sign_in(client, email).headers["location"].startswith("/sign-in/mfa")
    done = client.post("/sign-in/mfa", data={"csrf_token": csrf_token(client, "/sign-in/mfa"),
                                             "code": next_code(secret)},
                       follow_redirects=False)
    assert done.status_code == 303, done.text


# ------------------------------------------------------------------------------- per tenant


def test_an_owner_requires_sso_for_a_tenant_and_its_members_lose_their_passwords(
        client, db, op, services):
    acme, beta = _tenant_without_database(db, "acme"), _tenant(db, "beta")
    add_provider(client, db, op)  # "corp", added by the installation Owner root@
    olga = enable_mfa(db, make_user(db, "olga@acme.example", is_owner=False), services.sealer)
    make_user(db, "oscar@acme.example", is_owner=False)  # an Owner without TOTP
    make_user(db, "mia@acme.example", is_owner=False)
    make_user(db, "ned@beta.example", is_owner=False)
    _member(db, "olga@acme.example", acme, "Owner")
    _member(db, "oscar@acme.example", acme, "Owner")
    _member(db, "mia@acme.example", acme, "Operator")
    _member(db, "mia@acme.example", beta, "Viewer")
    _member(db, "ned@beta.example", beta, "Owner")
    path = f"/tenants/{acme}/security/sso"

    # only the tenant's Owner changes it
    assert sign_in(client, "mia@acme.example").status_code == 303
    assert post_form(client, path, {"sso_required": "true"}).status_code == 403
    client.cookies.clear()
    assert olga.totp_secret is not None
    owner = TestClient(build_app(services), base_url="http://testserver")
    _full_sign_in(owner, "olga@acme.example", olga.totp_secret)
    refusals = {
        "": "Name a break-glass Owner",
        "mia@acme.example": "must be an active Owner of this tenant",
        "ned@beta.example": "must be an active Owner of this tenant",
        "oscar@acme.example": "must turn on two-factor sign-in",
    }
    for email, sentence in refusals.items():
        refused = post_form(owner, path, {"sso_required": "true", "break_glass_email": email})
        assert refused.status_code == 422 and sentence in refused.text, email
    unknown = post_form(owner, path, {"sso_required": "true", "sso_provider": "nope",
                                       "break_glass_email": "olga@acme.example"})
    assert unknown.status_code == 422 and "No active identity provider" in unknown.text
    saved = post_form(owner, path, {"sso_required": "true", "sso_provider": "corp",
                                     "break_glass_email": "olga@acme.example"})
    assert saved.status_code == 303
    assert saved.headers["location"] == f"/tenants/{acme}/settings?done=sso-required"
    changed = events(db, "sso.tenant_policy_changed")
    assert len(changed) == 1 and changed[0].target_id == str(acme)
    assert changed[0].details == {"sso_required": True, "break_glass_user_id": olga.id,
                                  "provider": "corp"}
    assert changed[0].actor_name == "olga@acme.example"
    # the same again changes nothing and audits nothing
    post_form(owner, path, {"sso_required": "true", "sso_provider": "corp",
                             "break_glass_email": "olga@acme.example"})
    assert len(events(db, "sso.tenant_policy_changed")) == 1

    # a member of the tenant: refused, with the sentence naming the provider's button
    mia = sign_in(client, "mia@acme.example")
    assert mia.status_code == 403 and not signed_in(client)
    assert "The tenant Acme requires single sign-on" in mia.text
    assert "\u201cSign in with corp\u201d button" in mia.text
    assert 'data-testid="sso-corp"' in mia.text
    assert sign_in(client, "mia@acme.example", "wrong password").status_code == 401
    failed = events(db, "auth.sign_in_failed")
    assert failed[-2].details["reason"] == "sso_required"
    assert failed[-2].details["tenant"] == "Acme"
    # someone of another tenant only: untouched
    assert sign_in(client, "ned@beta.example").status_code == 303
    client.cookies.clear()
    # the break-glass Owner keeps password + TOTP, and only while TOTP is on
    assert sign_in(client, "olga@acme.example").headers["location"].startswith("/sign-in/mfa")
    client.cookies.clear()
    with db() as s, s.begin():
        s.get(User, olga.id).mfa_enabled_at = None  # type: ignore[union-attr]
    assert sign_in(client, "olga@acme.example").status_code == 403
    off = post_form(owner, path, {"break_glass_email": "olga@acme.example",
                                   "sso_provider": "corp"})
    assert off.headers["location"].endswith("done=sso-optional")
    client.cookies.clear()
    assert sign_in(client, "mia@acme.example").status_code == 303


def test_every_path_that_starts_a_session_is_known_and_checks_the_policy():
    """Enumeration: a new caller of ``sessions.start_session``, or a new public POST route
    (where a password could be taken), fails here until it is judged against the policy."""
    root = Path(control_plane.__file__).parent
    callers = set()
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if isinstance(func, ast.FunctionDef):
                for node in ast.walk(func):
                    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                            and node.func.attr == "start_session"):
                        callers.add(f"{path.relative_to(root)}:{func.name}")
    assert callers == {
        "auth/service.py:do_sign_in",  # asks policy.password_refusal after the password
        "auth/service.py:do_pass_mfa_challenge",  # only upgrades a pending session
        "identity/service.py:_sign_in",  # single sign-on itself
    }
    public_posts = {route for route, decision in DECISIONS.items()
                    if decision == PUBLIC and route.startswith("POST ")}
    assert public_posts == {
        "POST /sign-in",  # the password form: refused by the policy (tested above)
        "POST /sign-in/mfa",  # a code for a pending session; no password
        "POST /sign-out",
        "POST /sign-in/sso/link",  # a password proving an account to bind to a provider's
                                   # subject: the session is the provider's sign-in
        "POST /sso/backchannel-logout/{provider_id:int}",
        "POST /oauth/register",  # an MCP client registers itself; no account, no password
        "POST /oauth/token",  # a code or refresh token for MCP tokens; never a session
    }


def test_the_platform_policy_names_every_active_provider(client, db, op, services):
    enable_mfa(db, make_user(db, "glass@magistrate.example"), services.sealer)
    make_user(db, "bob@magistrate.example", is_owner=False)
    add_provider(client, db, op)
    sign_in(client, "root@magistrate.example")
    post_form(client, "/sso/policy", {"sso_required": "true",
                                      "break_glass_email": "glass@magistrate.example"},
              page="/sso")
    client.cookies.clear()
    bob = sign_in(client, "bob@magistrate.example")
    assert bob.status_code == 403
    assert "This installation requires single sign-on" in bob.text
    assert "\u201cSign in with corp\u201d" in bob.text


# ------------------------------------------------------------------------- MFA by the provider


def test_the_provider_s_second_factor_counts_only_for_the_amr_and_acr_values_accepted(
        client, db, op, services):
    made = enable_mfa(db, make_user(db, "alice@corp.example", is_owner=False), services.sealer)
    provider_id = add_provider(client, db, op, trust_idp_mfa="true", mfa_amr_values="hwk",
                               mfa_acr_values="urn:corp:mfa")
    with db() as s, s.begin():
        provider = s.get(IdentityProvider, provider_id)
        assert provider is not None
        assert (provider.mfa_amr_values, provider.mfa_acr_values) == (["hwk"], ["urn:corp:mfa"])
    # bind alice's subject to her account (the link proves her password, then TOTP)
    link = sso(client, op, provider_id).text.split('name="link" value="')[1].split('"')[0]
    client.post("/sign-in/sso/link", data={"csrf_token": csrf_token(client), "link": link,
                                           "password": DEFAULT_PASSWORD},
                follow_redirects=False)
    client.cookies.clear()
    cases = [({"amr": ["pwd", "mfa"]}, True),   # "mfa" is not among the values accepted here
             ({"amr": ["pwd", "hwk"]}, False),
             ({"acr": "urn:corp:mfa"}, False),
             ({"acr": "urn:corp:password"}, True),
             ({}, True)]
    for extra, totp_asked in cases:
        client.cookies.clear()
        response = sso(client, op, provider_id, dict(ALICE, **extra))
        assert response.status_code == 303, (extra, response.text)
        asked = response.headers["location"].startswith("/sign-in/mfa")
        assert asked is totp_asked, extra
    # a provider not trusted for MFA: TOTP whatever its token says
    with db() as s, s.begin():
        s.get(IdentityProvider, provider_id).trust_idp_mfa = False  # type: ignore[union-attr]
    client.cookies.clear()
    response = sso(client, op, provider_id, dict(ALICE, amr=["hwk"]))
    assert response.headers["location"].startswith("/sign-in/mfa")
    assert made.totp_secret is not None


def test_a_tenant_requiring_mfa_takes_the_provider_s_second_factor_or_refuses(
        client, db, op, services):
    acme = _tenant(db, "acme")
    with db() as s, s.begin():
        s.get(Tenant, acme).require_mfa = True  # type: ignore[union-attr]
    provider_id = add_provider(client, db, op, trust_idp_mfa="true", groups_claim="groups",
                               group_roles="ops = acme : Owner")
    path = f"/tenants/{acme}/security/sso"  # a tenant page (its form, left empty: no change)
    # without a second factor (and no TOTP on the account): signed in, the tenant refused
    weak = sso(client, op, provider_id, dict(ALICE, groups=["ops"], amr=["pwd"]))
    assert weak.status_code == 303 and weak.headers["location"] == "/tenants"
    refused = post_form(client, path, {})
    assert refused.status_code == 403 and "requires two-factor sign-in" in refused.text
    client.cookies.clear()
    # the provider vouches for one: the tenant's pages open
    strong = sso(client, op, provider_id, dict(ALICE, groups=["ops"], amr=["pwd", "otp"]))
    assert strong.headers["location"] == "/tenants"
    assert post_form(client, path, {}).status_code == 303
    with db() as s:
        flags = s.scalars(select(WebSession.mfa_by_provider)
                          .where(WebSession.revoked_at.is_(None))).all()
        assert sorted(flags) == [False, True]
    idp = [e.details["idp_mfa"] for e in events(db, "sso.sign_in")]
    assert idp == [False, True]


# ------------------------------------------------------------------------------- replay


def test_an_id_token_whose_jti_was_used_is_refused(client, db, op):
    provider_id = add_provider(client, db, op)
    assert sso(client, op, provider_id, dict(ALICE, jti="token-1")).status_code == 303
    client.cookies.clear()
    again = sso(client, op, provider_id, dict(ALICE, jti="token-1"))
    assert again.status_code == 403 and "already used" in again.text
    assert not signed_in(client)
    assert events(db, "sso.sign_in_refused")[-1].details["reason"] == "token_replayed"
    # another jti, and a token without one: fine
    assert sso(client, op, provider_id, dict(ALICE, jti="token-2")).status_code == 303
    client.cookies.clear()
    assert sso(client, op, provider_id).status_code == 303


def test_a_nonce_is_taken_once_and_forgotten_after_the_token_s_expiry(db):
    with db() as s, s.begin():
        later = time.time() + 300
        assert replay.take_once(s, kind="nonce", issuer="https://a", value="n1", expires=later)
        assert not replay.take_once(s, kind="nonce", issuer="https://a", value="n1",
                                    expires=later)
        # another issuer or kind is another value
        assert replay.take_once(s, kind="nonce", issuer="https://b", value="n1", expires=later)
        assert replay.take_once(s, kind="id_jti", issuer="https://a", value="n1",
                                expires=later)
        # long expired: swept, so the store does not grow without end
        assert replay.take_once(s, kind="nonce", issuer="https://a", value="old",
                                expires=time.time() - 3600)
        assert replay.take_once(s, kind="nonce", issuer="https://a", value="other",
                                expires=later)
        assert replay.take_once(s, kind="nonce", issuer="https://a", value="old",
                                expires=later)


def test_a_replayed_logout_token_or_one_without_jti_is_refused(client, db, op, services):
    provider_id = add_provider(client, db, op)
    assert sso(client, op, provider_id).status_code == 303
    with TestClient(build_app(services), base_url="http://testserver") as idp:
        url = f"/sso/backchannel-logout/{provider_id}"
        token = op.logout_token(sid="another")
        assert idp.post(url, data={"logout_token": token}).status_code == 200
        replayed = idp.post(url, data={"logout_token": token})
        assert replayed.status_code == 400 and "already used" in replayed.text
        now = int(time.time())
        no_jti = op.sign({"iss": op.issuer, "aud": op.client_id, "iat": now, "exp": now + 60,
                          "sid": "op-session-1",
                          "events": {"http://schemas.openid.net/event/backchannel-logout": {}}})
        missing = idp.post(url, data={"logout_token": no_jti})
        assert missing.status_code == 400 and "jti" in missing.text
    assert signed_in(client)
    reasons = [e.details["reason"] for e in events(db, "sso.backchannel_logout_refused")]
    assert reasons == ["token_replayed", "not_logout_token"]
