"""Imports into a real tenant database: rows land minimized (sealed title, template, pseudonym),
re-imports count duplicates, a bad row is reported while the rest is imported, a file that
cannot be read as a whole writes nothing (the import row ends ``failed``), a source without a
grant is refused and counted, and a 100,000-line file streams with its progress committed while
it runs, in bounded memory. People's names and e-mails never reach the tenant database."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from control_plane.models import Tenant, User
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.minimization import consent
from tenant_runtime.minimization.models import MinimizationSettings, Observation
from tenant_runtime.minimization.pseudonyms import pseudonymizer_for
from tenant_runtime.models import AuditEvent
from tenant_runtime.personas.scope import EVERYTHING
from tenant_runtime.signals import service
from tenant_runtime.signals.fingerprint import template_of
from tenant_runtime.signals.models import Signal, SignalImport, Source
from tenant_runtime.signals.service import ImportRefused, SignalEvents
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user

FIXTURES = Path(__file__).parent / "fixtures"
PEOPLE = ("Ada Lovelace", "Grace Hopper", "ada.lovelace@example.com",
          "grace.hopper@example.com", "octo-grace", "octo-ada", "5b10ac8d82e05b22cc7d4ef5",
          "61f0aa0000000000000000aa", "Lovelace", "Hopper")


@dataclass
class SignalsEnv:
    tenant_id: int
    other_tenant_id: int
    owner: Actor
    ctx: TenantContext  # as the Owner
    other_ctx: TenantContext

    def source(self, name: str, kind: str, *, granted: bool = True) -> int:
        with self.ctx.session() as s, s.begin():
            source_id = service.do_add_source(s, self.ctx, name=name, kind=kind).id
            if granted:
                consent.do_grant_source(s, source_id, acting_user=self.owner)
        return source_id

    def run(self, source_id: int, name: str | None = None, *, data: bytes | None = None,
            filename: str | None = None, **kw) -> service.ImportReport:
        body = data if data is not None else (FIXTURES / name).read_bytes()
        return service.run_import(self.ctx, EVERYTHING, source_id=source_id,
                                  stream=io.BytesIO(body), filename=filename or name or "x",
                                  bytes_total=len(body), **kw)

    def signals(self, source_id: int) -> list[Signal]:
        with self.ctx.session() as s:
            return list(s.scalars(select(Signal).where(Signal.source_id == source_id)
                                  .order_by(Signal.occurred_at, Signal.external_id)))

    def count(self, model, *where) -> int:
        with self.ctx.session() as s:
            return s.scalar(select(func.count()).select_from(model).where(*where))

    def events(self, event_type: str) -> list[AuditEvent]:
        with self.ctx.session() as s:
            return list(s.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type)
                                  .order_by(AuditEvent.seq)))

    def title(self, signal: Signal) -> str:
        return self.ctx.sealer.open_text(signal.title_sealed, table="signals",
                                         column="title_sealed", row_key=signal.id)

    def pseudonym(self, identity: str) -> str:
        with self.ctx.session() as s, s.begin():
            return pseudonymizer_for(s, self.ctx)(identity)


def write_log_lines(path: Path, lines: int) -> None:
    with path.open("w") as f:
        for i in range(lines):
            f.write(json.dumps({"timestamp": 1_700_000_000 + i, "level": "INFO",
                                "service": f"svc-{i % 7}", "user": f"user{i % 50}",
                                "message": f"request {i} served in {i % 900} ms"}) + "\n")


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def context(services, tenant_id: int, actor: Actor) -> TenantContext:
    with services.session_factory() as s:
        return services.tenant_connections.context(s, s.get(Tenant, tenant_id), actor)


@pytest.fixture
def signals_env(services, db, database_url, primary_server, local_kek) -> SignalsEnv:
    owner = make_user(db, "owner@example.com")
    acme = create_tenant(services, owner.email, "acme")
    globex = create_tenant(services, owner.email, "globex")
    assert {r["outcome"] for r in run_pending_jobs(services, database_url)} == {"succeeded"}
    with services.session_factory() as s:
        user = s.get(User, owner.id)
        actor = Actor("user", str(user.id), user.email, "Owner")
    return SignalsEnv(acme, globex, actor, context(services, acme, actor),
                      context(services, globex, actor))


def test_each_kind_imports_minimized_signals(signals_env):
    env = signals_env
    jira = env.source("jira-ops", "jira")
    report = env.run(jira, "jira.json", default_team="Ops")
    assert (report.state, report.imported, report.duplicates, report.rejected) == \
        ("done", 2, 0, 1)
    assert report.rejects == [{"row": 3, "reason": "the field 'summary' is not text"}]
    ops101, ops102 = env.signals(jira)
    assert (ops101.external_id, ops101.kind, ops101.outcome, ops101.team) == \
        ("OPS-101", "jira", "Done", "Platform")
    assert ops102.team == "Ops"  # no component: the import's default team
    assert env.title(ops101) == "Rotate TLS certificate for api.example.com"
    assert ops101.template == template_of("Rotate TLS certificate for api.example.com")
    assert ops101.person_ref == env.pseudonym("5b10ac8d82e05b22cc7d4ef5")
    assert ops102.person_ref == env.pseudonym("Grace.Hopper@example.com")
    assert ops101.import_id == report.import_id

    csv_report = env.run(jira, "jira.csv")
    assert (csv_report.imported, csv_report.rejected, csv_report.file_format) == (2, 1, "csv")

    for kind, files, imported in (("cloudwatch", ("cloudwatch.json", "cloudwatch.csv"), 5),
                                  ("github_actions", ("github_actions.json",
                                                      "github_actions.csv"), 4),
                                  ("logs", ("logs.jsonl", "logs.csv"), 5)):
        source_id = env.source(f"{kind}-1", kind)
        assert sum(env.run(source_id, name).imported for name in files) == imported
        assert {sig.kind for sig in env.signals(source_id)} == {kind}

    with env.ctx.session() as s:
        row = s.get(SignalImport, report.import_id)
        assert (row.state, row.rows_imported, row.rows_rejected, row.file_format) == \
            ("done", 2, 1, "json")
        assert row.rejects == report.rejects and row.finished_at is not None
    [event] = [e for e in env.events(SignalEvents.IMPORTED)
               if e.target_id == str(report.import_id)]
    assert event.details["imported"] == 2 and event.details["rejected"] == 1
    assert env.count(Signal, Signal.source_id == jira) == 4


def test_reimporting_counts_duplicates_and_writes_nothing_twice(signals_env):
    env = signals_env
    logs = env.source("app-logs", "logs")
    first = env.run(logs, "logs.jsonl")
    again = env.run(logs, "logs.jsonl")
    assert (first.imported, first.duplicates) == (3, 0)
    assert (again.imported, again.duplicates, again.rejected) == (0, 3, 3)
    assert env.count(Signal, Signal.source_id == logs) == 3
    # the same rows in another source are that source's own signals
    other = env.source("other-logs", "logs")
    assert env.run(other, "logs.jsonl").imported == 3


@pytest.mark.parametrize(("name", "kind", "status", "error"), [
    ("truncated.json", "cloudwatch", 422, "The JSON ends before it is complete"),
    ("not_json.json", "jira", 422, "The file is not JSON"),
    ("wrong_header.csv", "cloudwatch", 422, "The CSV header lacks the columns"),
])
def test_a_file_that_cannot_be_read_writes_nothing(signals_env, name, kind, status, error):
    env = signals_env
    source_id = env.source("src", kind)
    report = env.run(source_id, name)
    assert report.state == "failed" and report.status_code == status
    assert error in report.error
    assert env.count(Signal) == 0
    with env.ctx.session() as s:
        row = s.get(SignalImport, report.import_id)
        assert (row.state, row.rows_imported) == ("failed", 0)
        assert error in row.error and row.finished_at is not None
    assert [e.target_id for e in env.events(SignalEvents.IMPORT_FAILED)] == \
        [str(report.import_id)]
    assert env.events(SignalEvents.IMPORTED) == []


def test_a_failure_after_many_good_rows_rolls_all_of_them_back(signals_env):
    env = signals_env
    source_id = env.source("big-logs", "logs")
    item = '{{"timestamp": "2024-01-01T00:00:00Z", "message": "event {}"}},\n'
    data = b"[" + "".join(item.format(i) for i in range(3500)).encode() + b'{"timestamp": "2'
    report = env.run(source_id, data=data, filename="cut.json")
    assert report.state == "failed" and "ends before it is complete" in report.error
    assert env.count(Signal) == 0  # 3 batches were inserted, then rolled back


def test_the_size_limit_refuses_the_file_before_anything(signals_env):
    env = signals_env
    source_id = env.source("logs", "logs")
    with pytest.raises(service.FileTooLarge) as raised:
        env.run(source_id, "logs.jsonl", max_bytes=100)
    assert raised.value.status_code == 413
    assert env.count(SignalImport) == 0
    # size unknown up front (standard input): the meter stops it, the import fails
    body = (FIXTURES / "logs.jsonl").read_bytes()
    report = service.run_import(env.ctx, EVERYTHING, source_id=source_id,
                                stream=io.BytesIO(body), filename="stdin", max_bytes=100)
    assert (report.state, report.status_code) == ("failed", 413)
    assert env.count(Signal) == 0


def test_without_a_grant_nothing_is_imported_and_the_refusal_is_counted(signals_env):
    env = signals_env
    source_id = env.source("jira-hr", "jira", granted=False)
    for attempt in (1, 2):
        with pytest.raises(ImportRefused) as refused:
            env.run(source_id, "jira.json")
        assert refused.value.status_code == 403
        assert refused.value.message.startswith(
            "Source jira-hr has no grant: an Owner must grant it on the Sources page before "
            "anything is imported from it.")
        with env.ctx.session() as s:
            assert s.get(Source, source_id).refused_count == attempt
    assert env.count(Signal) == 0 and env.count(SignalImport) == 0
    refusals = env.events(SignalEvents.IMPORT_REFUSED)
    assert [(e.target_id, e.details["reason"]) for e in refusals] == [(str(source_id),
                                                                      "no_grant")] * 2

    with env.ctx.session() as s, s.begin():
        assert consent.do_grant_source(s, source_id, acting_user=env.owner) is True
        assert consent.do_grant_source(s, source_id, acting_user=env.owner) is False
    assert env.run(source_id, "jira.json").imported == 2
    with env.ctx.session() as s, s.begin():
        consent.do_withdraw_source(s, source_id, acting_user=env.owner)
    with pytest.raises(ImportRefused):
        env.run(source_id, "jira.csv")
    with env.ctx.session() as s:
        source = s.get(Source, source_id)
        assert (source.granted, source.refused_count, source.granted_by) == \
            (False, 3, "owner@example.com")
    assert [e.event_type for e in env.events(consent.ConsentEvents.SOURCE_GRANTED)
            + env.events(consent.ConsentEvents.SOURCE_WITHDRAWN)] == [
        "consent.source_granted", "consent.source_withdrawn"]


def test_observations_follow_the_master_switch_and_the_grant(signals_env):
    """The extractor (minimization/observations.py) runs in the import's transaction: nothing
    while the master switch is off, one observation per new signal once it is on."""
    env = signals_env
    source_id = env.source("wf", "github_actions")
    assert env.run(source_id, "github_actions.json").observations == 0
    assert env.count(Observation) == 0
    with env.ctx.session() as s, s.begin():
        assert consent.do_set_extraction(s, enabled=True, acting_user=env.owner) is True
        assert consent.do_set_extraction(s, enabled=True, acting_user=env.owner) is False
    report = env.run(source_id, "github_actions.csv")
    assert report.observations == 2 == env.count(Observation)
    assert [e.details for e in env.events(consent.ConsentEvents.EXTRACTION_ENABLED)] == \
        [{"stakeholder_extraction": True}]
    with env.ctx.session() as s:
        assert s.get(MinimizationSettings, 1).stakeholder_extraction is True


def test_removing_a_source_removes_what_came_from_it(signals_env):
    env = signals_env
    keep, drop = env.source("keep", "logs"), env.source("drop", "jira")
    env.run(keep, "logs.jsonl")
    env.run(drop, "jira.json")
    with env.ctx.session() as s, s.begin():
        counts = service.do_remove_source(s, env.ctx, drop)
    assert counts == {"signals": 2, "observations": 0, "imports": 1}
    assert env.count(Signal) == 3 and env.count(SignalImport) == 1
    [event] = env.events(SignalEvents.SOURCE_REMOVED)
    assert event.details == {"name": "drop", "kind": "jira", **counts}


def test_people_never_reach_the_tenant_database_in_plaintext(signals_env):
    env = signals_env
    for kind, names in (("jira", ("jira.json", "jira.csv")),
                        ("github_actions", ("github_actions.json", "github_actions.csv")),
                        ("logs", ("logs.jsonl", "logs.csv"))):
        source_id = env.source(kind, kind)
        for name in names:
            assert env.run(source_id, name).state == "done"
    with env.ctx.session() as s:
        assert s.scalar(select(func.count()).select_from(Signal).where(
            Signal.person_ref.is_not(None))) == 12
        dump = "\n".join(s.scalars(text(
            "SELECT t::text FROM signals t UNION ALL SELECT t::text FROM signal_imports t "
            "UNION ALL SELECT t::text FROM audit_events t UNION ALL "
            "SELECT t::text FROM sources t")).all()).lower()
    for value in PEOPLE:
        assert value.lower() not in dump, value
        assert value.lower().encode().hex() not in dump, value  # not inside a bytea either
        assert value.encode().hex() not in dump, value


def test_a_large_file_streams_with_progress_in_bounded_memory(signals_env, tmp_path):
    env = signals_env
    source_id = env.source("firehose", "logs")
    path = tmp_path / "big.jsonl"
    lines = 100_000
    write_log_lines(path, lines)
    size = path.stat().st_size
    seen: list[tuple[int, int, int]] = []
    resident: list[int] = []

    def progress(bytes_read: int, bytes_total: int, rows: int) -> None:
        resident.append(rss())
        with env.ctx.session() as s:  # another connection: what a polling page reads
            committed = s.scalar(select(SignalImport.bytes_read).where(
                SignalImport.source_id == source_id))
        seen.append((bytes_read, committed, rows))

    warm_up = tmp_path / "warm-up.jsonl"  # modules, name lists, caches, connections
    write_log_lines(warm_up, service.PROGRESS_ROWS + 1)
    env.run(env.source("warm-up", "logs"), data=warm_up.read_bytes())
    before = rss()
    with path.open("rb") as f:
        report = service.run_import(env.ctx, EVERYTHING, source_id=source_id, stream=f,
                                    filename="big.jsonl", bytes_total=size,
                                    on_progress=progress)
    assert (report.state, report.imported, report.rejected) == ("done", lines, 0)
    assert env.count(Signal, Signal.source_id == source_id) == lines
    during = seen[:-1]  # the last call reports the end, after the commit
    assert len(during) == lines // service.PROGRESS_ROWS
    assert all(read == committed for read, committed, _ in during)  # committed while running
    assert [r for _, _, r in during] == list(range(service.PROGRESS_ROWS, lines + 1,
                                                   service.PROGRESS_ROWS))
    assert 0 < during[0][0] < during[-1][0] <= size
    assert seen[-1][0] == size == report.bytes_read
    # memory: neither the file (12 MB) nor its rows as objects (several times that) are
    # held; after the first batches, what the process holds stays flat
    assert max(resident) - before < size / 2, [(r - before) // 1000 for r in resident]
    assert max(resident) - resident[0] < size / 4, [(r - before) // 1000 for r in resident]
    with env.ctx.session() as s:
        assert s.scalar(select(func.count(func.distinct(Signal.person_ref)))) == 50
