"""The lease machinery of the outbox runner, on the real control-plane database: claiming bumps
the fencing token, a fenced (late) writer changes nothing, the reaper returns only expired
leases, a live lease is never claimed twice, and the heartbeat renews the lease."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import update

from control_plane.db import utcnow
from control_plane.jobs import enqueue_job
from control_plane.models import Job
from control_plane.settings import Settings, SettingsError
from tests.threads import Worker
from workers.runner import (
    JobRun,
    _fail,
    _finish,
    _heartbeat,
    claim,
    reap_expired_leases,
    release_leases,
    renew_lease,
    worker_name,
)


def new_job(db, key: str = "lease-test-1", state: str | None = None) -> int:
    with db() as s, s.begin():
        job = enqueue_job(s, "verify_audit", {"tenant_id": 1}, idempotency_key=key)
        if state is not None:
            job.state = state
        return job.id


def job_row(db, job_id: int) -> Job:
    with db() as s:
        job = s.get(Job, job_id)
        s.expunge(job)
        return job


def expire_lease(db, job_id: int) -> None:
    with db() as s, s.begin():
        s.execute(update(Job).where(Job.id == job_id)
                  .values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_claim_takes_a_lease_and_bumps_the_fencing_token(db):
    job_id = new_job(db)
    before = utcnow()
    token, kind, payload = claim(db, job_id, "host-a:1", lease_seconds=30)
    job = job_row(db, job_id)
    assert (token, kind, payload) == (1, "verify_audit", {"tenant_id": 1})
    assert job.state == "running" and job.fencing_token == 1 and job.attempts == 1
    assert job.lease_owner == "host-a:1"
    assert before + timedelta(seconds=29) < job.lease_expires_at <= utcnow() + \
        timedelta(seconds=30)


def test_a_live_lease_is_not_claimed_twice(db):
    job_id = new_job(db)
    assert claim(db, job_id, "host-a:1", lease_seconds=30) is not None
    assert claim(db, job_id, "host-b:2", lease_seconds=30) is None
    job = job_row(db, job_id)
    assert (job.lease_owner, job.fencing_token, job.attempts) == ("host-a:1", 1, 1)


def test_racing_claims_of_one_job_have_one_winner(db):
    job_id = new_job(db)
    barrier = threading.Barrier(6)

    def take(n: int):
        barrier.wait()
        return claim(db, job_id, f"host:{n}", lease_seconds=30)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(take, range(6)))
    assert len([r for r in results if r is not None]) == 1
    assert job_row(db, job_id).fencing_token == 1


def test_an_expired_lease_is_claimed_with_a_new_token(db):
    job_id = new_job(db)
    claim(db, job_id, "host-a:1", lease_seconds=30)
    expire_lease(db, job_id)
    token, _, _ = claim(db, job_id, "host-b:2", lease_seconds=30)
    job = job_row(db, job_id)
    assert token == 2 and job.lease_owner == "host-b:2" and job.attempts == 2


def test_finished_jobs_are_never_claimed(db):
    for n, state in enumerate(("succeeded", "failed")):
        job_id = new_job(db, f"lease-finished-{n}", state=state)
        assert claim(db, job_id, "host-a:1") is None
        assert job_row(db, job_id).fencing_token == 0


def test_a_fenced_worker_cannot_record_its_late_outcome(db):
    job_id = new_job(db)
    old, _, _ = claim(db, job_id, "host-a:1", lease_seconds=30)
    expire_lease(db, job_id)
    new, _, _ = claim(db, job_id, "host-b:2", lease_seconds=30)
    JobRun(job_id, {}, new, db).progress(2, 5, "second worker")

    # the presumed-dead first worker wakes up and tries every write it could make
    JobRun(job_id, {}, old, db).progress(5, 5, "late progress")
    assert _finish(db, job_id, old, state="succeeded", result={"from": "old"},
                   finished_at=utcnow()) is False
    _fail(db, job_id, old, "late failure", retry=False)
    assert renew_lease(db, job_id, old, lease_seconds=300) is False

    job = job_row(db, job_id)
    assert job.state == "running" and job.fencing_token == new
    assert (job.progress, job.progress_total, job.progress_note) == (2, 5, "second worker")
    assert job.result is None and job.last_error is None and job.finished_at is None
    assert job.lease_owner == "host-b:2"
    assert job.lease_expires_at < utcnow() + timedelta(seconds=31)

    # the current holder's outcome is recorded
    assert _finish(db, job_id, new, state="succeeded", result={"from": "new"},
                   finished_at=utcnow()) is True
    job = job_row(db, job_id)
    assert job.state == "succeeded" and job.result == {"from": "new"}
    assert job.lease_owner is None and job.lease_expires_at is None


def test_the_reaper_returns_only_expired_leases(db):
    expired, live, waiting = (new_job(db, f"lease-reap-{n}") for n in range(3))
    claim(db, expired, "host-a:1", lease_seconds=30)
    claim(db, live, "host-a:1", lease_seconds=30)
    expire_lease(db, expired)

    assert reap_expired_leases(db) == 1
    job = job_row(db, expired)
    assert job.state == "pending" and job.lease_owner is None and job.lease_expires_at is None
    assert job.fencing_token == 1  # the next claim bumps it; the old holder stays fenced
    assert job_row(db, live).state == "running"
    assert job_row(db, live).lease_owner == "host-a:1"
    assert job_row(db, waiting).state == "pending"
    assert reap_expired_leases(db) == 0


def test_releasing_a_dead_process_leases_touches_only_its_jobs(db):
    mine, other = new_job(db, "lease-release-1"), new_job(db, "lease-release-2")
    claim(db, mine, worker_name(4242), lease_seconds=30)
    claim(db, other, worker_name(4343), lease_seconds=30)
    assert release_leases(db, worker_name(4242)) == 1
    assert job_row(db, mine).state == "pending"
    assert job_row(db, mine).lease_owner is None
    assert job_row(db, other).state == "running"
    assert release_leases(db, worker_name(4242)) == 0


def test_renewing_extends_the_lease(db):
    job_id = new_job(db)
    token, _, _ = claim(db, job_id, "host-a:1", lease_seconds=2)
    first = job_row(db, job_id).lease_expires_at
    assert renew_lease(db, job_id, token, lease_seconds=60) is True
    assert job_row(db, job_id).lease_expires_at > first + timedelta(seconds=50)


def test_the_heartbeat_keeps_a_short_lease_alive_and_stops_when_it_is_lost(db):
    job_id = new_job(db)
    token, _, _ = claim(db, job_id, "host-a:1", lease_seconds=2)
    stop = threading.Event()
    # a beat every 0.2 s keeps a 2 s lease: a busy machine may delay a few beats, not ten
    beat = Worker(lambda: _heartbeat(db, job_id, token, stop, 0.2, 2), name="heartbeat")
    beat.start()
    try:
        time.sleep(4.5)  # more than twice the lease: only renewals keep it live
        assert reap_expired_leases(db) == 0
        assert claim(db, job_id, "host-b:2", lease_seconds=1) is None
        assert job_row(db, job_id).lease_expires_at > utcnow()
    finally:
        stop.set()
        beat.result()

    # once another worker holds the job, a late heartbeat of the first one gives up
    expire_lease(db, job_id)
    new, _, _ = claim(db, job_id, "host-b:2", lease_seconds=30)
    lost = threading.Event()
    late = Worker(lambda: _heartbeat(db, job_id, token, lost, 0.05, 300), name="late heartbeat")
    late.start()
    try:
        late.result()  # it returns by itself, without being stopped
    finally:
        lost.set()
    job = job_row(db, job_id)
    assert job.fencing_token == new and job.lease_owner == "host-b:2"
    assert job.lease_expires_at < utcnow() + timedelta(seconds=31)


def test_lease_settings_default_to_30_10_10_and_a_heartbeat_must_beat_the_lease():
    defaults = Settings.from_env({})
    assert (defaults.job_lease_seconds, defaults.job_heartbeat_seconds,
            defaults.job_reaper_seconds, defaults.job_shutdown_grace_seconds) == (30, 10, 10, 60)
    bounded = Settings.from_env({"MAGISTRATE_JOB_LEASE_SECONDS": "4",
                                 "MAGISTRATE_JOB_HEARTBEAT_SECONDS": "1",
                                 "MAGISTRATE_JOB_REAPER_SECONDS": "1",
                                 "MAGISTRATE_JOB_SHUTDOWN_GRACE_SECONDS": "3"})
    assert (bounded.job_lease_seconds, bounded.job_heartbeat_seconds,
            bounded.job_reaper_seconds, bounded.job_shutdown_grace_seconds) == (4, 1, 1, 3)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"MAGISTRATE_JOB_LEASE_SECONDS": "10",
                           "MAGISTRATE_JOB_HEARTBEAT_SECONDS": "10"})
    assert str(refused.value) == ("MAGISTRATE_JOB_HEARTBEAT_SECONDS (10) must be less than "
                                  "MAGISTRATE_JOB_LEASE_SECONDS (10), or leases expire under "
                                  "live workers.")
    with pytest.raises(SettingsError, match="MAGISTRATE_JOB_REAPER_SECONDS must be at least 1"):
        Settings.from_env({"MAGISTRATE_JOB_REAPER_SECONDS": "0"})


def test_a_dispatched_job_whose_message_was_lost_is_sent_again(db, redis_client):
    from rq.job import Job as RQJob
    from rq.job import JobStatus
    from rq.serializers import JSONSerializer

    from control_plane.jobs import dispatch_pending, redeliver_undelivered, rq_job_id
    from workers.queues import get_queue

    ids = [new_job(db, f"lease-lost-{n}") for n in range(4)]
    assert dispatch_pending(db, redis_client) == 4
    lost, failed, queued, recent = ids
    with db() as s, s.begin():
        s.execute(update(Job).where(Job.id.in_((lost, failed, queued)))
                  .values(dispatched_at=utcnow() - timedelta(seconds=60)))

    def message(job_id: int) -> RQJob:
        return RQJob.fetch(rq_job_id(job_row(db, job_id)), connection=redis_client,
                           serializer=JSONSerializer)

    message(lost).delete()  # Redis lost it
    message(recent).delete()  # so recently dispatched that a worker may be claiming it
    message(failed).set_status(JobStatus.FAILED)  # a worker died with it before claiming

    assert redeliver_undelivered(db, redis_client, older_than_seconds=30) == 2
    assert job_row(db, lost).state == job_row(db, failed).state == "pending"
    assert job_row(db, queued).state == job_row(db, recent).state == "dispatched"
    assert redeliver_undelivered(db, redis_client, older_than_seconds=30) == 0

    assert dispatch_pending(db, redis_client) == 2  # sent again
    queued_ids = set(get_queue(redis_client).job_ids)
    assert {rq_job_id(job_row(db, j)) for j in (lost, failed, queued)} <= queued_ids
