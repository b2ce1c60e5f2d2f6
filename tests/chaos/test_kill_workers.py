"""``kill -9`` of workers in the middle of each kind of job: provisioning, export, panel vote
and key rotation, at once, on real ``magistrate worker`` processes. Fresh workers take over;
each job ends ``succeeded`` exactly once, with one of each side effect and nothing
half-written, and the reconciliation finds no lost job, no duplicate and no broken audit chain.

The first test runs the bounded form (4 s leases, 1 s heartbeat and reaper), on every run; the
second measures the recovery with the default settings (30 s lease, 10 s heartbeat and reaper)
when the figures are collected (``MAGISTRATE_CHAOS_RESULTS``, as ``make reliability`` sets it)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from control_plane.db import utcnow
from control_plane.jobs import JobKinds
from tests.chaos.conftest import (
    BOUNDED,
    RESULTS_ENV,
    describe_jobs,
    horse_pids,
    job_rows,
    wait_for,
    write_results,
)
from tests.chaos.scenarios import (
    PANEL_REPLIES,
    Scenario,
    Stage,
    check_export,
    check_panel_vote,
    check_provisioning,
    check_rotation,
    export,
    panel_vote,
    provisioned_tenants,
    provisioning,
    rotation,
)
from tests.factories import make_user
from tests.fakes.llm_servers import LLMServer
from workers.reconcile import reconcile

pytestmark = pytest.mark.chaos

# lease 4 s + reaper and dispatcher (a 2 s tick) + the job itself, on a loaded two-core machine
BOUNDED_RECOVERY_SECONDS = 20
DEFAULT_RECOVERY_SECONDS = 60  # the promise: a dead worker's job runs again within a minute
FIGURES: dict[str, object] = {}


@pytest.fixture
def llm() -> Iterator[dict[str, LLMServer]]:
    servers = {name: LLMServer(reply=reply, hang_seconds=2.0).start()
               for name, reply in PANEL_REPLIES.items()}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def stage(services, db, database_url, pg_server_url, primary_server, local_kek, locks,
          settings) -> Stage:
    return Stage(services, db, database_url, pg_server_url, make_user(db), locks,
                 settings.home / "exports")


def in_the_middle(stage: Stage, scenarios: list[Scenario]) -> bool:
    jobs = job_rows(stage.db, [sc.job_id for sc in scenarios])
    return all(jobs[sc.job_id].state == "running" and jobs[sc.job_id].lease_owner
               and sc.in_the_middle(jobs[sc.job_id]) for sc in scenarios)


def all_finished(stage: Stage) -> bool:
    jobs = job_rows(stage.db).values()
    return all(j.state in ("succeeded", "failed") for j in jobs)


def kill_mid_job_and_recover(stage, workers, scenarios: list[Scenario],
                             settings: dict[str, str], *, timeout: float) -> dict[int, float]:
    """Start one worker per job and wait until every job is in the middle of its work; start
    standby workers (the rest of the fleet, idle), kill -9 the busy ones and let go of the
    locks. Returns each job's recovery time (kill to success) in seconds."""
    busy = workers.start(len(scenarios), **settings)
    explain = lambda: f"{describe_jobs(stage.db)}\n{workers.log_text()[-6000:]}"  # noqa: E731
    wait_for(lambda: in_the_middle(stage, scenarios), 120, "every job in the middle of its work",
             explain=explain)
    standby = min(2, len(scenarios))
    workers.start(standby, **settings)
    workers.wait_listening(len(scenarios) + standby)
    running = job_rows(stage.db, [sc.job_id for sc in scenarios])
    assert all(in_the_middle(stage, scenarios) for _ in range(2))
    killed_at = utcnow()
    workers.kill9(busy, horse_pids(list(running.values())))
    stage.locks.release()
    wait_for(lambda: all_finished(stage), timeout + 30, "every job to finish", every=0.5,
             explain=explain)
    done = job_rows(stage.db, [sc.job_id for sc in scenarios])
    return {sc.job_id: (done[sc.job_id].finished_at - killed_at).total_seconds()
            for sc in scenarios}


def reconciled(stage: Stage) -> dict[str, int]:
    found = reconcile(stage.db, stage.services.tenant_connections,
                      exports_dir=stage.exports_dir)
    assert found.clean, found.as_dict()
    counts = found.counts()
    assert counts["jobs_lost"] == counts["side_effects_duplicated"] == 0
    assert counts["audit_chains_broken"] == counts["half_written"] == 0
    return counts


def test_kill_9_in_the_middle_of_each_kind_of_job(stage, workers, llm):
    tenants = provisioned_tenants(stage, "chaos-exp", "chaos-rot", "chaos-vote")
    scenarios = [
        provisioning(stage),
        export(stage, tenants["chaos-exp"]),
        rotation(stage, tenants["chaos-rot"]),
        panel_vote(stage, tenants["chaos-vote"], llm),
    ]
    recovery = kill_mid_job_and_recover(stage, workers, scenarios, BOUNDED,
                                        timeout=BOUNDED_RECOVERY_SECONDS)

    jobs = job_rows(stage.db)
    failed = {j.id: j.last_error for j in jobs.values() if j.state != "succeeded"}
    assert not failed, f"{failed}\n{workers.log_text()[-5000:]}"
    by_kind = {sc.kind: sc for sc in scenarios}
    for sc in scenarios:
        job = jobs[sc.job_id]
        # run by the killed worker, then again (more than once if a short lease ran out on a
        # busy machine: fencing makes that harmless); recorded as done once, each effect once
        assert job.attempts >= 2, (sc.kind, job.attempts)
        assert job.lease_owner is None and job.finished_at is not None
        assert recovery[sc.job_id] <= BOUNDED_RECOVERY_SECONDS, (sc.kind, recovery)
    check_provisioning(stage, by_kind[JobKinds.PROVISION_TENANT])
    check_export(stage, by_kind[JobKinds.EXPORT_TENANT],
                 jobs[by_kind[JobKinds.EXPORT_TENANT].job_id])
    check_rotation(stage, by_kind[JobKinds.ROTATE_TENANT_KEY])
    check_panel_vote(stage, by_kind[JobKinds.RECOMMENDATION_VOTE], llm)
    counts = reconciled(stage)

    FIGURES["bounded"] = {
        "settings": {k.removeprefix("MAGISTRATE_").lower(): int(v) for k, v in BOUNDED.items()},
        "recovery_limit_seconds": BOUNDED_RECOVERY_SECONDS,
        "jobs": {sc.kind: {"recovery_seconds": round(recovery[sc.job_id], 2),
                           "attempts": jobs[sc.job_id].attempts, **sc.facts}
                 for sc in scenarios},
        "reconciliation": counts,
    }
    write_results("jobs.json", FIGURES)


@pytest.mark.skipif(not os.environ.get(RESULTS_ENV),
                    reason=f"the default 30 s lease takes a minute to measure: it runs with "
                           f"{RESULTS_ENV} (make reliability); the bounded form always runs")
def test_with_the_default_lease_a_killed_job_runs_again_within_a_minute(stage, workers):
    tenants = provisioned_tenants(stage, "chaos-default")
    scenario = export(stage, tenants["chaos-default"])
    recovery = kill_mid_job_and_recover(stage, workers, [scenario], {},
                                        timeout=DEFAULT_RECOVERY_SECONDS)
    job = job_rows(stage.db)[scenario.job_id]
    assert job.state == "succeeded" and job.attempts == 2, job.last_error
    assert recovery[scenario.job_id] <= DEFAULT_RECOVERY_SECONDS, recovery
    check_export(stage, scenario, job)
    counts = reconciled(stage)

    FIGURES["default"] = {
        "settings": {"job_lease_seconds": 30, "job_heartbeat_seconds": 10,
                     "job_reaper_seconds": 10},
        "recovery_limit_seconds": DEFAULT_RECOVERY_SECONDS,
        "jobs": {scenario.kind: {"recovery_seconds": round(recovery[scenario.job_id], 2),
                                 "attempts": job.attempts}},
        "reconciliation": counts,
    }
    write_results("jobs.json", FIGURES)
