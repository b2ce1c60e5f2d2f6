"""The jobs page: queued, running with its lease, retrying, failed with the reason, and a retry
that only the right people can press (audited; another tenant's job is 404)."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from control_plane.db import utcnow
from control_plane.jobs import enqueue_job
from control_plane.models import Job, Membership, PlatformAuditEvent, Tenant
from tests.factories import make_user, post_form, sign_in


def seed(db) -> dict[str, int]:
    """Two tenants (rows only: the page reads the outbox) and a job in each state."""
    ids: dict[str, int] = {}
    with db() as s, s.begin():
        a, b = Tenant(slug="jobs-a", name="A"), Tenant(slug="jobs-b", name="B")
        s.add_all([a, b])
        s.flush()
        ids["a"], ids["b"] = a.id, b.id
        now = utcnow()
        specs = {
            "queued": (a.id, {}),
            "retrying": (a.id, {"state": "pending", "attempts": 2,
                                "last_error": "TimeoutError: the KMS did not answer"}),
            "running": (a.id, {"state": "running", "attempts": 1, "lease_owner": "host:42",
                               "lease_expires_at": now + timedelta(seconds=20)}),
            "failed": (a.id, {"state": "failed", "attempts": 5,
                              "last_error": "the tenant key is unavailable"}),
            "failed_b": (b.id, {"state": "failed", "attempts": 5, "last_error": "nope"}),
        }
        for name, (tenant_id, values) in specs.items():
            job = enqueue_job(s, "export_tenant", {"tenant_id": tenant_id},
                              idempotency_key=f"jobs-page:{name}", tenant_id=tenant_id)
            for key, value in values.items():
                setattr(job, key, value)
            ids[name] = job.id
    return ids


ROW = re.compile(r'<tr data-job="(\d+)" data-state="(\w+)">(.*?)</tr>', re.S)


def rows(html: str) -> dict[int, str]:
    return {int(job): state for job, state, _ in ROW.findall(html)}


def row_html(html: str, job_id: int) -> str:
    return next(body for job, _, body in ROW.findall(html) if int(job) == job_id)


def test_an_installation_owner_sees_every_job_with_its_state_lease_and_reason(client, db):
    ids = seed(db)
    make_user(db, "root@example.com")
    sign_in(client, "root@example.com")
    page = client.get("/jobs")
    assert page.status_code == 200
    shown = rows(page.text)
    assert {shown[ids[n]] for n in ("queued", "retrying", "running", "failed", "failed_b")} \
        == {"queued", "retrying", "running", "failed"}
    assert shown[ids["retrying"]] == "retrying" and shown[ids["failed_b"]] == "failed"
    running = row_html(page.text, ids["running"])
    assert "host:42" in running and "s left" in running and "<form" not in running
    failed = row_html(page.text, ids["failed"])
    assert "the tenant key is unavailable" in failed
    assert re.search(r"<button[^>]*>Retry</button>", failed)
    only_failed = rows(client.get("/jobs?state=failed").text)
    assert set(only_failed) == {ids["failed"], ids["failed_b"]}


def test_retry_requeues_a_failed_job_once_and_is_audited(client, db):
    ids = seed(db)
    make_user(db, "root@example.com")
    sign_in(client, "root@example.com")
    answer = post_form(client, f"/jobs/{ids['failed']}/retry", page="/jobs")
    assert answer.status_code == 200
    assert f"Job {ids['failed']} is queued again." in answer.text
    with db() as s:
        job = s.get(Job, ids["failed"])
        assert job.state in ("pending", "dispatched") and job.attempts == 0
        assert job.last_error is None
        events = s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == "job.retried")).all()
        assert [e.target_id for e in events] == [str(ids["failed"])]
    again = post_form(client, f"/jobs/{ids['running']}/retry", page="/jobs")
    assert again.status_code == 409
    assert "Only a failed job can be retried" in again.text


def test_a_tenant_owner_sees_and_retries_only_their_tenants_jobs(client, db):
    ids = seed(db)
    owner = make_user(db, "a-owner@example.com", is_owner=False)
    viewer = make_user(db, "a-viewer@example.com", is_owner=False)
    with db() as s, s.begin():
        s.add_all([Membership(user_id=owner.id, tenant_id=ids["a"], role="Owner"),
                   Membership(user_id=viewer.id, tenant_id=ids["a"], role="Viewer")])
    sign_in(client, owner.email)
    shown = rows(client.get("/jobs").text)
    assert ids["failed"] in shown and ids["failed_b"] not in shown
    assert post_form(client, f"/jobs/{ids['failed_b']}/retry", page="/jobs").status_code == 404
    assert post_form(client, "/jobs/999999/retry", page="/jobs").status_code == 404
    with db() as s:
        assert s.get(Job, ids["failed_b"]).state == "failed"
    client.cookies.clear()
    sign_in(client, viewer.email)
    assert rows(client.get("/jobs").text) == {}
    assert post_form(client, f"/jobs/{ids['failed']}/retry", page="/jobs").status_code == 404


def test_retry_needs_the_csrf_token(client, db):
    ids = seed(db)
    make_user(db, "root@example.com")
    sign_in(client, "root@example.com")
    refused = client.post(f"/jobs/{ids['failed']}/retry", data={})
    assert refused.status_code == 403
    with db() as s:
        assert s.get(Job, ids["failed"]).state == "failed"


def test_jobs_come_in_pages_with_counts_over_all_and_finished_jobs_took_their_time(
        client, db, monkeypatch):
    from control_plane.web import jobs as jobs_page

    ids = seed(db)
    with db() as s, s.begin():
        done = enqueue_job(s, "export_tenant", {"tenant_id": ids["a"]},
                           idempotency_key="jobs-page:done", tenant_id=ids["a"])
        done.state, done.attempts = "succeeded", 1
        done.finished_at = done.created_at + timedelta(minutes=3, seconds=20)
        done.updated_at = done.created_at + timedelta(hours=5)  # touched later: not the end
        ids["done"] = done.id
    make_user(db, "root@example.com")
    sign_in(client, "root@example.com")
    monkeypatch.setattr(jobs_page, "PAGE_SIZE", 4)
    first = client.get("/jobs")
    assert len(rows(first.text)) == 4 and 'data-testid="next-page"' in first.text
    counts = re.search(r'data-testid="job-counts">(.*?)</p>', first.text).group(1)
    assert "queued: 1" in counts and "failed: 2" in counts and "succeeded: 1" in counts
    second = client.get("/jobs?page=2")
    assert len(rows(second.text)) == 2 and 'data-testid="next-page"' not in second.text
    assert set(rows(first.text)) | set(rows(second.text)) == set(ids.values()) - {
        ids["a"], ids["b"]}
    assert "3 min 20 s" in row_html(first.text, ids["done"])  # to its end, not its last touch
    failed_only = client.get("/jobs?state=failed&page=1")
    assert set(rows(failed_only.text)) == {ids["failed"], ids["failed_b"]}
    for bad in ("/jobs?page=0", "/jobs?state=exploded"):
        refused = client.get(bad)
        assert refused.status_code == 422, bad
