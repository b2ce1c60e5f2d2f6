"""``magistrate backup``, ``magistrate restore`` and ``magistrate drill`` (ops/BACKUPS.md).

- ``backup tenant SLUG|--all``, ``backup control``: encrypted, signed backups published to
  ``MAGISTRATE_BACKUP_DESTINATION``; ``backup list``; ``backup prune`` (30 daily, 12 monthly);
- ``restore tenant SLUG --backup ID``: into a new database, every check first; with ``--as
  NEW_SLUG --requested-by EMAIL``, as a new tenant; with ``--replace [--requested-by EMAIL]``,
  over the live database on a ``tenant.restore`` approval (exit code 4: the approval request
  was opened); ``restore control --backup ID``: into a new database, printing
  the URL to switch to;
- ``drill``: restore each tenant's latest backup into a throwaway database, check, drop, audit.

Exit codes: 0 done; 1 a clear failure; 2 (``--all``, ``drill``) some tenants failed, listed;
4 an approval request was opened (``restore tenant --replace``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from control_plane.backups.destinations import Destination
    from control_plane.settings import Settings

EXIT_SOME_FAILED = 2
EXIT_APPROVAL_PENDING = 4


def register(sub: Any) -> None:
    backup = sub.add_parser("backup", help="encrypted, signed backups of tenants and the "
                                           "control plane",
                            description="Back up a tenant's database under a fresh data key "
                                        "wrapped by the tenant's own key-encryption key, or the "
                                        "control-plane database under the platform backup key "
                                        "(ops/BACKUPS.md).")
    bsub = backup.add_subparsers(dest="backup_command", metavar="ACTION", required=True)
    tenant = bsub.add_parser("tenant", help="back up one tenant, or every active one")
    tenant.add_argument("slug", nargs="?", help="the tenant's slug or id")
    tenant.add_argument("--all", action="store_true", help="every active or suspended tenant")
    tenant.set_defaults(func=cmd_backup_tenant)
    control = bsub.add_parser("control", help="back up the control-plane database")
    control.add_argument("--age-recipient", action="append", default=[], metavar="AGE1...",
                         help="encrypt the backup's data key to this age recipient instead of "
                              "the platform backup key (repeatable; default: "
                              "MAGISTRATE_BACKUP_AGE_RECIPIENTS)")
    control.set_defaults(func=cmd_backup_control)
    listing = bsub.add_parser("list", help="list published backups")
    listing.add_argument("--tenant", help="only this tenant's (slug or id)")
    listing.set_defaults(func=cmd_backup_list)
    prune = bsub.add_parser("prune", help="apply retention (30 daily, 12 monthly)")
    prune.add_argument("--daily", type=int, default=30, help="newest backups kept (30)")
    prune.add_argument("--monthly", type=int, default=12,
                       help="months of which the first older backup is kept (12)")
    prune.set_defaults(func=cmd_backup_prune)

    restore = sub.add_parser("restore", help="restore a backup into a new database",
                             description="Restore a backup into a new database, after checking "
                                         "the manifest's signature and the object's digest; "
                                         "the restored audit chain and row counts (and a "
                                         "tenant's sealed values) are checked against the "
                                         "manifest. The live database is touched only by "
                                         "`restore tenant --replace`, on an approval.")
    rsub = restore.add_subparsers(dest="restore_command", metavar="WHAT", required=True)
    rt = rsub.add_parser("tenant", help="restore one tenant backup")
    rt.add_argument("slug", help="the tenant's slug")
    rt.add_argument("--backup", required=True, metavar="ID", help="the backup's id")
    rt.add_argument("--as", dest="as_slug", metavar="NEW_SLUG",
                    help="restore as a new tenant with this slug (its own id, database, roles "
                         "and data keys wrapped by the same KEK); needs --requested-by, an "
                         "Owner of the source, who becomes the copy's only member")
    rt.add_argument("--requested-by", metavar="EMAIL",
                    help="the member who asks: with --as an Owner of the source tenant; with "
                         "--replace an Owner or Admin, who opens the approval request (so "
                         "another approver must decide it)")
    rt.add_argument("--replace", action="store_true",
                    help="replace the live database with the verified restore; needs an "
                         "approval through the tenant's tenant.restore gate (the first run "
                         "opens the request); a tenant whose database is missing is restored "
                         "into its name without one")
    rt.add_argument("--approval", metavar="REQUEST_ID",
                    help="with --replace: the approved tenant.restore request's id")
    rt.add_argument("--yes", action="store_true",
                    help="with --replace --approval: confirm without typing the slug")
    rt.set_defaults(func=cmd_restore_tenant)
    rc = rsub.add_parser("control", help="restore a control-plane backup into a new database")
    rc.add_argument("--backup", required=True, metavar="ID", help="the backup's id")
    rc.add_argument("--age-identity", type=Path, metavar="FILE",
                    help="an age identity file, for a backup made to age recipients")
    rc.set_defaults(func=cmd_restore_control)

    drill = sub.add_parser("drill", help="restore every tenant's latest backup as a test",
                           description="Restore the latest backup of each tenant into a "
                                       "throwaway database, run the restore checks, drop it, "
                                       "and record the result as an audit event.")
    drill.add_argument("--tenant", action="append", help="only these tenants (slug or id)")
    drill.set_defaults(func=cmd_drill)


def destinations(settings: Settings) -> tuple[str, Callable[[str], Destination]]:
    from control_plane.backups.destinations import configured

    return configured(settings)


ACTOR_NAME = "magistrate backup"


def cmd_backup_tenant(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from control_plane.audit import Actor
    from control_plane.backups.exceptions import BackupError
    from control_plane.backups.service import backup_tenant
    from control_plane.cli.support import CommandError, find_tenant, tenant_stack
    from control_plane.models import Tenant

    if bool(args.slug) == bool(args.all):
        raise CommandError("name one tenant (its slug or id) or give --all, not both")
    actor = Actor("system", None, ACTOR_NAME)
    failed: list[str] = []
    with tenant_stack(args) as stack:
        uri, opener = destinations(stack.settings)
        with stack.session_factory() as s:
            if args.all:
                ids = list(s.scalars(select(Tenant.id).where(
                    Tenant.state.in_(("active", "suspended"))).order_by(Tenant.id)))
            else:
                ids = [find_tenant(s, args.slug).id]
        for tenant_id in ids:
            try:
                done = backup_tenant(stack.session_factory, stack.connections, opener(uri),
                                     tenant_id, actor=actor)
            except BackupError as exc:
                if not args.all:
                    raise CommandError(exc.message) from None
                failed.append(f"tenant {tenant_id}: {exc.message}")
                continue
            print(f"backup {done.backup_id} of tenant {done.tenant_slug}: {done.size} bytes "
                  f"encrypted, {done.row_count} rows, audit head seq {done.audit_seq}, "
                  f"published to {done.destination}")
    for line in failed:
        print(f"magistrate: {line}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else 0


def cmd_backup_control(args: argparse.Namespace) -> int:
    from control_plane.audit import Actor
    from control_plane.backups.exceptions import BackupError
    from control_plane.backups.service import backup_control
    from control_plane.cli.support import CommandError, tenant_stack

    with tenant_stack(args) as stack:
        uri, opener = destinations(stack.settings)
        provider = stack.settings.backup_key_provider or stack.settings.key_provider
        url = stack.engine.url.render_as_string(hide_password=False)
        recipients = args.age_recipient or list(stack.settings.backup_age_recipients)
        try:
            done = backup_control(stack.session_factory, url, stack.connections.sealer,
                                  stack.providers, opener(uri), key_provider=provider,
                                  key_ref=stack.settings.backup_key_ref,
                                  actor=Actor("system", None, ACTOR_NAME),
                                  age_recipients=recipients)
        except BackupError as exc:
            raise CommandError(exc.message) from None
    under = (f"a data key age-encrypted to {len(recipients)} recipient(s)" if recipients
             else f"{provider}:{stack.settings.backup_key_ref}")
    print(f"backup {done.backup_id} of the control plane: {done.size} bytes encrypted under "
          f"{under}, {done.row_count} rows, platform audit head seq {done.audit_seq}, "
          f"published to {done.destination}")
    return 0


def cmd_backup_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from control_plane.cli.support import find_tenant, tenant_stack
    from control_plane.models import Backup

    with tenant_stack(args) as stack, stack.session_factory() as s:
        query = select(Backup).order_by(Backup.created_at.desc())
        if args.tenant:
            query = query.where(Backup.tenant_id == find_tenant(s, args.tenant).id)
        rows = list(s.scalars(query))
        if not rows:
            print("no backups")
        for b in rows:
            drill = ("never drilled" if b.drill_at is None else
                     f"drill {'passed' if b.drill_ok else 'FAILED'} {b.drill_at:%Y-%m-%d %H:%M}")
            print(f"{b.id}  {b.tenant_slug:<20} {b.created_at:%Y-%m-%d %H:%M}  "
                  f"{b.size_bytes:>12} bytes  {drill}  {b.destination}")
    return 0


def cmd_backup_prune(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from control_plane.audit import Actor
    from control_plane.backups.retention import prune
    from control_plane.cli.support import CommandError, tenant_stack
    from control_plane.models import Backup

    if args.daily < 1 or args.monthly < 0:
        raise CommandError("--daily must be at least 1 and --monthly at least 0")
    actor = Actor("system", None, "magistrate backup prune")
    with tenant_stack(args) as stack:
        _, opener = destinations(stack.settings)
        with stack.session_factory() as s:
            scopes = list(s.scalars(select(Backup.tenant_id).distinct()))
        total = 0
        for tenant_id in scopes:
            pruned = prune(stack.session_factory, opener, tenant_id, actor=actor,
                           daily=args.daily, monthly=args.monthly)
            total += len(pruned)
            for backup_id in pruned:
                print(f"pruned {backup_id} ({'control' if tenant_id is None else tenant_id})")
    print(f"{total} backup(s) pruned")
    return 0


def cmd_restore_tenant(args: argparse.Namespace) -> int:
    from control_plane.audit import Actor
    from control_plane.backups.exceptions import BackupError
    from control_plane.backups.restore import restore_tenant
    from control_plane.cli.support import CommandError, tenant_stack

    if args.replace:
        return _restore_replacing(args)
    if args.approval or args.yes:
        raise CommandError("--approval and --yes go with --replace; a restore without it "
                           "never touches the live database")
    if args.as_slug:
        return _restore_as(args)
    if args.requested_by:
        raise CommandError("--requested-by goes with --as or --replace; a plain restore into "
                           "a new database needs no requester")
    with tenant_stack(args) as stack:
        try:
            done = restore_tenant(stack.session_factory, stack.connections,
                                  _backup_destination(stack, args.backup),
                                  args.slug, args.backup,
                                  actor=Actor("system", None, "magistrate restore"))
        except BackupError as exc:
            raise CommandError(exc.message) from None
    print(f"restored backup {done.backup_id} of tenant {args.slug} into the new database "
          f"{done.database}: {done.rows} rows, audit chain verified to seq {done.audit_seq}, "
          f"row counts and sealed values checked ({done.seconds:.1f} s). The live database "
          "was not touched.")
    if done.upgraded_from is not None:
        print(f"the backup's tenant schema {done.upgraded_from} was older than this version's; "
              "the restored database was upgraded by the tenant migrations")
    return 0


def _requester_id(stack: Any, email: str) -> int:
    from control_plane.cli.support import find_user

    with stack.session_factory() as s:
        return int(find_user(s, email, what="--requested-by").id)


def _restore_as(args: argparse.Namespace) -> int:
    from control_plane.backups.exceptions import BackupError
    from control_plane.backups.restore_as import restore_as
    from control_plane.cli.support import CommandError, tenant_stack

    if not args.requested_by:
        raise CommandError("--as needs --requested-by EMAIL: an Owner of the source tenant, "
                           "who becomes the new tenant's Owner")
    with tenant_stack(args) as stack:
        user_id = _requester_id(stack, args.requested_by)
        try:
            done = restore_as(stack.session_factory, stack.connections,
                              _backup_destination(stack, args.backup), args.slug, args.backup,
                              new_slug=args.as_slug, requested_by=user_id)
        except BackupError as exc:
            raise CommandError(exc.message) from None
    print(f"restored backup {done.backup_id} of tenant {args.slug} as the new tenant "
          f"{done.slug} (id {done.tenant_id}, database {done.database}): {done.rows} rows, "
          f"audit chain verified against the manifest and continued at seq "
          f"{done.restored_from_seq} with tenant.restored_from, {done.sealed_moved} sealed "
          f"values moved to the new tenant ({done.seconds:.1f} s). Its data keys are the "
          f"source's, wrapped by the same key-encryption key; {args.requested_by} is its only "
          f"member (Owner). Tenant {args.slug} was not touched.")
    if done.unreadable:
        print(f"magistrate: {done.unreadable} sealed value(s) did not open in the backup and "
              "were left as they were", file=sys.stderr)
    return 0


def _backup_destination(stack: Any, backup_id: str) -> Destination:
    from control_plane.backups.destinations import recorded_destination

    return recorded_destination(stack.session_factory, stack.settings, backup_id)


def _confirmed(args: argparse.Namespace) -> bool:
    if args.yes is True:
        return True
    if not sys.stdin.isatty():
        return False
    typed = input(f"This replaces the live database of tenant {args.slug}; what happened after "
                  "the backup stays only in the retained database. Type the slug to go on: ")
    return bool(typed.strip() == str(args.slug).strip())


def _restore_replacing(args: argparse.Namespace) -> int:
    from control_plane.audit import Actor
    from control_plane.backups.exceptions import BackupError
    from control_plane.backups.replace import (
        live_database_missing,
        replace_tenant,
        request_replace,
    )
    from control_plane.cli.support import CommandError, tenant_stack
    from tenant_runtime.approvals.gates import ApprovalPending
    from tenant_runtime.exceptions import TenantError

    if args.as_slug:
        raise CommandError("--as and --replace cannot be combined")
    actor = Actor("system", None, "magistrate restore")
    with tenant_stack(args) as stack:
        try:
            lost = live_database_missing(stack.session_factory, stack.connections, args.slug,
                                         args.backup)
        except BackupError as exc:
            raise CommandError(exc.message) from None
        if not args.approval and not lost:
            user_id = (_requester_id(stack, args.requested_by) if args.requested_by
                       else None)
            try:
                request_replace(stack.session_factory, stack.connections, args.slug,
                                args.backup, actor=actor, requested_by=user_id)
            except ApprovalPending as pending:
                print(pending.message)
                return EXIT_APPROVAL_PENDING
            except (BackupError, TenantError) as exc:
                raise CommandError(exc.message) from None
        if not _confirmed(args):
            raise CommandError(f"not confirmed: add --yes (or type the slug {args.slug} at the "
                               "prompt) to replace the live database; nothing was changed")
        try:
            done = replace_tenant(stack.session_factory, stack.connections,
                                  _backup_destination(stack, args.backup), args.slug,
                                  args.backup, approval_id=args.approval, actor=actor)
        except (BackupError, TenantError) as exc:
            raise CommandError(exc.message) from None
    if done.retained is None:
        print(f"the database of tenant {args.slug} was missing: backup {done.backup_id} was "
              f"restored and verified ({done.rows} rows, manifest checked against the keys "
              f"the control plane recorded) and now runs as {done.database} "
              f"({done.seconds:.1f} s). No approval was needed: nothing live was replaced.")
        return 0
    print(f"approval request {done.approval_id} used")
    print(f"tenant {args.slug} now runs on backup {done.backup_id}: {done.rows} rows restored "
          f"and verified, then swapped in as {done.database} ({done.seconds:.1f} s). The "
          f"replaced database is retained, closed, as {done.retained} (its chain ended at seq "
          f"{done.replaced_head[0]}); drop it once it is no longer needed (ops/BACKUPS.md).")
    return 0


def cmd_restore_control(args: argparse.Namespace) -> int:
    from control_plane.audit import Actor
    from control_plane.backups.control_restore import restore_control
    from control_plane.backups.exceptions import BackupError
    from control_plane.cli.support import CommandError, tenant_stack

    with tenant_stack(args) as stack:
        url = stack.engine.url.render_as_string(hide_password=False)
        try:
            done = restore_control(stack.session_factory, url, stack.providers,
                                   _backup_destination(stack, args.backup), args.backup,
                                   actor=Actor("system", None, "magistrate restore"),
                                   age_identity=args.age_identity)
        except BackupError as exc:
            raise CommandError(exc.message) from None
    print(f"restored control-plane backup {done.backup_id} into the new database "
          f"{done.database}: {done.rows} rows, platform audit chain and checkpoints verified "
          f"to seq {done.audit_seq}, row counts checked, manifest signature checked against "
          f"{done.signature_checked_by} ({done.seconds:.1f} s). Nothing running was touched.")
    print(f"To switch, stop Magistrate and set MAGISTRATE_DATABASE_URL={done.url} (the same "
          "credentials as now), then start it again.")
    return 0


def cmd_drill(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from control_plane.audit import Actor
    from control_plane.backups.restore import drill_tenant
    from control_plane.cli.support import find_tenant, tenant_stack
    from control_plane.models import Tenant

    actor = Actor("system", None, "magistrate drill")
    failures = 0
    with tenant_stack(args) as stack:
        _, opener = destinations(stack.settings)
        with stack.session_factory() as s:
            if args.tenant:
                ids = [find_tenant(s, t).id for t in args.tenant]
            else:
                ids = list(s.scalars(select(Tenant.id).where(
                    Tenant.state.in_(("active", "suspended"))).order_by(Tenant.id)))
        for tenant_id in ids:
            result = drill_tenant(stack.session_factory, stack.connections, opener, tenant_id,
                                  actor=actor)
            age = ("" if result.backup_age_hours is None
                   else f", backup {result.backup_age_hours:.1f} h old")
            verdict = "passed" if result.ok else "FAILED"
            print(f"drill {verdict}: tenant {result.tenant_slug}, backup "
                  f"{result.backup_id or '-'} ({result.seconds:.1f} s{age}): {result.reason}")
            failures += 0 if result.ok else 1
    return EXIT_SOME_FAILED if failures else 0
