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


def ordered(html: str) -> list[int]:
    return [int(job) for job, _, _ in ROW.findall(html)]


def test_jobs_sort_by_creation_duration_attempts_and_state(client, db):
    ids = seed(db)
    with db() as s, s.begin():
        long_ = enqueue_job(s, "export_tenant", {"tenant_id": ids["a"]},
                            idempotency_key="jobs-page:long", tenant_id=ids["a"])
        long_.state, long_.attempts = "succeeded", 1
        long_.finished_at = long_.created_at + timedelta(hours=2)
        ids["long"] = long_.id
    make_user(db, "root@example.com")
    sign_in(client, "root@example.com")
    jobs = [v for k, v in ids.items() if k not in ("a", "b")]
    assert ordered(client.get("/jobs").text) == sorted(jobs, reverse=True)
    assert ordered(client.get("/jobs?sort=oldest").text) == sorted(jobs)
    assert ordered(client.get("/jobs?sort=duration").text)[0] == ids["long"]
    most = ordered(client.get("/jobs?sort=attempts").text)
    assert most[:2] == sorted([ids["failed"], ids["failed_b"]], reverse=True)  # 5 attempts
    assert most[2] == ids["retrying"]  # 2 attempts
    by_state = client.get("/jobs?sort=state")
    states = [state for _, state, _ in ROW.findall(by_state.text)]
    assert states == ["queued", "retrying", "running", "failed", "failed", "succeeded"]
    # the filter and pager keep the sort; the state links keep it too
    failed = client.get("/jobs?state=failed&sort=oldest")
    assert ordered(failed.text) == sorted([ids["failed"], ids["failed_b"]])
    assert 'href="/jobs?state=failed&amp;sort=attempts"' in failed.text
    assert 'href="/jobs?state=failed"' in client.get("/jobs").text  # the default sort: unsaid
    refused = client.get("/jobs?sort=slowest")
    assert refused.status_code == 422
    assert "The sort must be one of newest, oldest, duration, attempts, state." in refused.text


def test_the_jobs_csv_is_the_view_formula_safe_and_only_ones_own(client, db):
    import csv
    import io

    ids = seed(db)
    with db() as s, s.begin():
        s.get(Job, ids["failed"]).last_error = "=cmd|' /C calc'!A0"
    make_user(db, "root@example.com")
    sign_in(client, "root@example.com")
    page = client.get("/jobs?state=failed&sort=oldest")
    link = re.search(r'href="(/jobs\.csv[^"]*)" data-testid="jobs-csv"', page.text).group(1)
    assert link == "/jobs.csv?state=failed&amp;sort=oldest"
    download = client.get(link.replace("&amp;", "&"))
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert 'filename="jobs.csv"' in download.headers["content-disposition"]
    table = list(csv.reader(io.StringIO(download.text)))
    assert table[0][:4] == ["job", "kind", "tenant", "state"]
    assert [int(r[0]) for r in table[1:]] == sorted([ids["failed"], ids["failed_b"]])
    assert table[1][-1] == "'=cmd|' /C calc'!A0"  # not run as a formula
    assert table[1][7] == "5" and table[1][2] == "jobs-a"
    assert client.get("/jobs.csv?sort=bogus").status_code == 422
    everything = list(csv.reader(io.StringIO(client.get("/jobs.csv").text)))
    assert len(everything) == 1 + 5

    # a tenant's Owner downloads their tenant's jobs only; a Viewer none
    owner = make_user(db, "a-owner@example.com", is_owner=False)
    viewer = make_user(db, "a-viewer@example.com", is_owner=False)
    with db() as s, s.begin():
        s.add_all([Membership(user_id=owner.id, tenant_id=ids["a"], role="Owner"),
                   Membership(user_id=viewer.id, tenant_id=ids["a"], role="Viewer")])
    client.cookies.clear()
    sign_in(client, owner.email)
    theirs = list(csv.reader(io.StringIO(client.get("/jobs.csv").text)))
    assert {r[2] for r in theirs[1:]} == {"jobs-a"} and len(theirs) == 1 + 4
    client.cookies.clear()
    sign_in(client, viewer.email)
    assert client.get("/jobs.csv").text.strip().splitlines() == [",".join(
        ["job", "kind", "tenant", "state", "created_utc", "finished_utc", "took_seconds",
         "attempts", "max_attempts", "lease_owner", "progress", "reason"])]
    client.cookies.clear()
    assert client.get("/jobs.csv", follow_redirects=False).status_code in (303, 401)
