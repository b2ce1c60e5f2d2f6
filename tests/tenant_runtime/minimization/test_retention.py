"""Retention of observations and signals: the sweep removes exactly what is older than the
tenant's retention (signals by occurred_at, observations by created_at), audits the counts and
the cut-off, follows a changed retention, and the worker's periodic task sweeps every active
tenant while leaving one whose customer key is revoked untouched (and logged)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from control_plane.keys.local import LocalKeyProvider
from control_plane.models import Tenant
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.exceptions import TenantKeyUnavailable
from tenant_runtime.minimization import retention
from tenant_runtime.minimization.models import (
    SUMMARY_ENCODING,
    MinimizationSettings,
    Observation,
)
from tenant_runtime.minimization.retention import RetentionEvents, sweep
from tenant_runtime.models import AuditEvent, single_row
from tenant_runtime.signals.models import Signal, SignalImport, Source
from tests.control_plane.tenancy.helpers import (
    configure_worker,
    create_tenant,
    run_pending_jobs,
    tenant_state,
)
from tests.factories import make_user
from workers.checkpoints import (
    close_connections,
    run_minimization_retention,
    sweep_minimization_all_tenants,
)
from workers.worker import periodic_tasks

SYSTEM = Actor("system", None, "retention")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def tenants(services, db, database_url, settings, primary_server, local_kek) -> dict[str, int]:
    """Two tenants under their own KEKs, so one can be revoked without the other."""
    LocalKeyProvider(settings.home / "keys").create_key("bravo-kek")
    owner = make_user(db)
    ids = {"alpha": create_tenant(services, owner.email, "alpha"),
           "bravo": create_tenant(services, owner.email, "bravo", key_ref="bravo-kek")}
    run_pending_jobs(services, database_url)
    assert {tenant_state(services, i) for i in ids.values()} == {"active"}
    return ids


def context(services, tenant_id: int) -> TenantContext:
    with services.session_factory() as s:
        return services.tenant_connections.context(s, s.get(Tenant, tenant_id), SYSTEM)


class Rows:
    """Rows inserted with explicit timestamps; ``add_*`` return the new row's id."""

    def __init__(self, ctx: TenantContext) -> None:
        self.ctx = ctx
        with ctx.session() as s, s.begin():
            source = Source(name="jira-ops", kind="jira", granted=True)
            s.add(source)
            s.flush()
            self.source_id = source.id

    def add_import(self, created_at: datetime) -> int:
        with self.ctx.session() as s, s.begin():
            row = SignalImport(source_id=self.source_id, filename="issues.json",
                               file_format="json", state="done", created_at=created_at)
            s.add(row)
            s.flush()
            return row.id

    def add_signal(self, occurred_at: datetime, *, import_id: int | None = None,
                   imported_at: datetime | None = None) -> int:
        with self.ctx.session() as s, s.begin():
            row = Signal(source_id=self.source_id, import_id=import_id,
                         external_id=f"OPS-{occurred_at.timestamp():.0f}-{import_id}",
                         kind="issue", title_sealed=b"", template="disk full on <host>",
                         team="ops", occurred_at=occurred_at,
                         imported_at=imported_at or NOW)
            s.add(row)
            s.flush()
            row.title_sealed = self.ctx.sealer.seal("Disk full on db-7", table="signals",
                                                    column="title_sealed", row_key=row.id)
            return row.id

    def add_observation(self, created_at: datetime, *, signal_id: int | None = None) -> int:
        with self.ctx.session() as s, s.begin():
            row = Observation(source_id=self.source_id, signal_id=signal_id, team="ops",
                              summary_sealed=b"", extractor="test", created_at=created_at)
            s.add(row)
            s.flush()
            row.summary_sealed = self.ctx.sealer.seal(
                "The ops team restarts the disk cleaner".encode(SUMMARY_ENCODING),
                table="observations", column="summary_sealed", row_key=row.id)
            return row.id


def ids(ctx: TenantContext, model) -> set[int]:
    with ctx.session() as s:
        return set(s.scalars(select(model.id)))


def swept_events(ctx: TenantContext) -> list[AuditEvent]:
    with ctx.session() as s:
        return list(s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == RetentionEvents.SWEPT).order_by(AuditEvent.seq)))


def run_sweep(ctx: TenantContext, now: datetime = NOW):
    with ctx.session() as s, s.begin():
        return sweep(s, ctx, now=now)


def set_retention(ctx: TenantContext, days: int) -> None:
    with ctx.session() as s, s.begin():
        single_row(s, MinimizationSettings).retention_days = days


def test_the_sweep_removes_exactly_what_is_past_the_default_retention(services, tenants,
                                                                      caplog):
    ctx = context(services, tenants["alpha"])
    rows = Rows(ctx)
    cutoff = NOW - timedelta(days=396)
    old_import = rows.add_import(cutoff - 30 * DAY)  # all its signals are old: it goes too
    mixed_import = rows.add_import(cutoff - 30 * DAY)  # keeps a signal: it stays
    old_signal = rows.add_signal(cutoff - DAY, import_id=old_import)
    just_old = rows.add_signal(cutoff - timedelta(seconds=1), import_id=mixed_import)
    # imported yesterday but it happened long ago: occurred_at decides
    old_recently_imported = rows.add_signal(cutoff - 5 * DAY, imported_at=NOW - DAY)
    kept_signal = rows.add_signal(cutoff + timedelta(seconds=1), import_id=mixed_import)
    recent_signal = rows.add_signal(NOW - DAY)
    old_observation = rows.add_observation(cutoff - DAY, signal_id=recent_signal)
    # new, but made from a signal that goes: it goes with it (and is counted)
    observation_of_old_signal = rows.add_observation(NOW - DAY, signal_id=old_signal)
    kept_observation = rows.add_observation(cutoff + DAY, signal_id=kept_signal)
    recent_observation = rows.add_observation(NOW - DAY)

    with caplog.at_level(logging.INFO, logger="magistrate.minimization"):
        result = run_sweep(ctx)

    assert result.cutoff == cutoff and result.retention_days == 396
    assert (result.observations, result.signals, result.signal_imports) == (2, 3, 1)
    assert not result.more and not result.skipped
    assert ids(ctx, Signal) == {kept_signal, recent_signal}
    assert ids(ctx, Observation) == {kept_observation, recent_observation}
    assert ids(ctx, SignalImport) == {mixed_import}
    assert {old_signal, just_old, old_recently_imported}.isdisjoint(ids(ctx, Signal))
    assert {old_observation, observation_of_old_signal}.isdisjoint(ids(ctx, Observation))

    [event] = swept_events(ctx)
    assert event.details == {"cutoff": "2025-01-29T12:00:00Z", "retention_days": 396,
                             "observations": 2, "signals": 3, "signal_imports": 1,
                             "approval_arguments": 0, "more": False}
    assert event.actor_type == "system"
    lines = [r.getMessage() for r in caplog.records if r.name == "magistrate.minimization"]
    assert lines == [f"retention of tenant {tenants['alpha']} removed observations=2 signals=3 "
                     "signal_imports=1 approval_arguments=0 older than 2025-01-29T12:00:00Z "
                     "(396 days)"]

    # a second run finds nothing: no event, no log line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="magistrate.minimization"):
        again = run_sweep(ctx)
    assert again.removed == 0
    assert len(swept_events(ctx)) == 1
    assert not [r for r in caplog.records if r.name == "magistrate.minimization"]


def test_a_changed_retention_moves_the_cutoff(services, tenants):
    ctx = context(services, tenants["alpha"])
    rows = Rows(ctx)
    forty_days = rows.add_signal(NOW - 40 * DAY)
    twenty_days = rows.add_signal(NOW - 20 * DAY)
    observation = rows.add_observation(NOW - 40 * DAY)

    assert run_sweep(ctx).removed == 0  # 396 days: nothing is old enough

    set_retention(ctx, 30)
    result = run_sweep(ctx)
    assert result.cutoff == NOW - 30 * DAY and result.retention_days == 30
    assert (result.observations, result.signals) == (1, 1)
    assert ids(ctx, Signal) == {twenty_days}
    assert forty_days not in ids(ctx, Signal) and observation not in ids(ctx, Observation)

    set_retention(ctx, 10)
    assert run_sweep(ctx).signals == 1
    assert ids(ctx, Signal) == set()
    assert [e.details["retention_days"] for e in swept_events(ctx)] == [30, 10]


def test_a_large_backlog_is_removed_in_bounded_runs(services, tenants, monkeypatch):
    ctx = context(services, tenants["alpha"])
    rows = Rows(ctx)
    for i in range(7):
        rows.add_signal(NOW - (400 + i) * DAY)
    kept = rows.add_signal(NOW - DAY)
    monkeypatch.setattr(retention, "BATCH", 2)
    monkeypatch.setattr(retention, "MAX_BATCHES", 2)

    first = run_sweep(ctx)
    assert (first.signals, first.more) == (4, True)
    second = run_sweep(ctx)
    assert (second.signals, second.more) == (3, False)
    assert ids(ctx, Signal) == {kept}
    assert [e.details["more"] for e in swept_events(ctx)] == [True, False]


def test_a_revoked_key_stops_the_sweep_before_anything_is_removed(services, tenants, settings):
    ctx = context(services, tenants["bravo"])
    rows = Rows(ctx)
    old = rows.add_signal(NOW - 500 * DAY)
    LocalKeyProvider(settings.home / "keys").path("bravo-kek").unlink()
    services.dek_cache.clear()
    with pytest.raises(TenantKeyUnavailable):
        run_sweep(ctx)
    assert ids(ctx, Signal) == {old}


def test_the_periodic_task_sweeps_every_tenant_past_one_whose_key_is_revoked(
        services, database_url, settings, tenants, caplog):
    alpha, bravo = context(services, tenants["alpha"]), context(services, tenants["bravo"])
    alpha_rows, bravo_rows = Rows(alpha), Rows(bravo)
    now = datetime.now(UTC)
    for rows in (alpha_rows, bravo_rows):
        rows.add_signal(now - 400 * DAY)
        rows.add_observation(now - 400 * DAY)
    alpha_new = alpha_rows.add_signal(now - DAY)
    bravo_all = ids(bravo, Signal), ids(bravo, Observation)

    kek = LocalKeyProvider(settings.home / "keys").path("bravo-kek")
    aside = kek.with_name("bravo-kek.revoked")
    kek.rename(aside)  # the customer revokes bravo's key
    services.dek_cache.clear()  # what the cache's TTL does on its own

    with caplog.at_level(logging.INFO):
        counts = sweep_minimization_all_tenants(services.session_factory,
                                                services.tenant_connections)
    assert counts == {"tenants": 2, "removed": 2, "failed": 1}
    assert ids(alpha, Signal) == {alpha_new} and ids(alpha, Observation) == set()
    assert (ids(bravo, Signal), ids(bravo, Observation)) == bravo_all  # untouched
    assert swept_events(bravo) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"minimization retention of tenant {tenants['bravo']} failed: "
                        "TenantKeyUnavailable"]

    aside.rename(kek)  # the key is back: the worker's next run sweeps bravo too
    configure_worker(services, database_url)
    try:
        assert run_minimization_retention() == {"tenants": 2, "removed": 2, "failed": 0}
        assert run_minimization_retention() == {"tenants": 2, "removed": 0, "failed": 0}
    finally:
        close_connections()
    assert ids(bravo, Signal) == set() and ids(bravo, Observation) == set()
    with bravo.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.event_type == RetentionEvents.SWEPT)) == 1


def test_the_worker_schedules_the_sweep_hourly(redis_client):
    [task] = [t for t in periodic_tasks(redis_client) if t.name == "minimization_retention"]
    assert task.func is run_minimization_retention
    assert task.every_seconds == 3600
