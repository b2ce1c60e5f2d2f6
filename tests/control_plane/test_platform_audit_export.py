"""The platform audit chain exported and verified offline like a tenant's
(control_plane/audit_checkpoints.py, ops/AUDIT_FORMAT.md): signed checkpoints with the
platform key, a statement at export time, the same verifier; and ``magistrate audit export
--platform`` from the shell."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from control_plane import audit
from control_plane.audit_checkpoints import (
    make_platform_checkpoint,
    platform_export_lines,
    platform_public_key,
)
from control_plane.models import PlatformCheckpoint, PlatformCheckpointKey
from tenant_runtime.audit_export import ExportRange
from tests.conftest import TEST_SECRET_KEY
from tests.ops.test_verify_audit_chain import dump, events, parse, reseal, verifier


def record(services, n: int) -> None:
    for i in range(n):
        with services.session_factory() as s, s.begin():
            audit.record(s, "test.platform_event", actor=audit.Actor.user(1, "ops@example.com"),
                         target_type="tenant", target_id=i, details={"i": i})


def verify(tmp_path: Path, body: bytes, *args: str) -> tuple[int, str]:
    path = tmp_path / "platform.jsonl"
    path.write_bytes(body)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = verifier.main([str(path), *args])
    return code, out.getvalue()


def test_the_platform_chain_exports_and_verifies_pinned_to_the_platform_key(services, tmp_path):
    record(services, 12)
    with services.session_factory() as s, s.begin():
        first = make_platform_checkpoint(s, services.sealer)
        assert first is not None  # the first one makes the key (one more event) and signs
        assert make_platform_checkpoint(s, services.sealer) is None  # nothing new
    record(services, 5)
    body = b"".join(platform_export_lines(services.session_factory, services.sealer,
                                          ExportRange()))
    with services.session_factory() as s:
        public = platform_public_key(s)
        stored = s.scalars(select(PlatformCheckpointKey)).one()
        assert s.scalars(select(PlatformCheckpoint.seq)).all() == [first.seq, first.seq + 5]
    assert stored.private_key_sealed and public.encode() not in stored.private_key_sealed
    lines = parse(body)
    assert lines[0]["tenant_id"] == 0 and lines[0]["tenant"] == "platform"
    assert lines[-1]["type"] == "statement" and lines[-1]["head_seq"] == first.seq + 5
    code, output = verify(tmp_path, body, "--pin-key", public)
    assert code == 0, output
    assert "chain: from genesis" in output and "signed by the pinned key" in output
    assert output.splitlines()[-1].startswith(f"OK {first.seq + 5} rows, head ")

    # a forger with the control database: sign-ins rewritten, checkpoints stripped
    forged = [o for o in lines if o["type"] != "checkpoint"]
    for row in events(forged)[2:]:
        row["actor_name"] = "mallory@example.com"
    prev = events(forged)[2]["prev_hash"]
    for row in events(forged)[2:]:
        row["prev_hash"] = prev
        row["chain_hash"] = prev = verifier.event_hash(row, prev)
    code, output = verify(tmp_path, dump(reseal(forged)), "--pin-key", public)
    assert code == 1 and output.startswith("FAIL a whole-log export of a tenant with a "
                                           "checkpoint key, but no checkpoint"), output
    cut = [o for o in parse(body) if o["type"] != "event" or o["seq"] <= first.seq + 2]
    cut = [o for o in cut if o["type"] != "checkpoint" or o["seq"] <= first.seq]
    code, output = verify(tmp_path, dump(reseal(cut)), "--pin-key", public)
    assert code == 1 and output.startswith("FAIL statement: the tenant's chain had reached "
                                           f"seq {first.seq + 5}"), output


def test_export_the_platform_chain_from_the_shell(services, database_url, redis_url, settings,
                                                  tmp_path):
    record(services, 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update({"MAGISTRATE_DATABASE_URL": database_url, "MAGISTRATE_REDIS_URL": redis_url,
                "MAGISTRATE_SECRET_KEY": TEST_SECRET_KEY, "MAGISTRATE_HOME": str(settings.home)})
    out = tmp_path / "platform.jsonl"
    done = subprocess.run([sys.executable, "-m", "control_plane", "audit", "export",
                           "--platform", "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"exported the platform chain to {out}: ")
    assert out.stat().st_mode & 0o777 == 0o600
    with services.session_factory() as s:
        public = platform_public_key(s)
    checked = subprocess.run([sys.executable, "-m", "control_plane", "audit", "verify",
                              str(out), "--pin-key", public], env=env, capture_output=True,
                             text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    header = json.loads(out.read_bytes().splitlines()[0])
    assert header["tenant"] == "platform" and header["public_keys"][0]["public_key"] == public
    both = subprocess.run([sys.executable, "-m", "control_plane", "audit", "export",
                           "--platform", "--tenant", "acme", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
