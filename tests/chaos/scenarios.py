"""One scenario per job kind: the job recorded as the product records it, a Postgres lock that
stops it at a known point in the middle of its work (after its first progress step, with part
of its work committed or written), how to tell it got there, and what "done exactly once"
means for it afterwards."""

from __future__ import annotations

import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, select

from control_plane.jobs import JobKinds, enqueue_job
from control_plane.models import Job, Membership, PlatformAuditEvent, Tenant, TenantKey, User
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.export import do_request_export, read_manifest
from control_plane.tenancy.rotation import _version_of, header, sealed_tables
from control_plane.tenancy.service import TenantAccess
from tenant_runtime.credentials.service import do_add_credential
from tenant_runtime.models import AuditEvent, GatewayCall, TenantBase
from tenant_runtime.recommendations import jobs as rjobs
from tenant_runtime.recommendations import panel, service
from tenant_runtime.recommendations.models import PanelVote, RecommendationRun
from tenant_runtime.recommendations.schemas import TaskInput
from tests.chaos.conftest import Locks, tenant_db_url
from tests.control_plane.tenancy.helpers import configure_worker, create_tenant, run_pending_jobs
from tests.fakes.llm_servers import LLMServer
from tests.tenant_runtime.recommendations.conftest import (
    GOOD,
    SYNTHESIS,
    add_panel_routes,
    owner_ctx,
)
from workers.runner import run_job

# the export stops when it reaches this table (every table before it is in the partial zip)
EXPORT_BLOCKED_TABLE = "recommendation_settings"
PANEL_MODEL, CHAIR = "panel-a", "chair"


@dataclass
class Scenario:
    kind: str
    tenant_id: int
    job_id: int
    in_the_middle: Callable[[Job], bool]
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stage:
    """What every scenario needs from the test."""

    services: Any
    db: Any
    database_url: str
    pg_server_url: str
    owner: Any
    locks: Locks
    exports_dir: Path

    def tenant(self, tenant_id: int) -> Tenant:
        with self.db() as s:
            tenant = s.get(Tenant, tenant_id)
            s.expunge(tenant)
            return tenant

    def tenant_url(self, tenant_id: int) -> str:
        return tenant_db_url(self.pg_server_url, self.tenant(tenant_id).db_name)

    def ctx(self, tenant_id: int):
        return owner_ctx(self.services, tenant_id, self.owner.id)


def provisioned_tenants(stage: Stage, *slugs: str) -> dict[str, int]:
    """Tenants provisioned by the real job, run here (not the subject of a fault)."""
    ids = {slug: create_tenant(stage.services, stage.owner.email, slug) for slug in slugs}
    outcomes = [r["outcome"] for r in run_pending_jobs(stage.services, stage.database_url)]
    assert outcomes == ["succeeded"] * len(slugs), outcomes
    return ids


def platform_events(db, event_type: str, target_id: int | None = None,
                    **details: Any) -> list[PlatformAuditEvent]:
    with db() as s:
        query = select(PlatformAuditEvent).where(PlatformAuditEvent.event_type == event_type)
        if target_id is not None:
            query = query.where(PlatformAuditEvent.target_id == str(target_id))
        if details:
            query = query.where(PlatformAuditEvent.details.contains(details))
        return list(s.scalars(query))


# ------------------------------------------------------------------------------ provisioning


def provisioning(stage: Stage, slug: str = "chaos-prov") -> Scenario:
    """Stopped at step 5 (the data key) by a lock on the tenant's row: template, roles,
    database and grants are done."""
    tenant_id = create_tenant(stage.services, stage.owner.email, slug)
    with stage.db() as s:
        job_id = s.scalars(select(Job.id).where(Job.tenant_id == tenant_id,
                                                Job.kind == JobKinds.PROVISION_TENANT)).one()
    stage.locks.hold(stage.database_url,
                     "SELECT id FROM tenants WHERE id = %s FOR NO KEY UPDATE", (tenant_id,))
    return Scenario(JobKinds.PROVISION_TENANT, tenant_id, job_id,
                    lambda job: job.progress >= 4)


def check_provisioning(stage: Stage, sc: Scenario) -> None:
    tenant = stage.tenant(sc.tenant_id)
    assert tenant.state == "active"
    assert len(platform_events(stage.db, TenantEvents.PROVISIONED, tenant.id)) == 1
    with stage.db() as s:
        keys = s.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant.id)).all()
    assert [k.version for k in keys] == [1]
    with psycopg.connect(stage.pg_server_url) as conn:
        databases = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                                 (tenant.db_name,)).fetchone()[0]
        roles = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname IN (%s, %s)",
                             (tenant.owner_role, tenant.app_role)).fetchone()[0]
    assert (databases, roles) == (1, 2)
    with stage.ctx(tenant.id).session() as ts:  # the app role opens it, the key unwraps
        assert ts.scalar(select(func.count()).select_from(AuditEvent)) is not None


# ------------------------------------------------------------------------------ export


def export(stage: Stage, tenant_id: int) -> Scenario:
    """Stopped when it reaches EXPORT_BLOCKED_TABLE (an exclusive lock on that table): the
    partial zip on disk holds every table before it, decrypted."""
    with stage.db() as s, s.begin():
        tenant = s.get(Tenant, tenant_id)
        membership = s.scalars(select(Membership).where(
            Membership.tenant_id == tenant_id, Membership.user_id == stage.owner.id)).one()
        job_id = do_request_export(s, TenantAccess(tenant, membership),
                                   acting_user=s.get(User, stage.owner.id)).id
    stage.locks.hold(stage.tenant_url(tenant_id),
                     f"LOCK TABLE {EXPORT_BLOCKED_TABLE} IN ACCESS EXCLUSIVE MODE")
    blocked_at = [t.name for t in TenantBase.metadata.sorted_tables].index(EXPORT_BLOCKED_TABLE)
    assert blocked_at >= 1
    return Scenario(JobKinds.EXPORT_TENANT, tenant_id, job_id,
                    lambda job: job.progress >= blocked_at
                    and any(stage.exports_dir.glob(f".*-job{job_id}.zip.*.partial")))


def check_export(stage: Stage, sc: Scenario, job: Job) -> None:
    assert len(platform_events(stage.db, TenantEvents.EXPORT_REQUESTED, job_id=sc.job_id)) == 1
    files = sorted(p.name for p in stage.exports_dir.iterdir())
    assert files == [job.result["file"]], files  # one zip, no partial file left behind
    path = stage.exports_dir / job.result["file"]
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
    manifest = read_manifest(path)
    assert set(manifest["files"]) == {f"{t.name}.jsonl"
                                      for t in TenantBase.metadata.sorted_tables}
    assert job.result["rows"] == sum(f["rows"] for f in manifest["files"].values())


# ------------------------------------------------------------------------------ key rotation


def rotation(stage: Stage, tenant_id: int) -> Scenario:
    """A re-encryption stopped part-way by a row lock in ``tasks``: the new data-key version
    exists and the provider credentials were moved to it (committed); the tasks were not."""
    ctx = stage.ctx(tenant_id)
    with ctx.session() as s, s.begin():
        for n in range(3):
            do_add_credential(s, ctx, name=f"key-{n}", provider="openai",
                              secret=f"sk-chaos-{n}-{uuid.uuid4().hex}",
                              contact_email=f"ops{n}@example.com")
            service.do_create_task(s, ctx, TaskInput.model_validate({
                "title": f"Task {n}", "description": f"Refund order {n} for a customer.",
                "team": "Support", "tags": [], "signals": {}}))
    with stage.db() as s, s.begin():
        job_id = enqueue_job(s, JobKinds.ROTATE_TENANT_KEY,
                             {"tenant_id": tenant_id, "reencrypt": True},
                             idempotency_key=f"rotate:{tenant_id}:{uuid.uuid4().hex}",
                             tenant_id=tenant_id).id
    url = stage.tenant_url(tenant_id)
    stage.locks.hold(url, "SELECT id FROM tasks ORDER BY id DESC LIMIT 1 FOR UPDATE")

    def credentials_moved(job: Job) -> bool:
        if job.progress_note != "re-encrypting":
            return False
        with psycopg.connect(url) as conn:
            moved = conn.execute(
                "SELECT count(*) FROM provider_credentials WHERE "
                "substring(secret_sealed FROM 1 FOR %s) = %s",
                (len(header(2)), header(2))).fetchone()[0]
        return moved == 3

    return Scenario(JobKinds.ROTATE_TENANT_KEY, tenant_id, job_id, credentials_moved)


def check_rotation(stage: Stage, sc: Scenario) -> None:
    mine = {"job_id": sc.job_id}
    assert len(platform_events(stage.db, TenantEvents.KEY_ROTATED, **mine)) == 1
    for phase in ("started", "finished"):
        assert len(platform_events(stage.db, TenantEvents.KEY_REENCRYPTED, phase=phase,
                                   **mine)) == 1, phase
    with stage.db() as s:
        keys = {k.version: k.retired_at for k in s.scalars(
            select(TenantKey).where(TenantKey.tenant_id == sc.tenant_id))}
    assert set(keys) == {1, 2} and keys[1] is not None and keys[2] is None
    # every sealed value of the tenant is at version 2 and opens with the tenant's key
    stage.services.tenant_connections.dek_cache.forget(sc.tenant_id)
    ctx = stage.ctx(sc.tenant_id)
    opened = 0
    with ctx.session() as ts:
        for st in sealed_tables():
            for row in ts.execute(select(st.key, *st.columns)):
                for column, blob in zip(st.columns, row[1:], strict=True):
                    if blob is None:
                        continue
                    assert _version_of(bytes(blob)) == 2, (st.table.name, row[0])
                    ctx.sealer.open(bytes(blob), table=st.table.name, column=column.name,
                                    row_key=row[0])
                    opened += 1
    assert opened >= 9  # 3 credentials × 2 sealed columns, 3 task descriptions
    sc.facts["sealed_values_checked"] = opened


# ------------------------------------------------------------------------------ panel vote


def panel_vote(stage: Stage, tenant_id: int, servers: dict[str, LLMServer]) -> Scenario:
    """A vote stopped after the model answered and the call was settled, when it records the
    ballot (a lock on the run's row): the answer is in the worker's memory and, sealed, in the
    call's row."""
    ctx = stage.ctx(tenant_id)
    add_panel_routes(ctx, servers, {PANEL_MODEL: "openai", CHAIR: "on-prem"})
    with ctx.session() as s, s.begin():
        service.do_update_settings(s, ctx, service.SettingsChange(
            panel_models=[PANEL_MODEL], architect_model=CHAIR, deliberator_model=CHAIR,
            thresholds=service.thresholds_of(service.load_settings(s))))
        task_id = service.do_create_task(s, ctx, TaskInput.model_validate({
            "title": "Password resets", "description": "Reset passwords asked for by phone.",
            "team": "Support", "tags": [], "signals": {}})).id
    with ctx.session() as s, s.begin():
        run_id = service.do_start_run(s, ctx, task_id).id
    with stage.db() as s, s.begin():
        start = enqueue_job(s, rjobs.RUN, {"tenant_id": tenant_id, "run_id": run_id},
                            idempotency_key=rjobs.run_key(tenant_id, run_id),
                            tenant_id=tenant_id).id
    configure_worker(stage.services, stage.database_url)
    assert run_job(start)["outcome"] == "succeeded"  # the Architect; the vote job is recorded
    with stage.db() as s:
        job_id = s.scalars(select(Job.id).where(Job.kind == JobKinds.RECOMMENDATION_VOTE,
                                                Job.tenant_id == tenant_id)).one()
    stage.locks.hold(stage.tenant_url(tenant_id),
                     "SELECT id FROM recommendation_runs WHERE id = %s FOR UPDATE", (run_id,))
    servers[PANEL_MODEL].clear()
    key = panel.answer_key(run_id, f"vote:{PANEL_MODEL}")

    def answered(job: Job) -> bool:  # the call is settled: the worker waits on the lock
        with ctx.session() as ts:
            return ts.scalar(select(func.count()).select_from(GatewayCall).where(
                GatewayCall.idempotency_key == key, GatewayCall.status == "ok")) == 1

    return Scenario(JobKinds.RECOMMENDATION_VOTE, tenant_id, job_id, answered,
                    facts={"run_id": run_id})


def check_panel_vote(stage: Stage, sc: Scenario, servers: dict[str, LLMServer]) -> None:
    run_id = sc.facts["run_id"]
    ctx = stage.ctx(sc.tenant_id)
    with ctx.session() as ts:
        votes = ts.scalars(select(PanelVote).where(PanelVote.run_id == run_id)).all()
        recorded = ts.scalars(select(AuditEvent).where(
            AuditEvent.event_type == service.RecommendationEvents.VOTE_RECORDED,
            AuditEvent.target_id == str(run_id))).all()
        run = ts.get(RecommendationRun, run_id)
        assert [v.model_name for v in votes] == [PANEL_MODEL]  # a vote or an abstention
        assert [e.details["model"] for e in recorded] == [PANEL_MODEL]
        assert run.state == "done"
        paid = ts.scalars(select(GatewayCall).where(
            GatewayCall.idempotency_key
            == panel.answer_key(run_id, f"vote:{PANEL_MODEL}"))).all()
        # the killed worker's call was settled with its answer kept: the retry used that
        assert [(c.status, c.answer_sealed) for c in paid] == [("ok", None)]
    assert len(servers[PANEL_MODEL].received) == 1
    sc.facts["model_calls"] = len(servers[PANEL_MODEL].received)


PANEL_REPLIES = {PANEL_MODEL: GOOD, CHAIR: SYNTHESIS}
