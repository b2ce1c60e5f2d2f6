"""The tenant page's "Rotate the data key": an Owner queues a ``rotate_tenant_key`` job (one at a
time per tenant, audited), a worker rewraps and with "re-encrypt" moves every sealed value to a
new data key; a tenant that made ``keys.rotate`` restricted needs an approved request first."""

from __future__ import annotations

import html

from sqlalchemy import select

from control_plane.jobs import JobKinds
from control_plane.models import Job, PlatformAuditEvent, Tenant, TenantKey, User
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.rotation import request_rotation
from tenant_runtime.approvals import service as approvals
from tests.control_plane.approvals.helpers import make_team
from tests.control_plane.tenancy.helpers import run_pending_jobs
from tests.factories import csrf_token, sign_in


def rotate(client, tenant_id: int, *, reencrypt: bool = False, approval_id: str = ""):
    data = {"csrf_token": csrf_token(client, f"/tenants/{tenant_id}"),
            "approval_id": approval_id}
    if reencrypt:
        data["reencrypt"] = "true"
    return client.post(f"/tenants/{tenant_id}/keys/rotate", data=data)


def rotation_jobs(db, tenant_id: int) -> list[Job]:
    with db() as s:
        return list(s.scalars(select(Job).where(Job.kind == JobKinds.ROTATE_TENANT_KEY,
                                                Job.tenant_id == tenant_id).order_by(Job.id)))


def versions(db, tenant_id: int) -> list[tuple[int, bool]]:
    with db() as s:
        return [(k.version, k.retired_at is not None) for k in s.scalars(
            select(TenantKey).where(TenantKey.tenant_id == tenant_id).order_by(TenantKey.version))]


def test_an_owner_rotates_and_reencrypts_from_the_tenant_page(client, services, db, database_url,
                                                               primary_server, local_kek):
    team = make_team(services, db, database_url)
    sign_in(client, team.users["owner"].email)
    page = client.get(f"/tenants/{team.tenant_id}/settings")
    assert "Rotate the data key" in page.text
    queued = rotate(client, team.tenant_id, reencrypt=True)
    assert queued.status_code == 200
    [job] = rotation_jobs(db, team.tenant_id)
    assert f"Key rotation queued (job {job.id})" in html.unescape(queued.text)
    assert job.payload == {"tenant_id": team.tenant_id, "reencrypt": True}
    again = rotate(client, team.tenant_id)  # while the first is queued
    assert again.status_code == 409 and "already queued or running" in html.unescape(again.text)
    assert len(rotation_jobs(db, team.tenant_id)) == 1
    with db() as s:
        [event] = s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == TenantEvents.KEY_ROTATION_REQUESTED)).all()
        assert event.details["job_id"] == job.id and event.details["reencrypt"] is True
        assert event.actor_id == str(team.users["owner"].id)

    results = run_pending_jobs(services, database_url)
    assert [r["outcome"] for r in results] == ["succeeded"]
    assert versions(db, team.tenant_id) == [(1, True), (2, False)]  # re-encrypted, v1 retired
    assert "v1 (retired), v2" in client.get(f"/tenants/{team.tenant_id}").text

    assert rotate(client, team.tenant_id).status_code == 200  # the last one finished
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == ["succeeded"]
    assert versions(db, team.tenant_id) == [(1, True), (2, False)]  # a rewrap: no new version
    assert [j.state for j in rotation_jobs(db, team.tenant_id)] == ["succeeded", "succeeded"]


def test_a_restricted_rotation_waits_for_an_approval(client, services, db, database_url,
                                                     primary_server, local_kek):
    team = make_team(services, db, database_url)
    team.add_class("keys.rotate", description="Rotating this tenant's keys")
    sign_in(client, team.users["owner"].email)
    pending = rotate(client, team.tenant_id)
    assert pending.status_code == 202 and rotation_jobs(db, team.tenant_id) == []
    request_id = html.unescape(pending.text).split("approval request ")[1].split(" was opened")[0]
    approver = team.ctx("approver")
    with approver.session() as s, s.begin():
        approvals.decide(s, approver, request_id, True, "planned rotation")
    assert rotate(client, team.tenant_id, approval_id=request_id).status_code == 200
    [job] = rotation_jobs(db, team.tenant_id)
    with db() as s:
        [event] = s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == TenantEvents.KEY_ROTATION_REQUESTED)).all()
        assert event.details["approval_request"] == request_id
    # while that rotation is queued, pressing again opens no request
    assert rotate(client, team.tenant_id).status_code == 409
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == ["succeeded"]
    used_again = rotate(client, team.tenant_id, approval_id=request_id)  # consumed already
    assert used_again.status_code == 409 and len(rotation_jobs(db, team.tenant_id)) == 1
    second = rotate(client, team.tenant_id)
    assert second.status_code == 202
    other_id = html.unescape(second.text).split("approval request ")[1].split(" was opened")[0]
    with approver.session() as s, s.begin():
        approvals.decide(s, approver, other_id, True, "the next one")
    with db() as s, s.begin():  # meanwhile a rotation is queued another way
        owner = s.get(User, team.users["owner"].id)
        request_rotation(s, s.get(Tenant, team.tenant_id), reencrypt=False, acting_user=owner)
    busy = rotate(client, team.tenant_id, approval_id=other_id)
    assert busy.status_code == 409 and len(rotation_jobs(db, team.tenant_id)) == 2
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == ["succeeded"]
    # the refusal did not use the approval up
    assert rotate(client, team.tenant_id, approval_id=other_id).status_code == 200
    assert len(rotation_jobs(db, team.tenant_id)) == 3
