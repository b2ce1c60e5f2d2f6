"""A provisioned tenant whose panel models are routes to separate fake LLM servers (each with
its own fixed reply, reached through a different provider protocol), and helpers that run a
recommendation run through the real outbox jobs, vote jobs in parallel threads as several
workers would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from control_plane.jobs import enqueue_job
from control_plane.models import Job, Tenant, User
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.credentials.service import do_add_credential
from tenant_runtime.gateway import admin
from tenant_runtime.models import AuditEvent
from tenant_runtime.recommendations import jobs, service
from tenant_runtime.recommendations.models import PanelVote, RecommendationRun
from tenant_runtime.recommendations.schemas import TaskInput
from tests.conftest import make_settings
from tests.control_plane.tenancy.helpers import configure_worker, create_tenant, run_pending_jobs
from tests.factories import make_user
from tests.fakes.llm_servers import LLMServer
from workers.runner import run_job

# panel model → provider protocol its fake server is reached through
PANEL = {"panel-a": "openai", "panel-b": "anthropic", "panel-c": "on-prem"}
CHAIR = "chair"  # the Architect and the deliberator


def vote(cb: int = 8, hs: int = 2, cr: int = 2, co: int = 9, *, why: str = "Because.") -> str:
    return json.dumps({name: {"score": score, "rationale": why} for name, score in (
        ("cost_benefit", cb), ("human_sensitivity", hs), ("customer_risk", cr),
        ("compliance", co))})


GOOD = vote()
SYNTHESIS = json.dumps({"synthesis": "The panel mostly agrees.", "agreements": ["cost"],
                        "disagreements": []})


@dataclass
class PanelEnv:
    tenant_id: int
    owner_id: int
    ctx: TenantContext  # as the tenant's Owner
    servers: dict[str, LLMServer]  # by model name, the chair included
    services: object
    database_url: str

    def task(self, *, tags: tuple[str, ...] = (), signals: dict | None = None,
             description: str = "Reset customer passwords when asked by phone.") -> int:
        with self.ctx.session() as s, s.begin():
            return service.do_create_task(s, self.ctx, TaskInput.model_validate({
                "title": "Password resets", "description": description, "team": "Support",
                "tags": list(tags), "signals": signals or {}})).id

    def start(self, task_id: int) -> int:
        """What the "Run the panel" button does: the run, and its job in the outbox."""
        with self.ctx.session() as s, s.begin():
            run_id = service.do_start_run(s, self.ctx, task_id).id
        with self.services.session_factory() as s, s.begin():
            enqueue_job(s, jobs.RUN, {"tenant_id": self.tenant_id, "run_id": run_id},
                        idempotency_key=jobs.run_key(self.tenant_id, run_id),
                        tenant_id=self.tenant_id)
        return run_id

    def step(self) -> list[dict]:
        """One round: every job waiting in the outbox, in parallel threads, as workers would."""
        with self.services.session_factory() as s:
            ids = s.scalars(select(Job.id).where(Job.state.in_(("pending", "dispatched")))
                            .order_by(Job.id)).all()
        if not ids:
            return []
        with ThreadPoolExecutor(max_workers=len(ids)) as pool:
            return list(pool.map(run_job, ids))

    def drain(self, rounds: int = 6) -> list[dict]:
        """Run the outbox until it is empty (start, then the votes, then the deliberation)."""
        configure_worker(self.services, self.database_url)
        results: list[dict] = []
        for _ in range(rounds):
            done = self.step()
            if not done:
                return results
            results.extend(done)
        raise AssertionError(f"the outbox did not drain: {results}")

    def judge(self, task_id: int) -> RecommendationRun:
        run_id = self.start(task_id)
        self.drain()
        return self.run(run_id)

    def run(self, run_id: int) -> RecommendationRun:
        with self.ctx.session() as s:
            return s.get(RecommendationRun, run_id)

    def votes(self, run_id: int) -> dict[str, PanelVote]:
        with self.ctx.session() as s:
            return {v.model_name: v for v in service.votes_of(s, run_id)}

    def events(self, prefix: str = "recommendation.") -> list[AuditEvent]:
        with self.ctx.session() as s:
            return list(s.scalars(select(AuditEvent).where(
                AuditEvent.event_type.startswith(prefix)).order_by(AuditEvent.seq)))


def add_panel_routes(ctx: TenantContext, servers: dict[str, LLMServer],
                     protocols: dict[str, str]) -> None:
    with ctx.session() as s, s.begin():
        credentials: dict[str, int] = {}
        for model, server in servers.items():
            provider = protocols[model]
            if provider not in credentials:
                credentials[provider] = do_add_credential(
                    s, ctx, name=f"{provider}-key", provider=provider,
                    secret=server.api_key, contact_email=None).id
            endpoint = server.base_url if provider == "anthropic" else f"{server.base_url}/v1"
            admin.add_route(s, ctx, admin.RouteInput(
                model_name=model, provider=provider, provider_model=f"{model}-v1",
                endpoint=endpoint, credential_id=credentials[provider], timeout_seconds=1))


def owner_ctx(services, tenant_id: int, owner_id: int) -> TenantContext:
    with services.session_factory() as s:
        owner = s.get(User, owner_id)
        return services.tenant_connections.context(
            s, s.get(Tenant, tenant_id), Actor("user", str(owner.id), owner.email, "Owner"))


@pytest.fixture
def settings(tmp_path):
    return make_settings(home=tmp_path / "home",
                         gateway_private_networks=("127.0.0.0/8",))  # the fake LLM servers


@pytest.fixture
def servers() -> Iterator[dict[str, LLMServer]]:
    made = {name: LLMServer(reply=GOOD, hang_seconds=2.0).start() for name in PANEL}
    made[CHAIR] = LLMServer(reply=SYNTHESIS, hang_seconds=2.0).start()
    yield made
    for server in made.values():
        server.stop()


@pytest.fixture
def env(services, db, database_url, primary_server, local_kek, servers) -> PanelEnv:
    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "acme")
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == ["succeeded"]
    ctx = owner_ctx(services, tenant_id, owner.id)
    add_panel_routes(ctx, servers, {**PANEL, CHAIR: "on-prem"})
    with ctx.session() as s, s.begin():
        service.do_update_settings(s, ctx, service.SettingsChange(
            panel_models=list(PANEL), architect_model=CHAIR, deliberator_model=CHAIR,
            thresholds=service.thresholds_of(service.load_settings(s))))
    return PanelEnv(tenant_id, owner.id, ctx, servers, services, database_url)
