"""Single sign-on in a real browser against a real OpenID provider on a loopback port: the
sign-in page's button, the provider's redirect back, group mapping, back-channel logout ending
the browser's session at once, and "SSO required" refusing a password sign-in."""

from __future__ import annotations

import re

import httpx2
import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy import select

from control_plane.identity import service as sso
from control_plane.models import Membership, Tenant, User
from tests.factories import DEFAULT_PASSWORD, enable_mfa, make_user
from tests.fakes.oidc_provider import FakeOpenIDProvider

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("chromium_path")]
TIMEOUT_MS = 10_000


def test_sso_sign_in_groups_back_channel_logout_and_policy(live_server: str, browser: Browser,
                                                           db, services) -> None:
    base = live_server
    op = FakeOpenIDProvider().start()
    try:
        root = enable_mfa(db, make_user(db, "root@magistrate.example"), services.sealer)
        make_user(db, "bob@magistrate.example", is_owner=False)
        with db() as s, s.begin():
            tenant = Tenant(slug="acme", name="Acme", state="suspended")  # no database to open
            s.add(tenant)
            s.flush()
            owner = s.scalars(select(User).where(User.email == root.email)).one()
            provider = sso.do_create_provider(
                s, name="corp", discovery_url=op.discovery_url, client_id=op.client_id,
                client_secret=op.client_secret, allowed_domains=["corp.example"],
                create_accounts=True, groups_claim="groups",
                group_roles=sso.parse_group_roles(s, "ops = acme : Operator"),
                trust_idp_mfa=False, oidc=services.oidc, sealer=services.sealer,
                acting_user=owner)
            provider_id = provider.id
            sso.do_set_policy(s, sso_required=True, break_glass_email=root.email,
                              acting_user=owner)
        op.next_claims = {"sub": "alice-1", "email": "alice@corp.example",
                          "email_verified": True, "sid": "op-sid-1", "groups": ["ops"]}

        context = browser.new_context(base_url=base)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

        # the button, the provider, and back: signed in, with the mapped role
        page.goto(f"{base}/sign-in")
        page.get_by_test_id("sso-corp").click()
        page.wait_for_url(f"{base}/")
        expect(page.get_by_test_id("welcome")).to_have_text("Signed in as alice@corp.example.")
        with db() as s:
            role = s.scalars(select(Membership.role).join(User, User.id == Membership.user_id)
                             .where(User.email == "alice@corp.example")).one()
            assert role == "Operator"

        # the provider ends the session over the back channel: the next page asks to sign in
        response = httpx2.post(f"{base}/sso/backchannel-logout/{provider_id}",
                               data={"logout_token": op.logout_token(sid="op-sid-1")})
        assert response.status_code == 200
        page.goto(f"{base}/account")
        page.wait_for_url(re.compile(r"/sign-in\?next="))

        # SSO required: Bob's right password is refused with a sentence
        page.get_by_label("E-mail").fill("bob@magistrate.example")
        page.get_by_label("Password").fill(DEFAULT_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("requires single sign-on")
        assert problems == []
        context.close()
    finally:
        op.stop()


def test_a_tenant_requiring_sso_refuses_a_member_s_password_and_its_button_signs_in(
        live_server: str, browser: Browser, db, services) -> None:
    base = live_server
    op = FakeOpenIDProvider().start()
    try:
        root = enable_mfa(db, make_user(db, "root@magistrate.example"), services.sealer)
        make_user(db, "mia@corp.example", is_owner=False)
        with db() as s, s.begin():
            tenant = Tenant(slug="acme", name="Acme", state="suspended")  # no database to open
            s.add(tenant)
            s.flush()
            owner = s.scalars(select(User).where(User.email == root.email)).one()
            mia = s.scalars(select(User).where(User.email == "mia@corp.example")).one()
            s.add_all([Membership(user_id=owner.id, tenant_id=tenant.id, role="Owner"),
                       Membership(user_id=mia.id, tenant_id=tenant.id, role="Operator")])
            s.flush()
            sso.do_create_provider(
                s, name="corp", discovery_url=op.discovery_url, client_id=op.client_id,
                client_secret=op.client_secret, allowed_domains=["corp.example"],
                create_accounts=True, groups_claim=None, group_roles=[], trust_idp_mfa=False,
                oidc=services.oidc, sealer=services.sealer, acting_user=owner)
            sso.do_set_tenant_policy(s, tenant, role="Owner", sso_required=True,
                                     break_glass_email=root.email, provider_name="corp",
                                     acting_user=owner)
        op.next_claims = {"sub": "mia-1", "email": "mia@corp.example", "email_verified": True}

        context = browser.new_context(base_url=base)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.goto(f"{base}/sign-in")
        page.get_by_label("E-mail").fill("mia@corp.example")
        page.get_by_label("Password").fill(DEFAULT_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text(
            "The tenant Acme requires single sign-on: use the \u201cSign in with corp\u201d "
            "button below.")
        # the button it names: the provider, then the account link asks for the password once
        page.get_by_test_id("sso-corp").click()
        page.get_by_label("Password").fill(DEFAULT_PASSWORD)
        page.get_by_role("button", name=re.compile("Link|Continue|Sign in")).click()
        page.wait_for_url(f"{base}/")
        expect(page.get_by_test_id("welcome")).to_have_text("Signed in as mia@corp.example.")
        assert problems == []
        context.close()
    finally:
        op.stop()
