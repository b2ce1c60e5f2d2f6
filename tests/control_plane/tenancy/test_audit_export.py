"""Audit export over HTTP (session and bearer key), from the shell, and from the tenant
database's checkpoint tables; every export is checked with the offline verifier itself.

Range validation answers 422 with a sentence, another tenant's id 404, a Viewer 403; a 12,000
event log streams in chunks without being held in memory."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tracemalloc
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import insert, select

from control_plane.cli import build_parser
from control_plane.keys.local import LocalKeyProvider
from control_plane.models import Membership, PlatformAuditEvent, Tenant, User
from control_plane.tenancy import api_keys, audit_routes
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.service import access_tenant
from control_plane.web.app import build_app
from tenant_runtime import audit
from tenant_runtime.audit_export import ExportRange, export_lines, export_tenant_chain
from tenant_runtime.checkpoints import StatementSigner
from tenant_runtime.context import Actor
from tenant_runtime.models import AuditEvent
from tests.conftest import TEST_SECRET_KEY
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user, sign_in

ROOT = Path(__file__).resolve().parents[3]
EVENTS = 25
# the first export checkpoints the head, which makes the tenant's checkpoint key: its creation
# is one more event of the chain
EXPORTED = EVENTS + 1


def load_verifier():
    spec = importlib.util.spec_from_file_location("verify_audit_chain",
                                                  ROOT / "ops" / "verify_audit_chain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verifier = load_verifier()


def verify(tmp_path: Path, body: bytes, *args: str) -> tuple[int, str]:
    path = tmp_path / "export.jsonl"
    path.write_bytes(body)
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        code = verifier.main([str(path), *args])
    return code, out.getvalue()


def mounted(app) -> bool:
    return any(getattr(r, "path", "") == "/api/audit/export" for r in app.routes)


@pytest.fixture
def app_client(client):
    assert mounted(client.app)
    return client


def context(services, tenant_id: int):
    with services.session_factory() as s:
        return services.tenant_connections.context(s, s.get(Tenant, tenant_id),
                                                   Actor("system"))


def add_member(db, tenant_id: int, email: str, role: str):
    user = make_user(db, email, is_owner=False)
    with db() as s, s.begin():
        s.add(Membership(user_id=user.id, tenant_id=tenant_id, role=role))
    return user


@pytest.fixture
def tenants(services, db, database_url, primary_server, local_kek):
    acme_owner = make_user(db, "owner@acme.example")
    globex_owner = make_user(db, "owner@globex.example")
    acme = create_tenant(services, acme_owner.email, "acme")
    globex = create_tenant(services, globex_owner.email, "globex")
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == [
        "succeeded", "succeeded"]
    for tenant_id, count in ((acme, EVENTS), (globex, 3)):
        ctx = context(services, tenant_id)
        for i in range(count):
            with ctx.session() as s, s.begin():
                audit.record(s, "test.event", actor=Actor("user", "1", "someone"),
                             target_type="thing", target_id=i, details={"i": i})
    return {"acme": acme, "globex": globex, "acme_owner": acme_owner,
            "globex_owner": globex_owner}


def exported_events(db) -> list[PlatformAuditEvent]:
    with db() as s:
        return list(s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == TenantEvents.AUDIT_EXPORTED)
            .order_by(PlatformAuditEvent.seq)))


def bearer_key(services, tenant_id: int, owner_id: int) -> str:
    with services.session_factory() as s, s.begin():
        user = s.get(User, owner_id)
        _, key = api_keys.do_create_api_key(s, access_tenant(s, tenant_id, user=user),
                                            name="auditor", acting_user=user,
                                            scopes=["audit:export"])
    return key


# ------------------------------------------------------------------------------- HTTP


def test_owner_and_compliance_export_from_the_api_and_the_dashboard(app_client, db, tenants,
                                                                     tmp_path):
    client, acme = app_client, tenants["acme"]
    sign_in(client, tenants["acme_owner"].email)
    response = client.get(f"/api/audit/export?tenant={acme}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="audit-acme-')
    assert disposition.endswith('.jsonl"') and response.headers["cache-control"] == "no-store"
    public = json.loads(response.content.splitlines()[0])["public_keys"][0]["public_key"]
    code, output = verify(tmp_path, response.content, "--pin-key", public)
    assert code == 0, output
    assert output.splitlines()[-1].startswith(f"OK {EXPORTED} rows, head ")
    assert "had reached seq 26; the file holds everything it should" in output
    header = json.loads(response.content.splitlines()[0])
    assert header["tenant_id"] == acme and header["tenant"] == "acme"

    page = client.get(f"/tenants/{acme}/audit/export?first_seq=3&last_seq=5")
    assert page.status_code == 200, page.text
    rows = [json.loads(line) for line in page.content.splitlines()]
    assert [r["seq"] for r in rows if r["type"] == "event"] == [3, 4, 5]
    code, output = verify(tmp_path, page.content)
    assert code == 0 and "starts at seq 3 from its prev_hash" in output, output

    by_date = client.get(f"/tenants/{acme}/audit/export",
                         params={"since": (datetime.now(UTC) + timedelta(days=1)).isoformat()})
    assert by_date.status_code == 200
    code, output = verify(tmp_path, by_date.content)
    assert code == 0 and "OK 0 rows, head none" in output, output
    since_ever = client.get(f"/tenants/{acme}/audit/export?since=0001-01-01")
    code, output = verify(tmp_path, since_ever.content)
    assert code == 0 and f"OK {EXPORTED} rows" in output and "from genesis" in output, output

    compliance = add_member(db, acme, "compliance@acme.example", "Compliance")
    client.cookies.clear()
    sign_in(client, compliance.email)
    assert client.get(f"/api/audit/export?tenant={acme}").status_code == 200

    recorded = exported_events(db)
    assert [e.details["via"] for e in recorded] == ["api", *["dashboard"] * 3, "api"]
    assert recorded[1].details["range"] == {"first_seq": 3, "last_seq": 5, "since": None,
                                           "until": None}
    assert recorded[0].target_id == str(acme) and recorded[0].actor_name == "owner@acme.example"
    assert recorded[4].actor_name == "compliance@acme.example"


def test_a_tenant_api_key_exports_its_own_tenant_only(app_client, services, db, tenants,
                                                      tmp_path):
    client, acme, globex = app_client, tenants["acme"], tenants["globex"]
    key = bearer_key(services, acme, tenants["acme_owner"].id)
    auth = {"Authorization": f"Bearer {key}"}
    response = client.get("/api/audit/export?last_seq=10", headers=auth)
    assert response.status_code == 200, response.text
    code, output = verify(tmp_path, response.content)
    assert code == 0 and output.splitlines()[-1].startswith("OK 10 rows"), output
    assert client.get(f"/api/audit/export?tenant={acme}", headers=auth).status_code == 200
    # the same reader of the key headers as the edge's: x-api-key works too
    assert client.get("/api/audit/export?last_seq=1",
                      headers={"x-api-key": key}).status_code == 200
    other = client.get(f"/api/audit/export?tenant={globex}", headers=auth)
    assert other.status_code == 404 and other.json()["error"] == "No such tenant."
    assert client.get("/api/audit/export", headers={
        "Authorization": "Bearer mg_nope_nope"}).status_code == 401
    (first, *_) = exported_events(db)
    assert first.actor_type == "api_key" and first.actor_name == "auditor"
    assert first.details == {"range": {"first_seq": None, "last_seq": 10, "since": None,
                                       "until": None}, "via": "api"}


BAD_RANGES = [
    ("first_seq=0", "first_seq must be a whole number of at least 1."),
    ("first_seq=abc", "first_seq must be a whole number of at least 1."),
    ("last_seq=-3", "last_seq must be a whole number of at least 1."),
    ("last_seq=99999999999999999999", "last_seq must be a whole number of at least 1."),
    ("first_seq=9&last_seq=2", "last_seq must not be smaller than first_seq."),
    ("since=yesterday", "since must be a date (2025-01-31) or a date and time"),
    ("until=0001-01-01T00:00:00%2B05:00", "until must be a date (2025-01-31)"),
    ("since=2025-02-01&until=2025-01-01", "until must be later than since."),
    ("first_seq=1&since=2025-01-01", "Give a range by seq (first_seq, last_seq) or by date"),
    ("first=1", "Unknown parameter 'first'"),
    ("first_seq=1&first_seq=2", "Give each parameter once."),
]


def test_a_bad_range_answers_422_with_a_sentence(app_client, db, tenants):
    client, acme = app_client, tenants["acme"]
    sign_in(client, tenants["acme_owner"].email)
    for query, message in BAD_RANGES:
        response = client.get(f"/api/audit/export?tenant={acme}&{query}")
        assert response.status_code == 422, query
        assert response.json()["error"].startswith(message), (query, response.json())
        page = client.get(f"/tenants/{acme}/audit/export?{query}")
        assert page.status_code == 422, query
        assert message.split("(")[0].strip() in unescape(page.text), query
    assert exported_events(db) == []  # refused requests are not exports


def test_other_tenants_missing_ones_and_roles(app_client, db, tenants):
    client, acme, globex = app_client, tenants["acme"], tenants["globex"]
    assert client.get(f"/api/audit/export?tenant={acme}").status_code == 401
    signed_out = client.get(f"/tenants/{acme}/audit/export", follow_redirects=False)
    assert signed_out.status_code == 303 and "/sign-in" in signed_out.headers["location"]
    sign_in(client, tenants["acme_owner"].email)
    for tenant_id in (globex, 999_999):
        api = client.get(f"/api/audit/export?tenant={tenant_id}")
        assert api.status_code == 404 and api.json()["error"] == "No such tenant."
        assert client.get(f"/tenants/{tenant_id}/audit/export").status_code == 404
    missing = client.get("/api/audit/export")
    assert missing.status_code == 422 and "?tenant=<id>" in missing.json()["error"]
    for role in ("Viewer", "Admin"):
        member = add_member(db, acme, f"{role.lower()}@acme.example", role)
        client.cookies.clear()
        sign_in(client, member.email)
        api = client.get(f"/api/audit/export?tenant={acme}")
        assert api.status_code == 403 and "Owner or Compliance" in api.json()["error"]
        assert client.get(f"/tenants/{acme}/audit/export").status_code == 403
    assert len(exported_events(db)) == 0


def test_the_app_mounts_the_audit_routes(services):
    assert mounted(build_app(services)), (
        "add *audit_routes.routes to the routes of control_plane/web/app.py")


# ------------------------------------------------------------------------------- a large log


def append_events(ctx, count: int) -> None:
    """``count`` more events on the chain, in one statement (what record() would write)."""
    with ctx.session() as s, s.begin():
        head = s.execute(select(AuditEvent.seq, AuditEvent.chain_hash)
                         .order_by(AuditEvent.seq.desc()).limit(1)).first()
        seq, prev = head if head else (0, audit.GENESIS_HASH)
        start, rows = datetime.now(UTC), []
        for n in range(seq + 1, seq + count + 1):
            fields = {"seq": n, "occurred_at": start + timedelta(microseconds=n),
                      "actor_type": "system", "actor_id": None, "actor_name": "bulk",
                      "event_type": "test.bulk", "target_type": "row", "target_id": str(n),
                      "details": {"n": n, "padding": "x" * 200}}
            digest = audit.chain_hash(audit.canonical_content(**fields), prev)
            rows.append({**fields, "prev_hash": prev, "chain_hash": digest})
            prev = digest
        s.execute(insert(AuditEvent), rows)


async def asgi_get(app, path: str, query: str, headers: dict[str, str]):
    """One request straight through the ASGI app: the status and each body message."""
    messages, asked = [], False

    async def receive():
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "root_path": "", "client": ("127.0.0.1", 5000),
             "server": ("testserver", 80),
             "headers": [(b"host", b"testserver"),
                         *[(k.lower().encode(), v.encode()) for k, v in headers.items()]]}
    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    return start["status"], [m["body"] for m in messages if m["type"] == "http.response.body"]


def test_a_large_log_streams_in_chunks(app_client, services, tenants, tmp_path):
    acme = tenants["acme"]
    ctx = context(services, acme)
    append_events(ctx, 12_000)
    total = EXPORTED + 12_000
    key = bearer_key(services, acme, tenants["acme_owner"].id)
    status, chunks = asyncio.run(asgi_get(app_client.app, "/api/audit/export", "",
                                          {"Authorization": f"Bearer {key}"}))
    assert status == 200
    body = b"".join(chunks)
    assert len([c for c in chunks if c]) > len(body) // (2 * audit_routes.CHUNK_BYTES)
    assert max(len(c) for c in chunks) < audit_routes.CHUNK_BYTES + 4096
    code, output = verify(tmp_path, body)
    assert code == 0 and output.splitlines()[-1].startswith(f"OK {total} rows"), output

    # memory holds one batch of rows, not the log
    lines = export_tenant_chain(ctx, ExportRange(), batch_size=500)
    size = len(next(lines))
    tracemalloc.start()
    try:
        for line in lines:
            size += len(line)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size == len(body)
    assert peak < size / 4, (peak, size)


# ------------------------------------------------------------------------------- checkpoints


def test_checkpoints_and_keys_of_the_tenant_database_are_exported(services, tenants, tmp_path):
    """Rows written straight into the checkpoint tables (as the spec defines them, not through
    the application's signer); without the tables, an export has no checkpoints and no keys."""
    acme = tenants["acme"]
    with services.session_factory() as s:
        owner_url = services.tenant_connections.owner_url(s.get(Tenant, acme))
    ctx = context(services, acme)
    with ctx.session() as s:
        hashes = dict(s.execute(select(AuditEvent.seq, AuditEvent.chain_hash)).all())
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"db checkpoint key").digest())
    public = base64.b64encode(key.public_key().public_bytes_raw()).decode()
    key_id = hashlib.sha256(key.public_key().public_bytes_raw()).hexdigest()[:16]
    created_at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    valid_from = datetime(2026, 1, 1, tzinfo=UTC)
    with psycopg.connect(owner_url) as conn:
        conn.execute("INSERT INTO checkpoint_keys (key_id, public_key, private_key_sealed, "
                     "valid_from) VALUES (%s, %s, %s, %s)",
                     (key_id, public, b"not used by the export", valid_from))
        for seq in (4, 10, EVENTS):
            signed = json.dumps({"tenant_id": acme, "seq": seq, "chain_hash": hashes[seq],
                                 "created_at": created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
                                sort_keys=True, separators=(",", ":")).encode()
            conn.execute("INSERT INTO audit_checkpoints (seq, chain_hash, created_at, "
                         "signature, key_id) VALUES (%s, %s, %s, %s, %s)",
                         (seq, hashes[seq], created_at,
                          base64.b64encode(key.sign(signed)).decode(), key_id))
    # a range gets the checkpoints from the seq just before its first row to its last row
    for range_, expected in (({}, [4, 10, EVENTS]), ({"first_seq": 11}, [10, EVENTS]),
                             ({"first_seq": 5, "last_seq": 9}, [4]),
                             ({"first_seq": 12, "last_seq": 20}, [])):
        with ctx.session() as s:  # the statement signed with the test key, as the spec says
            body = b"".join(export_lines(s, tenant_id=acme, slug="acme", **range_,
                                         signer=lambda _s, _m: StatementSigner(key_id, key)))
        lines = [json.loads(line) for line in body.splitlines()]
        assert lines[0]["public_keys"] == [{"key_id": key_id, "public_key": public,
                                            "valid_from": "2026-01-01T00:00:00.000000Z",
                                            "retired_at": None}]
        assert [o["seq"] for o in lines if o["type"] == "checkpoint"] == expected, range_
        assert lines[-2]["checkpoints"] == lines[-1]["checkpoints"] == len(expected)
        assert lines[-1]["type"] == "statement" and lines[-1]["key_id"] == key_id
        code, output = verify(tmp_path, body, "--pin-key", public)
        assert code == 0, (range_, output)
        if expected:
            assert (f"checkpoints: {len(expected)} valid, up to seq {expected[-1]}, signed by "
                    "the pinned key") in output

    with psycopg.connect(owner_url) as conn:
        conn.execute("DROP TABLE key_notices, checkpoint_key_rotations, audit_checkpoints, "
                     "checkpoint_keys")
    with ctx.session() as s:
        body = b"".join(export_lines(s, tenant_id=acme, slug="acme"))
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines[0]["public_keys"] == [] and lines[-1]["checkpoints"] == 0
    assert lines[-1]["type"] == "manifest"  # no key, so nothing signs a statement
    assert verify(tmp_path, body)[0] == 0


def test_the_applications_own_checkpoints_and_pruning_verify(services, tenants, tmp_path):
    """Checkpoints made by the application (its sealed tenant key) verify with the tenant's
    pinned public key; after retention pruned up to one, the whole-log export starts just
    after it and still verifies, anchored on it."""
    from tenant_runtime import checkpoints

    acme = tenants["acme"]
    ctx = context(services, acme)
    with ctx.session() as s, s.begin():
        first = checkpoints.make_checkpoint(s, ctx, force=True)
    for i in range(5):
        with ctx.session() as s, s.begin():
            audit.record(s, "test.later", actor=Actor("system"), details={"i": i})
    with ctx.session() as s, s.begin():
        checkpoints.make_checkpoint(s, ctx, force=True)
        public = checkpoints.public_key(s)
    body = b"".join(export_tenant_chain(ctx, ExportRange()))
    code, output = verify(tmp_path, body, "--pin-key", public)
    assert code == 0, output
    assert "checkpoints: 2 valid" in output and "signed by the pinned key" in output

    with services.session_factory() as s:  # retention runs as the tenant's owner role
        owner_url = services.tenant_connections.owner_url(s.get(Tenant, acme))
    with psycopg.connect(owner_url) as conn:
        removed = conn.execute("SELECT prune_audit_events(%s)", (first.seq,)).fetchone()[0]
    assert removed == first.seq
    body = b"".join(export_tenant_chain(ctx, ExportRange()))
    lines = [json.loads(line) for line in body.splitlines()]
    assert [o["seq"] for o in lines if o["type"] == "checkpoint"][0] == first.seq
    code, output = verify(tmp_path, body, "--pin-key", public)
    assert code == 0, output
    assert output.startswith(f"chain: starts at seq {first.seq + 1}, after the checkpoint at "
                             f"seq {first.seq}")


# ------------------------------------------------------------------------------- the shell


def magistrate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "control_plane", *args], env=full,
                          capture_output=True, text=True, timeout=120)


def test_export_and_verify_from_the_shell(services, db, database_url, redis_url, tenants,
                                          settings, tmp_path):
    registered = None
    with redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        registered = build_parser().parse_args(["audit", "verify", "x.jsonl"]).func
    assert registered, ("control_plane/cli/root.py's build_parser must register the commands of "
                        "control_plane/cli/audit.py")
    env = {"MAGISTRATE_DATABASE_URL": database_url, "MAGISTRATE_REDIS_URL": redis_url,
           "MAGISTRATE_SECRET_KEY": TEST_SECRET_KEY, "MAGISTRATE_HOME": str(settings.home)}
    out = tmp_path / "acme.jsonl"
    done = magistrate("audit", "export", "--tenant", "acme", "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    head = json.loads(out.read_bytes().splitlines()[-1])["head_hash"]
    assert done.stdout.splitlines()[-1] == f"{EXPORTED} rows, head {head}"
    assert "signed by key " in done.stdout and "at head seq 26" in done.stdout
    assert out.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "acme.jsonl.partial").exists()
    checked = magistrate("audit", "verify", str(out), env=env)
    assert checked.returncode == 0 and checked.stdout.splitlines()[-1] == (
        f"OK {EXPORTED} rows, head {head}")

    ranged = magistrate("audit", "export", "--tenant", str(tenants["acme"]), "--out",
                        str(out), "--first-seq", "5", "--last-seq", "7", env=env)
    assert ranged.returncode == 0 and "3 rows (seq 5-7)" in ranged.stdout, ranged.stderr
    lines = out.read_bytes().splitlines()
    lines[2] = lines[2].replace(b'"i":5', b'"i":6')
    out.write_bytes(b"\n".join(lines) + b"\n")
    tampered = magistrate("audit", "verify", str(out), env=env)
    assert tampered.returncode == 1
    assert tampered.stdout.strip() == ("FAIL row 2 (seq 6): content changed (chain_hash does "
                                       "not match its content)")

    for args, message in (
        (["--tenant", "nobody"], "no tenant has the slug or id 'nobody'"),
        (["--tenant", "acme", "--first-seq", "0"], "--first-seq must be a whole number"),
        (["--tenant", "acme", "--since", "2025-02-01", "--until", "2025-01-01"],
         "--until must be later than --since"),
        (["--tenant", "acme", "--out", str(tmp_path / "no" / "such" / "dir.jsonl")],
         "cannot write"),
    ):
        argv = ["audit", "export", *args] + ([] if "--out" in args else ["--out", str(out)])
        failed = magistrate(*argv, env=env)
        assert failed.returncode == 1, (args, failed.stdout)
        assert message in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
    missing = magistrate("audit", "verify", str(tmp_path / "missing.jsonl"), env=env)
    assert missing.returncode == 2 and "No such file" in missing.stderr
    with db() as s:
        via = [e.details["via"] for e in s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == TenantEvents.AUDIT_EXPORTED))]
    assert via == ["cli", "cli"]  # the refused ones were refused before the request


def test_an_export_fails_closed_when_the_tenant_key_is_unavailable(app_client, services,
                                                                    tenants, local_kek):
    """The statement is signed with the tenant's checkpoint key, sealed under its data key: when
    the customer revokes the key, the export answers 503 with the sentence, never an unsigned
    file that a verifier would refuse, nor a 500."""
    LocalKeyProvider(services.settings.home / "keys").path(local_kek).unlink()
    services.dek_cache.clear()
    key = bearer_key(services, tenants["acme"], tenants["acme_owner"].id)
    response = app_client.get("/api/audit/export", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 503, response.text[:300]
    assert "tenant key unavailable" in response.text.lower()
    assert b'"type":"header"' not in response.content
