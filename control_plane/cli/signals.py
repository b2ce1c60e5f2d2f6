"""``magistrate signals import``: import an exported file (CloudWatch alarm history, Jira issues,
GitHub Actions workflow runs, log lines) into a tenant's signal source, as the dashboard's
upload does (tenant_runtime/signals/service.py ``run_import``), streaming FILE (or standard
input for ``-``).

Progress goes to standard error (bytes and rows, at most a few times a second); the report,
one JSON object (state, counts, the rejected rows with their row numbers and reasons), to
standard output. Exit 0 when the file was imported (rejected rows included); 1 with a sentence
when the source has no grant, the file could not be read as a whole (the report says why, and
nothing of it was imported), or the tenant or source does not exist."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, BinaryIO

from tenant_runtime.signals.importers import FORMATS

ACTOR_NAME = "magistrate signals import"
PROGRESS_EVERY_SECONDS = 0.3


def register(sub: Any) -> None:
    signals = sub.add_parser("signals", help="import exported files into signal sources",
                             description="Import exported files into a tenant's signal "
                                         "sources.")
    ssub = signals.add_subparsers(dest="signals_command", metavar="ACTION", required=True)
    imp = ssub.add_parser(
        "import", help="import an export file into a source",
        description="Stream FILE (or standard input, for -) into the tenant's source NAME: "
                    "CloudWatch alarm history, Jira issues, GitHub Actions workflow runs or "
                    "log lines, as JSON, JSON Lines or CSV. The source must have a grant. "
                    "Progress on standard error, the report as JSON on standard output.")
    imp.add_argument("--tenant", required=True, help="the tenant's slug or id")
    imp.add_argument("--source", required=True, metavar="NAME", help="the source's name")
    imp.add_argument("--team", default="", metavar="T",
                     help="the team of rows that name none")
    imp.add_argument("--format", choices=FORMATS, dest="file_format",
                     help="the file's format (default: from its name, else its first bytes)")
    imp.add_argument("file", metavar="FILE", help="the export file, or - for standard input")
    imp.set_defaults(func=cmd_signals_import)


class ProgressLine:
    """Prints ``read X MB of Y MB (Z%), N rows`` to standard error, at most every
    ``PROGRESS_EVERY_SECONDS`` (and the last one always)."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stderr
        self.last = 0.0

    def __call__(self, bytes_read: int, bytes_total: int, rows: int, *,
                 final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < PROGRESS_EVERY_SECONDS:
            return
        self.last = now
        done = f"read {bytes_read / 1e6:.1f} MB"
        if bytes_total:
            done += f" of {bytes_total / 1e6:.1f} MB ({100 * bytes_read // bytes_total}%)"
        print(f"{done}, {rows:,} rows", file=self.out, flush=True)


def _open(path: str) -> tuple[BinaryIO, int, str]:
    from control_plane.cli.support import CommandError

    if path == "-":
        return sys.stdin.buffer, 0, "stdin"
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    return stream, os.fstat(stream.fileno()).st_size, os.path.basename(path)


def cmd_signals_import(args: argparse.Namespace) -> int:
    from control_plane.cli.support import CommandError, find_tenant, tenant_stack
    from control_plane.exceptions import MagistrateError
    from tenant_runtime.context import Actor
    from tenant_runtime.exceptions import TenantError
    from tenant_runtime.personas.scope import EVERYTHING
    from tenant_runtime.signals import service

    stream, size, filename = _open(args.file)
    progress = ProgressLine()
    try:
        with tenant_stack(args) as stack:
            with stack.session_factory() as s, s.begin():
                tenant = find_tenant(s, args.tenant)
                if tenant.state != "active":
                    raise CommandError(f"tenant {tenant.slug} is {tenant.state}: signals are "
                                       "imported into an active tenant only")
                ctx = stack.connections.context(s, tenant, Actor("system", None, ACTOR_NAME))
            with ctx.session() as ts:
                source_id = service.source_named(ts, EVERYTHING, args.source).id
            report = service.run_import(
                ctx, EVERYTHING, source_id=source_id, stream=stream, filename=filename,
                file_format=args.file_format, default_team=args.team, bytes_total=size,
                max_bytes=stack.settings.signal_upload_max_mb * 1024 * 1024,
                on_progress=progress)
    except (MagistrateError, TenantError) as exc:
        raise CommandError(exc.message) from None
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    progress(report.bytes_read, report.bytes_total,
             report.imported + report.duplicates + report.rejected, final=True)
    print(json.dumps(report.as_json(), indent=2))
    if report.state != "done":
        raise CommandError(f"the import of {filename} failed: {report.error}")
    print(f"imported {report.imported}, duplicates {report.duplicates}, rejected "
          f"{report.rejected} into source {report.source} of tenant {ctx.slug}",
          file=sys.stderr)
    return 0
