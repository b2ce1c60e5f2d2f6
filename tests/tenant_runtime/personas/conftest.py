"""A provisioned tenant with members of several roles (through the real control-plane service),
two sources, and helpers that write signals, observations and tasks directly, for the scope and
aggregate tests. A second tenant exists too, as in every fixture set."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from control_plane.models import Tenant, User
from control_plane.tenancy import service as tenancy
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.minimization.models import SUMMARY_ENCODING, Observation
from tenant_runtime.personas.models import Persona, PersonaAssignment
from tenant_runtime.recommendations.models import Task
from tenant_runtime.signals.models import Signal, SignalImport, Source
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user

NOW = datetime.now(UTC)
MEMBERS = {"admin@example.com": "Admin", "op@example.com": "Operator",
           "viewer@example.com": "Viewer", "compliance@example.com": "Compliance"}


@dataclass
class Tenancy:
    tenant_id: int
    other_tenant_id: int
    owner_id: int
    ctx: TenantContext  # as the Owner
    services: object
    user_ids: dict[str, int] = field(default_factory=dict)  # email → control-plane id
    sources: dict[str, int] = field(default_factory=dict)  # name → id
    _n: int = 0

    def source(self, name: str, kind: str = "jira") -> int:
        with self.ctx.session() as s, s.begin():
            row = Source(name=name, kind=kind, granted=True)
            s.add(row)
            s.flush()
            self.sources[name] = row.id
            return row.id

    def signal(self, *, team: str, person: str | None, source: str,
               occurred_at: datetime | None = None, resolve_minutes: float | None = 60,
               template: str = "disk full on <host>", cluster_key: str | None = None) -> int:
        self._n += 1
        occurred = occurred_at or NOW - timedelta(days=1)
        with self.ctx.session() as s, s.begin():
            row = Signal(source_id=self.sources[source], external_id=f"X-{self._n}",
                         kind="issue", title_sealed=b"", template=template, team=team,
                         person_ref=person, occurred_at=occurred, cluster_key=cluster_key,
                         resolved_at=None if resolve_minutes is None
                         else occurred + timedelta(minutes=resolve_minutes))
            s.add(row)
            s.flush()
            row.title_sealed = self.ctx.sealer.seal(f"Signal {self._n} of {team}",
                                                    table="signals", column="title_sealed",
                                                    row_key=row.id)
            return row.id

    def signal_import(self, source: str) -> int:
        with self.ctx.session() as s, s.begin():
            row = SignalImport(source_id=self.sources[source], filename=f"{source}.json",
                               file_format="json", state="done")
            s.add(row)
            s.flush()
            return row.id

    def observation(self, *, team: str, source: str, summary: str,
                    task_id: int | None = None) -> int:
        with self.ctx.session() as s, s.begin():
            row = Observation(source_id=self.sources[source], task_id=task_id, team=team,
                              summary_sealed=b"", extractor="test")
            s.add(row)
            s.flush()
            row.summary_sealed = self.ctx.sealer.seal(
                summary.encode(SUMMARY_ENCODING), table="observations",
                column="summary_sealed", row_key=row.id)
            return row.id

    def task(self, *, title: str, team: str) -> int:
        with self.ctx.session() as s, s.begin():
            row = Task(title=title, description_sealed=b"", team=team, tags=[], signals={},
                       source="form", created_by="owner@example.com")
            s.add(row)
            s.flush()
            row.description_sealed = self.ctx.sealer.seal(
                f"What {team} does by hand: {title}.", table="tasks",
                column="description_sealed", row_key=row.id)
            return row.id

    def persona(self, name: str, teams: list[str], sources: list[int | str],
                holders: tuple[str, ...] = ()) -> int:
        with self.ctx.session() as s, s.begin():
            row = Persona(name=name, teams=teams, source_ids=sources)
            s.add(row)
            s.flush()
            for email in holders:
                s.add(PersonaAssignment(user_id=str(self.user_ids[email]), persona_id=row.id))
            return row.id

    def actor(self, email: str) -> Actor:
        role = "Owner" if email not in MEMBERS else MEMBERS[email]
        return Actor("user", str(self.user_ids[email]), email, role)


@pytest.fixture
def tenancy_env(services, db, database_url, primary_server, local_kek) -> Tenancy:
    owner = make_user(db, "owner@example.com")
    tenant_id = create_tenant(services, owner.email, "acme")
    other = create_tenant(services, owner.email, "globex")
    assert {r["outcome"] for r in run_pending_jobs(services, database_url)} == {"succeeded"}
    user_ids = {owner.email: owner.id}
    user_ids.update({email: make_user(db, email, is_owner=False).id for email in MEMBERS})
    with services.session_factory() as s, s.begin():
        me = s.get(User, owner.id)
        access = tenancy.access_tenant(s, tenant_id, user=me)
        for email, role in MEMBERS.items():
            tenancy.do_add_member(s, access, email=email, role=role, acting_user=me)
    with services.session_factory() as s:
        ctx = services.tenant_connections.context(
            s, s.get(Tenant, tenant_id), Actor("user", str(owner.id), owner.email, "Owner"))
    return Tenancy(tenant_id, other, owner.id, ctx, services, user_ids)
