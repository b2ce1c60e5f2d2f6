"""``magistrate keys rotate``: rewrap a tenant's data key, and with ``--reencrypt`` move every
sealed value to a new data key. The procedure is in ops/KEY_ROTATION.md.

Exit codes: 0 done; 1 a clear failure (unknown tenant, key unavailable, another rotation
running); 3 finished, but some rows could not be moved (they are listed)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

EXIT_FAILED_ROWS = 3


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="operate tenants' data keys",
                          description="Operate tenants' data keys (ops/KEY_ROTATION.md).")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    rotate = ksub.add_parser(
        "rotate", help="rewrap a tenant's data key; with --reencrypt, replace it",
        description="Rewrap the tenant's data key under its key-encryption key (a KMS picks its "
                    "current primary version), or under --new-key-ref. With --reencrypt, also "
                    "create a new data key and move every sealed value to it, in batches; a "
                    "run that stopped part-way continues where it stopped. Exit code 3 means "
                    "it finished but some rows could not be moved (they are listed). Exit "
                    "code 4: the tenant made keys.rotate a restricted action and an approval "
                    "request was opened; run again with --approval REQUEST_ID once approved.")
    rotate.add_argument("--tenant", required=True, help="the tenant's slug or id")
    rotate.add_argument("--new-key-ref", help="wrap under this key of the tenant's provider "
                                              "from now on (it must exist already)")
    rotate.add_argument("--reencrypt", action="store_true",
                        help="also move every sealed value to a new data key")
    rotate.add_argument("--dry-run", action="store_true",
                        help="check the keys and report what would change; write nothing")
    rotate.add_argument("--approval", metavar="REQUEST_ID",
                        help="when the tenant made keys.rotate a restricted action: the id of "
                             "the approved request (a run without it opens one)")
    rotate.set_defaults(func=cmd_keys_rotate)


class ProgressLine:
    """``\\r``-rewritten on a terminal; one plain line per update otherwise (logs, CI)."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.tty = stream.isatty()
        self._open = False

    def __call__(self, done: int, total: int) -> None:
        line = f"  {self.label} {done}/{total} rows"
        if self.tty:
            self.stream.write("\r" + line)
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from control_plane.audit import Actor
    from control_plane.cli.support import CommandError, find_tenant, tenant_stack
    from control_plane.exceptions import MagistrateError
    from control_plane.keys.providers import KeyUnavailable
    from control_plane.tenancy.rotation import reencrypt, rewrap
    from tenant_runtime.approvals import gates
    from tenant_runtime.context import Actor as TenantActor
    from tenant_runtime.exceptions import TenantError

    actor = Actor("system", None, "magistrate keys rotate")
    dry = "dry run: " if args.dry_run else ""
    phase = "rewrap"
    with tenant_stack(args, pool_size=3) as stack:
        try:
            with stack.session_factory() as s, s.begin():
                tenant = find_tenant(s, args.tenant)
                tenant_id, slug = tenant.id, tenant.slug
                if not args.dry_run and tenant.state in ("active", "suspended"):
                    ctx = stack.connections.context(
                        s, tenant, TenantActor("system", None, "magistrate keys rotate"))
                    try:
                        used = gates.guard(ctx, "keys.rotate", {"tenant_id": tenant_id},
                                           approval_id=args.approval, via="internal")
                    except gates.ApprovalPending as pending:
                        print(pending.message)
                        return 4
                    except TenantError as exc:
                        raise CommandError(f"{exc.message} Nothing was changed.") from None
                    if used:
                        print(f"approval request {used} used")
                report = rewrap(s, tenant, stack.providers, new_key_ref=args.new_key_ref,
                                dry_run=args.dry_run, actor=actor)
            verb = "would rewrap" if args.dry_run else "rewrapped"
            print(f"{dry}tenant {slug} (id {tenant_id}): {verb} {len(report.versions)} data "
                  f"key version(s) under {report.provider}:{report.key_ref}")
            for v in report.versions:
                print(f"  version {v.version}: was {v.from_provider}:{v.from_key_ref}")
            if not args.reencrypt:
                return 0
            phase = "reencrypt"
            line = ProgressLine(sys.stderr, "checking" if args.dry_run else "re-encrypting")
            try:
                result = reencrypt(stack.session_factory, tenant_id, stack.connections,
                                   dry_run=args.dry_run, progress=line, actor=actor)
            finally:
                line.close()
        except KeyUnavailable as exc:
            if phase == "rewrap":
                raise CommandError(f"{exc}. Nothing was changed.") from None
            raise CommandError(f"{exc}. Rows already moved stay moved; run the command again "
                               "once the key can be used and it continues where it stopped."
                               ) from None
        except MagistrateError as exc:
            raise CommandError(exc.message) from None

    sources = ", ".join(str(v) for v in result.from_versions)
    if args.dry_run:
        target = (f"version {result.to_version} (unfinished run, would continue)"
                  if result.resumed else f"a new version {result.to_version}")
        print(f"dry run: re-encryption from version(s) {sources} to {target}: "
              f"{result.rows_moved} row(s) would move, {len(result.failed)} would fail")
    else:
        resumed = " (continued an unfinished run)" if result.resumed else ""
        print(f"re-encrypted from version(s) {sources} to version {result.to_version}"
              f"{resumed}: {result.rows_moved} row(s), {result.values_moved} value(s) moved, "
              f"{len(result.failed)} failed")
        retired = ", ".join(str(v) for v in result.retired_versions)
        print(f"retired version(s): {retired}" if retired else
              "no version retired: rows still reference the old version(s)")
    if result.failed:
        print(f"rows that {'would fail' if args.dry_run else 'failed'} "
              f"(table, primary key: reason):")
        for f in result.failed:
            print(f"  {f.table}, {f.row_key}: {f.reason}")
        print(f"magistrate: {len(result.failed)} row(s) could not be moved; see "
              "ops/KEY_ROTATION.md, 'A failed row'", file=sys.stderr)
        return EXIT_FAILED_ROWS
    return 0
