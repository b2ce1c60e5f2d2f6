"""The ``magistrate`` parser, which registers every command group, and ``main``.

Every command prints what it did, and exits non-zero with one clear sentence on failure."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from control_plane.cli import (
    audit,
    backups,
    doctor,
    keys,
    reconcile,
    redact,
    signals,
    sso,
    stack,
    tenants,
    users,
)
from control_plane.cli.support import CommandError
from control_plane.embedded import EmbeddedServiceError
from control_plane.exceptions import MagistrateError
from control_plane.settings import Settings

# the groups in the order ``magistrate --help`` lists their commands
GROUPS = (stack, users, tenants, keys, sso, audit, backups, redact, reconcile, signals,
          doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magistrate",
        description="Magistrate: a self-hosted control plane for AI-workflow governance.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def _write_error_report(exc: BaseException) -> Path:
    """Keep an unexpected error's traceback in a 0600 file (under $MAGISTRATE_HOME/logs when the
    settings can be read), so the terminal shows one sentence and the details are not lost."""
    import tempfile
    import traceback

    folder = Path(tempfile.gettempdir())
    with contextlib.suppress(Exception):
        home = Settings.from_env().home
        if home.is_dir():  # (a home is made by ensure_home, with its mode, never here)
            (home / "logs").mkdir(mode=0o700, exist_ok=True)
            folder = home / "logs"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    fd, name = tempfile.mkstemp(prefix=f"error-{stamp}-", suffix=".log", dir=folder)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"magistrate {' '.join(sys.argv[1:])}\n")
        fh.write("".join(traceback.format_exception(exc)))
    return Path(name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. No command prints a traceback: a failure the user can act on is one
    sentence, anything else is one sentence naming the file that holds the details."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (CommandError, EmbeddedServiceError) as exc:
        print(f"magistrate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except MagistrateError as exc:  # a refusal with its sentence, wherever it was raised
        print(f"magistrate: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence, reported in a file
        try:
            where = f"the details are in {_write_error_report(exc)}"
        except OSError:
            where = "no report could be written"
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        first = re.sub(r"://[^/@\s]*@", "://***@", first)  # no credential of a URL
        print(f"magistrate: unexpected error ({type(exc).__name__}"
              f"{': ' + first if first else ''}); {where}. Please report it with that file.",
              file=sys.stderr)
        return 1
