"""Observations: the 240-character cap held by the database (through the ORM and through raw
SQL as the tenant's app role), the cut at word boundaries, and extraction gated by the master
switch and the source's grant, sealed, counted and scoped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from control_plane.models import Tenant
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.minimization.models import (
    SUMMARY_MAX_SEALED_BYTES,
    MinimizationSettings,
    Observation,
)
from tenant_runtime.minimization.observations import (
    ObservationEvents,
    do_extract,
    list_observations,
    open_summary,
    seal_summary,
    truncate_summary,
)
from tenant_runtime.models import AuditEvent, single_row
from tenant_runtime.personas.scope import EVERYTHING, Scope
from tenant_runtime.recommendations.models import Task
from tenant_runtime.signals.models import Signal, Source
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


@pytest.fixture
def ctx(services, db, database_url, primary_server, local_kek) -> TenantContext:
    owner = make_user(db)
    tid = create_tenant(services, owner.email, "minimal")
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == ["succeeded"]
    with services.session_factory() as s:
        return services.tenant_connections.context(
            s, s.get(Tenant, tid), Actor("user", str(owner.id), owner.email, "Owner"))


def add_source(s, name: str = "cw-prod", kind: str = "cloudwatch", *,
               granted: bool = True) -> Source:
    source = Source(name=name, kind=kind, granted=granted)
    s.add(source)
    s.flush()
    return source


def add_signal(s, ctx, source: Source, template: str, *, title: str | None = None,
               team: str = "ops", outcome: str | None = "OK", minutes: int | None = 42,
               cluster_key: str | None = None) -> Signal:
    """A signal as the importer leaves it: title sealed, template (redacted) in the clear."""
    number = s.scalar(select(func.count()).select_from(Signal)) + 1
    signal = Signal(source_id=source.id, external_id=f"ext-{number}", kind=source.kind,
                    title_sealed=b"pending", template=template, team=team, outcome=outcome,
                    occurred_at=T0, cluster_key=cluster_key,
                    resolved_at=None if minutes is None else T0 + timedelta(minutes=minutes))
    s.add(signal)
    s.flush()
    signal.title_sealed = ctx.sealer.seal(title or template, table="signals",
                                          column="title_sealed", row_key=signal.id)
    s.flush()
    return signal


def switch(s, on: bool) -> None:
    single_row(s, MinimizationSettings).stakeholder_extraction = on


# -- the cap, in the database ----------------------------------------------------------------


def test_the_orm_cannot_store_a_241_character_summary(ctx):
    with ctx.session() as s, s.begin():
        source_id = add_source(s).id
    with ctx.session() as s, s.begin():
        row = Observation(source_id=source_id, team="ops", summary_sealed=b"",
                          extractor="test")
        s.add(row)
        s.flush()
        # the widest 240 characters: four-byte ones, sealed to exactly the cap, are kept
        widest = "\N{FIRE}" * 240
        row.summary_sealed = seal_summary(ctx.sealer, widest, row_id=row.id)
        s.flush()
        assert len(row.summary_sealed) == SUMMARY_MAX_SEALED_BYTES == 994
        kept_id = row.id
    with ctx.session() as s:
        kept = s.get(Observation, kept_id)
        assert open_summary(ctx.sealer, kept.summary_sealed, row_id=kept_id) == widest

    with ctx.session() as s, s.begin():
        row = Observation(source_id=source_id, team="ops", summary_sealed=b"",
                          extractor="test")
        s.add(row)
        s.flush()
        row.summary_sealed = seal_summary(ctx.sealer, "a" * 241, row_id=row.id)
        with pytest.raises(IntegrityError, match="summary_at_most_240_chars"):
            s.flush()


def test_raw_sql_as_the_app_role_cannot_store_more_than_the_cap(ctx):
    with ctx.session() as s, s.begin():
        source_id = add_source(s).id
    insert = text("INSERT INTO observations (source_id, team, summary_sealed, extractor) "
                  "VALUES (:source, 'ops', :summary, 'raw')")
    with ctx.session() as s, s.begin():
        assert s.scalar(text("SELECT current_user")).endswith("_app")
        s.execute(insert, {"source": source_id, "summary": b"\x00" * 994})  # at the cap
    with ctx.session() as s, s.begin():
        with pytest.raises(IntegrityError, match="summary_at_most_240_chars"):
            s.execute(insert, {"source": source_id, "summary": b"\x00" * 995})
    with ctx.session() as s:
        assert s.scalar(select(func.max(func.octet_length(Observation.summary_sealed)))) == 994


# -- the cut -------------------------------------------------------------------------------


def test_a_summary_that_fits_is_kept_as_it_is():
    assert truncate_summary("disk full, again.") == ("disk full, again.", 0)
    assert truncate_summary("a" * 240) == ("a" * 240, 0)


@pytest.mark.parametrize(("text", "limit", "kept", "dropped"), [
    ("alpha beta gamma", 12, "alpha beta", 6),  # the limit falls inside "gamma"
    ("alpha beta gamma", 10, "alpha beta", 6),  # the limit falls on the space
    ("alpha beta gamma", 11, "alpha beta", 6),  # just after the space: no trailing space
    ("alpha, beta gamma", 8, "alpha", 12),  # a trailing comma goes with the cut
    ("alpha beta - gamma", 13, "alpha beta", 8),  # so does a dangling dash
    ("x" * 300, 240, "x" * 240, 60),  # one word longer than the limit: cut inside it
    ("x" * 250 + " y", 240, "x" * 240, 12),
    ("😀😀 😀😀😀", 4, "😀😀", 4),  # characters, not bytes
])
def test_a_long_summary_is_cut_at_a_word_boundary(text, limit, kept, dropped):
    assert truncate_summary(text, limit) == (kept, dropped)
    assert len(kept) + dropped == len(text)


def test_the_default_cut_is_240_characters():
    text = "word " * 60  # 300 characters; the 240th falls at the start of a word
    kept, dropped = truncate_summary(text)
    assert kept == ("word " * 48).rstrip() and len(kept) == 239 and dropped == 61


# -- extraction ----------------------------------------------------------------------------


def observations(ctx) -> list[Observation]:
    with ctx.session() as s:
        return list(s.scalars(select(Observation).order_by(Observation.id)))


def extracted_events(ctx) -> list[AuditEvent]:
    with ctx.session() as s:
        return list(s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == ObservationEvents.EXTRACTED)))


def test_the_master_switch_off_writes_nothing_even_with_a_grant(ctx):
    with ctx.session() as s, s.begin():
        switch(s, False)
        source = add_source(s, granted=True)
        signal = add_signal(s, ctx, source, "disk full on host-<n>")
        assert do_extract(s, ctx, source=source, signals=[signal]) == 0
    assert observations(ctx) == [] and extracted_events(ctx) == []


def test_a_source_without_a_grant_gives_nothing_while_the_switch_is_on(ctx):
    with ctx.session() as s, s.begin():
        switch(s, True)
        source = add_source(s, granted=False)
        signal = add_signal(s, ctx, source, "disk full on host-<n>")
        assert do_extract(s, ctx, source=source, signals=[signal]) == 0
    assert observations(ctx) == [] and extracted_events(ctx) == []


def test_switch_on_and_a_grant_write_sealed_observations_and_count_them(ctx):
    long_template = "disk usage high on [IP_ADDRESS] " + "volume-<n> " * 20  # 252 characters
    with ctx.session() as s, s.begin():
        switch(s, True)
        source = add_source(s, granted=True)
        task = Task(title="disk", description_sealed=b"x", source="signals",
                    cluster_key="k" * 64)
        s.add(task)
        s.flush()
        signals = [
            add_signal(s, ctx, source, "disk usage high on [IP_ADDRESS]",
                       title="disk usage high on 10.0.0.7 (paged Alice Martin)",
                       team="payments", cluster_key="k" * 64),
            add_signal(s, ctx, source, long_template, team="payments", outcome="ALARM",
                       minutes=None),
        ]
        assert do_extract(s, ctx, source=source, signals=signals) == 2
        task_id = task.id
    first, second = observations(ctx)
    assert open_summary(ctx.sealer, first.summary_sealed, row_id=first.id) == \
        "payments: alarm 'disk usage high on [IP_ADDRESS]' went to OK after 42 min"
    assert (first.task_id, first.team, first.dropped_chars, first.extractor) == \
        (task_id, "payments", 0, "cloudwatch_alarm")
    summary = open_summary(ctx.sealer, second.summary_sealed, row_id=second.id)
    full = f"payments: alarm '{long_template}' went to ALARM, not resolved"
    assert len(summary) <= 240 and full.startswith(summary)
    assert second.dropped_chars == len(full) - len(summary) > 0 and second.task_id is None
    # sealed: neither the summary nor the person is in the table's bytes
    with ctx.session() as s:
        stored = b"".join(s.scalars(text("SELECT summary_sealed FROM observations")))
    for plain in ("disk usage", "payments: alarm"):
        assert plain.encode("utf-32-le") not in stored and plain.encode() not in stored
    assert "Alice" not in summary
    [event] = extracted_events(ctx)
    assert event.details == {"extractor": "cloudwatch_alarm", "import_ids": [], "written": 2,
                             "truncated": 1, "dropped_chars": second.dropped_chars}


def test_the_listing_shows_only_the_teams_and_sources_in_scope(ctx):
    with ctx.session() as s, s.begin():
        switch(s, True)
        cw = add_source(s, "cw-prod", "cloudwatch")
        jira = add_source(s, "jira-ops", "jira")
        do_extract(s, ctx, source=cw, signals=[
            add_signal(s, ctx, cw, "disk full on host-<n>", team="ops"),
            add_signal(s, ctx, cw, "replica lag on db-<n>", team="db")])
        do_extract(s, ctx, source=jira, signals=[
            add_signal(s, ctx, jira, "reset password for [PERSON_1]", team="ops",
                       outcome="Done", minutes=180)])
        jira_id = jira.id
    with ctx.session() as s:
        everything = list_observations(s, ctx, EVERYTHING)
        assert [o.summary for o in everything] == [
            "ops: issue 'reset password for [PERSON_1]' resolved Done in 3 h",
            "db: alarm 'replica lag on db-<n>' went to OK after 42 min",
            "ops: alarm 'disk full on host-<n>' went to OK after 42 min"]
        ops_only = Scope(frozenset({"ops"}), None)
        assert {o.team for o in list_observations(s, ctx, ops_only)} == {"ops"}
        # a crafted team outside the scope finds nothing
        assert list_observations(s, ctx, ops_only, team="db") == []
        jira_only = Scope(None, frozenset({jira_id}))
        assert [o.source for o in list_observations(s, ctx, jira_only)] == ["jira-ops"]
        assert list_observations(s, ctx, Scope(frozenset(), frozenset())) == []
