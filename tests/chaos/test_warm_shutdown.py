"""Warm shutdown of a real ``magistrate worker`` process: SIGTERM in the middle of a job lets
the job finish, takes no new job, and exits; a job that outlives the shutdown grace is
stopped, its lease released at once (not left to expire), and another worker runs it again.

RQ (3.x) already does the first part: its first SIGTERM is a warm shutdown. The bound and the
immediate release are ours (``workers/worker.py``)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from sqlalchemy import select

from control_plane.models import Membership, Tenant, User
from control_plane.tenancy.export import do_request_export
from control_plane.tenancy.service import TenantAccess
from tests.chaos.conftest import describe_jobs, horse_pids, job_rows, wait_for, write_results
from tests.chaos.scenarios import Stage, check_export, export, provisioned_tenants
from tests.factories import make_user
from workers.reconcile import reconcile

pytestmark = pytest.mark.chaos

GRACE_SECONDS = 3
FIGURES: dict[str, object] = {}


@pytest.fixture
def stage(services, db, database_url, pg_server_url, primary_server, local_kek, locks,
          settings) -> Stage:
    return Stage(services, db, database_url, pg_server_url, make_user(db), locks,
                 settings.home / "exports")


def request_export(stage: Stage, tenant_id: int) -> int:
    with stage.db() as s, s.begin():
        membership = s.scalars(select(Membership).where(
            Membership.tenant_id == tenant_id, Membership.user_id == stage.owner.id)).one()
        return do_request_export(s, TenantAccess(s.get(Tenant, tenant_id), membership),
                                 acting_user=s.get(User, stage.owner.id)).id


def exited(proc: subprocess.Popen, timeout: float) -> float:
    """Wait for ``proc`` to exit; returns how long it took."""
    started = time.monotonic()
    proc.wait(timeout=timeout)
    return time.monotonic() - started


def assert_reconciled(stage: Stage) -> dict[str, int]:
    found = reconcile(stage.db, stage.services.tenant_connections,
                      exports_dir=stage.exports_dir)
    assert found.clean, found.as_dict()
    return found.counts()


def test_sigterm_lets_the_running_job_finish_and_takes_no_new_one(stage, workers):
    tenant_id = provisioned_tenants(stage, "warm")["warm"]
    first = export(stage, tenant_id)
    (worker,) = workers.start(1)
    wait_for(lambda: first.in_the_middle(job_rows(stage.db)[first.job_id]), 120,
             "the export in the middle of its work", explain=lambda: describe_jobs(stage.db))

    worker.terminate()  # SIGTERM, as `magistrate up` and service managers send it
    second = request_export(stage, tenant_id)
    workers.start(1)  # the rest of the fleet, which the new job is for
    time.sleep(4)  # the stopping worker's dispatcher may still hand the new job to RQ
    assert worker.poll() is None  # still waiting for its job
    stage.locks.release()
    took = exited(worker, timeout=60)
    assert worker.returncode == 0, workers.log_text()[-3000:]
    wait_for(lambda: job_rows(stage.db)[second].state == "succeeded", 120,
             "the second export", explain=lambda: describe_jobs(stage.db))

    jobs = job_rows(stage.db)
    assert jobs[first.job_id].state == "succeeded" and jobs[first.job_id].attempts == 1
    assert jobs[second].attempts == 1
    # the stopping worker ran its job to the end and took no other
    stopping_log = workers.log_paths[worker.pid].read_text()
    assert f"export_tenant #{first.job_id} " in stopping_log
    assert f"export_tenant #{second} " not in stopping_log
    files = sorted(p.name for p in stage.exports_dir.iterdir())
    assert files == sorted([jobs[first.job_id].result["file"], jobs[second].result["file"]])
    counts = assert_reconciled(stage)
    FIGURES["finishes_the_running_job"] = {"seconds_from_release_to_exit": round(took, 2),
                                           "reconciliation": counts}
    write_results("shutdown.json", FIGURES)


def test_a_job_outliving_the_grace_is_stopped_and_another_worker_runs_it(stage, workers):
    tenant_id = provisioned_tenants(stage, "overdue")["overdue"]
    job = export(stage, tenant_id)
    # the default 30 s lease: only the release, not the lease's expiry, can hand it on quickly
    (worker,) = workers.start(1, MAGISTRATE_JOB_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS))
    wait_for(lambda: job.in_the_middle(job_rows(stage.db)[job.job_id]), 120,
             "the export in the middle of its work", explain=lambda: describe_jobs(stage.db))
    (horse,) = horse_pids([job_rows(stage.db)[job.job_id]])

    worker.terminate()
    took = exited(worker, timeout=GRACE_SECONDS + 30)
    assert worker.returncode == 0, workers.log_text()[-3000:]
    assert took >= GRACE_SECONDS - 0.5, took  # it did wait for the job first
    with pytest.raises(ProcessLookupError):
        os.kill(horse, 0)  # the job's process is gone with the worker
    stopped = job_rows(stage.db)[job.job_id]
    assert stopped.state in ("pending", "dispatched"), describe_jobs(stage.db)
    assert stopped.lease_owner is None and stopped.lease_expires_at is None
    assert stopped.attempts == 1

    stage.locks.release()
    workers.start(1)
    wait_for(lambda: job_rows(stage.db)[job.job_id].state == "succeeded", 120,
             "the export run again", explain=lambda: describe_jobs(stage.db))
    done = job_rows(stage.db)[job.job_id]
    assert done.attempts == 2
    check_export(stage, job, done)  # one zip; the stopped run's partial file is gone
    counts = assert_reconciled(stage)
    FIGURES["stops_an_overdue_job"] = {"grace_seconds": GRACE_SECONDS,
                                       "seconds_from_sigterm_to_exit": round(took, 2),
                                       "reconciliation": counts}
    write_results("shutdown.json", FIGURES)
