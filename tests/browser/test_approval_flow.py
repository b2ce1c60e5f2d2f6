"""An operator asks for a restricted action in the dashboard; a second user sees it counted in
the navigation, approves it in the inbox (htmx), and the action fires once: its signed
execution webhook reaches a local receiver exactly once, and the request's timeline says so."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, expect

from tests.control_plane.approvals.helpers import Receiver, make_team
from tests.factories import DEFAULT_PASSWORD
from workers.approvals import deliver_all_tenants

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("chromium_path")]
TIMEOUT_MS = 10_000


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def signed_in(browser: Browser, base: str, email: str, errors: list[str]):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("console", lambda m: errors.append(f"{m.text} {m.location.get('url')}")
            if m.type == "error" else None)
    page.goto(f"{base}/sign-in")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/")
    return context, page


def test_an_approved_action_fires_once(browser: Browser, live_server, services, db,
                                       database_url, tenancy_ready, receiver, artifacts_dir):
    team = make_team(services, db, database_url)
    team.add_class("deploy.production", description="Ship the production stack",
                   execution_url=receiver.url)
    errors: list[str] = []

    operator_context, operator = signed_in(browser, live_server, "operator@example.com",
                                           errors)
    operator.get_by_test_id("approvals-nav").click()  # the global page names the tenant
    operator.wait_for_url(f"{live_server}/approvals")
    operator.get_by_test_id("across-approvals").get_by_role(
        "link", name="Acme", exact=True).click()
    operator.wait_for_url(f"{live_server}/tenants/{team.tenant_id}/approvals")
    operator.locator("select[name=action]").select_option("deploy.production")
    operator.get_by_label("Payload").fill('{"service_id": 7}')
    operator.get_by_role("button", name="Request action").click()
    operator.wait_for_url(f"{live_server}/tenants/{team.tenant_id}/approvals/*")
    expect(operator.get_by_test_id("request-state")).to_have_text("pending")
    request_url = operator.url

    approver_context, approver = signed_in(browser, live_server, "approver@example.com",
                                           errors)
    expect(approver.get_by_test_id("approvals-count")).to_have_text("1")
    approver.get_by_test_id("approvals-nav").click()
    waiting = approver.get_by_test_id("across-waiting")
    expect(waiting).to_contain_text("deploy.production")
    expect(waiting).to_contain_text('{"service_id": 7}')  # the payload being approved
    waiting.get_by_role("link", name="Acme", exact=True).click()
    expect(approver.get_by_test_id("inbox")).to_contain_text("deploy.production")
    expect(approver.get_by_test_id("inbox-payload")).to_have_text('{"service_id": 7}')
    expect(approver.get_by_test_id("inbox")).to_contain_text("operator@example.com")
    approver.get_by_label("Comment (optional)").fill("Diff reviewed")
    approver.get_by_role("button", name="Approve").click()
    expect(approver.get_by_role("status")).to_have_text("Approved; the action ran.")
    expect(approver.get_by_test_id("inbox")).to_contain_text("Nothing is waiting for you")
    expect(approver.get_by_test_id("approvals-count")).to_have_count(0)  # the count refreshed
    approver.screenshot(path=str(artifacts_dir / "approvals-inbox.png"), full_page=True)

    for _ in range(3):  # what the workers' periodic task does, run more than once
        deliver_all_tenants(services.session_factory, services.tenant_connections,
                            services.settings)
    assert len(receiver.received) == 1
    body, headers = receiver.received[0]
    assert b'"action":"deploy.production"' in body and b'"service_id":7' in body
    assert headers["X-Magistrate-Event"] == "action.execute"

    operator.goto(request_url)
    expect(operator.get_by_test_id("request-state")).to_have_text("executed")
    timeline = operator.get_by_test_id("timeline")
    expect(timeline).to_contain_text("Diff reviewed")
    expect(timeline).to_contain_text("Action sent to the execution URL")
    operator.screenshot(path=str(artifacts_dir / "approval-request.png"), full_page=True)
    assert [e for e in errors if "favicon" not in e] == []
    operator_context.close()
    approver_context.close()
