"""Property: any single change to an exported audit log is detected by the offline verifier.

A provisioned tenant records events, the application signs checkpoints of its chain (one in
the middle, one at the head), and the log is exported the way a compliance team gets it:
``GET /api/audit/export`` with the tenant's API key. Hypothesis then picks one thing to change
and ops/verify_audit_chain.py (its ``main``, in-process, with the tenant's public key pinned)
must answer FAIL with a reason, never OK and never the catch-all for an unexpected error:

- one event: one field given another value, removed or added; the event deleted, duplicated
  or moved elsewhere. The manifest is then recomputed (counts, head, SHA-256), as a careful
  forger would, so what catches the change is the chain, the seqs or the checkpoints;
- one checkpoint: one field given another value (manifest recomputed likewise);
- one byte anywhere in the file (header, manifest and statement included): replaced, deleted
  or inserted, with no recomputing. (The signed statement at the end covers every byte before
  it, so recomputing the manifest would not help a forger either.)

ops/verify_audit_chain.py's own tests (test_verify_audit_chain.py) name the reason for a
fixed corpus of mutations; this file searches the whole space of single ones."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from control_plane.models import Tenant, User
from control_plane.tenancy import api_keys
from control_plane.tenancy.service import access_tenant
from control_plane.web.app import build_app
from tenant_runtime import audit, checkpoints
from tenant_runtime.context import Actor
from tests.control_plane.tenancy.conftest import (  # noqa: F401 - fixtures
    local_kek,
    primary_server,
    settings,
)
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user
from tests.ops.test_verify_audit_chain import (
    checkpoint,
    dump,
    events,
    key_entry,
    parse,
    public_b64,
    sign_statement,
    verifier,
)

PROPERTY = hypothesis_settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
CATCH_ALL = "FAIL the file could not be read as an export"


@pytest.fixture(scope="module")
def cache() -> dict[str, Any]:
    return {}


@pytest.fixture
def exported(request, cache) -> dict[str, Any]:
    """The export file and the tenant's public key, built once per module."""
    if not cache:
        services = request.getfixturevalue("services")
        db = request.getfixturevalue("db")
        database_url = request.getfixturevalue("database_url")
        request.getfixturevalue("primary_server")
        request.getfixturevalue("local_kek")
        owner = make_user(db)
        tenant_id = create_tenant(services, owner.email, "acme")
        assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == [
            "succeeded"]
        with services.session_factory() as s, s.begin():
            ctx = services.tenant_connections.context(s, s.get(Tenant, tenant_id),
                                                      Actor("system"))
            user = s.get(User, owner.id)
            _, key = api_keys.do_create_api_key(s, access_tenant(s, tenant_id, user=user),
                                                name="compliance", acting_user=user,
                                                scopes=["audit:export"])
        actors = [Actor("user", str(owner.id), owner.email, "Owner"),
                  Actor("api_key", "3", "build bot"), Actor("system")]
        for i in range(16):
            with ctx.session() as s, s.begin():
                audit.record(s, f"test.event_{i % 3}", actor=actors[i % 3],
                             target_type="document", target_id=100 + i,
                             details={"i": i, "note": f"café «{i}»\n\"q\"", "list": [i, None]})
                if i in (7, 15):
                    made = checkpoints.make_checkpoint(s, ctx, force=True)
                    assert made is not None
                    head = made.seq
        with ctx.session() as s:
            public = checkpoints.public_key(s)
        client = TestClient(build_app(services), base_url="http://testserver")
        try:  # up to the signed head: the export itself is audited after it
            answer = client.get(f"/api/audit/export?last_seq={head}",
                                headers={"Authorization": f"Bearer {key}"})
        finally:
            client.close()
        assert answer.status_code == 200, answer.text
        services.tenant_connections.close()
        cache.update(body=answer.content, public=public)
    return cache


def reseal(lines: list[dict]) -> list[dict]:
    """The manifest (the line before the statement) recomputed from the lines before it, as a
    careful forger would (the statement stays: only the tenant's key signs one); a line may
    have lost any field."""
    body, statement = lines[:-2], lines[-1]
    rows = [o for o in body if o.get("type") == "event"]
    manifest = {"type": "manifest", "first_seq": rows[0].get("seq") if rows else None,
                "last_seq": rows[-1].get("seq") if rows else None,
                "head_hash": rows[-1].get("chain_hash") if rows else None, "events": len(rows),
                "checkpoints": sum(o.get("type") == "checkpoint" for o in body),
                "sha256": hashlib.sha256(dump(body)).hexdigest()}
    return [*body, manifest, statement]


def verdict(tmp_path: Path, data: bytes, public: str) -> tuple[int, str]:
    path = tmp_path / "export.jsonl"
    path.write_bytes(data)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = verifier.main([str(path), "--pin-key", public])
    return code, out.getvalue()


def assert_rejected(tmp_path: Path, data: bytes, public: str) -> None:
    code, output = verdict(tmp_path, data, public)
    assert code == 1 and output.startswith("FAIL "), output
    assert not output.startswith(CATCH_ALL), output


def test_the_untouched_export_verifies_with_both_checkpoints(exported, tmp_path):
    lines = parse(exported["body"])
    assert [o["type"] for o in lines].count("checkpoint") == 2
    assert events(lines)[-1]["seq"] == [o for o in lines if o["type"] == "checkpoint"][-1][
        "seq"]  # the last row is vouched for by a checkpoint
    assert dump(lines) == exported["body"]  # the canonical encoding this file's edits use
    assert dump(reseal(lines)) == exported["body"]  # so only the change itself can fail it
    code, output = verdict(tmp_path, exported["body"], exported["public"])
    assert code == 0 and "checkpoints: 2 valid" in output, output


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6)


def other_value(draw, current: Any) -> Any:
    """A value unlike ``current``: a small edit of it, or anything else."""
    if isinstance(current, str) and current and draw(st.booleans()):
        at = draw(st.integers(0, len(current) - 1))
        value = current[:at] + draw(st.characters()) + current[at + 1:]
    elif isinstance(current, int) and not isinstance(current, bool) and draw(st.booleans()):
        value = current + draw(st.sampled_from([-1, 1, 2**31]))
    else:
        value = draw(json_values)
    if value == current and type(value) is type(current):
        value = [current]
    return value


@PROPERTY
@given(data=st.data())
def _one_event_changed(data, body: bytes, check) -> None:
    lines = parse(body)
    rows = events(lines)
    index = lines.index(data.draw(st.sampled_from(rows), label="event"))
    row = lines[index]
    how = data.draw(st.sampled_from(["change a field", "remove a field", "add a field",
                                     "delete", "duplicate", "move"]), label="how")
    if how == "change a field":
        field = data.draw(st.sampled_from(sorted(row)), label="field")
        lines[index] = {**row, field: other_value(data.draw, row[field])}
    elif how == "remove a field":
        field = data.draw(st.sampled_from(sorted(row)), label="field")
        lines[index] = {k: v for k, v in row.items() if k != field}
    elif how == "add a field":
        name = data.draw(st.text(min_size=1, max_size=10).filter(lambda n: n not in row))
        lines[index] = {**row, name: data.draw(json_values)}
    elif how == "delete":
        del lines[index]
    elif how == "duplicate":
        at = data.draw(st.integers(1, len(lines) - 1), label="insert at")
        lines.insert(at, dict(row))
    else:
        moved = lines.pop(index)
        first = lines.index(events(lines)[0])
        at = data.draw(st.integers(first, first + len(events(lines))).filter(
            lambda i: i != index), label="move to")
        lines.insert(at, moved)
    check(lines)


@PROPERTY
@given(data=st.data())
def _one_checkpoint_changed(data, body: bytes, check) -> None:
    lines = parse(body)
    index = lines.index(data.draw(st.sampled_from(
        [o for o in lines if o["type"] == "checkpoint"]), label="checkpoint"))
    row = lines[index]
    field = data.draw(st.sampled_from(sorted(row)), label="field")
    lines[index] = {**row, field: other_value(data.draw, row[field])}
    check(lines)


@PROPERTY
@given(data=st.data())
def _one_byte_changed(data, body: bytes, check) -> None:
    lines = body.splitlines(keepends=True)  # a line first, so every line gets its share
    line = data.draw(st.integers(0, len(lines) - 1), label="line")
    at = sum(map(len, lines[:line])) + data.draw(st.integers(0, len(lines[line]) - 1),
                                                 label="position in the line")
    how = data.draw(st.sampled_from(["replace", "delete", "insert"]), label="how")
    if how == "replace":
        byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[at]), label="byte")
        changed = body[:at] + bytes([byte]) + body[at + 1:]
    elif how == "delete":
        changed = body[:at] + body[at + 1:]
    else:
        changed = body[:at] + bytes([data.draw(st.integers(0, 255), label="byte")]) + body[at:]
    check(changed)


def test_any_single_change_to_one_event_is_rejected(exported, tmp_path):
    def check(lines):
        assert_rejected(tmp_path, dump(reseal(lines)), exported["public"])

    _one_event_changed(body=exported["body"], check=check)


def test_any_single_change_to_one_checkpoint_is_rejected(exported, tmp_path):
    def check(lines):
        assert_rejected(tmp_path, dump(reseal(lines)), exported["public"])

    _one_checkpoint_changed(body=exported["body"], check=check)


def test_any_single_byte_changed_anywhere_is_rejected(exported, tmp_path):
    def check(changed):
        assert_rejected(tmp_path, changed, exported["public"])

    _one_byte_changed(body=exported["body"], check=check)


def test_the_properties_would_see_an_accepted_change(exported, tmp_path):
    """The check above can fail: a change signed again by the key the verifier is pinned to
    (here a forger's, with every signature of the file made again) is accepted."""
    forger = Ed25519PrivateKey.generate()
    lines = parse(exported["body"])
    lines[0] = {**lines[0], "exported_at": "2030-01-01T00:00:00.000000Z",
                "public_keys": [key_entry(forger)]}
    tenant_id = lines[0]["tenant_id"]
    lines = [checkpoint(forger, tenant_id, o["seq"], o["chain_hash"])
             if o["type"] == "checkpoint" else o for o in lines]
    head = (lines[-1]["head_seq"], lines[-1]["head_hash"])
    forged = dump(sign_statement(lines, forger, head=head))
    code, output = verdict(tmp_path, forged, public_b64(forger))
    assert code == 0, output
    with pytest.raises(AssertionError):
        assert_rejected(tmp_path, forged, public_b64(forger))
    assert_rejected(tmp_path, forged, exported["public"])
