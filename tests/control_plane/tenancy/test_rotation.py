"""Key rotation: rewrap and re-encryption on real tenant databases, with real local key files
(and the Cloud KMS fake for a customer-side KEK rotation). Sealed bytes are checked in the raw
tenant database, through the tenant's owner role."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys

import psycopg
import pytest
from google.auth.credentials import AnonymousCredentials
from sqlalchemy import func, select

from control_plane.cli.keys import ProgressLine
from control_plane.exceptions import Conflict
from control_plane.keys.gcp import GcpKmsProvider
from control_plane.keys.local import LocalKeyProvider
from control_plane.keys.providers import KeyUnavailable
from control_plane.models import PlatformAuditEvent, Tenant, TenantKey
from control_plane.tenancy.database import libpq_url
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.rotation import (
    FailedRow,
    reencrypt,
    rewrap,
    rotation_lock,
    sealed_tables,
)
from control_plane.tenancy.servers import ensure_primary_server
from control_plane.web.app import build_services
from tenant_runtime.context import Actor
from tenant_runtime.credentials.service import (
    do_add_credential,
    do_delete_credential,
    reveal_secret,
)
from tenant_runtime.sealing import TenantSealer
from tests.conftest import TEST_SECRET_KEY, make_settings
from tests.control_plane.tenancy.conftest import drop_tenant_leftovers
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user
from tests.fakes.gcp_kms import running_fake_gcp_kms

ACTOR = Actor("system", name="rotation test")
TABLE = "provider_credentials"


# ------------------------------------------------------------------------------- helpers


@pytest.fixture
def keys(settings) -> LocalKeyProvider:
    return LocalKeyProvider(settings.home / "keys")


@pytest.fixture
def tenants(services, db, database_url, primary_server, local_kek, keys) -> tuple[int, int]:
    """Two active tenants: acme on the ``test-kek`` key, beta on a key of its own."""
    keys.create_key("beta-kek")
    owner = make_user(db)
    acme = create_tenant(services, owner.email, "acme")
    beta = create_tenant(services, owner.email, "beta", key_ref="beta-kek")
    results = run_pending_jobs(services, database_url)
    assert [r["outcome"] for r in results] == ["succeeded", "succeeded"], results
    return acme, beta


def context(services, tenant_id):
    with services.session_factory() as s:
        return services.tenant_connections.context(s, s.get(Tenant, tenant_id), ACTOR)


def add_credentials(services, tenant_id: int, count: int, *, prefix: str = "cred") -> list[int]:
    ctx = context(services, tenant_id)
    ids = []
    with ctx.session() as s, s.begin():
        for i in range(count):
            email = f"ops{i}@example.com" if i % 2 == 0 else None  # some values are NULL
            row = do_add_credential(s, ctx, name=f"{prefix}-{i}", provider="openai",
                                    secret=f"sk-{prefix}-secret-{i:04d}", contact_email=email)
            ids.append(row.id)
    return ids


def secrets_of(services, tenant_id: int) -> dict[int, str]:
    """Every credential's secret, opened through a fresh context with an empty key cache."""
    services.dek_cache.clear()
    ctx = context(services, tenant_id)
    with ctx.session() as s:
        from tenant_runtime.models import ProviderCredential

        ids = s.scalars(select(ProviderCredential.id).order_by(ProviderCredential.id)).all()
        return {i: reveal_secret(s, ctx, i) for i in ids}


def owner_conn(services, tenant_id: int) -> psycopg.Connection:
    with services.session_factory() as s:
        url = services.tenant_connections.owner_url(s.get(Tenant, tenant_id))
    return psycopg.connect(libpq_url(url), autocommit=True)


def raw_rows(services, tenant_id: int) -> dict[int, tuple[bytes, bytes | None]]:
    with owner_conn(services, tenant_id) as conn:
        rows = conn.execute(f"SELECT id, secret_sealed, contact_email_sealed FROM {TABLE} "  # noqa: S608
                            "ORDER BY id").fetchall()
    return {r[0]: (bytes(r[1]), None if r[2] is None else bytes(r[2])) for r in rows}


def versions_in_db(services, tenant_id: int) -> dict[int, set[int]]:
    return {i: {TenantSealer.version_of(v) for v in vals if v is not None}
            for i, vals in raw_rows(services, tenant_id).items()}


def key_rows(db, tenant_id: int) -> list[tuple[int, str, str, bytes, bool]]:
    with db() as s:
        return [(k.version, k.provider, k.key_ref, k.wrapped_dek, k.retired_at is not None)
                for k in s.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant_id)
                                   .order_by(TenantKey.version))]


def audit_events(db, event_type: str) -> list[dict[str, object]]:
    with db() as s:
        return [e.details for e in s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == event_type).order_by(PlatformAuditEvent.seq))]


def do_rewrap(services, tenant_id: int, **kwargs):
    with services.session_factory() as s, s.begin():
        return rewrap(s, s.get(Tenant, tenant_id), services.key_providers, **kwargs)


def do_reencrypt(services, tenant_id: int, **kwargs):
    return reencrypt(services.session_factory, tenant_id, services.tenant_connections,
                     **kwargs)


# ------------------------------------------------------------------------------- rewrap


def test_rewrap_to_a_new_key_lets_the_old_key_go(services, db, tenants, keys):
    acme, beta = tenants
    add_credentials(services, acme, 3)
    add_credentials(services, beta, 1)
    before = secrets_of(services, acme)
    sealed_before = raw_rows(services, acme)
    [(_, _, _, wrapped_before, _)] = key_rows(db, acme)
    keys.create_key("kek-2")

    report = do_rewrap(services, acme, new_key_ref="kek-2")

    assert [v.version for v in report.versions] == [1] and report.key_ref_changed
    [(version, provider, key_ref, wrapped, retired)] = key_rows(db, acme)
    assert (version, provider, key_ref, retired) == (1, "local", "kek-2", False)
    assert wrapped != wrapped_before
    with db() as s:
        assert s.get(Tenant, acme).key_ref == "kek-2"
    assert raw_rows(services, acme) == sealed_before  # no sealed value had to change
    [event] = audit_events(db, TenantEvents.KEY_ROTATED)
    assert event["key_ref"] == "kek-2" and event["rewrapped"] == 1 and event["key_ref_changed"]

    keys.path("test-kek").unlink()  # the customer deletes the old KEK
    assert secrets_of(services, acme) == before
    # beta kept its own key and data
    assert [k[2] for k in key_rows(db, beta)] == ["beta-kek"]
    assert list(secrets_of(services, beta).values()) == ["sk-cred-secret-0000"]

    again = do_rewrap(services, acme)  # idempotent: a second run wraps the same key again
    assert not again.key_ref_changed and [k[2] for k in key_rows(db, acme)] == ["kek-2"]
    assert secrets_of(services, acme) == before


def test_dry_runs_change_nothing(services, db, tenants, keys):
    acme, _ = tenants
    add_credentials(services, acme, 3)
    keys.create_key("kek-2")
    sealed, wrapped = raw_rows(services, acme), key_rows(db, acme)
    with db() as s:
        events = s.scalar(select(func.count()).select_from(PlatformAuditEvent))

    plan = do_rewrap(services, acme, new_key_ref="kek-2", dry_run=True)
    assert plan.dry_run and plan.key_ref == "kek-2" and plan.key_ref_changed
    progress: list[tuple[int, int]] = []
    report = do_reencrypt(services, acme, dry_run=True, progress=lambda *p: progress.append(p))
    assert (report.from_versions, report.to_version, report.resumed) == ([1], 2, False)
    assert (report.rows_total, report.rows_moved, report.values_moved) == (3, 3, 5)
    assert report.failed == [] and report.retired_versions == [] and progress[-1] == (3, 3)

    assert raw_rows(services, acme) == sealed
    assert key_rows(db, acme) == wrapped
    with db() as s:
        assert s.get(Tenant, acme).key_ref == "test-kek"
        assert s.scalar(select(func.count()).select_from(PlatformAuditEvent)) == events


# ------------------------------------------------------------------------------- reencrypt


def test_reencrypt_moves_every_value_and_retires_the_old_version(services, db, tenants):
    acme, beta = tenants
    add_credentials(services, acme, 5)
    add_credentials(services, beta, 2)
    before = secrets_of(services, acme)
    beta_sealed = raw_rows(services, beta)
    progress: list[tuple[int, int]] = []

    report = do_reencrypt(services, acme, batch_size=2,
                          progress=lambda *p: progress.append(p))

    assert report.finished and report.failed == []
    assert (report.from_versions, report.to_version) == ([1], 2)
    assert (report.rows_total, report.rows_moved, report.values_moved) == (5, 5, 8)
    assert progress == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert set().union(*versions_in_db(services, acme).values()) == {2}
    assert [(v, retired) for v, _, _, _, retired in key_rows(db, acme)] == [(1, True),
                                                                            (2, False)]
    assert report.retired_versions == [1]
    assert secrets_of(services, acme) == before
    assert [e["phase"] for e in audit_events(db, TenantEvents.KEY_REENCRYPTED)] == \
        ["started", "finished"]
    # the other tenant is untouched
    assert raw_rows(services, beta) == beta_sealed
    assert [(v, retired) for v, _, _, _, retired in key_rows(db, beta)] == [(1, False)]
    # new writes use version 2
    new_id = add_credentials(services, acme, 1, prefix="after")[0]
    assert versions_in_db(services, acme)[new_id] == {2}


@pytest.mark.parametrize("crash", ["stop_after_batches", "progress_raises"])
def test_a_crashed_reencryption_resumes_without_a_new_version(services, db, tenants, crash):
    acme, _ = tenants
    add_credentials(services, acme, 5)
    before = secrets_of(services, acme)

    if crash == "stop_after_batches":
        first = do_reencrypt(services, acme, batch_size=2, stop_after_batches=1)
        assert not first.finished and first.rows_moved == 2
    else:
        def die(done: int, total: int) -> None:
            if done >= 2:
                raise KeyboardInterrupt  # the operator's Ctrl-C after the first batch
        with pytest.raises(KeyboardInterrupt):
            do_reencrypt(services, acme, batch_size=2, progress=die)

    # mid-way: two rows at version 2, three at version 1, both versions live and readable
    assert sorted(min(v) for v in versions_in_db(services, acme).values()) == [1, 1, 1, 2, 2]
    assert [(v, retired) for v, _, _, _, retired in key_rows(db, acme)] == [(1, False),
                                                                            (2, False)]
    assert secrets_of(services, acme) == before
    during = add_credentials(services, acme, 1, prefix="during")[0]
    assert versions_in_db(services, acme)[during] == {2}

    second = do_reencrypt(services, acme, batch_size=2)

    assert second.resumed and second.finished and second.to_version == 2
    assert second.rows_moved == 3 and second.failed == []
    assert [(v, retired) for v, _, _, _, retired in key_rows(db, acme)] == [(1, True),
                                                                            (2, False)]
    assert set().union(*versions_in_db(services, acme).values()) == {2}
    assert {k: v for k, v in secrets_of(services, acme).items() if k != during} == before


def test_a_copied_value_is_reported_and_skipped(services, db, tenants):
    acme, _ = tenants
    first, second, third = add_credentials(services, acme, 3)
    with owner_conn(services, acme) as conn:  # a ciphertext copied to another row
        conn.execute(f"UPDATE {TABLE} SET secret_sealed = (SELECT secret_sealed FROM {TABLE} "  # noqa: S608
                     "WHERE id = %s) WHERE id = %s", (first, second))

    report = do_reencrypt(services, acme)

    assert report.finished and report.rows_moved == 2
    assert report.failed == [FailedRow(TABLE, str(second), "secret_sealed: does not open for "
                                       "this row (copied from another row or tenant, or "
                                       "damaged)")]
    versions = versions_in_db(services, acme)
    assert (versions[first], versions[second], versions[third]) == ({2}, {1}, {2})
    # version 1 is still referenced, so it stays live; a rerun continues the same rotation
    assert [(v, retired) for v, _, _, _, retired in key_rows(db, acme)] == [(1, False),
                                                                            (2, False)]
    finished = audit_events(db, TenantEvents.KEY_REENCRYPTED)[-1]
    assert finished["rows_failed"] == 1
    assert finished["failed_rows"] == [{"table": TABLE, "row_key": str(second)}]
    rerun = do_reencrypt(services, acme)
    assert rerun.resumed and rerun.rows_total == 1 and len(rerun.failed) == 1
    assert len(key_rows(db, acme)) == 2

    ctx = context(services, acme)  # the investigation ends with deleting the damaged row
    with ctx.session() as s, s.begin():
        do_delete_credential(s, ctx, second)
    last = do_reencrypt(services, acme)
    assert last.resumed and last.failed == [] and last.retired_versions == [1]


def test_an_unusable_old_key_is_a_clean_error_and_changes_nothing(services, db, tenants,
                                                                   keys):
    acme, _ = tenants
    add_credentials(services, acme, 2)
    keys.create_key("kek-2")
    sealed, wrapped = raw_rows(services, acme), key_rows(db, acme)
    keys.path("test-kek").unlink()

    with pytest.raises(KeyUnavailable, match="key 'test-kek' does not exist"):
        do_rewrap(services, acme, new_key_ref="kek-2")
    with pytest.raises(KeyUnavailable, match="key 'test-kek' does not exist"):
        do_reencrypt(services, acme)

    assert key_rows(db, acme) == wrapped
    assert raw_rows(services, acme) == sealed
    with db() as s:
        assert s.get(Tenant, acme).key_ref == "test-kek"
    assert audit_events(db, TenantEvents.KEY_ROTATED) == []
    assert audit_events(db, TenantEvents.KEY_REENCRYPTED) == []


def test_two_rotations_of_a_tenant_cannot_run_at_once(services, db, tenants):
    acme, beta = tenants
    with rotation_lock(services.session_factory, acme):
        with pytest.raises(Conflict, match="Another key rotation"):
            do_reencrypt(services, acme)
        with pytest.raises(Conflict, match="Another key rotation"):
            do_rewrap(services, acme)
        assert do_reencrypt(services, beta).finished  # another tenant is not blocked
    assert do_rewrap(services, acme).versions  # released afterwards


def test_every_sealed_table_has_a_row_key():
    tables = {st.table.name: [c.name for c in st.columns] for st in sealed_tables()}
    assert tables[TABLE] == ["secret_sealed", "contact_email_sealed"]
    assert "audit_events" not in tables


# ------------------------------------------------------------------------------- KMS


@pytest.fixture
def kms_services(database_url, redis_url, pg_server_url, services, tmp_path):
    """Services whose gcp-kms provider talks to the Cloud KMS fake."""
    with running_fake_gcp_kms() as fake:
        settings = make_settings(home=tmp_path / "kms-home")
        gcp = GcpKmsProvider(endpoint=fake.endpoint, credentials=AnonymousCredentials(),
                             transport="rest")
        svc = build_services(settings, database_url=database_url, redis_url=redis_url,
                             secret_key=TEST_SECRET_KEY, key_providers={"gcp-kms": gcp})
        drop_tenant_leftovers(pg_server_url)
        with svc.session_factory() as s, s.begin():
            ensure_primary_server(s, url=pg_server_url, sealer=svc.sealer)
        yield svc, fake
        svc.close()
        gcp.close()
        drop_tenant_leftovers(pg_server_url)


def test_a_kms_rotation_keeps_the_wrapped_key_valid_and_rewrap_moves_it(kms_services, db,
                                                                         database_url):
    svc, fake = kms_services
    ref = fake.create_key(key="acme")
    owner = make_user(db)
    acme = create_tenant(svc, owner.email, "acme", key_provider="gcp-kms", key_ref=ref)
    assert run_pending_jobs(svc, database_url)[0]["outcome"] == "succeeded"
    add_credentials(svc, acme, 2)
    before = secrets_of(svc, acme)

    def kms_version() -> int:  # the fake's ciphertext names the CryptoKeyVersion it used
        return int(struct.unpack(">4sI", key_rows(db, acme)[0][3][:8])[1])

    assert kms_version() == 1
    fake.rotate_key(ref)  # the customer's scheduled rotation: version 2 becomes primary
    assert secrets_of(svc, acme) == before  # the DEK wrapped under version 1 still opens
    do_rewrap(svc, acme)
    assert kms_version() == 2
    fake._keys[ref].versions[1].enabled = False  # the customer disables the old version
    assert secrets_of(svc, acme) == before
    assert [k[:3] for k in key_rows(db, acme)] == [(1, "gcp-kms", ref)]


# ------------------------------------------------------------------------------- CLI


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_rewrites_on_a_terminal_and_prints_lines_otherwise():
    tty, plain = Tty(), io.StringIO()
    for stream in (tty, plain):
        line = ProgressLine(stream, "re-encrypting")
        line(0, 5)
        line(5, 5)
        line.close()
    assert tty.getvalue() == "\r  re-encrypting 0/5 rows\r  re-encrypting 5/5 rows\n"
    assert plain.getvalue() == "  re-encrypting 0/5 rows\n  re-encrypting 5/5 rows\n"


def cli(settings, database_url, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(MAGISTRATE_DATABASE_URL=database_url, MAGISTRATE_SECRET_KEY=TEST_SECRET_KEY,
               MAGISTRATE_HOME=str(settings.home), MAGISTRATE_ENV="test")
    return subprocess.run([sys.executable, "-m", "control_plane", "keys", "rotate", *args],  # noqa: S603
                          env=env, capture_output=True, text=True, timeout=120)


def test_cli_rotates_end_to_end(services, db, settings, database_url, tenants, keys):
    acme, _ = tenants
    ids = add_credentials(services, acme, 3)
    before = secrets_of(services, acme)
    keys.create_key("kek-2")

    unknown = cli(settings, database_url, "--tenant", "nobody", "--reencrypt")
    assert unknown.returncode == 1
    assert "magistrate: no tenant has the slug or id 'nobody'" in unknown.stderr

    dry = cli(settings, database_url, "--tenant", "acme", "--new-key-ref", "kek-2",
              "--reencrypt", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"dry run: tenant acme (id {acme}): would rewrap 1 data key version(s) under " \
           "local:kek-2" in dry.stdout
    assert "3 row(s) would move, 0 would fail" in dry.stdout
    assert "  checking 3/3 rows" in dry.stderr
    assert [k[2] for k in key_rows(db, acme)] == ["test-kek"]

    done = cli(settings, database_url, "--tenant", str(acme), "--new-key-ref", "kek-2",
               "--reencrypt")
    assert done.returncode == 0, done.stderr
    assert "re-encrypted from version(s) 1 to version 2: 3 row(s), 5 value(s) moved, " \
           "0 failed" in done.stdout
    assert "retired version(s): 1" in done.stdout
    assert "  re-encrypting 3/3 rows" in done.stderr
    assert [(v, ref, retired) for v, _, ref, _, retired in key_rows(db, acme)] == \
        [(1, "kek-2", True), (2, "kek-2", False)]
    keys.path("test-kek").unlink()
    assert secrets_of(services, acme) == before

    with owner_conn(services, acme) as conn:
        conn.execute(f"UPDATE {TABLE} SET secret_sealed = (SELECT secret_sealed FROM {TABLE} "  # noqa: S608
                     "WHERE id = %s) WHERE id = %s", (ids[0], ids[1]))
    failed = cli(settings, database_url, "--tenant", "acme", "--reencrypt")
    assert failed.returncode == 3, failed.stderr
    assert f"  {TABLE}, {ids[1]}: secret_sealed: does not open" in failed.stdout
    assert "1 row(s) could not be moved" in failed.stderr

    keys.path("kek-2").unlink()
    gone = cli(settings, database_url, "--tenant", "acme")
    assert gone.returncode == 1
    assert "magistrate: tenant key unavailable (local: key 'kek-2' does not exist). " \
           "Nothing was changed." in gone.stderr
    assert "Traceback" not in gone.stderr


def test_a_restricted_rotation_waits_for_an_approval(services, db, settings, database_url,
                                                     tenants):
    from dataclasses import replace

    from tenant_runtime.approvals import classes
    from tenant_runtime.approvals import service as approvals
    from tenant_runtime.context import Actor

    acme, _ = tenants
    with services.session_factory() as s:
        ctx = services.tenant_connections.context(
            s, s.get(Tenant, acme), Actor("user", "1", "owner@example.com", "Owner"))
    with ctx.session() as s, s.begin():
        classes.do_add_action_class(s, ctx, classes.ClassInput(name="keys.rotate"))
    asked = cli(settings, database_url, "--tenant", "acme")
    assert asked.returncode == 4, asked.stderr
    request_id = asked.stdout.split("approval request ")[1].split(" was opened")[0]
    assert [k[2] for k in key_rows(db, acme)] == ["test-kek"]  # nothing rewrapped yet
    early = cli(settings, database_url, "--tenant", "acme", "--approval", request_id)
    assert early.returncode == 1 and "Nothing was changed." in early.stderr
    approver = replace(ctx, actor=Actor("user", "2", "approver@example.com", "Approver"))
    with approver.session() as s, s.begin():
        approvals.decide(s, approver, request_id, True, None)
    done = cli(settings, database_url, "--tenant", "acme", "--approval", request_id)
    assert done.returncode == 0, done.stderr
    assert f"approval request {request_id} used" in done.stdout
    again = cli(settings, database_url, "--tenant", "acme", "--approval", request_id)
    assert again.returncode == 1 and "Nothing was changed." in again.stderr
