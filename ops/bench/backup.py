"""Benchmark: `magistrate backup` and `magistrate restore` against plain pg_dump / pg_restore on
the same tenant database.

Self-contained: starts its own embedded Postgres in a temporary folder (``Stack``), provisions
one tenant, fills it with ``--mb`` MB of table data (default 1024: ids, text, JSON and 32-byte
binary values like sealed columns, about as compressible as a tenant's data), then times, each
``--runs`` times (the best run is reported):

1. plain ``pg_dump --format=custom`` of the tenant database to a file (the same binary the
   backup uses);
2. ``backup_tenant(...)``: the whole backup (a checkpoint, the snapshot with row counts, the
   dump streamed through AES-256-GCM into the staging file, the signed manifest, publication,
   the record and its audit event);
3. plain ``pg_restore`` of that file into a new database (one transaction, as the restore does);
4. ``restore_tenant(...)``: the whole restore (signature and digest check, unwrap, decrypt
   streamed into ``pg_restore``, grants, the chain verification, row counts, sealed values).

MB/s figures are of the database's size (``pg_database_size``). Prints one JSON object on
stdout (progress on stderr) and removes everything it started.
Run: ``.venv/bin/python ops/bench/backup.py [--mb N] [--runs N]``. See ops/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
# the script's own folder holds mcp.py, which would shadow the mcp SDK the app imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from control_plane.audit import Actor  # noqa: E402
from control_plane.backups.destinations import LocalFolder  # noqa: E402
from control_plane.backups.dump import libpq_env  # noqa: E402
from control_plane.backups.pgtools import find_tool  # noqa: E402
from control_plane.backups.restore import restore_tenant  # noqa: E402
from control_plane.backups.service import backup_tenant  # noqa: E402
from control_plane.keys.registry import DataKeyCache  # noqa: E402
from control_plane.models import Tenant  # noqa: E402
from control_plane.tenancy import database  # noqa: E402
from control_plane.tenancy.connections import TenantConnections  # noqa: E402
from ops.bench._stack import Stack, log, wait_for_quiet  # noqa: E402

TARGET_RATIO = 1.5  # backup within 1.5x of plain pg_dump's time
ROW_BYTES = 420  # roughly, per filler row on disk
ACTOR = Actor("system", None, "bench")


def fill(url: str, mb: int) -> None:
    rows = mb * 1024 * 1024 // ROW_BYTES
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_filler (id bigint PRIMARY KEY, label text, "
                     "details jsonb, sealed bytea)")
        step = 200_000
        for start in range(1, rows + 1, step):
            end = min(rows, start + step - 1)
            conn.execute(
                "INSERT INTO bench_filler SELECT g, 'item ' || g || ' ' || md5(g::text), "
                "jsonb_build_object('n', g, 'kind', 'k' || (g %% 17), 'note', "
                "repeat(md5((g * 7)::text), 3)), "
                "decode(md5(g::text || 'a') || md5(g::text || 'b'), 'hex') "
                "FROM generate_series(%s::bigint, %s::bigint) g", (start, end))
            log(f"filled {end}/{rows} rows")
        conn.execute("VACUUM ANALYZE bench_filler")


def timed(fn: Any) -> tuple[float, Any]:
    wait_for_quiet()
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="table data to back up (MB)")
    parser.add_argument("--runs", type=int, default=1, help="timed runs of each (best kept)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="magistrate-bench-backup-"))
    stack = Stack(home)
    try:
        stack.start()
        tenant_id = stack.add_tenant("bench", "Bench")
        connections = TenantConnections(sealer=stack.sealer, providers=stack.providers,
                                        dek_cache=DataKeyCache())
        with stack.session_factory() as s:
            tenant = s.get(Tenant, tenant_id)
            assert tenant is not None
            owner_url = connections.owner_url(tenant)
            db_name = tenant.db_name
        admin = stack.pg.url()
        fill(owner_url, args.mb)
        with psycopg.connect(admin, autocommit=True) as conn:
            size = int(conn.execute("SELECT pg_database_size(%s)", (db_name,)).fetchone()[0])
            major = int(conn.info.server_version) // 10000
        size_mb = size / 1024 / 1024
        pg_dump, pg_restore = find_tool("pg_dump", major), find_tool("pg_restore", major)
        plain_file = home / "plain.dump"
        destination = LocalFolder(home / "backups")
        figures: dict[str, list[float]] = {k: [] for k in (
            "pg_dump", "backup", "pg_restore", "restore")}
        dump_bytes = backup_bytes = 0
        for run in range(args.runs):
            log(f"run {run + 1}: pg_dump")
            seconds, _ = timed(lambda: subprocess.run(  # noqa: S603
                [str(pg_dump), "--format=custom", "--no-owner", "--no-privileges",
                 f"--file={plain_file}"], env=libpq_env(owner_url), check=True))
            figures["pg_dump"].append(seconds)
            dump_bytes = plain_file.stat().st_size
            log(f"run {run + 1}: backup")
            seconds, done = timed(lambda: backup_tenant(
                stack.session_factory, connections, destination, tenant_id, actor=ACTOR))
            figures["backup"].append(seconds)
            backup_bytes = done.size
            name = f"{db_name}_plain{run}"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                    sql.Identifier(name)))
            log(f"run {run + 1}: pg_restore")
            restore_args = [str(pg_restore), "--no-owner", "--no-privileges",
                            "--exit-on-error", "--single-transaction", f"--dbname={name}",
                            str(plain_file)]
            restore_env = libpq_env(database.url_for(admin, database=name))
            seconds, _ = timed(lambda a=restore_args, e=restore_env: subprocess.run(  # noqa: S603
                a, env=e, check=True))
            figures["pg_restore"].append(seconds)
            log(f"run {run + 1}: restore")
            backup_id = done.backup_id
            seconds, restored = timed(lambda b=backup_id: restore_tenant(
                stack.session_factory, connections, destination, "bench", b, actor=ACTOR))
            figures["restore"].append(seconds)
            with psycopg.connect(admin, autocommit=True) as conn:
                for drop in (name, restored.database):
                    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                        sql.Identifier(drop)))
        best = {k: min(v) for k, v in figures.items()}
        result = {
            "benchmark": "backup",
            "database_mb": round(size_mb, 1),
            "requested_table_mb": args.mb,
            "runs": args.runs,
            "dump_mb": round(dump_bytes / 1024 / 1024, 1),
            "encrypted_backup_mb": round(backup_bytes / 1024 / 1024, 1),
            "seconds": {k: round(v, 2) for k, v in best.items()},
            "mb_per_s": {k: round(size_mb / v, 1) for k, v in best.items()},
            "backup_vs_pg_dump": round(best["backup"] / best["pg_dump"], 2),
            "restore_vs_pg_restore": round(best["restore"] / best["pg_restore"], 2),
            "target": {"backup_vs_pg_dump_max": TARGET_RATIO},
            "met": best["backup"] <= TARGET_RATIO * best["pg_dump"],
            "pg_dump": str(pg_dump), "postgres": stack.server_version(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }
        connections.close()
        print(json.dumps(result, indent=1))
    finally:
        stack.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
