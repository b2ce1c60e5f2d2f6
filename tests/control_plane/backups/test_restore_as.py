"""Restoring a backup as a new tenant: its own id, database, roles and wrapped data keys (the
same data keys, the same KEK), sealed values moved to the new id, a chain verified against the
manifest and continued with ``tenant.restored_from``; the source untouched. And ``--replace
--requested-by``: the named member's request, decided by someone else."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from control_plane.backups.events import BackupEvents
from control_plane.backups.exceptions import BackupKeyUnavailable, BackupRefused
from control_plane.backups.replace import replace_tenant, request_replace
from control_plane.backups.restore_as import restore_as
from control_plane.backups.service import backup_tenant
from control_plane.exceptions import Conflict, InvalidInput
from control_plane.models import Membership, PlatformAuditEvent, Tenant, TenantKey
from tenant_runtime.approvals import service as approvals
from tenant_runtime.approvals.exceptions import SelfApprovalRefused
from tenant_runtime.approvals.gates import ApprovalPending
from tenant_runtime.audit import canonical_content, chain_hash
from tenant_runtime.audit_export import ExportRange, canonical_line, export_tenant_chain
from tenant_runtime.audit_lineage import RESTORED_FROM
from tenant_runtime.audit_retention import prune
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.checkpoints import do_rotate_checkpoint_key, make_checkpoint, public_key
from tenant_runtime.context import Actor
from tenant_runtime.credentials.service import do_add_credential, list_credentials
from tenant_runtime.exceptions import TenantKeyUnavailable
from tests.conftest import with_database
from tests.control_plane.backups.conftest import ACTOR, add_events, audit_rows
from tests.factories import make_user
from tests.ops.test_verify_audit_chain import verifier

TABLES = "SELECT relname FROM pg_stat_user_tables WHERE schemaname = 'public' ORDER BY 1"


def _backup(world):
    return backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR)


def _ctx(world, tenant_id: int, actor: Actor | None = None):
    with world.services.session_factory() as s:
        return world.services.tenant_connections.context(
            s, s.get(Tenant, tenant_id), actor or Actor("system", None, "test"))


def _owner_id(world) -> int:
    with world.services.session_factory() as s:
        return s.scalars(select(Membership.user_id).where(
            Membership.tenant_id == world.tenant_id, Membership.role == "Owner")).one()


def _copy(world, backup_id: str, new_slug: str = "acme-copy", requested_by: int | None = None):
    return restore_as(world.services.session_factory, world.services.tenant_connections,
                      world.destination, "acme", backup_id, new_slug=new_slug,
                      requested_by=requested_by or _owner_id(world))


def _dump(url: str) -> dict[str, list[tuple]]:
    """Every table's rows (sealed columns excepted: they are sealed for another tenant id)."""
    out = {}
    with psycopg.connect(url) as conn:
        for (table,) in conn.execute(TABLES).fetchall():
            cols = [c for (c, t) in conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE "
                "table_name = %s ORDER BY ordinal_position", (table,)).fetchall()
                if t != "bytea"]
            out[table] = conn.execute(
                f'SELECT {", ".join(cols)} FROM "{table}" ORDER BY 1').fetchall()  # noqa: S608
    return out


def test_restore_as_a_new_tenant_round_trip(world, pg_server_url):
    source = _ctx(world, world.tenant_id)
    with source.session() as s, s.begin():
        do_add_credential(s, source, name="openai", provider="openai",
                          secret="sk-test-0123456789", contact_email="ops@example.com")
    done = _backup(world)
    at_backup = _dump(with_database(pg_server_url, f"magistrate_t_{world.tenant_id}"))
    source_rows = audit_rows(world.services, world.tenant_id)
    add_events(world.services, world.tenant_id, 2, "after.backup")

    copy = _copy(world, done.backup_id)
    assert copy.tenant_id not in (world.tenant_id, world.other_id)
    assert copy.database == f"magistrate_t_{copy.tenant_id}" and copy.sealed_moved >= 3
    restored = _dump(with_database(pg_server_url, copy.database))
    # every row of the backup, identical, plus the lineage event and its checkpoint
    lineage_seq = copy.restored_from_seq
    assert lineage_seq == len(source_rows) + 1
    for table, rows in at_backup.items():
        if table == "audit_events":
            assert restored[table][:len(rows)] == rows
            assert [r[5] for r in restored[table][len(rows):]] == ["tenant.restored_from"]
        elif table == "audit_checkpoints":
            assert restored[table][:len(rows)] == rows and len(restored[table]) == len(rows) + 1
        else:
            assert restored[table] == rows, table
    # the copy's chain verifies: restored checkpoints for the source id, the new one for its own
    copy_ctx = _ctx(world, copy.tenant_id)
    with copy_ctx.session() as s:
        assert verify_tenant_chain(s, copy.tenant_id).ok
        # its sealed values open under its own id
        assert [v.contact_email for v in list_credentials(s, copy_ctx)] == ["ops@example.com"]
    lineage = audit_rows(world.services, copy.tenant_id)[lineage_seq - 1]
    assert lineage[1] == "tenant.restored_from"
    assert lineage[2]["source_tenant_id"] == world.tenant_id
    assert lineage[2]["source_slug"] == "acme" and lineage[2]["backup_id"] == done.backup_id
    assert lineage[2]["manifest_head"] == {"seq": source_rows[-1][0],
                                           "chain_hash": source_rows[-1][3]}
    # the new tenant: own row, the requester its only member, the same KEK, the same data key
    with world.services.session_factory() as s:
        new, src = s.get(Tenant, copy.tenant_id), s.get(Tenant, world.tenant_id)
        assert (new.slug, new.state) == ("acme-copy", "active")
        assert (new.key_provider, new.key_ref) == (src.key_provider, src.key_ref)
        members = list(s.execute(select(Membership.user_id, Membership.role).where(
            Membership.tenant_id == copy.tenant_id)))
        assert members == [(_owner_id(world), "Owner")]
        keys = {t: s.scalars(select(TenantKey).where(TenantKey.tenant_id == t)).one()
                for t in (world.tenant_id, copy.tenant_id)}
        events = {e.event_type: e for e in s.scalars(select(PlatformAuditEvent))}
    assert keys[world.tenant_id].wrapped_dek != keys[copy.tenant_id].wrapped_dek
    assert events[BackupEvents.RESTORED_AS].target_id == str(copy.tenant_id)
    # the source is untouched: its rows after the backup are there, its chain verifies
    assert any(r[1] == "after.backup" for r in audit_rows(world.services, world.tenant_id))
    with source.session() as s:
        assert verify_tenant_chain(s, world.tenant_id).ok
        assert [v.contact_email for v in list_credentials(s, source)] == ["ops@example.com"]
    # the copy's chain goes on, and retention keeps the lineage the older checkpoints need
    assert _go_on_and_prune(world, copy.tenant_id) > lineage_seq  # the lineage event is gone
    assert audit_rows(world.services, copy.tenant_id)[0][1] == "audit.pruned"
    with copy_ctx.session() as s:
        assert verify_tenant_chain(s, copy.tenant_id).ok


def _far_future():
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(days=3650)


def _go_on_and_prune(world, tenant_id: int) -> int:
    """Two more events, a checkpoint of the head, then retention as if ten years had passed:
    everything up to that checkpoint is removed. Returns how many events were."""
    add_events(world.services, tenant_id, 2, "in.copy")
    conns = world.services.tenant_connections
    with world.services.session_factory() as cs, conns.owner_context(
            cs, cs.get(Tenant, tenant_id), Actor("system", None, "test")) as owner:
        with owner.session() as s, s.begin():
            make_checkpoint(s, owner, force=True)
        with owner.session() as s, s.begin():
            return prune(s, owner, now=_far_future()).removed


def test_revoked_kek_makes_source_and_copy_unreadable(world, settings):
    done = _backup(world)
    copy = _copy(world, done.backup_id)
    kek = settings.home / "keys" / "test-kek.key"
    kek.rename(kek.with_suffix(".revoked"))
    world.services.tenant_connections.dek_cache.clear()
    for tenant_id in (world.tenant_id, copy.tenant_id):
        ctx = _ctx(world, tenant_id)
        with pytest.raises(TenantKeyUnavailable, match="(?i)key"):
            ctx.sealer.ensure_available()
    # and a copy can no longer be made: the key-unavailable sentence, nothing created
    with pytest.raises(BackupKeyUnavailable, match="Tenant key unavailable"):
        _copy(world, done.backup_id, "acme-two")
    with world.services.session_factory() as s:
        assert s.scalars(select(Tenant).where(Tenant.slug == "acme-two")).first() is None


def test_refusals_name_what_to_fix(world):
    done = _backup(world)
    with pytest.raises(Conflict, match="slug globex already exists"):
        _copy(world, done.backup_id, "globex")
    with pytest.raises(InvalidInput, match="The slug must be 2 to 63 characters"):
        _copy(world, done.backup_id, "Not A Slug!")
    stranger = make_user(world.services.session_factory, "stranger@example.com",
                         is_owner=False)
    with pytest.raises(BackupRefused, match="stranger@example.com is not an active Owner of "
                                            "tenant acme"):
        _copy(world, done.backup_id, requested_by=stranger.id)
    with world.services.session_factory() as s:
        slugs = set(s.scalars(select(Tenant.slug)))
    assert slugs == {"acme", "globex"}


def test_replace_requested_by_a_member_is_decided_by_another_owner(world, pg_server_url):
    done = _backup(world)
    requester = _owner_id(world)
    with pytest.raises(ApprovalPending) as got:
        request_replace(world.services.session_factory, world.services.tenant_connections,
                        "acme", done.backup_id, actor=ACTOR, requested_by=requester)
    request_id = got.value.request_id
    # the request is hers: she cannot approve it herself
    me = _ctx(world, world.tenant_id, Actor("user", str(requester), "owner@example.com",
                                            "Owner"))
    with me.session() as s, s.begin():
        req = approvals.access_request(s, request_id)
        assert (req.requested_by_type, req.requested_by_id) == ("user", str(requester))
    with me.session() as s, s.begin(), pytest.raises(SelfApprovalRefused):
        approvals.decide(s, me, request_id, True, None)
    # a non-member may not ask
    stranger = make_user(world.services.session_factory, "stranger@example.com",
                         is_owner=False)
    with pytest.raises(BackupRefused, match="not an active Owner or Admin of tenant acme"):
        request_replace(world.services.session_factory, world.services.tenant_connections,
                        "acme", done.backup_id, actor=ACTOR, requested_by=stranger.id)
    # another Owner decides; the replacement then runs on it
    other = _ctx(world, world.tenant_id, Actor("user", "999", "second@example.com", "Owner"))
    with other.session() as s, s.begin():
        approvals.decide(s, other, request_id, True, None)
    result = replace_tenant(world.services.session_factory, world.services.tenant_connections,
                            world.destination, "acme", done.backup_id,
                            approval_id=request_id, actor=ACTOR)
    assert result.approval_id == request_id


def test_restore_as_from_the_command_line(world, database_url, redis_url, settings):
    from tests.conftest import TEST_SECRET_KEY
    from tests.control_plane.backups.test_s3_and_cli import run

    env = {"MAGISTRATE_DATABASE_URL": database_url, "MAGISTRATE_REDIS_URL": redis_url,
           "MAGISTRATE_SECRET_KEY": TEST_SECRET_KEY, "MAGISTRATE_HOME": str(settings.home),
           "MAGISTRATE_ENV": "test"}
    backup_id = _backup(world).backup_id
    args = ("restore", "tenant", "acme", "--backup", backup_id, "--as", "acme-cli")
    nobody = run(*args, env=env)
    assert nobody.returncode == 1 and "--as needs --requested-by EMAIL" in nobody.stderr
    made = run(*args, "--requested-by", "owner@example.com", env=env)
    assert made.returncode == 0, made.stderr
    assert "as the new tenant acme-cli" in made.stdout and "Tenant acme was not touched" in \
        made.stdout
    taken = run(*args, "--requested-by", "owner@example.com", env=env)
    assert taken.returncode == 1
    assert taken.stderr.strip() == ("magistrate: A tenant with the slug acme-cli already "
                                    "exists.")
    unknown = run(*args[:-1], "acme-two", "--requested-by", "nobody@example.com", env=env)
    assert unknown.returncode == 1 and "no account has the e-mail nobody@example.com" in \
        unknown.stderr
    asked = run("restore", "tenant", "acme", "--backup", backup_id, "--replace",
                "--requested-by", "owner@example.com", env=env)
    assert asked.returncode == 4, asked.stderr
    request_id = asked.stdout.split("approval request ")[1].split(" was opened")[0]
    with _ctx(world, world.tenant_id).session() as s:
        req = approvals.access_request(s, request_id)
        assert (req.requested_by_type, req.requested_by_name) == ("user", "owner@example.com")
    for result in (nobody, made, taken, unknown, asked):
        assert "Traceback" not in result.stderr


def test_a_copy_killed_mid_way_is_dropped_by_the_next_one(world, pg_server_url):
    from control_plane.models import User
    from control_plane.tenancy.service import add_tenant_row

    done = _backup(world)
    with world.services.session_factory() as s, s.begin():  # what a killed job leaves
        dead = add_tenant_row(s, slug="acme-copy", name="half", key_provider="local",
                              key_ref="test-kek", sealer=world.services.sealer,
                              owner=s.get(User, _owner_id(world)))
        dead_id = dead.id
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "magistrate_t_{dead_id}"')
    copy = _copy(world, done.backup_id)
    assert copy.tenant_id != dead_id
    with world.services.session_factory() as s:
        assert s.get(Tenant, dead_id) is None
        assert s.get(Tenant, copy.tenant_id).state == "active"
    with psycopg.connect(pg_server_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (f"magistrate_t_{dead_id}",)).fetchone()[0] == 0
    # a tenant being created normally (it has its provisioning job) is never taken for one
    from tests.control_plane.tenancy.helpers import create_tenant

    create_tenant(world.services, "owner@example.com", "fresh")
    with pytest.raises(Conflict, match="slug fresh already exists"):
        _copy(world, done.backup_id, "fresh")


# ------------------------------------------------------------------ the copy's export, offline

VERIFIER = Path(__file__).resolve().parents[3] / "ops" / "verify_audit_chain.py"


def _export_and_verify(world, tenant_id: int, tmp_path: Path, name: str,
                       wanted: ExportRange = ExportRange(),  # noqa: B008 - frozen
                       edit: Callable[[list[dict]], None] | None = None) -> tuple[list[dict], str]:
    """The tenant's export as the dashboard hands it out (``edit`` changes its lines first),
    and what ops/verify_audit_chain.py, pinned to the tenant's key, says of it."""
    ctx = _ctx(world, tenant_id)
    data = b"".join(export_tenant_chain(ctx, wanted))
    lines = [json.loads(line) for line in data.splitlines()]
    if edit is not None:
        edit(lines)
        data = b"".join(canonical_line(line) for line in lines)
    with ctx.session() as s:
        pin = public_key(s)
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(data)
    done = subprocess.run([sys.executable, str(VERIFIER), str(path), "--pin-key", str(pin)],
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stdout + done.stderr and done.stderr == ""
    verdict = done.stdout.splitlines()[-1]
    assert done.returncode == (0 if verdict.startswith("OK") else 1)
    try:  # shared out to worker processes, whose shortcut must leave the lineage to be read
        shared = verifier.verify(str(path), {verifier.public_key_id(pin, "pin"): pin},
                                 chunk=1024)[-1]
    except verifier.Bad as exc:
        shared = f"FAIL {exc}"
    assert shared == verdict
    return lines, verdict


def _set_source(tenant_id: int, rehash: bool) -> Callable[[list[dict]], None]:
    """An edit naming another source in ``tenant.restored_from``; with ``rehash``, every later
    link recomputed as a careful forger would (the manifest and statement left: the verifier
    reaches the checkpoints first)."""
    def edit(lines: list[dict]) -> None:
        events = [line for line in lines if line["type"] == "event"]
        at = next(i for i, e in enumerate(events) if e["event_type"] == RESTORED_FROM)
        events[at]["details"]["source_tenant_id"] = tenant_id
        prev = events[at]["prev_hash"]
        for event in events[at:] if rehash else ():
            event["prev_hash"] = prev
            content = canonical_content(**{k: event[k] for k in (
                "seq", "actor_type", "actor_id", "actor_name", "event_type", "target_type",
                "target_id", "details")}, occurred_at=datetime.fromisoformat(
                event["occurred_at"].replace("Z", "+00:00")))
            event["chain_hash"] = prev = chain_hash(content, event["prev_hash"])
    return edit


def test_a_copys_export_verifies_offline_end_to_end(world, tmp_path):
    done = _backup(world)
    copy = _copy(world, done.backup_id)
    lines, verdict = _export_and_verify(world, copy.tenant_id, tmp_path, "copy")
    assert verdict.startswith("OK "), verdict
    # the carried checkpoints name the source, the copy's own name the copy: one rule, both sides
    signed_for = {cp["seq"]: cp["tenant_id"] for cp in lines if cp["type"] == "checkpoint"}
    assert {s for s, t in signed_for.items() if t == world.tenant_id} == {
        s for s in signed_for if s < copy.restored_from_seq} != set()
    assert {t for s, t in signed_for.items() if s >= copy.restored_from_seq} == {copy.tenant_id}
    assert lines[0]["tenant_id"] == copy.tenant_id
    with _ctx(world, copy.tenant_id).session() as s:
        assert verify_tenant_chain(s, copy.tenant_id).ok
    # the source's own export is unchanged: every checkpoint line its own id
    source_lines, verdict = _export_and_verify(world, world.tenant_id, tmp_path, "source")
    assert verdict.startswith("OK ")
    assert {cp["tenant_id"] for cp in source_lines if cp["type"] == "checkpoint"} == {
        world.tenant_id}
    # a range ending below the restoration holds nothing that explains the older checkpoints
    first = min(signed_for)
    _, verdict = _export_and_verify(world, copy.tenant_id, tmp_path, "range",
                                    ExportRange(last_seq=copy.restored_from_seq - 1))
    assert verdict == (f"FAIL checkpoint at seq {first}: for another tenant (tenant_id "
                       f"{world.tenant_id}; this log is tenant {copy.tenant_id})")
    # after retention has pruned past the lineage event, audit.pruned carries it
    assert _go_on_and_prune(world, copy.tenant_id) > copy.restored_from_seq
    lines, verdict = _export_and_verify(world, copy.tenant_id, tmp_path, "pruned")
    assert verdict.startswith("OK "), verdict
    pruned = next(e for e in lines if e["type"] == "event" and e["event_type"] == "audit.pruned")
    assert pruned["details"]["lineage"] == [{"seq": copy.restored_from_seq,
                                             "source_tenant_id": world.tenant_id}]


def test_a_changed_lineage_is_refused_offline(world, tmp_path):
    copy = _copy(world, _backup(world).backup_id)
    seq = copy.restored_from_seq
    _, verdict = _export_and_verify(world, copy.tenant_id, tmp_path, "naive",
                                    edit=_set_source(world.other_id, rehash=False))
    assert verdict == f"FAIL row {seq} (seq {seq}): content changed (chain_hash does not " \
                      "match its content)"
    lines, verdict = _export_and_verify(world, copy.tenant_id, tmp_path, "rewritten",
                                        edit=_set_source(world.other_id, rehash=True))
    first = min(cp["seq"] for cp in lines if cp["type"] == "checkpoint")
    assert verdict == (f"FAIL checkpoint at seq {first}: signed for tenant {world.tenant_id}, "
                       f"but the restoration recorded at seq {seq} says the rows below it come "
                       f"from tenant {world.other_id} (the lineage was changed, or the "
                       "checkpoint is another tenant's)")


def test_a_copy_of_a_tenant_that_rotated_its_key_verifies_offline(world, tmp_path):
    source = _ctx(world, world.tenant_id)
    with source.session() as s, s.begin():
        make_checkpoint(s, source, force=True)
    with source.session() as s, s.begin():
        do_rotate_checkpoint_key(s, source)
    add_events(world.services, world.tenant_id, 2, "after.rotation")
    copy = _copy(world, _backup(world).backup_id)
    copy_ctx = _ctx(world, copy.tenant_id)
    with copy_ctx.session() as s, s.begin():  # and the copy rotates the key it inherited
        do_rotate_checkpoint_key(s, copy_ctx)
    lines, verdict = _export_and_verify(world, copy.tenant_id, tmp_path, "rotated")
    assert verdict.startswith("OK "), verdict
    # each rotation names the tenant that signed it: the source's inherited, the copy's own
    assert [r["tenant_id"] for r in lines if r["type"] == "key_rotation"] == [
        world.tenant_id, copy.tenant_id]
    with copy_ctx.session() as s:
        assert verify_tenant_chain(s, copy.tenant_id).ok

    def relabel(lines: list[dict]) -> None:  # the inherited rotation claimed for the copy
        next(r for r in lines if r["type"] == "key_rotation")["tenant_id"] = copy.tenant_id

    _, verdict = _export_and_verify(world, copy.tenant_id, tmp_path, "relabelled", edit=relabel)
    assert verdict.startswith("FAIL line 2 (key rotation ") and verdict.endswith(
        "signature of the old key invalid")
    # without the restoration in the file, nothing says the source's rotation belongs here
    _, verdict = _export_and_verify(world, copy.tenant_id, tmp_path, "range",
                                    ExportRange(last_seq=copy.restored_from_seq - 1))
    assert verdict.startswith("FAIL line 2 (key rotation ") and verdict.endswith(
        f": for another tenant (tenant_id {world.tenant_id})")
