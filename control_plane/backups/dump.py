"""Running ``pg_dump`` and ``pg_restore`` against a database, as subprocesses whose credentials
travel in their environment (never on a command line another user could read in ``ps``), and
reading a database's state inside the snapshot a dump uses."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from control_plane.backups.exceptions import BackupRefused
from control_plane.backups.pgtools import find_tool
from control_plane.tenancy.database import libpq_url

READ = 1 << 20
_ENV = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
        "dbname": "PGDATABASE", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
        "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "options": "PGOPTIONS"}


def libpq_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in conninfo_to_dict(libpq_url(url)).items():
        if key in _ENV and value is not None:
            env[_ENV[key]] = str(value)
    return env


def server_major(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    return int(conn.info.server_version) // 10000


def _first_line(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[0][:300] if lines else "no message"


@dataclass(frozen=True)
class SnapshotState:
    """What a database holds at the dump's snapshot."""

    snapshot: str
    schema_version: str | None
    row_counts: dict[str, int]
    major: int


def read_snapshot_state(conn: psycopg.Connection[tuple[object, ...]]) -> SnapshotState:
    """Inside an open REPEATABLE READ transaction: export its snapshot and count every table's
    rows in it (what the manifest records and a restore must find again)."""
    snapshot = str(conn.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
    row = conn.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL").fetchone()
    version = None
    if row and row[0]:
        found = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        version = str(found[0]) if found else None
    return SnapshotState(snapshot, version, count_rows(conn), server_major(conn))


def count_rows(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, int]:
    tables = [str(r[0]) for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
    counts: dict[str, int] = {}
    for table in tables:
        got = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier("public", table))).fetchone()
        counts[table] = int(str(got[0])) if got else 0
    return counts


def run_dump(url: str, snapshot: str, major: int, sink: Callable[[bytes], None]) -> str:
    """``pg_dump`` (custom format, its own compression) of ``url`` at ``snapshot``, every
    block handed to ``sink`` as it is produced; returns the tool's version line."""
    tool = find_tool("pg_dump", major)
    version = subprocess.run([str(tool), "--version"], capture_output=True, text=True,  # noqa: S603
                             check=False).stdout.strip()
    with subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
            [str(tool), "--format=custom", "--no-owner", "--no-privileges",
             f"--snapshot={snapshot}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=libpq_env(url)) as process:
        if process.stdout is None or process.stderr is None:  # pragma: no cover - PIPE given
            raise BackupRefused("pg_dump could not be started.")
        try:
            while True:
                block = process.stdout.read(READ)
                if not block:
                    break
                sink(block)
            stderr = process.stderr.read()
            code = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
    if code != 0:
        raise BackupRefused(f"pg_dump failed ({_first_line(stderr)}); nothing was published.")
    return version


def run_restore(admin_url: str, database: str, role: str, major: int,
                chunks: Iterable[bytes]) -> None:
    """``pg_restore`` of the plaintext ``chunks`` into ``database`` (one transaction, objects
    owned by ``role``), fed through a pipe: the plaintext never lands on disk."""
    from control_plane.tenancy.database import url_for

    tool = find_tool("pg_restore", major)
    env = libpq_env(url_for(admin_url, database=database))
    with open(os.devnull, "wb") as devnull, _tempfile_for_stderr() as err:
        process = subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
            [str(tool), "--no-owner", "--no-privileges", f"--role={role}", "--exit-on-error",
             "--single-transaction", f"--dbname={database}"],
            stdin=subprocess.PIPE, stdout=devnull, stderr=err, env=env)
        if process.stdin is None:  # pragma: no cover - PIPE given
            raise BackupRefused("pg_restore could not be started.")
        try:
            for chunk in chunks:
                process.stdin.write(chunk)
            process.stdin.close()
            code = process.wait()
        except BrokenPipeError:
            code = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        if code != 0:
            err.seek(0)
            raise BackupRefused(f"pg_restore failed ({_first_line(err.read())}); the new "
                                "database was dropped.")


def _tempfile_for_stderr() -> IO[bytes]:
    import tempfile

    return tempfile.TemporaryFile()
