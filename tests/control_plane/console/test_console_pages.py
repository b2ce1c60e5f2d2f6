"""The console's pages as a browser receives them: the tenant bar (tabs and switcher), the
Overview's checklist, the Settings tab, Post/Redirect/Get with its notices, values kept on a
refused form, and the recent-calls table with refusals, filters, paging and CSV."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from control_plane.console.calls import PAGE_SIZE, digest
from control_plane.console.charts import Series, bar_chart, cap_meter, nice_ceiling
from control_plane.console.notices import notice_from
from control_plane.db import utcnow
from control_plane.models import Membership, Tenant
from tenant_runtime import audit
from tenant_runtime.context import Actor
from tenant_runtime.gateway.service import GatewayEvents
from tenant_runtime.models import GatewayCall
from tests.factories import csrf_token, make_user, post_form, sign_in


def tenant_ctx(services, tenant_id: int):
    with services.session_factory() as s:
        return services.tenant_connections.context(s, s.get(Tenant, tenant_id),
                                                   Actor("user", "1", "tester", "Owner"))


def test_the_overview_has_tabs_a_switcher_and_the_checklist(client, two_tenants):
    owner, a, b = two_tenants
    sign_in(client, owner.email)
    page = client.get(f"/tenants/{a}")
    assert page.status_code == 200
    tabs = re.findall(r'<nav class="tabs".*?</nav>', page.text, re.S)[0]
    labels = re.findall(r">([^<]+)</a>", tabs)
    assert labels[0] == "Overview" and labels[-1] == "Settings" and "Gateway" in labels
    assert f'href="/tenants/{a}" aria-current="page"' in tabs
    assert f'<option value="{b}">Bravo</option>' in page.text  # the switcher
    assert page.text.count('data-done="no"') == 4  # nothing set up yet
    assert "Not available yet" not in page.text
    settings = client.get(f"/tenants/{a}/settings")
    assert 'id="danger-zone"' in settings.text and "data-member=" in settings.text
    assert f'href="/tenants/{a}/settings" aria-current="page"' in settings.text
    assert 'id="danger-zone"' not in page.text  # dangerous actions live on Settings only


def test_the_bar_names_only_the_members_own_tenants(client, db, services, two_tenants):
    owner, a, _ = two_tenants
    stranger = make_user(db, "stranger@example.com", is_owner=False)
    sign_in(client, stranger.email)
    refused = client.get(f"/tenants/{a}")
    assert refused.status_code == 404
    assert 'data-testid="tenant-bar"' not in refused.text and "Alpha" not in refused.text
    assert client.get(f"/tenants/switch?to={a}").status_code == 404


def test_the_switcher_keeps_the_tab_and_refuses_other_addresses(client, two_tenants):
    owner, a, b = two_tenants
    sign_in(client, owner.email)
    moved = client.get(f"/tenants/switch?to={b}&tab=/audit", follow_redirects=False)
    assert moved.status_code == 303 and moved.headers["location"] == f"/tenants/{b}/audit"
    away = client.get(f"/tenants/switch?to={b}&tab=//evil.example", follow_redirects=False)
    assert away.headers["location"] == f"/tenants/{b}"
    chose_none = client.get("/tenants/switch?to=x", follow_redirects=False)
    assert chose_none.status_code == 303 and chose_none.headers["location"] == "/tenants"


def test_forms_redirect_after_success_and_keep_values_when_refused(client, db, two_tenants):
    owner, a, _ = two_tenants
    make_user(db, "new@example.com", is_owner=False)
    sign_in(client, owner.email)
    added = post_form(client, f"/tenants/{a}/members", {"email": "new@example.com",
                                                         "role": "Approver"},
                      page=f"/tenants/{a}/settings")
    assert added.status_code == 303
    assert added.headers["location"] == f"/tenants/{a}/settings?done=member-added"
    assert "Member added." in client.get(added.headers["location"]).text
    refused = post_form(client, f"/tenants/{a}/members", {"email": "nobody@example.com",
                                                           "role": "Compliance"},
                        page=f"/tenants/{a}/settings")
    assert refused.status_code == 422
    assert 'value="nobody@example.com"' in refused.text  # what was typed stays
    assert "<option selected>Compliance</option>" in refused.text
    assert f'data-url="/tenants/{a}/settings"' in refused.text  # the address bar is fixed
    assert "data-error-message>No active account" in refused.text
    with db() as s:
        member = s.scalars(select(Membership).where(Membership.tenant_id == a,
                                                    Membership.role == "Approver")).one()
    removed = post_form(client, f"/tenants/{a}/members/{member.id}/remove",
                        page=f"/tenants/{a}/settings")
    assert removed.headers["location"] == f"/tenants/{a}/settings?done=member-removed"


def test_notices_come_only_from_known_codes():
    assert notice_from({"done": "member-removed"}) == "Member removed."
    assert notice_from({"done": "rotation-queued", "job": "7"}).startswith(
        "Key rotation queued (job 7)")
    assert notice_from({"done": "rotation-queued", "job": "<b>"}) is None
    assert notice_from({"done": "anything you like"}) is None


def test_an_error_answer_to_htmx_carries_the_sentence(client, two_tenants):
    owner, a, _ = two_tenants
    sign_in(client, owner.email)
    answer = client.get(f"/tenants/{a}/gateway/calls?status=bogus",
                        headers={"HX-Request": "true"})
    assert answer.status_code == 422
    assert "The status filter must be one of ok, error, reserved, refused." in answer.text
    assert "<html" not in answer.text  # the fragment, for the toast


def test_recent_calls_show_refusals_filters_pages_and_csv(client, services, two_tenants):
    owner, a, _ = two_tenants
    ctx = tenant_ctx(services, a)
    now = utcnow()
    with ctx.session() as s, s.begin():
        for i in range(PAGE_SIZE + 5):
            s.add(GatewayCall(created_at=now - timedelta(minutes=i), month=now.date(),
                              model_name="gpt-4o-mini", provider="openai",
                              provider_model="gpt-4o-mini", endpoint_kind="openai",
                              stream=False, status="error" if i == 3 else "ok",
                              cost_micros=1000 * i, tokens_in=10, tokens_out=5,
                              latency_ms=100 + i, attempts=1,
                              error="=HYPERLINK(1)" if i == 3 else None))
        audit.record(s, GatewayEvents.MODEL_REFUSED, actor=ctx.actor, target_type="model",
                     target_id="unlisted:" + digest("gpt-4.1"),
                     details={"api_key_id": "k1", "endpoint": "openai"})
        audit.record(s, GatewayEvents.MODEL_REFUSED, actor=ctx.actor, target_type="model",
                     target_id="unlisted:" + digest("someone@example.com"),
                     details={"api_key_id": "k1", "endpoint": "openai"})
    sign_in(client, owner.email)
    first = client.get(f"/tenants/{a}/gateway/calls")
    assert first.status_code == 200
    assert first.text.count("<tr data-status=") == PAGE_SIZE and 'rel="next"' in first.text
    assert "the model is not on the allowlist" in first.text
    assert "<code>gpt-4.1</code>" in first.text  # recognised from its digest
    assert "someone@example.com" not in first.text  # an unknown name stays unknown
    second = client.get(f"/tenants/{a}/gateway/calls?page=2")
    assert second.text.count("<tr data-status=") == 7 and 'rel="prev"' in second.text
    refused = client.get(f"/tenants/{a}/gateway/calls?status=refused")
    assert refused.text.count('<tr data-status="refused">') == 2
    assert refused.text.count("<tr data-status=") == 2
    dear = client.get(f"/tenants/{a}/gateway/calls?sort=cost&status=ok")
    costs = re.findall(r"\$([0-9.]+)</td>", dear.text)
    assert costs[0] == f"{(PAGE_SIZE + 4) * 1000 / 1e6:.4f}"
    assert client.get(f"/tenants/{a}/gateway/calls?page=0").status_code == 422
    download = client.get(f"/tenants/{a}/gateway/calls.csv")
    assert download.status_code == 200 and download.headers["content-type"].startswith(
        "text/csv")
    lines = download.text.strip().splitlines()
    assert lines[0].startswith("time_utc,status,model") and len(lines) == 1 + PAGE_SIZE + 7
    assert "'=HYPERLINK(1)" in download.text  # not run as a formula


def test_charts_have_readable_axes_and_a_meter_that_turns_red():
    assert [nice_ceiling(v) for v in (0, 0.3, 1, 7, 12, 4500)] == [1, 0.5, 1, 10, 20, 5000]
    calls = bar_chart("Calls", ["01 Dec", "02 Dec"], [Series("calls", "bar", [1, 0])],
                      counts=True)
    ticks = re.findall(r'text-anchor="end">([^<]+)<', calls)
    assert ticks == ["0", "1", "2", "3", "4"]  # whole, distinct ticks for a single call
    assert "<title>01 Dec: calls 1</title>" in calls
    spend = bar_chart("Spend", ["01 Dec"], [Series("spend", "bar", [0.00042])], prefix="$")
    ticks = re.findall(r'text-anchor="end">([^<]+)<', spend)
    assert len(set(ticks)) == 5 and ticks[-1] == "$0.0005"  # tiny spend still reads
    assert 'data-over="no"' in cap_meter(50, 100)
    assert 'data-over="yes"' in cap_meter(100, 100) and "capmeter over" in cap_meter(130, 100)


def test_an_owner_requires_two_factor_sign_in_and_sees_who_lacks_it(client, db, services,
                                                                     two_tenants):
    from starlette.testclient import TestClient

    from control_plane.models import PlatformAuditEvent, User
    from control_plane.tenancy import service
    from control_plane.tenancy.events import TenantEvents
    from tests.factories import csrf_token, enable_mfa, next_code

    owner, a, b = two_tenants
    member = make_user(db, "member@example.com", is_owner=False)
    with services.session_factory() as s, s.begin():
        me = s.get(User, owner.id)
        service.do_add_member(s, service.access_tenant(s, a, user=me), email=member.email,
                              role="Viewer", acting_user=me)
    sign_in(client, owner.email)
    home = client.get("/")
    assert 'data-testid="mfa-suggestion"' in home.text  # suggested to a user without it
    refused = post_form(client, f"/tenants/{a}/security/mfa", {"required": "true"},
                        page=f"/tenants/{a}/settings")
    assert refused.status_code == 409 and "your own account first" in refused.text

    enable_mfa(db, owner, services.sealer)
    client.cookies.clear()
    sign_in(client, owner.email)
    client.post("/sign-in/mfa", data={"csrf_token": csrf_token(client, "/sign-in/mfa"),
                                      "code": next_code(owner.totp_secret)})
    settings = client.get(f"/tenants/{a}/settings").text
    assert '<span data-testid="no-mfa">member@example.com</span>' in settings
    done = post_form(client, f"/tenants/{a}/security/mfa", {"required": "true"},
                     page=f"/tenants/{a}/settings")
    assert done.headers["location"] == f"/tenants/{a}/settings?done=mfa-enforced"
    with services.session_factory() as s:
        assert s.get(Tenant, a).require_mfa and not s.get(Tenant, b).require_mfa
        assert s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == TenantEvents.MFA_REQUIREMENT_CHANGED)).one()

    with TestClient(client.app, base_url="http://testserver") as other:
        sign_in(other, member.email)
        page = other.get(f"/tenants/{a}")
        assert page.status_code == 403 and "requires two-factor sign-in" in page.text
        assert other.get(f"/tenants/{a}/gateway").status_code == 403
    off = post_form(client, f"/tenants/{a}/security/mfa", page=f"/tenants/{a}/settings")
    assert off.headers["location"].endswith("done=mfa-optional")


def test_the_console_docs_list_every_tab_in_order_with_its_permission():
    from pathlib import Path

    from control_plane.console.nav import SETTINGS_PATH, tab_paths
    from control_plane.web.access import DECISIONS
    from tenant_runtime import permissions

    text = (Path(__file__).parents[3] / "docs" / "console.md").read_text()
    rows = re.findall(r"^  \| ([^|]+?) \| `([a-z_.]+)` \| (.+?) \|$", text, re.M)
    tabs = tab_paths("Owner", "active")
    assert [label for label, _, _ in rows] == [label for label, _ in tabs]
    pages = {page.path: page.permission for page in permissions.PAGES}
    for (label, permission, shows), (_, path) in zip(rows, tabs, strict=True):
        if path in pages:
            assert permission == pages[path], label
        else:  # Overview and Settings: the tenant page's own decision
            route = "GET /tenants/{tenant_id:int}" + (SETTINGS_PATH if path else "")
            assert permission == DECISIONS[route], label
        assert len(shows) > 20, label  # says what the page shows


def test_a_page_a_boosted_form_renders_stands_for_the_page_it_was_sent_from(client,
                                                                           two_tenants):
    """Any page rendered by a POST (here the personas page, which names no address itself)
    carries the address it was sent from, so a reload in the browser shows the page and does
    not send the form again; a forged cross-site URL gives only its path."""
    owner, a, _ = two_tenants
    sign_in(client, owner.email)
    token = csrf_token(client, f"/tenants/{a}/personas")
    boosted = {"HX-Request": "true", "HX-Boosted": "true"}
    everything = {"all_teams": "on", "all_sources": "on"}
    for sent_from, expected in (
            (f"http://testserver/tenants/{a}/personas?tab=x", f"/tenants/{a}/personas?tab=x"),
            (f"https://elsewhere.example/tenants/{a}/personas", f"/tenants/{a}/personas")):
        created = client.post(f"/tenants/{a}/personas",
                              data={"csrf_token": token, "name": f"Reviewers {len(sent_from)}",
                                    **everything},
                              headers={**boosted, "HX-Current-URL": sent_from})
        assert created.status_code == 201, created.text[:300]
        assert f'data-url="{expected}"' in created.text
    plain = client.post(f"/tenants/{a}/personas", data={"csrf_token": token, "name": "Plain",
                                                       **everything})
    assert plain.status_code == 201 and "magistrate-url" not in plain.text
    odd = client.post(f"/tenants/{a}/personas",
                      data={"csrf_token": token, "name": "Odd", **everything},
                      headers={**boosted, "HX-Current-URL": "javascript:alert(1)"})
    assert odd.status_code == 201 and "magistrate-url" not in odd.text


def test_tool_and_image_refusals_are_listed_among_the_refusals(client, services, two_tenants):
    owner, a, _ = two_tenants
    ctx = tenant_ctx(services, a)
    with ctx.session() as s, s.begin():
        for event in (GatewayEvents.TOOL_REFUSED, GatewayEvents.IMAGE_REFUSED):
            audit.record(s, event, actor=ctx.actor, target_type="model", target_id="gpt-4o-mini",
                         details={"api_key_id": "k1", "endpoint": "openai"})
    sign_in(client, owner.email)
    refused = client.get(f"/tenants/{a}/gateway/calls?status=refused")
    assert refused.text.count('<tr data-status="refused">') == 2
    assert "a tool the tenant&#39;s tool rules forbid" in refused.text
    assert "images or documents, which the tenant&#39;s policy refuses" in refused.text
