"""Reconciliation finds what it promises to find: each kind of lost job, duplicated side
effect, half-written result and broken audit chain, planted on a real provisioned tenant; and
``magistrate reconcile`` reports them and exits 1 (0 when there is nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta

import psycopg
from sqlalchemy import select, update

from control_plane import audit
from control_plane.db import utcnow
from control_plane.jobs import JobKinds, enqueue_job
from control_plane.models import Job, Tenant, TenantKey
from control_plane.tenancy.events import TenantEvents
from tenant_runtime import audit as tenant_audit
from tenant_runtime.models import GatewayCall
from tenant_runtime.recommendations.service import RecommendationEvents
from tests.conftest import TEST_SECRET_KEY, with_database
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user
from tests.tenant_runtime.recommendations.conftest import owner_ctx
from workers.reconcile import reconcile


def provisioned(services, db, database_url) -> tuple[int, int]:
    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "acme")
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == ["succeeded"]
    return tenant_id, owner.id


def check(services, db, settings):
    return reconcile(db, services.tenant_connections, exports_dir=settings.home / "exports")


def new_job(db, key: str, **values) -> int:
    with db() as s, s.begin():
        job = enqueue_job(s, JobKinds.EXPORT_TENANT, {"tenant_id": 1}, idempotency_key=key)
        for name, value in values.items():
            setattr(job, name, value)
        return job.id


def tamper(url: str, statement: str) -> None:
    """Change a row behind the append-only trigger's back, as someone holding the database's
    administrative credentials could."""
    with psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(statement)


def test_a_clean_installation_reconciles_to_zero(services, db, database_url, primary_server,
                                                 local_kek, settings):
    provisioned(services, db, database_url)
    found = check(services, db, settings)
    assert found.clean, found.as_dict()
    assert found.counts() == {"jobs_lost": 0, "side_effects_duplicated": 0,
                              "audit_chains_broken": 0, "half_written": 0,
                              "tenants_checked": 1, "jobs_checked": 1}


def test_lost_jobs_are_the_ones_nobody_will_run(services, db, settings):
    past, future = utcnow() - timedelta(seconds=5), utcnow() + timedelta(seconds=60)
    lost = new_job(db, "r-1", state="running", lease_owner="h:1", lease_expires_at=past)
    new_job(db, "r-2", state="running", lease_owner="h:2", lease_expires_at=future)
    new_job(db, "r-3")  # pending
    new_job(db, "r-4", state="dispatched")
    new_job(db, "r-5", state="succeeded")
    found = check(services, db, settings)
    assert found.lost_jobs == [f"job {lost} ({JobKinds.EXPORT_TENANT}) is running without a "
                               "live lease"]
    assert found.counts()["jobs_checked"] == 5


def test_duplicated_side_effects_and_half_written_results_are_counted(
        services, db, database_url, primary_server, local_kek, settings):
    tenant_id, owner_id = provisioned(services, db, database_url)
    with db() as s, s.begin():
        audit.record(s, TenantEvents.PROVISIONED, actor=audit.SYSTEM, target_type="tenant",
                     target_id=tenant_id)
        for _ in range(2):
            audit.record(s, TenantEvents.KEY_ROTATED, actor=audit.SYSTEM, target_type="tenant",
                         target_id=tenant_id, details={"job_id": 41})
            audit.record(s, TenantEvents.EXPORT_REQUESTED, actor=audit.SYSTEM,
                         target_type="tenant", target_id=tenant_id, details={"job_id": 42})
        # a re-encryption that stopped with two live data keys, and no job to finish it
        s.add(TenantKey(tenant_id=tenant_id, version=2, provider="local", key_ref="test-kek",
                        wrapped_dek=b"wrapped"))
    ctx = owner_ctx(services, tenant_id, owner_id)
    with ctx.session() as ts, ts.begin():
        for _ in range(2):
            tenant_audit.record(ts, RecommendationEvents.VOTE_RECORDED, actor=ctx.actor,
                                target_type="recommendation_run", target_id=7,
                                details={"model": "panel-a"})
        for key in ("recommendation-run:7:vote:panel-b", "recommendation-run:7:vote:panel-b",
                    "recommendation-run:8:vote:panel-b"):  # two paid calls of one step
            ts.add(GatewayCall(month=date(2026, 11, 1), model_name="panel-b",
                               endpoint_kind="recommendation", stream=False, status="ok",
                               idempotency_key=key))
    exports = settings.home / "exports"
    exports.mkdir(parents=True)
    for name in ("tenant-acme-20260101T000000Z-job43.zip",
                 "tenant-acme-20260101T000009Z-job43.zip",
                 ".tenant-acme-20260101T000000Z-job44.zip.0a1b2c3d.partial",
                 "tenant-acme-20260101T000000Z.zip"):  # the last one: not a job's file
        (exports / name).write_bytes(b"zip")

    found = check(services, db, settings)
    assert sorted(found.duplicates) == sorted([
        f"tenant {tenant_id} provisioned 2 times",
        "job 41 rewrapped the data key 2 times",
        "export job 42 requested 2 times",
        "tenant acme: run 7 recorded 2 votes of panel-a",
        "tenant acme: the model call recommendation-run:7:vote:panel-b was answered and "
        "charged 2 times",
        "export job 43 published 2 files",
    ])
    assert sorted(found.half_written) == sorted([
        f"tenant {tenant_id}: a re-encryption stopped with 2 live data-key versions and no "
        "job to finish it",
        "export job 44 left the partial file "
        ".tenant-acme-20260101T000000Z-job44.zip.0a1b2c3d.partial",
    ])
    assert found.broken_chains == [] and found.lost_jobs == []

    # while a rotation job of the tenant is still to run, two live keys are work in progress
    with db() as s, s.begin():
        enqueue_job(s, JobKinds.ROTATE_TENANT_KEY, {"tenant_id": tenant_id},
                    idempotency_key="rotate-in-progress", tenant_id=tenant_id)
    assert len(check(services, db, settings).half_written) == 1


def test_broken_audit_chains_are_found(services, db, database_url, pg_server_url,
                                       primary_server, local_kek, settings):
    tenant_id, owner_id = provisioned(services, db, database_url)
    ctx = owner_ctx(services, tenant_id, owner_id)
    with ctx.session() as ts, ts.begin():
        for n in range(3):
            tenant_audit.record(ts, RecommendationEvents.TASK_CREATED, actor=ctx.actor,
                                target_type="task", target_id=n)
    assert check(services, db, settings).broken_chains == []
    with db() as s:
        db_name = s.get(Tenant, tenant_id).db_name
    tamper(database_url, "UPDATE platform_audit_events SET details = '{\"x\": 1}' "
                         "WHERE seq = 1")
    tamper(with_database(pg_server_url, db_name),
           "UPDATE audit_events SET actor_name = 'someone else' WHERE seq = 2")
    found = check(services, db, settings)
    assert len(found.broken_chains) == 2, found.broken_chains
    assert found.broken_chains[0] == "platform chain: event 1 does not match its hash"
    assert found.broken_chains[1] == f"tenant acme (id {tenant_id}): seq 2: content changed"


def run_cli(database_url, redis_url, settings, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(MAGISTRATE_DATABASE_URL=database_url, MAGISTRATE_REDIS_URL=redis_url,
               MAGISTRATE_SECRET_KEY=TEST_SECRET_KEY, MAGISTRATE_ENV="test",
               MAGISTRATE_HOME=str(settings.home))
    return subprocess.run([sys.executable, "-m", "control_plane", "reconcile", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_reconcile_command(services, db, database_url, redis_url, primary_server,
                               local_kek, settings):
    provisioned(services, db, database_url)
    clean = run_cli(database_url, redis_url, settings)
    assert clean.returncode == 0, clean.stderr
    assert "checked 1 job(s) and 1 tenant(s)" in clean.stdout
    for line in ("jobs lost: 0", "side effects duplicated: 0", "audit chains broken: 0",
                 "half-written results: 0"):
        assert line in clean.stdout.splitlines()

    with db() as s, s.begin():
        s.execute(update(Job).values(state="running", lease_owner="h:1",
                                     lease_expires_at=utcnow() - timedelta(minutes=1)))
        job_id = s.scalars(select(Job.id)).one()
    found = run_cli(database_url, redis_url, settings, "--json")
    assert found.returncode == 1
    assert found.stderr.strip() == ("magistrate: reconciliation found problems; they are "
                                    "listed above")
    report = json.loads(found.stdout)
    assert report["jobs_lost"] == 1 and report["lost_jobs"] == [
        f"job {job_id} ({JobKinds.PROVISION_TENANT}) is running without a live lease"]
