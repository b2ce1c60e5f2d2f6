"""The platform home: each tenant's getting-started checklist, spend this month against the
caps, and the approval requests waiting for the signed-in user, each under the rule of the
tab it comes from (across.visible_tenants): a role that does not open the Gateway sees no
spend of that tenant, a tenant that requires two-factor sign-in of a user without it is
named and not read, and a stranger sees nothing of another's tenant."""

from __future__ import annotations

import re

from control_plane.db import utcnow
from control_plane.models import Tenant
from tenant_runtime.approvals import service as approvals
from tenant_runtime.gateway import spend
from tests.control_plane.approvals.helpers import make_team
from tests.control_plane.console.conftest import others_tenant
from tests.factories import sign_in


def section(html: str, testid: str) -> str:
    if f'data-testid="{testid}"' not in html:
        return ""
    return html.split(f'data-testid="{testid}"', 1)[1].split("</section>", 1)[0]


def tenant_rows(html: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-tenant="(\d+)"[^>]*>(.*?)</tr>', html, re.S))


def test_the_home_shows_checklists_spend_and_requests_waiting_under_each_tabs_rule(
        client, db, services, database_url, primary_server, local_kek):
    team = make_team(services, db, database_url)
    acme = team.tenant_id
    owner = team.users["owner"]
    # a second tenant of another user, where the Owner of acme is only a Viewer
    beta, _ = others_tenant(services, db, database_url, "beta", member=owner.email,
                            role="Viewer")
    ctx = team.ctx("owner")
    month = spend.month_of(utcnow())
    with ctx.session() as s, s.begin():
        held = spend.reserve(s, month=month, amount_micros=750_000, cap_micros=10**8)
        assert held is not None
        spend.settle(s, month=month, shard=held.shard, reserved_micros=750_000,
                     cost_micros=750_000)
    team.add_class("deploy.production", description="Ship it")
    operator = team.ctx("operator")
    with operator.session() as s, s.begin():
        request_id = approvals.request_action(s, operator, "deploy.production",
                                              {"service_id": 7}, via="dashboard").id
    team.api_key()  # the third step of acme's checklist

    sign_in(client, owner.email)
    home = client.get("/")
    assert home.status_code == 200
    waiting = section(home.text, "home-waiting")
    assert 'data-testid="home-waiting-count">1<' in waiting
    assert f'href="/tenants/{acme}/approvals/{request_id}">Decide on deploy.production' \
        in waiting
    assert list(tenant_rows(waiting)) == [str(acme)]

    spent = section(home.text, "home-spend")
    assert list(tenant_rows(spent)) == [str(acme)]  # a Viewer of beta: no gateway.view there
    assert "<td>$0.7500</td>" in tenant_rows(spent)[str(acme)]
    assert "$0.75 across 1 tenant, against caps of $100.00" in spent

    setup = tenant_rows(section(home.text, "home-setup"))
    assert sorted(setup) == sorted([str(acme), str(beta)])  # every member sees a checklist
    done = re.findall(r'<td data-done="(yes|no)">', setup[str(acme)])
    assert done == ["no", "no", "yes", "no"]  # route, allowed model, key, first call
    assert f'<a href="/tenants/{acme}/gateway">Add a provider route</a>' in setup[str(acme)]
    # in beta the Viewer cannot open the Gateway tab: the step links to the Overview
    assert f'<a href="/tenants/{beta}">Add a provider route</a>' in setup[str(beta)]

    # the Viewer of acme: the checklist, no spend (no gateway.view), nothing to decide
    client.cookies.clear()
    sign_in(client, team.users["viewer"].email)
    viewer_home = client.get("/").text
    assert list(tenant_rows(section(viewer_home, "home-setup"))) == [str(acme)]
    assert section(viewer_home, "home-spend") == ""
    assert f"/approvals/{request_id}" not in viewer_home
    assert "Beta" not in viewer_home  # not a member there

    # the approver decides; the operator who asked does not see their own request to decide
    client.cookies.clear()
    sign_in(client, team.users["approver"].email)
    assert f"/tenants/{acme}/approvals/{request_id}" in client.get("/").text
    client.cookies.clear()
    sign_in(client, team.users["operator"].email)
    assert f"/approvals/{request_id}" not in client.get("/").text

    # a tenant requiring two-factor sign-in is named, and nothing of it is read
    with services.session_factory() as s, s.begin():
        s.get(Tenant, acme).require_mfa = True
    client.cookies.clear()
    sign_in(client, owner.email)
    locked = client.get("/").text
    assert 'data-testid="home-locked"' in locked
    notice = locked.split('data-testid="home-locked"', 1)[1].split("</p>", 1)[0]
    assert "Acme" in notice
    assert str(acme) not in tenant_rows(section(locked, "home-setup"))
    assert section(locked, "home-spend") == "" and f"/approvals/{request_id}" not in locked
