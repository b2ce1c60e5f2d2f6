"""An Owner creates a tenant in the dashboard: tests the key first (htmx), creates it, watches
provisioning progress update by itself (htmx polling) until the tenant is active, then stores a
provider credential that is shown masked."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, expect

from tests.control_plane.tenancy.helpers import run_pending_jobs
from tests.factories import DEFAULT_PASSWORD, make_user

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("chromium_path")]
TIMEOUT_MS = 10_000


def test_owner_creates_a_tenant_and_watches_it_provision(browser: Browser, live_server, db,
                                                         services, database_url, tenancy_ready,
                                                         artifacts_dir):
    owner = make_user(db)
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"{m.text} {m.location.get('url')}")
            if m.type == "error" else None)
    page.goto(f"{live_server}/sign-in")
    page.get_by_label("E-mail").fill(owner.email)
    page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server}/")

    page.get_by_role("link", name="Tenants").click()
    page.get_by_label("Slug").fill("globex")
    page.get_by_label("Name").fill("Globex")
    page.get_by_label("Key provider").select_option("local")
    page.get_by_label("Key reference").fill("no-such-key")
    page.get_by_role("button", name="Test key").click()
    expect(page.get_by_test_id("key-test")).to_contain_text("tenant key unavailable")
    page.get_by_label("Key reference").fill("test-kek")
    page.get_by_role("button", name="Test key").click()
    expect(page.get_by_test_id("key-test")).to_contain_text("Wrap and unwrap worked")
    page.get_by_role("button", name="Create tenant").click()
    page.wait_for_url(f"{live_server}/tenants/*")
    expect(page.get_by_test_id("tenant-state")).to_have_text("provisioning")

    run_pending_jobs(services, database_url)  # what a worker does
    expect(page.get_by_test_id("tenant-state")).to_have_text("active")  # by polling, no reload

    page.reload()
    page.screenshot(path=str(artifacts_dir / "tenant-detail.png"), full_page=True)
    page.get_by_role("navigation", name="Tenant Globex").get_by_role(
        "link", name="Credentials").click()  # the tenant's tab
    page.get_by_label("Name").fill("openai-prod")
    page.get_by_label("Secret").fill("sk-browser-secret-7777")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#credentials-panel")).to_contain_text("••••7777")
    expect(page.locator("body")).not_to_contain_text("sk-browser-secret")
    page.screenshot(path=str(artifacts_dir / "tenant-credentials.png"), full_page=True)
    assert [e for e in errors if "favicon" not in e] == []
    context.close()
