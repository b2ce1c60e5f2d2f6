"""The global pages (Gateway, Approvals, Audit across tenants): each lists only the tenants
whose membership role opens the tab's permission, names the tenant in a column linking into
its tab, leaves out a tenant that requires two-factor sign-in of a user without it, and shows
nothing of a tenant one is not a member of. The Overview's per-model and latency charts."""

from __future__ import annotations

import re
from datetime import timedelta

from control_plane.db import utcnow
from control_plane.models import Tenant
from tenant_runtime import audit
from tenant_runtime.context import Actor
from tenant_runtime.gateway import spend
from tenant_runtime.models import GatewayCall
from tests.control_plane.console.conftest import others_tenant
from tests.factories import make_user, sign_in


def tenant_ctx(services, tenant_id: int):
    with services.session_factory() as s:
        return services.tenant_connections.context(s, s.get(Tenant, tenant_id),
                                                   Actor("user", "1", "tester", "Owner"))


def add_calls(services, tenant_id: int, model: str, n: int, *, latency: int = 100) -> None:
    ctx = tenant_ctx(services, tenant_id)
    now = utcnow()
    with ctx.session() as s, s.begin():
        for i in range(n):
            s.add(GatewayCall(created_at=now - timedelta(minutes=i), month=now.date(),
                              model_name=model, provider="openai", provider_model=model,
                              endpoint_kind="openai", stream=False,
                              status="error" if i == 0 else "ok", cost_micros=250_000,
                              tokens_in=10, tokens_out=5, latency_ms=latency + i, attempts=1))
        audit.record(s, f"test.{tenant_id}.marker", actor=ctx.actor)


def tenant_column(text: str, testid: str) -> list[str]:
    table = text.split(f'data-testid="{testid}"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr data-tenant="(\d+)">', table)


def test_global_pages_list_only_the_tenants_a_role_opens(client, db, services, database_url,
                                                       two_tenants):
    owner, a, b = two_tenants
    c, _ = others_tenant(services, db, database_url, "charlie", member=owner.email,
                                role="Viewer")
    for tenant_id, model in ((a, "gpt-4o-mini"), (b, "claude-3-haiku"), (c, "mistral-small")):
        add_calls(services, tenant_id, model, 3)

    sign_in(client, owner.email)
    home = client.get("/")
    nav = home.text.split('aria-label="Main"', 1)[1].split("</nav>", 1)[0]
    for label, path in (("Gateway", "/gateway"), ("Approvals", "/approvals"),
                        ("Audit", "/audit")):
        assert f'<a href="{path}"' in nav and label in nav
    assert "nav-later" not in nav  # nothing greyed

    gateway = client.get("/gateway")
    assert gateway.status_code == 200
    assert sorted(tenant_column(gateway.text, "across-gateway")) == sorted([str(a), str(b)])
    assert f'<a href="/tenants/{a}/gateway">Alpha</a>' in gateway.text
    alpha = gateway.text.split(f'<tr data-tenant="{a}">', 1)[1].split("</tr>", 1)[0]
    assert "<td>3</td>" in alpha and "<td>1</td>" in alpha  # calls and errors, 14 days
    assert "$0.7500" in alpha  # three calls of $0.25
    audit_page = client.get("/audit")
    assert f"test.{a}.marker" in audit_page.text and f"test.{b}.marker" in audit_page.text
    assert f"test.{c}.marker" not in audit_page.text  # a Viewer there: no audit.view
    assert f'<a href="/tenants/{a}/audit">Alpha</a>' in audit_page.text
    approvals = client.get("/approvals")
    assert sorted(tenant_column(approvals.text, "across-approvals")) == sorted(
        [str(a), str(b), str(c)])  # every role sees approvals

    # a tenant requiring two-factor sign-in is named, its rows left out
    with services.session_factory() as s, s.begin():
        s.get(Tenant, b).require_mfa = True
    gateway = client.get("/gateway")
    assert tenant_column(gateway.text, "across-gateway") == [str(a)]
    assert "require two-factor sign-in" in gateway.text and "Bravo" in gateway.text

    # the other user sees their own tenant only: nothing of Alpha or Bravo
    client.cookies.clear()
    sign_in(client, "other@example.com")
    audit_page = client.get("/audit").text
    assert f"test.{c}.marker" in audit_page
    assert f"test.{a}.marker" not in audit_page and "Alpha" not in audit_page
    assert tenant_column(client.get("/gateway").text, "across-gateway") == [str(c)]
    stranger = make_user(db, "stranger@example.com", is_owner=False)
    client.cookies.clear()
    sign_in(client, stranger.email)
    for path in ("/gateway", "/approvals", "/audit"):
        page = client.get(path)
        assert page.status_code == 200 and 'data-testid="no-tenants"' in page.text, path
        assert "Alpha" not in page.text and "Charlie" not in page.text


def test_the_overview_charts_spend_per_model_and_latency_percentiles(client, services,
                                                                     two_tenants):
    owner, a, _ = two_tenants
    add_calls(services, a, "gpt-4o-mini", 4, latency=100)
    add_calls(services, a, "<script>alert(1)</script>", 2, latency=1000)
    sign_in(client, owner.email)
    page = client.get(f"/tenants/{a}").text
    model = page.split('data-testid="model-chart"', 1)[1].split("</svg>", 1)[0]
    assert "<script>" not in model and "&lt;script&gt;" in model  # escaped
    titles = re.findall(r"<title>([^<]+)</title>", model)
    assert any("gpt-4o-mini $1.000000" in t for t in titles)  # four calls of $0.25
    assert any(": &lt;script&gt;alert(1)&lt;/script&gt; $0.500000" in t for t in titles)
    ticks = re.findall(r'text-anchor="end">([^<]+)<', model)
    assert ticks[0] == "$0.00" and len(set(ticks)) == 5  # an axis with labels
    latency = page.split('data-testid="latency-chart"', 1)[1].split("</svg>", 1)[0]
    today = [t for t in re.findall(r"<title>([^<]+)</title>", latency)
             if t.startswith(utcnow().strftime("%d %b"))]
    assert [t.split(": ", 1)[1].split()[0] for t in today] == ["p50", "p95", "p99"]
    p50, p95, p99 = (float(t.split()[-2].replace(",", "")) for t in today)
    assert 100 < p50 < p95 <= p99 <= 1001  # answered calls only: the errors are left out


def test_a_stacked_chart_scales_to_the_sum_and_stacks_on_one_x():
    from control_plane.console.charts import SERIES_CSS, Series, bar_chart

    chart = bar_chart("Spend by model", ["01 Dec"], [Series("a", SERIES_CSS[0], [3.0]),
                                                     Series("b", SERIES_CSS[1], [4.0])],
                      prefix="$", stacked=True)
    ticks = re.findall(r'text-anchor="end">([^<]+)<', chart)
    assert ticks[-1] == "$10.00"  # the axis holds 3 + 4, not the larger of them
    bars = re.findall(r'<rect class="bar s\d" x="([\d.]+)" y="([\d.]+)" width="[\d.]+" '
                      r'height="([\d.]+)"><title>', chart)
    (x1, y1, h1), (x2, y2, h2) = bars
    assert x1 == x2 and abs(float(y2) + float(h2) - float(y1)) < 0.2  # b sits on a


def test_the_spend_figures_are_the_sums_over_the_spend_shards(client, services, two_tenants):
    """The month's spend lives on several shard rows: the global Gateway page, the tenant's
    overview and its gateway page all show their sums (spent, and reserved by calls in
    flight)."""
    owner, a, _ = two_tenants
    ctx = tenant_ctx(services, a)
    month = spend.month_of(utcnow())
    with ctx.session() as s, s.begin():
        for shard, amount in ((1, 300_000), (6, 450_000)):
            held = spend.reserve(s, month=month, amount_micros=amount, cap_micros=10**8,
                                 shard=shard)
            assert held is not None
            spend.settle(s, month=month, shard=shard, reserved_micros=amount,
                         cost_micros=amount)
        assert spend.reserve(s, month=month, amount_micros=200_000, cap_micros=10**8,
                             shard=3) is not None  # a call in flight
    sign_in(client, owner.email)
    row = client.get("/gateway").text.split(f'<tr data-tenant="{a}">', 1)[1].split("</tr>")[0]
    assert "<td>$0.7500</td>" in row
    overview = client.get(f"/tenants/{a}").text
    assert "$0.75</span> of $100.00 cap" in overview
    assert "$0.20 reserved by calls in flight" in overview
    summary = client.get(f"/tenants/{a}/gateway").text.split('data-testid="spend-summary">')[1]
    assert summary.startswith("<strong>$0.75</strong> of the $100.00 monthly cap ($0.20 "
                              "reserved by calls in flight)")
