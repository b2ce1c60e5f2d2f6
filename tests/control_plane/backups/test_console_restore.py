"""The tenant's Backups page: only its Owners see it and its "Restore…" actions; restoring as a
new tenant and replacing the tenant run as jobs, with visible feedback at every step; the
replacement's approval request is the member's, so another Owner must decide it."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from control_plane.backups.service import backup_tenant
from control_plane.models import BackupReplacement, Job, Membership, Tenant
from tenant_runtime.approvals import service as approvals
from tenant_runtime.approvals.exceptions import SelfApprovalRefused
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.context import Actor
from tests.control_plane.backups.conftest import ACTOR
from tests.control_plane.tenancy.helpers import run_pending_jobs
from tests.factories import make_user, post_form, sign_in


def _member(world, email: str, role: str) -> int:
    made = make_user(world.services.session_factory, email, is_owner=False)
    with world.services.session_factory() as s, s.begin():
        s.add(Membership(user_id=made.id, tenant_id=world.tenant_id, role=role))
    return made.id


def _backup(world) -> str:
    return backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR).backup_id


def _page(world) -> str:
    return f"/tenants/{world.tenant_id}/backups"


def test_only_owners_see_the_backups_page_and_its_restore_actions(world, client):
    backup_id = _backup(world)
    for role in ("Admin", "Operator", "Approver", "Compliance", "Viewer"):
        email = f"{role.lower()}@example.com"
        _member(world, email, role)
        client.cookies.clear()
        assert sign_in(client, email).status_code == 303
        assert client.get(_page(world)).status_code == 403, role
        for action, extra in (("restore-as", {"new_slug": "x-copy"}), ("replace", {})):
            refused = post_form(client, f"{_page(world)}/{action}",
                                {"backup_id": backup_id, **extra},
                                page=f"/tenants/{world.tenant_id}")
            assert refused.status_code == 403, (role, action)
        settings = client.get(f"/tenants/{world.tenant_id}/settings").text
        assert 'data-testid="backups-link"' not in settings
    client.cookies.clear()
    assert sign_in(client, "owner@example.com").status_code == 303
    settings = client.get(f"/tenants/{world.tenant_id}/settings").text
    assert f'href="/tenants/{world.tenant_id}/backups"' in settings
    page = client.get(_page(world))
    assert page.status_code == 200
    row = re.search(rf'<tr data-backup="{re.escape(backup_id)}">(.*?)</tr>', page.text, re.S)
    assert row is not None and "Restore…" in row.group(1) and "never drilled" in row.group(1)
    replace_form = re.search(r'<form[^>]*data-testid="replace"[^>]*>', row.group(1)).group(0)
    assert 'data-confirm-phrase="acme"' in replace_form and "data-confirm=" in replace_form
    assert re.search(r'<form[^>]*data-testid="restore-as"[^>]*data-confirm=', row.group(1))
    # another tenant's page is a 404, like a missing one
    assert client.get(f"/tenants/{world.other_id + 10_000}/backups").status_code == 404


def test_restore_as_a_new_tenant_from_the_console(world, client, database_url):
    backup_id = _backup(world)
    assert sign_in(client, "owner@example.com").status_code == 303
    taken = post_form(client, f"{_page(world)}/restore-as",
                      {"backup_id": backup_id, "new_slug": "globex"}, page=_page(world))
    assert taken.status_code == 409
    assert "A tenant with the slug globex already exists." in taken.text
    bad = post_form(client, f"{_page(world)}/restore-as",
                    {"backup_id": backup_id, "new_slug": "No Way"}, page=_page(world))
    assert bad.status_code == 422 and "The slug must be 2 to 63 characters" in bad.text
    queued = post_form(client, f"{_page(world)}/restore-as",
                       {"backup_id": backup_id, "new_slug": "acme-copy"}, page=_page(world))
    assert queued.status_code == 303 and "done=restore-as-queued" in queued.headers["location"]
    shown = client.get(queued.headers["location"]).text
    assert "Restore as a new tenant queued (job" in shown
    assert "as the new tenant acme-copy" in shown
    run_pending_jobs(world.services, database_url)
    with world.services.session_factory() as s:
        job = s.scalars(select(Job).where(Job.kind == "restore_tenant_as")).one()
        copy = s.scalars(select(Tenant).where(Tenant.slug == "acme-copy")).one()
        members = list(s.scalars(select(Membership.role).where(
            Membership.tenant_id == copy.id)))
    assert job.state == "succeeded" and copy.state == "active" and members == ["Owner"]
    assert "restored from" in client.get(_page(world)).text
    with world.services.session_factory() as s:
        factory = world.services.tenant_connections.session_factory(s.get(Tenant, copy.id))
    with factory() as ts:
        assert verify_tenant_chain(ts, copy.id).ok


def test_replace_from_the_console_needs_another_owners_decision(world, client, database_url):
    backup_id = _backup(world)
    second = _member(world, "second@example.com", "Owner")
    assert sign_in(client, "owner@example.com").status_code == 303
    asked = post_form(client, f"{_page(world)}/replace", {"backup_id": backup_id},
                      page=_page(world))
    assert asked.status_code == 202
    assert "tenant.restore always needs an approval" in asked.text
    request_id = re.search(r"approval request ([0-9a-f-]{36}) was opened", asked.text).group(1)
    with world.services.session_factory() as s:
        owner_id = s.scalars(select(Membership.user_id).where(
            Membership.tenant_id == world.tenant_id, Membership.user_id != second,
            Membership.role == "Owner")).one()
        tenant = s.get(Tenant, world.tenant_id)
        me = world.services.tenant_connections.context(
            s, tenant, Actor("user", str(owner_id), "owner@example.com", "Owner"))
        them = world.services.tenant_connections.context(
            s, tenant, Actor("user", str(second), "second@example.com", "Owner"))
    with me.session() as ts, ts.begin(), pytest.raises(SelfApprovalRefused):
        approvals.decide(ts, me, request_id, True, None)
    # not approved yet: no job is queued, and the page says why
    early = post_form(client, f"{_page(world)}/replace",
                      {"backup_id": backup_id, "approval_id": request_id}, page=_page(world))
    assert early.status_code == 409 and "still waiting for approval" in early.text
    with them.session() as ts, ts.begin():
        approvals.decide(ts, them, request_id, True, None)
    queued = post_form(client, f"{_page(world)}/replace",
                       {"backup_id": backup_id, "approval_id": request_id}, page=_page(world))
    assert queued.status_code == 303 and "done=replace-queued" in queued.headers["location"]
    assert "Replacement queued (job" in client.get(queued.headers["location"]).text
    run_pending_jobs(world.services, database_url)
    with world.services.session_factory() as s:
        job = s.scalars(select(Job).where(Job.kind == "replace_tenant")).one()
        used = s.get(BackupReplacement, request_id)
    assert job.state == "succeeded", job.last_error
    assert used is not None and used.backup_id == backup_id
