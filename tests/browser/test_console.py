"""The operator console in headless Chromium: the getting-started checklist ticking itself off
through a real first call, the tenant switcher and tabs, the confirmation of destructive
actions, the error toast for a 403, a 409 and a 422 from htmx-driven forms (values kept),
no page wider than 1,366 px, and an axe-core scan with no serious or critical violation (the
global pages, the approvals history and the calls included); the tables' filters, paging and
CSV downloads; and the documentation's screenshots (ops/console_screenshots.py)."""

from __future__ import annotations

import io
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from openai import OpenAI
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from control_plane.db import utcnow
from control_plane.models import IdentityProvider, Membership, Tenant, User
from tenant_runtime.approvals import service
from tenant_runtime.approvals.models import ApprovalRequest
from tenant_runtime.context import Actor
from tenant_runtime.credentials.service import do_add_credential
from tenant_runtime.gateway import admin, spend
from tenant_runtime.models import GatewayCall
from tests.control_plane.approvals.helpers import make_team
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import DEFAULT_PASSWORD
from tests.fakes.llm_servers import LLMServer

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("chromium_path")]
TIMEOUT_MS = 10_000
WIDTH = 1366
AXE = Path(__file__).resolve().parent / "vendor" / "axe-4.14.1.min.js"


def sign_in(browser: Browser, base: str, email: str, errors: list[str]) -> Page:
    # bypass_csp only so the test can inject axe-core; the app's own pages need no exception
    context = browser.new_context(viewport={"width": WIDTH, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("console", lambda m: errors.append(f"{m.text} {m.location.get('url')}")
            if m.type == "error" and "status of 4" not in m.text
            and not m.text.startswith("Response Status Error Code 4") else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base}/sign-in")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/")
    return page


def owner_ctx(services, tenant_id: int, email: str):
    with services.session_factory() as s:
        tenant = s.get(Tenant, tenant_id)
        user = s.query(User).filter_by(email=email).one()
        return services.tenant_connections.context(
            s, tenant, Actor("user", str(user.id), user.email, "Owner"))


def set_role(services, tenant_id: int, email: str, role: str) -> None:
    with services.session_factory() as s, s.begin():
        user = s.query(User).filter_by(email=email).one()
        s.query(Membership).filter_by(tenant_id=tenant_id, user_id=user.id).one().role = role


def steps_done(page: Page) -> list[str]:
    return page.locator("[data-testid=checklist] li").evaluate_all(
        "items => items.map(li => li.dataset.done)")


def no_overflow(page: Page) -> None:
    """Nothing wider than the window, every <details> opened (an expanded audit row)."""
    page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= WIDTH, f"{page.url} is {width} px wide"


def axe_serious(page: Page) -> list[str]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']}))"
        ".violations.filter(v => ['serious', 'critical'].includes(v.impact))"
        ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))")
    return [f"{page.url} {v}" for v in result]


@pytest.fixture
def llm():
    with LLMServer() as server:
        yield server


def test_the_checklist_ticks_itself_off_through_a_first_call(browser: Browser, live_server,
                                                             services, db, database_url,
                                                             tenancy_ready, llm):
    team = make_team(services, db, database_url)
    owner = team.users["owner"].email
    errors: list[str] = []
    page = sign_in(browser, live_server, owner, errors)
    page.goto(f"{live_server}/tenants/{team.tenant_id}")
    assert steps_done(page) == ["no", "no", "no", "no"]

    ctx = owner_ctx(services, team.tenant_id, owner)
    with ctx.session() as s, s.begin():
        credential = do_add_credential(s, ctx, name="openai", provider="openai",
                                       secret=llm.api_key, contact_email=None)
        admin.add_route(s, ctx, admin.RouteInput(
            model_name="gpt-4o-mini", provider="openai", provider_model="gpt-4o-mini",
            endpoint=f"{llm.base_url}/v1", credential_id=credential.id, allowed=False))
    page.reload()
    assert steps_done(page) == ["yes", "no", "no", "no"]

    # allow the model on the Gateway tab (a confirmation-free, boosted form)
    page.get_by_role("navigation", name=re.compile("Tenant")).get_by_role(
        "link", name="Gateway").click()
    page.get_by_role("button", name="Allow").click()
    expect(page.get_by_role("button", name="Disallow")).to_be_visible()
    page.get_by_role("link", name="Overview").click()
    assert steps_done(page) == ["yes", "yes", "no", "no"]
    expect(page.get_by_test_id("snippet")).to_contain_text('model="gpt-4o-mini"')
    expect(page.get_by_test_id("snippet")).to_contain_text(f'base_url="{live_server}/v1"')

    # an API key from the Settings tab, shown once
    page.get_by_role("link", name="Settings").click()
    page.get_by_label("Label").fill("first program")
    page.locator("input[name=scopes][value=gateway]").check()
    page.get_by_role("button", name="Create API key").click()
    key = page.get_by_test_id("new-api-key").inner_text()
    expect(page).to_have_url(f"{live_server}/tenants/{team.tenant_id}/settings")  # not /api-keys
    page.get_by_role("link", name="Overview").click()
    assert steps_done(page) == ["yes", "yes", "yes", "no"]

    # the snippet's call, with the real SDK
    answer = OpenAI(base_url=f"{live_server}/v1", api_key=key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}])
    assert answer.choices[0].message.content
    page.reload()
    assert steps_done(page) == ["yes", "yes", "yes", "yes"]
    today = page.get_by_test_id("calls-chart").locator("rect.bar:not(.err) title").last
    expect(today).to_contain_text("calls 1")
    assert page.get_by_test_id("cap-meter").get_attribute("data-over") == "no"
    no_overflow(page)
    assert errors == []


def test_tabs_switcher_confirmations_and_toasts(browser: Browser, live_server, services, db,
                                                database_url, tenancy_ready):
    team = make_team(services, db, database_url)
    owner = team.users["owner"].email
    other = create_tenant(services, owner, "globex")
    run_pending_jobs(services, database_url)
    errors: list[str] = []
    page = sign_in(browser, live_server, owner, errors)
    tid = team.tenant_id

    # tabs: nothing greyed, each tab marks itself current; the switcher keeps the tab
    expect(page.locator(".nav-later[aria-disabled]")).to_have_count(0)
    page.goto(f"{live_server}/tenants/{tid}")
    tabs = page.get_by_role("navigation", name=re.compile("Tenant"))
    labels = tabs.get_by_role("link").all_inner_texts()
    assert labels[0] == "Overview" and labels[-1] == "Settings"
    assert {"Gateway", "Approvals", "Agents", "Audit"} <= set(labels)
    tabs.get_by_role("link", name="Audit").click()
    page.wait_for_url(f"{live_server}/tenants/{tid}/audit")
    expect(tabs.locator("a[aria-current=page]")).to_have_text("Audit")
    page.get_by_label("Switch tenant").select_option(str(other))
    page.get_by_role("button", name="Go").click()
    page.wait_for_url(f"{live_server}/tenants/{other}/audit")
    expect(page.get_by_test_id("tenant-name")).to_have_text("Globex")

    # a destructive action asks first; an irreversible one wants its name typed
    page.goto(f"{live_server}/tenants/{tid}/settings")
    page.get_by_label("Label").fill("ci")
    page.locator("input[name=scopes][value=read]").check()
    page.get_by_role("button", name="Create API key").click()
    expect(page.get_by_test_id("new-api-key")).to_be_visible()
    page.goto(f"{live_server}/tenants/{tid}/settings")
    row = page.locator("tr[data-key]", has_text="ci")
    row.get_by_role("button", name="Revoke").click()
    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Revoke the API key ci")
    go = dialog.get_by_role("button", name="Revoke key")
    expect(go).to_be_disabled()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(row).to_contain_text("active")
    row.get_by_role("button", name="Revoke").click()
    dialog.get_by_label(re.compile("to confirm")).fill("ci")
    expect(go).to_be_enabled()
    go.click()
    page.wait_for_url(re.compile(r"/settings\?done=key-revoked$"))  # Post/Redirect/Get
    expect(page.get_by_test_id("notice")).to_have_text("API key revoked.")
    expect(page.locator("tr[data-key]", has_text="ci")).to_contain_text("revoked")

    member_row = page.locator("tr[data-member='viewer@example.com']")
    member_row.get_by_role("button", name="Remove").click()
    expect(dialog).to_contain_text("Remove viewer@example.com")
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.locator("tr[data-member='viewer@example.com']")).to_have_count(1)

    # 422: an unknown e-mail — the toast has the server's sentence and the form keeps it
    page.get_by_label("E-mail", exact=True).fill("nobody@example.com")
    page.get_by_role("button", name="Add member").click()
    toast = page.get_by_test_id("toast").last
    expect(toast).to_contain_text("No active account has the e-mail nobody@example.com")
    expect(page.get_by_label("E-mail", exact=True)).to_have_value("nobody@example.com")
    # 409: already a member
    page.get_by_label("E-mail", exact=True).fill("viewer@example.com")
    page.get_by_role("button", name="Add member").click()
    expect(page.get_by_test_id("toast").last).to_contain_text("is already a member")

    # 403: the Owner's role changes under an open page (another Owner demotes them)
    set_role(services, tid, "admin@example.com", "Owner")
    set_role(services, tid, owner, "Viewer")
    page.get_by_label("E-mail", exact=True).fill("someone@example.com")
    page.get_by_role("button", name="Add member").click()
    expect(page.get_by_test_id("toast").last).to_contain_text("Your role (Viewer)")
    assert errors == []


def seed_console(services, team) -> None:
    """What makes the pages worth looking at: calls of two models over a week (with an error
    and spread latencies), a request waiting for the Owner with a long payload, and decided
    requests for the history."""
    ctx = owner_ctx(services, team.tenant_id, team.users["owner"].email)
    now = utcnow()
    with ctx.session() as s, s.begin():
        spent = 0
        for i in range(60):
            model = "gpt-4o-mini" if i % 3 else "claude-3-5-haiku"
            s.add(GatewayCall(created_at=now - timedelta(hours=3 * i), month=now.date(),
                              model_name=model, provider="openai", provider_model=model,
                              endpoint_kind="openai", stream=False,
                              status="error" if i % 11 == 0 else "ok",
                              cost_micros=1_500 + 700 * (i % 5), tokens_in=400 + i,
                              tokens_out=120 + i, latency_ms=300 + 37 * (i % 9) + 5 * i,
                              attempts=1 + (i % 11 == 0)))
            spent += 1_500 + 700 * (i % 5) if (now - timedelta(hours=3 * i)).month == now.month \
                else 0
        # the gateway's own monthly counter, moved as the calls above would have moved it
        held = spend.reserve(s, month=now.date().replace(day=1), amount_micros=spent,
                             cap_micros=spent)
        assert held is not None
        spend.settle(s, month=held.month, shard=held.shard, reserved_micros=spent,
                     cost_micros=spent)
    team.add_class("deploy.production", description="Ship the production stack")
    team.add_class("refund.customer", description="Refund a customer")
    operator = team.ctx("operator")
    with operator.session() as s, s.begin():
        service.request_action(s, operator, "deploy.production",
                               {"service_id": 7, "release": "2026.12.1",
                                "hosts": [f"web-{n:02d}" for n in range(24)]}, via="dashboard")
        decided = [service.request_action(s, operator, action, {"order_id": n}, via="api").id
                   for n, action in enumerate(("refund.customer", "deploy.production"))]
    approver = team.ctx("approver")
    with approver.session() as s, s.begin():
        service.decide(s, approver, decided[0], True, "Checked the order")
        service.decide(s, approver, decided[1], False, "Not during the freeze")


# GET routes that are no console page (the reason), besides the machines' addresses below
NOT_PAGES = {
    "/approvals/nav": "the navigation's live count, an htmx fragment",
    "/tenants/{tenant_id:int}/audit/verification": "the Audit tab's polled htmx fragment",
    "/tenants/switch": "a redirect to a tab of another tenant",
    "/sign-in": "signing in: a signed-in browser is sent home",
    "/sign-in/mfa": "the second step of a sign-in in progress",
    "/sign-in/sso/{provider_id:int}": "a redirect to an identity provider",
    "/sign-in/sso/callback": "an identity provider's answer",
    "/sign-in/sso/link": "linking an SSO sign-in in progress",
    "/oauth/authorize": "an MCP client's request, with its registration and PKCE challenge "
                        "(tests/control_plane/mcp_oauth drive the consent page)",
}
# the machines' addresses: JSON APIs, SCIM, the gateway, MCP, metrics, probes and downloads
MACHINE = re.compile(r"^/(api|scim|v1|mcp|\.well-known)/|^/(metrics|openapi\.json|healthz|"
                     r"readyz)$|\.csv$|/download$|/audit/export$")


def console_pages(services) -> list[str]:
    """Every GET route of the app that a person opens as a page, with its path parameters
    still in it: the app's own route table, so a new page is checked without being listed."""
    from control_plane.web import access
    from control_plane.web.app import build_app

    paths = {key.split(" ", 1)[1] for route in build_app(services).routes
             for key in access.route_keys(route) if key.startswith("GET ")}
    return sorted(p for p in paths if not MACHINE.search(p) and p not in NOT_PAGES)


def seed_fixtures(services, team) -> dict[str, int]:
    """One of each thing a page is about (an agent, a task, a signal import, an export), and
    the request waiting in the inbox: the values of the pages' path parameters."""
    from control_plane.tenancy import service as tenancy
    from control_plane.tenancy.export import do_request_export
    from tenant_runtime.agents import service as agents
    from tenant_runtime.minimization import consent
    from tenant_runtime.personas.scope import EVERYTHING
    from tenant_runtime.recommendations import service as tasks
    from tenant_runtime.recommendations.schemas import TaskInput
    from tenant_runtime.signals import service as signals

    fixtures = Path(__file__).resolve().parents[1] / "tenant_runtime" / "signals" / "fixtures"
    ctx = team.ctx("owner")
    with ctx.session() as s, s.begin():
        task = tasks.do_create_task(s, ctx, TaskInput.model_validate({
            "title": "Refund order 7", "description": "Refund order 7 for a customer.",
            "team": "Support", "tags": [], "signals": {}}))
        agent = agents.create_placeholder(s, ctx, name="refund-bot", task_id=task.id)
        source_id = signals.do_add_source(s, ctx, name="app-logs", kind="logs").id
        consent.do_grant_source(s, source_id, acting_user=ctx.actor)
        request_id = s.scalars(select(ApprovalRequest.id).where(
            ApprovalRequest.state == "pending")).one()
        ids = {"task_id": task.id, "agent_id": agent.id}
    body = (fixtures / "logs.jsonl").read_bytes()
    report = signals.run_import(ctx, EVERYTHING, source_id=source_id, stream=io.BytesIO(body),
                                filename="logs.jsonl", bytes_total=len(body))
    with services.session_factory() as s, s.begin():
        owner = s.get(User, team.users["owner"].id)
        access = tenancy.access_tenant(s, team.tenant_id, user=owner)
        job = do_request_export(s, access, acting_user=owner)
        ids["job_id"] = job.id
        provider = IdentityProvider(name="pages", discovery_url="https://login.example/.well-"
                                    "known/openid-configuration", issuer="https://login.example",
                                    client_id="magistrate")
        s.add(provider)
        s.flush()
        ids["provider_id"] = provider.id
    return {**ids, "import_id": report.import_id, "request_id": request_id,
            "tenant_id": team.tenant_id}


def fill_path(path: str, values: dict[str, int]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in values, f"{path}: no fixture gives {{{name}}}; add one to seed_fixtures"
        return str(values[name])

    return re.sub(r"\{(\w+)(?::\w+)?\}", value, path)


def test_every_page_fits_1366_px_and_passes_axe(browser: Browser, live_server, services, db,
                                                database_url, tenancy_ready):
    team = make_team(services, db, database_url)
    seed_console(services, team)
    values = seed_fixtures(services, team)
    errors: list[str] = []
    page = sign_in(browser, live_server, team.users["owner"].email, errors)
    violations: list[str] = []
    paths = [fill_path(p, values) for p in console_pages(services)]
    assert len(paths) > 30 and f"/tenants/{team.tenant_id}/mcp" in paths
    for path in paths:
        response = page.goto(f"{live_server}{path}")
        assert response is not None and response.status == 200, path
        assert response.headers["content-type"].startswith("text/html"), path
        no_overflow(page)  # every <details> open: a long payload, an audit row
        violations += axe_serious(page)
    assert violations == []
    assert errors == []


def test_history_audit_and_global_pages_filter_page_and_download(browser: Browser, live_server,
                                                                 services, db, database_url,
                                                                 tenancy_ready):
    team = make_team(services, db, database_url)
    seed_console(services, team)
    errors: list[str] = []
    page = sign_in(browser, live_server, team.users["owner"].email, errors)
    tid = team.tenant_id

    # the global Approvals page: the waiting request, its tenant linking into the tab
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Approvals").click()
    page.wait_for_url(f"{live_server}/approvals")
    waiting = page.get_by_test_id("across-waiting")
    expect(waiting.locator("details.payload pre")).to_be_hidden()  # a long payload is folded
    waiting.locator("details.payload summary").click()
    expect(waiting.locator("details.payload pre")).to_contain_text('"web-23"')
    waiting.get_by_role("link", name="Acme", exact=True).click()
    page.wait_for_url(f"{live_server}/tenants/{tid}/approvals")
    expect(page.get_by_test_id("inbox-payload")).to_contain_text('"service_id": 7')

    # the history: filter by status through htmx (the address follows), then download
    page.get_by_role("link", name="History of decided requests").click()
    page.wait_for_url(f"{live_server}/tenants/{tid}/approvals/history")
    table = page.get_by_test_id("history-table")
    expect(table.locator("tbody tr")).to_have_count(2)
    page.get_by_label("Status").select_option("rejected")
    page.get_by_test_id("history-filters").get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"/approvals/history\?status=rejected"))
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table).to_contain_text("approver@example.com (rejected)")
    with page.expect_download() as info:
        page.get_by_test_id("history-csv").click()
    body = Path(info.value.path()).read_text()
    assert body.splitlines()[0].startswith("asked_at_utc,action") and "rejected" in body
    assert len(body.strip().splitlines()) == 2

    # the audit timeline, oldest first and filtered; its CSV is that view
    page.goto(f"{live_server}/tenants/{tid}/audit")
    page.get_by_label("Order").select_option("oldest")
    page.get_by_label("Event type").select_option("approval.requested")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"sort=oldest"))
    seqs = [int(x) for x in page.locator("tr.audit-row td:first-child").all_inner_texts()]
    assert len(seqs) == 3 and seqs == sorted(seqs)
    with page.expect_download() as info:
        page.get_by_test_id("audit-csv").click()
    rows = Path(info.value.path()).read_text().strip().splitlines()
    assert len(rows) == 4 and all(",approval.requested," in r for r in rows[1:])

    # the jobs page pages and filters by state
    page.goto(f"{live_server}/jobs")
    page.get_by_role("link", name="Succeeded").click()
    page.wait_for_url(f"{live_server}/jobs?state=succeeded")
    assert page.locator("tr[data-job]").count() >= 1
    assert set(page.locator("tr[data-job]").evaluate_all(
        "rows => rows.map(r => r.dataset.state)")) == {"succeeded"}
    assert errors == []


SHOTS = {  # path (after the tenant's id is filled in) -> file under docs/img
    "/": "console-home.png",
    "/tenants/{tid}": "console-tenant-overview.png",
    "/tenants/{tid}/gateway": "console-tenant-gateway.png",
    "/tenants/{tid}/gateway/calls": "console-tenant-calls.png",
    "/tenants/{tid}/approvals": "console-tenant-approvals.png",
    "/tenants/{tid}/approvals/history": "console-tenant-approvals-history.png",
    "/tenants/{tid}/audit": "console-tenant-audit.png",
    "/tenants/{tid}/settings": "console-tenant-settings.png",
    "/gateway": "console-gateway.png",
    "/approvals": "console-approvals.png",
    "/audit": "console-audit.png",
    "/jobs": "console-jobs.png",
}


def test_screenshots_of_the_main_pages(browser: Browser, live_server, services, db,
                                       database_url, tenancy_ready, tmp_path):
    """The documentation's screenshots at 1,366 px. They are written to docs/img only when
    MAGISTRATE_SCREENSHOTS_DIR names it (ops/console_screenshots.py does); otherwise to a
    temporary folder, so a test run leaves the tree as it was."""
    team = make_team(services, db, database_url)
    create_tenant(services, team.users["owner"].email, "globex")
    run_pending_jobs(services, database_url)
    seed_console(services, team)
    target = Path(os.environ.get("MAGISTRATE_SCREENSHOTS_DIR") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    page = sign_in(browser, live_server, team.users["owner"].email, errors)
    for path, name in SHOTS.items():
        response = page.goto(live_server + path.format(tid=team.tenant_id))
        assert response is not None and response.status == 200, path
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(target / name), full_page=True)
        assert (target / name).stat().st_size > 10_000, name
    assert errors == []


def test_every_kind_of_confirmation_cancels_and_confirms(browser: Browser, live_server,
                                                         services, db, database_url,
                                                         tenancy_ready, llm):
    """The three ways a confirming form is sent — a boosted tenant form (htmx:confirm), a form
    of its own htmx (``hx-post``) and a plain form (held at submit) — each with a plain
    ``data-confirm`` and, where the console has one, a typed ``data-confirm-phrase``: Cancel
    leaves the server's state as it was, Confirm changes it."""
    from control_plane.models import IdentityProvider, ScimToken, WebSession
    from control_plane.scim.service import do_create_token
    from tenant_runtime.models import GatewayRoute

    team = make_team(services, db, database_url)
    owner = team.users["owner"]
    tid = team.tenant_id
    ctx = owner_ctx(services, tid, owner.email)
    with ctx.session() as s, s.begin():
        credential = do_add_credential(s, ctx, name="openai", provider="openai",
                                       secret=llm.api_key, contact_email=None)
        for model in ("gpt-4o-mini", "claude-3-haiku"):
            admin.add_route(s, ctx, admin.RouteInput(
                model_name=model, provider="openai", provider_model=model,
                endpoint=f"{llm.base_url}/v1", credential_id=credential.id, allowed=True))
    with services.session_factory() as s, s.begin():
        provider = IdentityProvider(name="entra", discovery_url="https://login.example/.well-"
                                    "known/openid-configuration", issuer="https://login.example",
                                    client_id="magistrate")
        s.add(provider)
        s.flush()
        do_create_token(s, provider, label="entra-provisioning",
                        acting_user=s.get(User, owner.id))

    def route(model: str) -> GatewayRoute | None:
        with ctx.session() as s:
            return s.scalars(select(GatewayRoute).where(GatewayRoute.model_name == model)).first()

    def user_active(email: str) -> bool:
        with services.session_factory() as s:
            return s.query(User).filter_by(email=email).one().is_active

    def token_revoked() -> bool:
        with services.session_factory() as s:
            return s.scalars(select(ScimToken)).one().revoked_at is not None

    def live_sessions() -> int:
        with services.session_factory() as s:
            return s.query(WebSession).filter_by(user_id=owner.id, revoked_at=None).count()

    errors: list[str] = []
    page = sign_in(browser, live_server, owner.email, errors)
    dialog = page.get_by_test_id("confirm-dialog")

    def ask(button, text: str) -> None:
        button.click()
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text(text)

    def cancel() -> None:
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()

    # a boosted tenant form, data-confirm: take a model off the allowlist
    page.goto(f"{live_server}/tenants/{tid}/gateway")
    row = page.get_by_test_id("routes").locator("tr", has_text="gpt-4o-mini")
    ask(row.get_by_role("button", name="Disallow"), "Take gpt-4o-mini off the allowlist?")
    cancel()
    page.reload()  # the page is the server's answer: still allowed
    assert route("gpt-4o-mini").allowed
    expect(row.get_by_role("button", name="Disallow")).to_be_visible()
    ask(row.get_by_role("button", name="Disallow"), "Take gpt-4o-mini off the allowlist?")
    dialog.get_by_role("button", name="Disallow").click()
    expect(row.get_by_role("button", name="Allow", exact=True)).to_be_visible()
    assert not route("gpt-4o-mini").allowed
    expect(page).to_have_url(f"{live_server}/tenants/{tid}/gateway")  # not …/disallow

    # a boosted tenant form, data-confirm-phrase: delete a route, its name typed
    row = page.get_by_test_id("routes").locator("tr", has_text="claude-3-haiku")
    ask(row.get_by_role("button", name="Delete"), "Delete the route claude-3-haiku?")
    go = dialog.get_by_role("button", name="Delete route")
    dialog.get_by_label(re.compile("to confirm")).fill("claude-3")
    expect(go).to_be_disabled()  # not the name
    cancel()
    page.reload()
    assert route("claude-3-haiku") is not None
    ask(row.get_by_role("button", name="Delete"), "Delete the route claude-3-haiku?")
    dialog.get_by_label(re.compile("to confirm")).fill("claude-3-haiku")
    go.click()
    expect(page.get_by_test_id("routes").locator("tr", has_text="claude-3-haiku")) \
        .to_have_count(0)
    assert route("claude-3-haiku") is None

    # a form of its own htmx (hx-post), data-confirm: deactivate a user
    page.goto(f"{live_server}/users")
    row = page.locator("tr", has_text="viewer@example.com")
    ask(row.get_by_role("button", name="Deactivate"), "Deactivate viewer@example.com?")
    cancel()
    page.reload()
    assert user_active("viewer@example.com")
    ask(row.get_by_role("button", name="Deactivate"), "Deactivate viewer@example.com?")
    dialog.get_by_role("button", name="Deactivate").click()
    expect(row.get_by_role("button", name="Reactivate")).to_be_visible()
    assert not user_active("viewer@example.com")

    # a form of its own htmx (hx-post), data-confirm-phrase: revoke a SCIM token
    page.goto(f"{live_server}/sso")
    row = page.locator("tr", has_text="entra-provisioning")
    ask(row.get_by_role("button", name="Revoke"), "Revoke the SCIM token entra-provisioning?")
    go = dialog.get_by_role("button", name="Revoke")
    expect(go).to_be_disabled()
    cancel()
    page.reload()
    assert not token_revoked()
    ask(row.get_by_role("button", name="Revoke"), "Revoke the SCIM token entra-provisioning?")
    dialog.get_by_label(re.compile("to confirm")).fill("entra-provisioning")
    go.click()
    expect(row).to_contain_text("revoked")
    assert token_revoked()

    # a plain form (held at submit), data-confirm: sign out every session. The console has
    # no plain form with a typed confirmation: every irreversible action is a tenant's or
    # the SSO page's, both above.
    page.goto(f"{live_server}/account")
    before = live_sessions()
    assert before >= 1
    ask(page.get_by_role("button", name="Sign out everywhere"), "Sign out every session")
    cancel()
    page.reload()
    assert page.url == f"{live_server}/account" and live_sessions() == before
    ask(page.get_by_role("button", name="Sign out everywhere"), "Sign out every session")
    dialog.get_by_role("button", name="Sign out everywhere").click()
    page.wait_for_url(re.compile(r"/sign-in"))
    assert live_sessions() == 0
    assert errors == []
