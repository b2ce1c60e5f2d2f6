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
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenant", help="the tenant's slug or id")
    which.add_argument("--platform", action="store_true",
                       help="the platform's own chain (sign-ins, tenant lifecycle, key "
                            "operations) instead of a tenant's")
    export.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="the file to write (replaced if it exists)")
    export.add_argument("--first-seq", metavar="N", help="the first seq to export")
    export.add_argument("--last-seq", metavar="N", help="the last seq to export")
    export.add_argument("--since", metavar="WHEN",
                        help="events at or after this date or time (ISO 8601, UTC if no offset)")
    export.add_argument("--until", metavar="WHEN", help="events before this date or time")
    export.set_defaults(func=cmd_audit_export)
    rotate = asub.add_parser(
        "rotate-key", help="retire a tenant's checkpoint key and make a new one",
        description="Checkpoint the head with the tenant's checkpoint key, retire it and make "
                    "a new one, with a rotation statement signed by both (ops/AUDIT_FORMAT.md, "
                    "section 2). The new key's public half goes to the tenant's notification "
                    "webhook and compliance contacts.")
    rotate.add_argument("--tenant", required=True, help="the tenant's slug or id")
    rotate.set_defaults(func=cmd_audit_rotate_key)
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
    verify.add_argument("--allow-format-1", action="store_true",
                        help="check an export made before signed export statements (format 1) "
                             "by the format 1 rules")
    verify.set_defaults(func=cmd_audit_verify)


def cmd_audit_export(args: argparse.Namespace) -> int:
    from control_plane import audit
    from control_plane.cli.support import CommandError, find_tenant, tenant_stack
    from control_plane.exceptions import MagistrateError
    from control_plane.tenancy.events import TenantEvents
    from control_plane.tenancy.export import EXPORTABLE_STATES
    from tenant_runtime.audit_export import export_tenant_chain, parse_range
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
    if args.platform:
        return _export_platform(args, wanted, out, partial)
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
            lines: list[bytes] = []  # the manifest, and the statement when there is one
            for line in export_tenant_chain(ctx, wanted):
                f.write(line)
                lines = [*lines[-1:], line]
        os.replace(partial, out)
    except OSError as exc:
        raise CommandError(f"cannot write {out}: {exc.strerror or exc}") from None
    except (MagistrateError, TenantError) as exc:
        raise CommandError(exc.message) from None
    finally:
        partial.unlink(missing_ok=True)
    closing = [json.loads(line) for line in lines]
    manifest = next(o for o in closing if o["type"] == "manifest")
    statement = next((o for o in closing if o["type"] == "statement"), None)
    span = (f"seq {manifest['first_seq']}-{manifest['last_seq']}" if manifest["events"]
            else "no events in the range")
    print(f"exported tenant {ctx.slug} (id {ctx.tenant_id}) to {out}: {manifest['events']} "
          f"rows ({span}), {manifest['checkpoints']} checkpoint(s), "
          + (f"signed by key {statement['key_id']} at head seq {statement['head_seq']}"
             if statement else "unsigned (the tenant has no checkpoint key yet)"))
    print(f"{manifest['events']} rows, head {manifest['head_hash'] or 'none'}")
    return 0


def cmd_audit_rotate_key(args: argparse.Namespace) -> int:
    from control_plane import audit
    from control_plane.cli.support import CommandError, find_tenant, tenant_stack
    from control_plane.exceptions import MagistrateError
    from control_plane.tenancy.events import TenantEvents
    from tenant_runtime.checkpoints import do_rotate_checkpoint_key
    from tenant_runtime.context import Actor
    from tenant_runtime.exceptions import TenantError

    name = "magistrate audit rotate-key"
    try:
        with tenant_stack(args) as stack:
            with stack.session_factory() as s, s.begin():
                tenant = find_tenant(s, args.tenant)
                if tenant.state != "active":
                    raise CommandError(f"tenant {tenant.slug} is {tenant.state}: only an active "
                                       "tenant's checkpoint key can be rotated")
                ctx = stack.connections.context(s, tenant, Actor("system", None, name))
                with ctx.session() as ts, ts.begin():
                    rotation = do_rotate_checkpoint_key(ts, ctx)
                audit.record(s, TenantEvents.CHECKPOINT_KEY_ROTATED,
                             actor=audit.Actor("system", None, name), target_type="tenant",
                             target_id=tenant.id,
                             details={"old_key_id": rotation.old_key_id,
                                      "key_id": rotation.new_key_id})
    except (MagistrateError, TenantError) as exc:
        raise CommandError(exc.message) from None
    print(f"tenant {ctx.slug}: checkpoint key {rotation.old_key_id} retired, "
          f"{rotation.new_key_id} signs from now on")
    print(f"public key {rotation.new_public_key}")
    return 0


def _export_platform(args: argparse.Namespace, wanted: Any, out: Path, partial: Path) -> int:
    """``magistrate audit export --platform``: the platform chain, in the tenant format with
    tenant id 0 (control_plane/audit_checkpoints.py)."""
    from control_plane import audit
    from control_plane.audit_checkpoints import platform_export_lines
    from control_plane.cli.support import CommandError, tenant_stack
    from control_plane.exceptions import MagistrateError
    from control_plane.tenancy.events import TenantEvents

    name = "magistrate audit export"
    lines: list[bytes] = []
    try:
        with tenant_stack(args) as stack, _private_file(partial) as f:
            with stack.session_factory() as s, s.begin():
                audit.record(s, TenantEvents.AUDIT_EXPORTED,
                             actor=audit.Actor("system", None, name), target_type="platform",
                             details={"range": wanted.as_json(), "via": "cli"})
            for line in platform_export_lines(stack.session_factory,
                                              stack.connections.sealer, wanted):
                f.write(line)
                lines = [*lines[-1:], line]
        os.replace(partial, out)
    except OSError as exc:
        raise CommandError(f"cannot write {out}: {exc.strerror or exc}") from None
    except MagistrateError as exc:
        raise CommandError(exc.message) from None
    finally:
        partial.unlink(missing_ok=True)
    manifest, statement = (json.loads(line) for line in lines)
    print(f"exported the platform chain to {out}: {manifest['events']} rows, "
          f"{manifest['checkpoints']} checkpoint(s), signed by key {statement['key_id']} at "
          f"head seq {statement['head_seq']}")
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
    if args.allow_format_1:
        argv.append("--allow-format-1")
    return int(verifier.main(argv))
