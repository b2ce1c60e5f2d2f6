"""Clustering signals into candidate tasks, on a small fixed data set with known answers:

    6  "disk full on host-<n>" (one "... /var"), CloudWatch 4 and Jira 2, resolved by ops 5
       times and by db once                → a task: 6 a week, uniformity 35/36, handler
                                             consistency 5/6, confirmed by 2 sources → pilot
    4  "deploy failed for service-<n>", GitHub Actions, unresolved
                                           → a task: 4 a week, handler consistency unknown
    2  singletons (a log line, a Jira issue) → clusters, no task

The signals span exactly 7 days. Rows are inserted directly (title sealed, template set), as
the importer would leave them."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from control_plane.models import Tenant, User
from control_plane.tenancy import service as tenancy
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.minimization.models import MinimizationSettings, Observation
from tenant_runtime.minimization.observations import do_extract
from tenant_runtime.models import AuditEvent, single_row
from tenant_runtime.personas.models import Persona, PersonaAssignment
from tenant_runtime.recommendations.heuristics import analyse
from tenant_runtime.recommendations.models import Task
from tenant_runtime.recommendations.schemas import Recurrence, TaskSignals
from tenant_runtime.signals import clustering
from tenant_runtime.signals.clustering import (
    ClusteringEvents,
    SignalPoint,
    cluster,
    do_cluster,
    key_of,
    recurrence,
    similarity,
)
from tenant_runtime.signals.models import Signal, Source
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import csrf_token, make_user, sign_in

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
DISK, DISK_VAR = "disk full on host-<n>", "disk full on host-<n> /var"
DEPLOY = "deploy failed for service-<n>"
CERT, LOCKED = "certificate expires in <n> days", "user [PERSON_1] locked out"

# (source, template, team, day, resolved)
DATA = [
    ("cw-prod", DISK, "ops", 0, True), ("cw-prod", DISK, "ops", 1, True),
    ("cw-prod", DISK, "ops", 2, True), ("cw-prod", DISK_VAR, "db", 3, True),
    ("jira-ops", DISK, "ops", 5, True), ("jira-ops", DISK, "ops", 7, True),
    ("gh-deploys", DEPLOY, "platform", 1, False), ("gh-deploys", DEPLOY, "platform", 2, False),
    ("gh-deploys", DEPLOY, "platform", 4, False), ("gh-deploys", DEPLOY, "platform", 6, False),
    ("app-logs", CERT, "platform", 3, False), ("jira-ops", LOCKED, "support", 4, True),
]
SOURCES = {"cw-prod": "cloudwatch", "jira-ops": "jira", "gh-deploys": "github_actions",
           "app-logs": "logs"}


def points() -> list[SignalPoint]:
    return [SignalPoint(i, template, source, team, resolved, T0 + timedelta(days=day))
            for i, (source, template, team, day, resolved) in enumerate(DATA, start=1)]


# -- the pure core -------------------------------------------------------------------------


def test_similarity_is_jaccard_over_words():
    assert similarity(DISK, DISK) == 1.0
    assert similarity(DISK, DISK_VAR) == pytest.approx(5 / 6)
    assert similarity(DISK, DEPLOY) == pytest.approx(1 / 9)  # only "n" in common
    assert similarity("", "") == 1.0


@pytest.mark.parametrize(("count", "days", "expected"), [
    (6, 7.0, Recurrence(occurrences=6, period="week")),
    (6, 3.5, Recurrence(occurrences=12, period="week")),  # scaled to the period
    (3, 1.0, Recurrence(occurrences=3, period="day")),
    (9, 30.0, Recurrence(occurrences=9, period="month")),
    (10, 400.0, Recurrence(occurrences=9, period="year")),
])
def test_recurrence_is_counted_over_the_period_that_covers_the_data(count, days, expected):
    assert recurrence(count, days) == expected


def test_the_fixed_data_set_gives_the_known_clusters_and_measures():
    found = cluster(points())
    assert [sorted(p.id for p in c.members) for c in found] == [
        [1, 2, 3, 4, 5, 6], [7, 8, 9, 10], [11], [12]]
    disk, deploy, cert, locked = found
    assert (disk.representative, disk.key, disk.team) == (DISK, key_of(DISK), "ops")
    assert disk.recurrence == Recurrence(occurrences=6, period="week")
    assert disk.uniformity == pytest.approx(35 / 36)
    assert disk.handler_consistency == pytest.approx(5 / 6)
    assert disk.sources == ("cw-prod", "jira-ops") and disk.confirmed
    assert (deploy.representative, deploy.team, deploy.sources) == \
        (DEPLOY, "platform", ("gh-deploys",))
    assert deploy.recurrence == Recurrence(occurrences=4, period="week")
    assert deploy.uniformity == 1.0 and deploy.handler_consistency is None
    assert not deploy.confirmed
    assert [c.becomes_task for c in found] == [True, True, False, False]
    assert (cert.representative, locked.representative) == (CERT, LOCKED)
    assert locked.handler_consistency == 1.0


def test_the_grouping_does_not_depend_on_row_order():
    expected = cluster(points())
    shuffled = points()
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert cluster(shuffled) == expected
    assert cluster(list(reversed(points()))) == expected


def test_an_earlier_representative_keeps_its_key_when_a_variant_outgrows_it():
    grown = points() + [SignalPoint(100 + i, DISK_VAR, "cw-prod", "db", True,
                                    T0 + timedelta(days=6)) for i in range(5)]
    assert cluster(grown)[0].representative == DISK_VAR  # by frequency alone it would move
    kept = cluster(grown, known=[key_of(DISK)])[0]
    assert (kept.representative, kept.key, kept.size) == (DISK, key_of(DISK), 11)


# -- clustering a tenant -------------------------------------------------------------------


@pytest.fixture
def ctx(services, db, database_url, primary_server, local_kek) -> TenantContext:
    owner = make_user(db)
    tid = create_tenant(services, owner.email, "signals")
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == ["succeeded"]
    with services.session_factory() as s:
        return services.tenant_connections.context(
            s, s.get(Tenant, tid), Actor("user", str(owner.id), owner.email, "Owner"))


def load(ctx, rows=DATA, *, start: int = 1) -> dict[str, Source]:
    """The data set's sources (granted) and signals; extraction on, observations written."""
    with ctx.session() as s, s.begin():
        single_row(s, MinimizationSettings).stakeholder_extraction = True
        sources = {src.name: src for src in s.scalars(select(Source))}
        for name, kind in SOURCES.items():
            if name not in sources:
                sources[name] = Source(name=name, kind=kind, granted=True)
                s.add(sources[name])
        s.flush()
        for number, (name, template, team, day, resolved) in enumerate(rows, start=start):
            at = T0 + timedelta(days=day)
            signal = Signal(source_id=sources[name].id, external_id=f"ext-{number}",
                            kind=SOURCES[name], title_sealed=b"pending", template=template,
                            team=team, occurred_at=at, outcome="done" if resolved else None,
                            resolved_at=at + timedelta(hours=1) if resolved else None)
            s.add(signal)
            s.flush()
            signal.title_sealed = ctx.sealer.seal(f"{template} (#{number})", table="signals",
                                                  column="title_sealed", row_key=signal.id)
            do_extract(s, ctx, source=sources[name], signals=[signal])
        return sources


def tasks(ctx) -> list[Task]:
    with ctx.session() as s:
        return list(s.scalars(select(Task).order_by(Task.id)))


def run(ctx) -> clustering.ClusterReport:
    with ctx.session() as s, s.begin():
        return do_cluster(s, ctx, actor=ctx.actor)


def test_clustering_creates_candidate_tasks_with_the_measures_the_gate_reads(ctx):
    load(ctx)
    report = run(ctx)
    assert (report.signals, report.clusters, report.below_minimum) == (12, 4, 2)
    assert len(report.tasks_created) == 2 and report.tasks_updated == []
    disk, deploy = tasks(ctx)
    assert (disk.title, disk.team, disk.source, disk.cluster_key) == \
        (DISK, "ops", "signals", key_of(DISK))
    assert disk.signals == {"recurrence": {"occurrences": 6, "period": "week"},
                            "uniformity": 0.972, "handler_consistency": 0.833}
    assert disk.confirmed_by == ["cw-prod", "jira-ops"]
    assert (deploy.title, deploy.team, deploy.confirmed_by) == (DEPLOY, "platform",
                                                                 ["gh-deploys"])
    assert deploy.signals == {"recurrence": {"occurrences": 4, "period": "week"},
                              "uniformity": 1.0}
    # the recommendation gate's heuristics read them unchanged
    assert analyse(TaskSignals.model_validate(disk.signals)).suggestion == "pilot"
    assert analyse(TaskSignals.model_validate(deploy.signals)).suggestion == "human_only"
    description = ctx.sealer.open_text(disk.description_sealed, table="tasks",
                                       column="description_sealed", row_key=disk.id)
    assert "6 signals" in description and "Confirmed by 2 sources" in description

    with ctx.session() as s:
        keys = dict(s.execute(select(Signal.external_id, Signal.cluster_key)).all())
        assert {keys[f"ext-{n}"] for n in range(1, 7)} == {key_of(DISK)}
        assert {keys[f"ext-{n}"] for n in range(7, 11)} == {key_of(DEPLOY)}
        assert keys["ext-11"] == key_of(CERT) and keys["ext-12"] == key_of(LOCKED)
        # observations now point at their cluster's task
        linked = dict(s.execute(select(Signal.external_id, Observation.task_id).join(
            Observation, Observation.signal_id == Signal.id)).all())
        assert {linked[f"ext-{n}"] for n in range(1, 7)} == {disk.id}
        assert linked["ext-11"] is None
        [event] = s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == ClusteringEvents.CLUSTERED)).all()
        assert event.details == {
            "signals": 12, "clusters": 4, "below_minimum": 2,
            "tasks_created": [disk.id, deploy.id], "tasks_updated": [], "tasks_unchanged": 0,
            "signals_moved": 12, "observations_linked": 10}
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.event_type == "recommendation.task_created")) == 2


def test_clustering_again_updates_the_same_tasks_and_never_duplicates_them(ctx):
    load(ctx)
    first = run(ctx)
    again = run(ctx)
    assert (again.tasks_created, again.tasks_updated, again.tasks_unchanged) == ([], [], 2)
    disk_id = first.tasks_created[0]
    # the /var variant outgrows the first representative: the cluster keeps its key and task
    load(ctx, [("cw-prod", DISK_VAR, "db", 6, True)] * 6, start=13)
    grown = run(ctx)
    assert (grown.tasks_created, grown.tasks_updated) == ([], [disk_id])
    disk = tasks(ctx)[0]
    assert len(tasks(ctx)) == 2 and disk.id == disk_id and disk.cluster_key == key_of(DISK)
    assert disk.team == "db"  # db now raised 7 of the 12
    assert disk.signals["recurrence"] == {"occurrences": 12, "period": "week"}
    assert disk.signals["handler_consistency"] == round(7 / 12, 3)


# -- the pages -----------------------------------------------------------------------------


def add_member(services, ctx, email: str, role: str) -> int:
    user = make_user(services.session_factory, email, is_owner=False)
    with services.session_factory() as s, s.begin():
        owner = s.get(User, int(ctx.actor.id))
        access = tenancy.access_tenant(s, ctx.tenant_id, user=owner)
        tenancy.do_add_member(s, access, email=email, role=role, acting_user=owner)
    return user.id


def post(client, path: str):
    return client.post(path, data={"csrf_token": csrf_token(client, "/tenants")})


def test_an_operator_clusters_from_the_page_and_sees_the_report(client, services, ctx):
    load(ctx)
    add_member(services, ctx, "op@example.com", "Operator")
    add_member(services, ctx, "viewer@example.com", "Viewer")
    base = f"/tenants/{ctx.tenant_id}/signals"
    sign_in(client, "viewer@example.com")
    assert post(client, f"{base}/cluster").status_code == 403  # Viewers may not cluster
    assert tasks(ctx) == []

    sign_in(client, "op@example.com")
    assert client.post(f"{base}/cluster").status_code == 403  # CSRF first
    done = post(client, f"{base}/cluster")
    assert done.status_code == 200
    assert 'data-testid="clusters-found">4<' in done.text
    assert 'data-testid="tasks-created">2<' in done.text
    assert "confirmed by 2 sources: cw-prod, jira-ops" in done.text
    assert post(client, f"{base}/cluster").text.count('data-testid="tasks-created">0<') == 1
    disk = tasks(ctx)[0]
    page = client.get(f"/tenants/{ctx.tenant_id}/tasks/{disk.id}").text
    assert "confirmed by 2 sources: cw-prod, jira-ops" in page
    assert "ops: alarm &#39;disk full on host-&lt;n&gt;&#39; went to done after 1 h" in page


def test_a_persona_sees_only_the_clusters_of_its_teams_whatever_it_asks(client, services,
                                                                       ctx):
    load(ctx)
    run(ctx)
    viewer_id = add_member(services, ctx, "viewer@example.com", "Viewer")
    with ctx.session() as s, s.begin():
        persona = Persona(name="platform", teams=["platform"], source_ids=["*"])
        s.add(persona)
        s.flush()
        s.add(PersonaAssignment(user_id=str(viewer_id), persona_id=persona.id))
    sign_in(client, "viewer@example.com")
    url = f"/tenants/{ctx.tenant_id}/signals/clusters"
    page = client.get(url)
    assert page.status_code == 200
    assert f'data-cluster="{key_of(DEPLOY)}"' in page.text
    assert f'data-cluster="{key_of(CERT)}"' in page.text
    assert page.text.count("data-cluster=") == 2 and "disk full" not in page.text
    crafted = client.get(url, params={"team": "ops"})  # a team outside the persona
    assert crafted.status_code == 200
    assert "data-cluster=" not in crafted.text and "data-observation=" not in crafted.text
    own = client.get(url, params={"team": "platform"})
    assert own.text.count("data-observation=") == 5  # 4 workflow runs and a log line
    assert client.get(url, params={"team": "x" * 101}).status_code == 422
