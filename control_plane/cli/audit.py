"""``magistrate audit export`` and ``magistrate audit verify``.

``export`` writes a tenant's audit chain (ops/AUDIT_FORMAT.md) to a file of mode 0600, through a
``.partial`` file renamed at the end, so an interrupted export never looks complete; the request
goes to the platform audit chain first, like an export over HTTP. ``verify`` runs the offline
verifier, ops/verify_audit_chain.py, itself: the same checks a compliance team runs, and the
same exit codes (0 intact, 1 a problem, named; 2 the command line or this machine)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, BinaryIO

VERIFIER = Path(__file__).resolve().parents[2] / "ops" / "verify_audit_chain.py"


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="export and verify tenants' audit logs",
                           description="Export a tenant's audit chain and verify an export "
                                       "(ops/AUDIT_FORMAT.md).")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    export = asub.add_parser(
        "export", help="write a tenant's audit chain to a JSON Lines file",
        description="Write the tenant's audit events (all, or a range by seq or by date), the "
                    "signed checkpoints of that range and a manifest to FILE (mode 0600). "
                    "Check it with `magistrate audit verify FILE` or, anywhere, with "
                    "ops/verify_audit_chain.py.")
    export.add_argument("--tenant", required=True, help="the tenant's slug or id")
    export.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="the file to write (replaced if it exists)")
    export.add_argument("--first-seq", metavar="N", help="the first seq to export")
    export.add_argument("--last-seq", metavar="N", help="the last seq to export")
    export.add_argument("--since", metavar="WHEN",
                        help="events at or after this date or time (ISO 8601, UTC if no offset)")
    export.add_argument("--until", metavar="WHEN", help="events before this date or time")
    export.set_defaults(func=cmd_audit_export)
    verify = asub.add_parser(
        "verify", help="verify an exported audit log, as ops/verify_audit_chain.py does",
        description="Check an export's hash chain, seq continuity, checkpoints and manifest. "
                    "Exit 0: intact; 1: the first problem is named; 2: cannot check.")
    verify.add_argument("file", metavar="FILE", help="the exported .jsonl file")
    verify.add_argument("--pin-key", metavar="B64",
                        help="the tenant's checkpoint public key: every checkpoint must be "
                             "signed by it")
    verify.add_argument("--checkpoint", metavar="FILE",
                        help="a checkpoint (JSON) kept outside the export, which the log must "
                             "reach and match")
    verify.set_defaults(func=cmd_audit_verify)


def cmd_audit_export(args: argparse.Namespace) -> int:
    from control_plane import audit
    from control_plane.cli.support import CommandError, find_tenant, tenant_stack
    from control_plane.exceptions import MagistrateError
    from control_plane.tenancy.events import TenantEvents
    from control_plane.tenancy.export import EXPORTABLE_STATES
    from tenant_runtime.audit_export import export_lines, parse_range
    from tenant_runtime.context import Actor
    from tenant_runtime.exceptions import TenantError

    try:
        wanted = parse_range({"first_seq": args.first_seq, "last_seq": args.last_seq,
                              "since": args.since, "until": args.until})
    except TenantError as exc:  # the message names the options as they are spelled here
        raise CommandError(re.sub(r"\b(first_seq|last_seq|since|until)\b",
                                  lambda m: "--" + m.group(1).replace("_", "-"),
                                  exc.message)) from None
    out: Path = args.out
    partial = out.with_name(out.name + ".partial")
    name = "magistrate audit export"
    try:  # the file first: an unwritable --out fails before anything is recorded
        with tenant_stack(args) as stack, _private_file(partial) as f:
            with stack.session_factory() as s, s.begin():
                tenant = find_tenant(s, args.tenant)
                if tenant.state not in EXPORTABLE_STATES:
                    raise CommandError(f"tenant {tenant.slug} is {tenant.state}: only an active "
                                       "or suspended tenant's audit log can be exported")
                ctx = stack.connections.context(s, tenant, Actor("system", None, name))
                audit.record(s, TenantEvents.AUDIT_EXPORTED,
                             actor=audit.Actor("system", None, name), target_type="tenant",
                             target_id=tenant.id,
                             details={"range": wanted.as_json(), "via": "cli"})
            last = b""
            with ctx.session() as ts:
                for line in export_lines(ts, tenant_id=ctx.tenant_id, slug=ctx.slug,
                                         first_seq=wanted.first_seq, last_seq=wanted.last_seq,
                                         since=wanted.since, until=wanted.until):
                    f.write(line)
                    last = line
        os.replace(partial, out)
    except OSError as exc:
        raise CommandError(f"cannot write {out}: {exc.strerror or exc}") from None
    except (MagistrateError, TenantError) as exc:
        raise CommandError(exc.message) from None
    finally:
        partial.unlink(missing_ok=True)
    manifest = json.loads(last)
    span = (f"seq {manifest['first_seq']}-{manifest['last_seq']}" if manifest["events"]
            else "no events in the range")
    print(f"exported tenant {ctx.slug} (id {ctx.tenant_id}) to {out}: {manifest['events']} "
          f"rows ({span}), {manifest['checkpoints']} checkpoint(s)")
    print(f"{manifest['events']} rows, head {manifest['head_hash'] or 'none'}")
    return 0


def _private_file(path: Path) -> BinaryIO:
    """``path`` opened for writing with mode 0600, also when it existed already."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from control_plane.cli.support import CommandError

    spec = importlib.util.spec_from_file_location("verify_audit_chain", VERIFIER)
    if not VERIFIER.is_file() or spec is None or spec.loader is None:
        raise CommandError(f"the offline verifier is not at {VERIFIER}; run it from a copy "
                           "of the repository's ops/ folder")
    verifier = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verifier)
    argv = [args.file]
    if args.pin_key:
        argv += ["--pin-key", args.pin_key]
    if args.checkpoint:
        argv += ["--checkpoint", args.checkpoint]
    return int(verifier.main(argv))
