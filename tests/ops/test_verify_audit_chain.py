"""The offline verifier (ops/verify_audit_chain.py) against real exports.

Two provisioned tenants record events through ``tenant_runtime.audit.record``; their chains are
exported by ``export_lines`` and given checkpoints signed with test Ed25519 keys (per the
checkpoint spec of ops/AUDIT_FORMAT.md). Then a mutation corpus: each field of a row changed,
rows deleted, swapped and inserted, the tail dropped, a consistent rewrite from row k, another
tenant's checkpoint. Each must be named at the right row with the right reason, by the script
run as a compliance team runs it (a subprocess). Every truncation and random bit flips of a
small export are rejected without a traceback (in-process, for speed).

Mutations re-seal the manifest (counts, head, SHA-256) like a careful forger would, so what
catches them is the chain, the seqs or the checkpoints, never the manifest."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import io
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.models import Tenant
from tenant_runtime import audit
from tenant_runtime.audit_export import export_lines
from tenant_runtime.context import Actor
from tests.control_plane.tenancy.conftest import (  # noqa: F401 - fixtures
    local_kek,
    primary_server,
    settings,
)
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user

ROOT = Path(__file__).resolve().parents[2]
VERIFIER = ROOT / "ops" / "verify_audit_chain.py"
FORMAT_DOC = ROOT / "ops" / "AUDIT_FORMAT.md"
KEY_A = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"acme test key").digest())
KEY_B = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"globex test key").digest())
VALID_FROM = "2026-01-01T00:00:00.000000Z"
CREATED_AT = "2026-01-02T03:04:05.123456Z"
K = 37  # the row the mutations aim at


def load_verifier():
    spec = importlib.util.spec_from_file_location("verify_audit_chain", VERIFIER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its worker processes find their functions by name
    spec.loader.exec_module(module)
    return module


verifier = load_verifier()


# ------------------------------------------------------------------------------- the exports


def record_events(ctx, count: int, *, start: int = 1) -> None:
    actors = [Actor("user", "7", "alice@example.com", "Owner"),
              Actor("api_key", "12", "build bot"), Actor("system")]
    for i in range(start, start + count):
        with ctx.session() as s, s.begin():
            audit.record(s, f"test.event_{i % 4}", actor=actors[i % 3],
                         target_type="document", target_id=1000 + i,
                         details={"i": i, "note": f"café ✓ «{i}»\n\"quoted\"\t",
                                  "nested": {"z": [1, 2, {"b": None, "a": True}], "a": -i},
                                  "emoji": "🦉"})


def export(ctx, **range_) -> bytes:
    with ctx.session() as s:
        return b"".join(export_lines(s, tenant_id=ctx.tenant_id, slug=ctx.slug, **range_))


@pytest.fixture(scope="module")
def cache() -> dict:
    return {}


@pytest.fixture
def exports(request, cache) -> dict:
    return build_exports(request, cache)


def build_exports(request, cache) -> dict:
    """Built once per module from two real tenants (the database work is the slow part)."""
    if not cache:
        services = request.getfixturevalue("services")
        db = request.getfixturevalue("db")
        database_url = request.getfixturevalue("database_url")
        request.getfixturevalue("primary_server")
        request.getfixturevalue("local_kek")
        owner = make_user(db)
        acme = create_tenant(services, owner.email, "acme")
        globex = create_tenant(services, owner.email, "globex")
        assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == [
            "succeeded", "succeeded"]
        with services.session_factory() as s:
            contexts = {slug: services.tenant_connections.context(s, s.get(Tenant, tid),
                                                                  Actor("system"))
                        for slug, tid in (("acme", acme), ("globex", globex))}
        record_events(contexts["acme"], 60)
        record_events(contexts["globex"], 30)
        cache.update(acme=export(contexts["acme"]), globex=export(contexts["globex"]),
                     acme_small=export(contexts["acme"], first_seq=1, last_seq=8),
                     acme_from_41=export(contexts["acme"], first_seq=41))
    return cache


# ------------------------------------------------------------------------------- editing files


def parse(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines()]


def dump(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(o, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False).encode() + b"\n" for o in lines)


def events(lines: list[dict]) -> list[dict]:
    return [o for o in lines if o["type"] == "event"]


def reseal(lines: list[dict]) -> list[dict]:
    """Recompute the manifest from the lines, as a careful forger would. The statement, if
    any, stays as it was: a forger cannot sign one with the tenant's key."""
    statement = [o for o in lines if o["type"] == "statement"]
    body = [o for o in lines if o["type"] not in ("manifest", "statement")]
    rows = events(body)
    manifest = {"type": "manifest", "first_seq": rows[0]["seq"] if rows else None,
                "last_seq": rows[-1]["seq"] if rows else None,
                "head_hash": rows[-1]["chain_hash"] if rows else None, "events": len(rows),
                "checkpoints": sum(o["type"] == "checkpoint" for o in body),
                "sha256": hashlib.sha256(dump(body)).hexdigest()}
    return [*body, manifest, *statement]


def public_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def key_id(key: Ed25519PrivateKey) -> str:
    return hashlib.sha256(key.public_key().public_bytes_raw()).hexdigest()[:16]


def key_entry(key, valid_from: str = VALID_FROM, retired_at: str | None = None) -> dict:
    return {"key_id": key_id(key), "public_key": public_b64(key), "valid_from": valid_from,
            "retired_at": retired_at}


def checkpoint(key, tenant_id: int, seq: int, chain_hash: str, created_at: str = CREATED_AT):
    signed = {"tenant_id": tenant_id, "seq": seq, "chain_hash": chain_hash,
              "created_at": created_at}
    message = json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()
    return {"type": "checkpoint", **signed, "key_id": key_id(key),
            "signature": base64.b64encode(key.sign(message)).decode()}


def sign_statement(lines: list[dict], key, *, head: tuple[int, str] | None = None) -> list[dict]:
    """The manifest recomputed and a statement signed by ``key`` (the tenant's, for an honest
    export; a forger's own, for a forgery). ``head``: the tenant's (seq, chain_hash) at export
    time; by default the last row's."""
    body = reseal([o for o in lines if o["type"] != "statement"])
    header, manifest = body[0], body[-1]
    if head is None:
        head = (manifest["last_seq"], manifest["head_hash"])
    statement = {"type": "statement", "tenant_id": header["tenant_id"],
                 "tenant": header["tenant"], "exported_at": header["exported_at"],
                 "range": header["range"], "first_seq": manifest["first_seq"],
                 "last_seq": manifest["last_seq"], "events": manifest["events"],
                 "checkpoints": manifest["checkpoints"], "head_seq": head[0],
                 "head_hash": head[1], "sha256": hashlib.sha256(dump(body)).hexdigest(),
                 "key_id": key_id(key)}
    statement["signature"] = base64.b64encode(key.sign(dump([statement])[:-1])).decode()
    return [*body, statement]


def with_checkpoints(data: bytes, key, seqs, *, head: tuple[int, str] | None = None
                     ) -> list[dict]:
    """The export as Magistrate makes it for a tenant whose checkpoint key is ``key``: its
    checkpoints at ``seqs``, its manifest and a statement signed by ``key``."""
    lines = [o for o in parse(data) if o["type"] not in ("checkpoint", "statement")]
    header = lines[0]
    header["public_keys"] = [key_entry(key)]
    hashes = {o["seq"]: o["chain_hash"] for o in events(lines)}
    hashes[events(lines)[0]["seq"] - 1] = events(lines)[0]["prev_hash"]
    signed = [checkpoint(key, header["tenant_id"], seq, hashes[seq]) for seq in seqs]
    return sign_statement([*lines[:-1], *signed, lines[-1]], key, head=head)


def rechain(rows: list[dict], prev_hash: str) -> None:
    """Recompute the hashes of ``rows`` in place from ``prev_hash``."""
    for row in rows:
        row["prev_hash"] = prev_hash
        row["chain_hash"] = prev_hash = verifier.event_hash(row, prev_hash)


def run(tmp_path: Path, data: bytes | list[dict], *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "export.jsonl"
    path.write_bytes(data if isinstance(data, bytes) else dump(data))
    done = subprocess.run([sys.executable, str(VERIFIER), str(path), *args],
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stdout + done.stderr
    return done


def run_in_process(path: Path, *args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = verifier.main([str(path), *args])
    return code, out.getvalue() + err.getvalue()


# ------------------------------------------------------------------------------- intact exports


def test_an_untouched_export_verifies(exports, tmp_path):
    plain = run(tmp_path, exports["acme"])
    head = events(parse(exports["acme"]))[-1]["chain_hash"]
    assert plain.returncode == 0, plain.stdout
    assert plain.stdout.splitlines()[-1] == f"OK 60 rows, head {head}"
    assert "chain: from genesis" in plain.stdout and "checkpoints: none" in plain.stdout

    signed = with_checkpoints(exports["acme"], KEY_A, [20, 60])
    done = run(tmp_path, signed)
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines()[-1] == f"OK 60 rows, head {head}"
    assert "checkpoints: 2 valid, up to seq 60, signed by a key named in the file" in done.stdout
    pinned = run(tmp_path, signed, "--pin-key", public_b64(KEY_A))
    assert pinned.returncode == 0 and "signed by the pinned key" in pinned.stdout


def test_a_range_export_is_anchored_on_its_first_prev_hash(exports, tmp_path):
    data = exports["acme_from_41"]
    assert [o["seq"] for o in events(parse(data))] == list(range(41, 61))
    done = run(tmp_path, data)
    assert done.returncode == 0, done.stdout
    assert "starts at seq 41 from its prev_hash, taken on trust" in done.stdout
    assert done.stdout.splitlines()[-1].startswith("OK 20 rows, head ")
    for seqs in ([40], [60], [40, 50]):  # just before the first row, or inside the range
        vouched = run(tmp_path, with_checkpoints(data, KEY_A, seqs), "--pin-key",
                      public_b64(KEY_A))
        assert vouched.returncode == 0, vouched.stdout
        assert "vouch" in vouched.stdout.splitlines()[0]
    full = events(parse(exports["acme"]))
    early = checkpoint(KEY_A, parse(data)[0]["tenant_id"], 20, full[19]["chain_hash"])
    lines = with_checkpoints(data, KEY_A, [])
    done = run(tmp_path, reseal([*lines[:-1], early]))
    assert done.stdout.strip() == ("FAIL checkpoint at seq 20: before the first row of this "
                                   "export, so it cannot be checked")
    lines = parse(data)
    del lines[1]  # the range says it starts at 41: its first row cannot go unnoticed
    assert run(tmp_path, reseal(lines)).stdout.strip() == (
        "FAIL row 1 (seq 42): gap in seq (expected 41, found 42)")


def test_a_pruned_log_starts_after_its_anchor_checkpoint(exports, tmp_path):
    """Retention removes events only up to a signed checkpoint: a whole-log export then starts
    just after it, and that checkpoint, in the file, anchors the first row."""
    pruned = [o for o in with_checkpoints(exports["acme"], KEY_A, [20, 60])
              if o["type"] != "event" or o["seq"] > 20]
    done = run(tmp_path, sign_statement(pruned, KEY_A), "--pin-key", public_b64(KEY_A))
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("chain: starts at seq 21, after the checkpoint at seq 20")
    assert done.stdout.splitlines()[-1].startswith("OK 40 rows, head ")
    cut_elsewhere = [o for o in pruned if o["type"] != "event" or o["seq"] > 21]
    done = run(tmp_path, sign_statement(cut_elsewhere, KEY_A))
    assert done.stdout.strip() == "FAIL row 1 (seq 22): gap in seq (expected 1, found 22)"
    forged_anchor = sign_statement(pruned, KEY_A)
    forged_anchor[1]["prev_hash"] = "1" * 64  # no longer the checkpoint's chain hash
    rechain(events(forged_anchor), "1" * 64)
    done = run(tmp_path, sign_statement(forged_anchor, KEY_A))
    assert done.stdout.startswith("FAIL checkpoint at seq 20: the log differs"), done.stdout


# ------------------------------------------------------------------------------- the mutations


def changed(field: str, value):
    def mutate(lines):
        events(lines)[K - 1][field] = value
        return lines
    return mutate


def deleted(lines):
    lines.remove(events(lines)[K - 1])
    return lines


def swapped(lines):
    a, b = lines.index(events(lines)[K - 1]), lines.index(events(lines)[K])
    lines[a], lines[b] = lines[b], lines[a]
    return lines


def forged_after(index: int, *, linked: bool):
    """Insert a forged event after event ``index`` (1-based), with a correct hash of its own."""
    def mutate(lines):
        before = events(lines)[index - 1]
        forged = {**before, "event_type": "forged.event", "details": {"by": "mallory"},
                  "seq": before["seq"] + 1 if linked else before["seq"]}
        rechain([forged], before["chain_hash"] if linked else before["prev_hash"])
        lines.insert(lines.index(before) + 1, forged)
        return lines
    return mutate


def copied(lines):
    row = events(lines)[K - 2]
    lines.insert(lines.index(row) + 1, dict(row))
    return lines


def tail_dropped(lines):
    return [o for o in lines if o["type"] != "event" or o["seq"] <= 50]


def rewritten(lines):
    rows = events(lines)
    for row in rows[K - 1:]:
        row["details"] = {**row["details"], "i": -1}
    rechain(rows[K - 1:], rows[K - 2]["chain_hash"])
    return lines


def other_tenants_checkpoint(exports, *, add_key: bool):
    def mutate(lines):
        theirs = next(o for o in with_checkpoints(exports["globex"], KEY_B, [20])
                      if o["type"] == "checkpoint")
        at = next(i for i, o in enumerate(lines) if o["type"] == "checkpoint" and o["seq"] == 20)
        lines[at] = theirs
        if add_key:
            lines[0]["public_keys"].append(key_entry(KEY_B))
        return lines
    return mutate


def resigned_field(field: str, value):
    def mutate(lines):
        cp = next(o for o in lines if o["type"] == "checkpoint" and o["seq"] == 20)
        cp[field] = value
        return lines
    return mutate


ROW = f"row {K} (seq {K})"
CONTENT = "content changed (chain_hash does not match its content)"
MUTATIONS = {
    **{f"{field} changed": (changed(field, value), f"{ROW}: {CONTENT}") for field, value in {
        "occurred_at": "2020-01-01T00:00:00.000000Z", "actor_type": "system",
        "actor_id": "999", "actor_name": "mallory@example.com", "event_type": "test.erased",
        "target_type": "invoice", "target_id": "1", "details": {"i": K},
        "chain_hash": "f" * 64}.items()},
    "actor_id emptied": (changed("actor_id", None), f"{ROW}: {CONTENT}"),
    "seq changed": (changed("seq", K + 1), f"row {K} (seq {K + 1}): {CONTENT}"),
    "prev_hash changed": (changed("prev_hash", "0" * 64), f"{ROW}: previous hash mismatch"),
    "a middle row deleted": (deleted, f"row {K} (seq {K + 1}): gap in seq "
                                      f"(expected {K}, found {K + 1})"),
    "two rows swapped": (swapped, f"row {K + 1} (seq {K}): reordered (seq {K} after {K + 1})"),
    "a forged row inserted, linked": (forged_after(K - 1, linked=True),
                                      f"row {K + 1} (seq {K}): seq {K} repeated"),
    "a forged row inserted, same seq": (forged_after(K - 1, linked=False),
                                        f"row {K} (seq {K - 1}): seq {K - 1} repeated"),
    "a row copied": (copied, f"row {K} (seq {K - 1}): seq {K - 1} repeated"),
    "the tail dropped": (tail_dropped, "log shorter than checkpoint at seq 60"),
    "rewritten from row k with new hashes": (rewritten, "checkpoint at seq 60: the log differs"),
    "a checkpoint's time changed": (resigned_field("created_at", "2026-01-02T03:04:06.123456Z"),
                                    "checkpoint at seq 20: signature invalid"),
    "a checkpoint's hash changed": (resigned_field("chain_hash", "a" * 64),
                                    "checkpoint at seq 20: signature invalid"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_each_mutation_is_named_at_its_row(exports, tmp_path, name):
    mutate, reason = MUTATIONS[name]
    lines = mutate(with_checkpoints(exports["acme"], KEY_A, [20, 60]))
    done = run(tmp_path, reseal(lines))
    assert done.returncode == 1, done.stdout
    assert done.stdout.startswith(f"FAIL {reason}"), done.stdout


def test_another_tenants_checkpoint_is_refused(exports, tmp_path):
    signed = with_checkpoints(exports["acme"], KEY_A, [20, 60])
    acme_id, globex_id = signed[0]["tenant_id"], parse(exports["globex"])[0]["tenant_id"]
    swapped_in = reseal(other_tenants_checkpoint(exports, add_key=False)(signed))
    done = run(tmp_path, swapped_in)
    assert done.returncode == 1
    assert done.stdout.strip() == (f"FAIL checkpoint at seq 20: signed by another key "
                                   f"(key_id {key_id(KEY_B)})")
    signed = with_checkpoints(exports["acme"], KEY_A, [20, 60])
    with_their_key = reseal(other_tenants_checkpoint(exports, add_key=True)(signed))
    done = run(tmp_path, with_their_key)  # a second key in the header, with no rotation
    assert done.stdout.strip().startswith(f"FAIL line 1: key {key_id(KEY_B)} does not take "
                                          f"over when key {key_id(KEY_A)} is retired")
    with_their_key[0]["public_keys"][0]["retired_at"] = VALID_FROM.replace("01T", "02T")
    with_their_key[0]["public_keys"][1]["valid_from"] = VALID_FROM.replace("01T", "02T")
    done = run(tmp_path, reseal(with_their_key))
    assert done.stdout.strip() == (f"FAIL line 1: key {key_id(KEY_B)} is not linked to the "
                                   "oldest key by a key rotation statement in the file")
    signed = with_checkpoints(exports["acme"], KEY_A, [20, 60])
    ours = next(o for o in signed if o["type"] == "checkpoint")
    signed[signed.index(ours)] = checkpoint(KEY_A, globex_id, 20, ours["chain_hash"])
    done = run(tmp_path, reseal(signed))
    assert done.stdout.strip() == (f"FAIL checkpoint at seq 20: for another tenant (tenant_id "
                                   f"{globex_id}; this log is tenant {acme_id})")
    wrong_pin = run(tmp_path, with_checkpoints(exports["acme"], KEY_A, [20]), "--pin-key",
                    public_b64(KEY_B))
    assert wrong_pin.stdout.strip() == (
        f"FAIL line 1: the header does not list the pinned key (key_id {key_id(KEY_B)}): this "
        "is not an export of the tenant whose key you pinned, or its keys were replaced")


def format_1(lines: list[dict]) -> list[dict]:
    """The export as Magistrate wrote it before signed statements (format 1)."""
    lines = [o for o in lines if o["type"] != "statement"]
    lines[0]["format"] = 1
    lines[0]["public_keys"] = [{k: v for k, v in key.items() if k in ("key_id", "public_key")}
                               for key in lines[0]["public_keys"]]
    return reseal(lines)


def test_a_checkpoint_kept_outside_the_export(exports, tmp_path):
    """A format 1 export has no statement: dropping or rewriting rows *and* its checkpoints is
    caught only by a checkpoint the compliance team kept (received by webhook, say). A format
    1 file is refused unless asked for, and then said to lack a statement."""
    tenant_id = parse(exports["acme"])[0]["tenant_id"]
    head = events(parse(exports["acme"]))[-1]["chain_hash"]
    kept = tmp_path / "checkpoint.json"
    kept.write_text(json.dumps(checkpoint(KEY_A, tenant_id, 60, head)))
    pin = ("--pin-key", public_b64(KEY_A))
    honest = with_checkpoints(exports["acme"], KEY_A, [20])
    assert run(tmp_path, honest, "--checkpoint", str(kept), *pin).returncode == 0
    old = format_1(honest)
    refused = run(tmp_path, old, *pin)
    assert refused.returncode == 1 and refused.stdout.startswith(
        "FAIL line 1: a format 1 export (made before signed export statements)")
    allowed = run(tmp_path, old, "--allow-format-1", *pin)
    assert allowed.returncode == 0, allowed.stdout
    assert "statement: none (a format 1 export" in allowed.stdout
    for mutate, reason in ((tail_dropped, "log shorter than checkpoint at seq 60"),
                           (rewritten, "checkpoint at seq 60: the log differs")):
        # cut back (or rewritten) after the checkpoint at 20, which stays: format 1 cannot tell
        lines = reseal(mutate(format_1(with_checkpoints(exports["acme"], KEY_A, [20]))))
        alone = run(tmp_path, lines, "--allow-format-1", *pin)
        assert alone.returncode == 0 and "checkpoints: 1 valid" in alone.stdout, alone.stdout
        done = run(tmp_path, lines, "--allow-format-1", "--checkpoint", str(kept), *pin)
        assert done.returncode == 1 and done.stdout.startswith(f"FAIL {reason}"), done.stdout
        # the same cut of a format 2 export is named by its statement, with no outside help
        cut = reseal(mutate(with_checkpoints(exports["acme"], KEY_A, [20])))
        done = run(tmp_path, cut, *pin)
        assert done.returncode == 1 and done.stdout.startswith("FAIL statement: "), done.stdout


def test_the_manifest_must_match(exports, tmp_path):
    lines = parse(exports["acme"])
    lines[-1]["events"] = 59
    assert run(tmp_path, lines).stdout.strip() == "FAIL manifest: events is 59 but the file has 60"
    lines = parse(exports["acme"])
    lines[0]["exported_at"] = "2030-01-01T00:00:00.000000Z"  # the header is covered by sha256
    assert run(tmp_path, lines).stdout.startswith("FAIL manifest: sha256 is ")
    lines = parse(exports["acme"])
    lines[-1]["head_hash"] = events(lines)[-2]["chain_hash"]
    assert run(tmp_path, lines).stdout.startswith("FAIL manifest: head_hash is ")


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("data", "message"), [
    (b"", "FAIL the file is empty"),
    (b"not json\n", "FAIL line 1: not valid JSON"),
    (b"\xff\xfe\n", "FAIL line 1: not valid UTF-8"),
    (b'{"type": "header"}\n', "FAIL line 1: not a JSON object in the canonical encoding"),
    (b'{"format":1,"type":"header"}\n', "FAIL line 1 (header): expected exactly the fields"),
    (b"[1,2]\n", "FAIL line 1: not a JSON object in the canonical encoding"),
    (b'{"a":NaN}\n', "FAIL line 1: not valid JSON"),
    (b'{"a":1,"a":2}\n', "FAIL line 1: not valid JSON"),
    (b"[" * 100_000 + b"\n", "FAIL line 1: not valid JSON"),
])
def test_malformed_files_get_a_clear_message(tmp_path, data, message):
    done = run(tmp_path, data)
    assert done.returncode == 1 and done.stdout.startswith(message), done.stdout


def test_structural_problems(exports, tmp_path):
    lines = parse(exports["acme"])
    done = run(tmp_path, dump(lines[:3]) + b"{\n")
    assert done.stdout.strip() == "FAIL line 4: not valid JSON"
    assert run(tmp_path, dump(lines[:-1])).stdout.strip() == (
        "FAIL file ends without a manifest (truncated?)")
    assert run(tmp_path, dump(lines)[:-1]).stdout.strip() == (
        "FAIL line 62: does not end with a newline (truncated?)")
    assert run(tmp_path, dump([*lines, lines[1]])).stdout.strip() == (
        "FAIL line 63: more lines after the manifest")
    assert run(tmp_path, dump([lines[1], *lines])).stdout.strip() == (
        "FAIL line 1: the first line must be the header")
    odd = [*lines[:5], {"type": "note", "text": "hi"}, *lines[5:]]
    assert run(tmp_path, reseal(odd)).stdout.strip() == "FAIL line 6: unknown line type 'note'"
    late = with_checkpoints(exports["acme"], KEY_A, [20])
    late.insert(-2, late.pop(-4))  # the last event after the checkpoint
    assert run(tmp_path, reseal(late)).stdout.strip() == (
        "FAIL row 60 (seq 60): an event after the checkpoints (line 62)")
    lines[3]["seq"] = "3"
    assert run(tmp_path, lines).stdout.startswith(
        "FAIL row 3 (line 4): field seq is not a valid seq ('3')")


def test_usage_problems_exit_2(exports, tmp_path):
    path = tmp_path / "export.jsonl"
    path.write_bytes(exports["acme"])
    for args, message in (
        ([str(tmp_path / "missing.jsonl")], "No such file"),
        ([str(tmp_path)], "Is a directory"),
        ([str(path), "--pin-key", "not-a-key"], "--pin-key: not a base64 Ed25519 public key"),
        ([str(path), "--checkpoint", str(path)], "not a checkpoint line"),
        ([str(path), "--checkpoint", str(tmp_path / "nope.json")], "No such file"),
        ([], "usage:"),
    ):
        done = subprocess.run([sys.executable, str(VERIFIER), *args], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_without_cryptography_the_chain_still_verifies(exports, tmp_path):
    blocker = tmp_path / "no-crypto"
    (blocker / "cryptography").mkdir(parents=True)
    (blocker / "cryptography" / "__init__.py").write_text(
        "raise ImportError('cryptography is not installed here')\n")
    plain, signed = tmp_path / "plain.jsonl", tmp_path / "signed.jsonl"
    plain.write_bytes(exports["acme"])
    signed.write_bytes(dump(with_checkpoints(exports["acme"], KEY_A, [20])))
    env = {"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, str(VERIFIER), str(plain)], capture_output=True,
                        text=True, env=env, timeout=60)
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1].startswith("OK 60 rows")
    refused = subprocess.run([sys.executable, str(VERIFIER), str(signed)], capture_output=True,
                             text=True, env=env, timeout=60)
    assert refused.returncode == 2, refused.stdout
    assert "needs the 'cryptography' package" in refused.stderr
    assert "Traceback" not in refused.stderr


def verdict(path: Path, chunk: int) -> str:
    try:
        return verifier.verify(str(path), chunk=chunk)[-1]
    except verifier.Bad as exc:
        return f"FAIL {exc}"


def test_a_long_file_shared_out_to_workers_gets_the_same_verdicts(exports, tmp_path):
    """Files longer than a chunk are checked by worker processes in runs that the main process
    joins: with tiny chunks, every mutation gets the verdict the one-process path gives."""
    path = tmp_path / "export.jsonl"
    intact = dump(with_checkpoints(exports["acme"], KEY_A, [20, 60]))
    path.write_bytes(intact)
    assert verdict(path, 3000) == verdict(path, len(intact)) == (
        f"OK 60 rows, head {events(parse(intact))[-1]['chain_hash']}")
    for name in sorted(MUTATIONS):
        mutate, reason = MUTATIONS[name]
        path.write_bytes(dump(reseal(mutate(with_checkpoints(exports["acme"], KEY_A,
                                                             [20, 60])))))
        shared, alone = verdict(path, 2000), verdict(path, 1 << 30)
        assert shared == alone and shared.startswith(f"FAIL {reason}"), (name, shared, alone)


def test_rows_after_the_last_checkpoint_are_read_in_full(exports, tmp_path):
    """The quick path (hashing an event line's bytes without parsing it) is only for rows a
    checkpoint vouches for; a later row must be canonical JSON even if its hash is right."""
    lines = with_checkpoints(exports["acme"], KEY_A, [20])
    lines = lines[:-1]  # no statement: the rows are what is checked here
    body = dump(lines[:-1])
    last = body.splitlines(keepends=True)[-2]  # the last event, after it the checkpoint
    assert b'"seq":60,' in last
    prev = json.loads(last)["prev_hash"].encode()
    loose = last.replace(b'"details":{', b'"details": {')
    i, j = loose.find(b',"chain_hash":"'), loose.rfind(b',"prev_hash":"')
    content = loose[:i] + loose[i + 80:j] + loose[j + 79:-len(b',"type":"event"}\n')] + b"}"
    forged_hash = hashlib.sha256(content + prev).hexdigest().encode()
    loose = loose[:i + 15] + forged_hash + loose[i + 79:]
    body = body.replace(last, loose)
    manifest = {**lines[-1], "head_hash": forged_hash.decode(),
                "sha256": hashlib.sha256(body).hexdigest()}
    path = tmp_path / "export.jsonl"
    path.write_bytes(body + dump([manifest]))
    for chunk in (2000, 1 << 30):
        assert verdict(path, chunk) == (
            "FAIL line 61: not a JSON object in the canonical encoding"), chunk


# ------------------------------------------------------------------------------- fuzzing


def test_every_truncation_is_rejected(exports, tmp_path):
    data = dump(with_checkpoints(exports["acme_small"], KEY_A, [8]))
    path = tmp_path / "small.jsonl"
    path.write_bytes(data)
    assert run_in_process(path)[0] == 0
    for size in range(len(data)):
        path.write_bytes(data[:size])
        code, output = run_in_process(path)
        assert code == 1 and output.startswith("FAIL "), (size, output)
        if size % 97 == 0:  # and through worker processes (slower to start)
            assert verdict(path, 300).startswith("FAIL "), size


def test_random_bit_flips_are_rejected(exports, tmp_path):
    data = dump(with_checkpoints(exports["acme_small"], KEY_A, [4, 8]))
    path = tmp_path / "small.jsonl"
    rng = random.Random(20260101)
    for _ in range(200):
        position, bit = rng.randrange(len(data)), 1 << rng.randrange(8)
        flipped = bytearray(data)
        flipped[position] ^= bit
        path.write_bytes(bytes(flipped))
        code, output = run_in_process(path, "--pin-key", public_b64(KEY_A))
        assert code == 1 and output.startswith("FAIL "), (position, bit, output)


# ------------------------------------------------------------------------------- the spec


def example(page: str, name: str) -> str:
    match = re.search(rf"<!-- example-{name} -->\n```\n(.*?)\n```", page, re.S)
    assert match, f"ops/AUDIT_FORMAT.md has no example-{name} block"
    return match.group(1)


def test_the_worked_examples_of_the_format_page_are_what_the_code_computes():
    """ops/AUDIT_FORMAT.md shows an event, its canonical content, chain hash and export line,
    and a signed checkpoint: the application's encoder and the verifier agree with each byte."""
    from datetime import datetime

    page = FORMAT_DOC.read_text(encoding="utf-8")
    content, prev_hash = example(page, "content"), example(page, "prev")
    expected = example(page, "hash")
    fields = json.loads(content)
    ours = audit.canonical_content(**{**fields, "occurred_at": datetime.fromisoformat(
        fields["occurred_at"])})
    assert ours == content.encode("utf-8") and len(ours) == 283
    assert prev_hash == audit.GENESIS_HASH
    assert audit.chain_hash(ours, prev_hash) == expected
    assert verifier.event_hash(fields, prev_hash) == expected
    line = example(page, "line")
    assert json.loads(line) == {"type": "event", **fields, "prev_hash": prev_hash,
                                "chain_hash": expected}
    assert verifier.canonical(json.loads(line)) == line

    signed, signature = example(page, "checkpoint"), example(page, "signature")
    public_key = re.search(r"public key `([A-Za-z0-9+/]{43}=)`", page).group(1)
    key = re.search(r"\(key_id `([0-9a-f]{16})`\)", page).group(1)
    assert verifier.canonical(json.loads(signed)) == signed
    assert json.loads(signed)["chain_hash"] == expected
    assert verifier.public_key_id(public_key, "the page") == key
    assert verifier.signature_valid(public_key, signature, signed.encode())
    assert not verifier.signature_valid(public_key, signature, signed.replace("42", "43").encode())
