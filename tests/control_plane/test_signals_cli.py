"""``magistrate signals import`` through the CLI's entry function: a file (and standard input)
streams into a granted source with progress on standard error and the JSON report on standard
output; a refusal, an unreadable file, an unknown tenant or source exit 1 with a sentence."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from control_plane.models import Tenant
from tenant_runtime.context import Actor
from tenant_runtime.minimization import consent
from tenant_runtime.signals import service
from tenant_runtime.signals.models import Signal, Source
from tests.conftest import TEST_SECRET_KEY, run_cli
from tests.control_plane.tenancy.conftest import (  # noqa: F401 - fixtures
    local_kek,
    primary_server,
    settings,
)
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user

FIXTURES = Path(__file__).parents[1] / "tenant_runtime" / "signals" / "fixtures"
OWNER = Actor("user", "1", "owner@example.com", "Owner")


@pytest.fixture
def shell(services, db, database_url, redis_url, settings, primary_server,  # noqa: F811
          local_kek, monkeypatch):  # noqa: F811
    owner = make_user(db, "owner@example.com")
    acme = create_tenant(services, owner.email, "acme")
    create_tenant(services, owner.email, "globex")
    assert {r["outcome"] for r in run_pending_jobs(services, database_url)} == {"succeeded"}
    for name, value in {"MAGISTRATE_DATABASE_URL": database_url,
                        "MAGISTRATE_REDIS_URL": redis_url,
                        "MAGISTRATE_SECRET_KEY": TEST_SECRET_KEY,
                        "MAGISTRATE_HOME": str(settings.home)}.items():
        monkeypatch.setenv(name, value)
    with services.session_factory() as s:
        ctx = services.tenant_connections.context(s, s.get(Tenant, acme), OWNER)
    with ctx.session() as s, s.begin():
        granted = service.do_add_source(s, ctx, name="ops-logs", kind="logs").id
        consent.do_grant_source(s, granted, acting_user=OWNER)
        service.do_add_source(s, ctx, name="hr-jira", kind="jira")
    return ctx


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = run_cli(["signals", "import", *args])
    out, err = capsys.readouterr()
    return code, out, err


def signals(ctx) -> int:
    with ctx.session() as s:
        return s.scalar(select(func.count()).select_from(Signal))


def test_import_a_file_and_standard_input(shell, capsys, tmp_path, monkeypatch):
    path = tmp_path / "app.jsonl"
    lines = 12_000
    with path.open("w") as f:
        for i in range(lines):
            f.write(json.dumps({"timestamp": 1_700_000_000 + i, "message": f"job {i} done",
                                "user": f"u{i % 9}"}) + "\n")
        f.write("not json\n")
    code, out, err = run(capsys, "--tenant", "acme", "--source", "ops-logs", "--team",
                         "Ops", str(path))
    assert code == 0, err
    report = json.loads(out)
    assert (report["state"], report["imported"], report["duplicates"], report["rejected"]) \
        == ("done", lines, 0, 1)
    assert report["rejects"] == [{"row": lines + 1, "reason": "the line is not valid JSON"}]
    assert report["format"] == "jsonl" and report["file"] == "app.jsonl"
    size = path.stat().st_size
    progress = [line for line in err.splitlines() if line.startswith("read ")]
    assert progress[-1] == f"read {size / 1e6:.1f} MB of {size / 1e6:.1f} MB (100%), " \
                           f"{lines + 1:,} rows"
    assert f"imported {lines}, duplicates 0, rejected 1 into source ops-logs" in err
    with shell.session() as s:
        assert s.scalar(select(func.count(func.distinct(Signal.team)))) == 1
        assert s.scalar(select(Signal.team).limit(1)) == "Ops"

    data = (FIXTURES / "logs.csv").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, err = run(capsys, "--tenant", "acme", "--source", "ops-logs", "--format",
                         "csv", "-")
    assert code == 0, err
    report = json.loads(out)
    assert (report["imported"], report["rejected"], report["file"]) == (2, 1, "stdin")
    assert signals(shell) == lines + 2


def test_refusals_and_failures_exit_1_with_a_sentence(shell, capsys, tmp_path):
    jira = str(FIXTURES / "jira.json")
    code, out, err = run(capsys, "--tenant", "acme", "--source", "hr-jira", jira)
    assert code == 1 and out == ""
    assert "magistrate: Source hr-jira has no grant: an Owner must grant it on the Sources " \
           "page before anything is imported from it." in err
    with shell.session() as s:
        assert s.scalar(select(Source.refused_count).where(Source.name == "hr-jira")) == 1

    code, out, err = run(capsys, "--tenant", "acme", "--source", "ops-logs",
                         str(FIXTURES / "truncated.json"))
    assert code == 1
    assert json.loads(out)["state"] == "failed"
    assert "the import of truncated.json failed: The JSON ends before it is complete" in err
    assert "Traceback" not in err

    for args, message in (
        (["--tenant", "nobody", "--source", "ops-logs", jira],
         "no tenant has the slug or id 'nobody'"),
        (["--tenant", "acme", "--source", "nothing", jira], "There is no source named "
                                                            "'nothing'."),
        (["--tenant", "globex", "--source", "ops-logs", jira], "There is no source named"),
        (["--tenant", "acme", "--source", "ops-logs", str(tmp_path / "missing.json")],
         "cannot read"),
    ):
        code, out, err = run(capsys, *args)
        assert code == 1 and message in err and "Traceback" not in err, (args, err)
    assert signals(shell) == 0


def test_an_import_killed_mid_file_ends_failed_and_a_live_one_is_left_alone(
        shell, tmp_path):
    """``kill -9`` of ``magistrate signals import`` mid-file: its row transaction dies with it
    (no signal written) and its import row stays ``running`` until the worker's sweep, which
    marks it failed; the sweep leaves an import whose process is alive alone."""
    import os
    import signal
    import subprocess
    import time
    from datetime import UTC, datetime, timedelta

    from tenant_runtime.models import AuditEvent
    from tenant_runtime.signals.models import SignalImport

    path = tmp_path / "big.jsonl"
    with path.open("w") as f:
        for i in range(300_000):
            f.write(json.dumps({"timestamp": 1_700_000_000 + i, "level": "INFO",
                                "service": "api", "user": f"user{i % 50}",
                                "message": f"request {i} served"}) + "\n")
    env = {k: v for k, v in os.environ.items()}
    importer = subprocess.Popen([sys.executable, "-m", "control_plane", "signals", "import",
                                 "--tenant", "acme", "--source", "ops-logs", str(path)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    later = datetime.now(UTC) + timedelta(hours=1)  # every row is old enough to be judged
    try:
        deadline = time.monotonic() + 120
        while True:  # mid-file: some progress committed, the rows' transaction still open
            with shell.session() as s:
                read = s.scalar(select(SignalImport.bytes_read))
            if read:
                break
            assert importer.poll() is None, "the import ended before it could be stopped"
            assert time.monotonic() < deadline, "the import made no progress"
            time.sleep(0.05)
        with shell.session() as s, s.begin():  # alive: its lock is held, it is left alone
            assert service.fail_abandoned_imports(s, shell, now=later) == 0
    finally:
        importer.send_signal(signal.SIGKILL)
        importer.wait(timeout=30)
    with shell.session() as s:
        imp = s.scalars(select(SignalImport)).one()
        assert imp.state == "running" and 0 < imp.bytes_read < path.stat().st_size
    assert signals(shell) == 0  # nothing of the file was written
    deadline = time.monotonic() + 30
    while True:  # Postgres notices the dead connection and releases its lock
        with shell.session() as s, s.begin():
            if service.fail_abandoned_imports(s, shell, now=later) == 1:
                break
        assert time.monotonic() < deadline, "the dead import's lock was never released"
        time.sleep(0.1)
    with shell.session() as s:
        imp = s.scalars(select(SignalImport)).one()
        assert imp.state == "failed" and "Import the file again" in imp.error
        assert imp.finished_at is not None
        [event] = s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == service.SignalEvents.IMPORT_FAILED)).all()
        assert event.details["reason"] == "abandoned"
        assert event.target_id == str(imp.id)
    with shell.session() as s, s.begin():
        assert service.fail_abandoned_imports(s, shell, now=later) == 0  # judged once
