"""The Backups page in a real browser: an Owner restores a backup as a new tenant (confirmed,
queued, followed to success) and asks to replace the tenant (the slug typed to confirm; the
request's sentence shown); a refusal comes back as a toast with the server's sentence."""

from __future__ import annotations

import re

from playwright.sync_api import Browser, expect
from sqlalchemy import select

from control_plane.audit import Actor
from control_plane.backups.destinations import configured
from control_plane.backups.service import backup_tenant
from control_plane.models import Tenant
from tests.browser.test_console import sign_in
from tests.control_plane.approvals.helpers import make_team
from tests.control_plane.tenancy.helpers import run_pending_jobs


def test_an_owner_restores_as_a_new_tenant_and_asks_to_replace(
        browser: Browser, live_server, services, db, database_url, tenancy_ready):
    team = make_team(services, db, database_url)
    tid = team.tenant_id
    uri, opener = configured(services.settings)
    backup_id = backup_tenant(services.session_factory, services.tenant_connections,
                              opener(uri), tid, actor=Actor("system", None, "test")).backup_id
    errors: list[str] = []
    page = sign_in(browser, live_server, team.users["owner"].email, errors)
    page.goto(f"{live_server}/tenants/{tid}/settings")
    page.get_by_role("link", name="Backups and restore").click()
    page.wait_for_url(f"{live_server}/tenants/{tid}/backups")
    row = page.locator(f"tr[data-backup='{backup_id}']")
    expect(row).to_contain_text("never drilled")

    # restore as a new tenant: a slug that is taken is refused with the server's sentence
    row.get_by_text("Restore…").click()
    row.get_by_label("New tenant's slug").fill("acme")
    row.get_by_role("button", name="Restore as a new tenant").click()
    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_contain_text(f"Restore backup {backup_id} as a new tenant?")
    dialog.get_by_role("button", name="Restore as a new tenant").click()
    expect(page.get_by_test_id("toast").last).to_contain_text(
        "A tenant with the slug acme already exists.")
    row.get_by_label("New tenant's slug").fill("acme-copy")
    row.get_by_role("button", name="Restore as a new tenant").click()
    dialog.get_by_role("button", name="Restore as a new tenant").click()
    page.wait_for_url(re.compile(r"/backups\?done=restore-as-queued&job=\d+$"))
    expect(page.get_by_test_id("notice")).to_contain_text("Restore as a new tenant queued")
    run_pending_jobs(services, database_url)
    page.reload()
    jobs = page.get_by_test_id("restore-jobs")
    expect(jobs).to_contain_text("as the new tenant acme-copy")
    expect(jobs).to_contain_text("succeeded")
    with services.session_factory() as s:
        assert s.scalars(select(Tenant.state).where(Tenant.slug == "acme-copy")).one() == \
            "active"

    # replace this tenant: the slug typed to confirm; the request is opened, its id shown
    row = page.locator(f"tr[data-backup='{backup_id}']")
    row.get_by_text("Restore…").click()
    row.get_by_role("button", name="Replace this tenant").click()
    go = dialog.get_by_role("button", name="Replace this tenant")
    expect(go).to_be_disabled()
    dialog.get_by_label(re.compile("to confirm")).fill("acme")
    expect(go).to_be_enabled()
    go.click()
    expect(page.get_by_test_id("notice")).to_contain_text(
        re.compile(r"tenant\.restore always needs an approval: approval request [0-9a-f-]{36} "
                   r"was opened"))
    assert errors == []
