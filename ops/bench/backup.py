"""Benchmark: `magistrate backup` and `magistrate restore` against plain pg_dump / pg_restore on
the same tenant database.

Self-contained: starts its own embedded Postgres in a temporary folder (``Stack``), provisions
one tenant, and fills it with table data (ids, text, JSON and 32-byte binary values like sealed
columns, about as compressible as a tenant's data) until the database itself
(``pg_database_size``) reaches ``--mb`` MiB: the size is measured as it fills, not estimated
from a row size. It then times four things:

1. plain ``pg_dump --format=custom`` of the tenant database to a file (the same binary the
   backup uses);
2. ``backup_tenant(...)``: the whole backup (a checkpoint, the snapshot with row counts, the
   dump streamed through AES-256-GCM into the staging file, the signed manifest, publication,
   the record and its audit event);
3. plain ``pg_restore`` of that file into a new database (one transaction, as the restore does);
4. ``restore_tenant(...)``: the whole restore (signature and digest check, unwrap, decrypt
   streamed into ``pg_restore``, grants, the chain verification, row counts, sealed values).

Method: one untimed warm-up pass of all four first (the page cache and the tools' first start
are then the same for both sides); then ``--runs`` timed runs, the order of plain and governed
alternating from run to run (run 1 plain first, run 2 governed first, ...). Each timing records
the load average and the machine's busy share just before it and the load average after it.
The report gives every run, the median of each figure and the ratio of the medians.

MB/s figures are of the database's size (``pg_database_size``). Prints one JSON object on
stdout (progress, and each run's figures as it ends, on stderr) and removes everything it
started.
Run: ``.venv/bin/python ops/bench/backup.py [--mb N] [--runs N] [--quiet-wait S]``. See
ops/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
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
from ops.bench import _stack  # noqa: E402
from ops.bench._stack import Stack, log, wait_for_quiet  # noqa: E402

TARGET_RATIO = 1.5  # backup within 1.5x of plain pg_dump's time
FIRST_BATCH = 50_000  # filler rows in the first insert; later batches follow the measured size
MAX_BATCH = 400_000
ACTOR = Actor("system", None, "bench")
FIGURES = ("pg_dump", "backup", "pg_restore", "restore")
PAIRS = (("pg_dump", "backup"), ("pg_restore", "restore"))  # plain, governed


def database_size(conn: psycopg.Connection[Any]) -> int:
    return one(conn, "SELECT pg_database_size(current_database())")


def one(conn: psycopg.Connection[Any], query: str, *params: object) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def fill(url: str, target_bytes: int) -> int:
    """Insert filler rows until the database reaches ``target_bytes`` (as ``pg_database_size``
    measures it); each batch is sized from the growth per row measured so far. Returns the
    number of rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_filler (id bigint PRIMARY KEY, label text, "
                     "details jsonb, sealed bytea)")
        empty = size = database_size(conn)
        rows, batch = 0, FIRST_BATCH
        while size < target_bytes:
            conn.execute(
                "INSERT INTO bench_filler SELECT g, 'item ' || g || ' ' || md5(g::text), "
                "jsonb_build_object('n', g, 'kind', 'k' || (g %% 17), 'note', "
                "repeat(md5((g * 7)::text), 3)), "
                "decode(md5(g::text || 'a') || md5(g::text || 'b'), 'hex') "
                "FROM generate_series(%s::bigint, %s::bigint) g", (rows + 1, rows + batch))
            rows += batch
            size = database_size(conn)
            per_row = max(1.0, (size - empty) / rows)
            log(f"filled {rows} rows, {size / 2**20:.1f} of {target_bytes / 2**20:.0f} MiB "
                f"({per_row:.0f} bytes per row)")
            batch = max(1000, min(MAX_BATCH, int((target_bytes - size) / per_row)))
        conn.execute("VACUUM ANALYZE bench_filler")
        return rows


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    """Time ``fn`` after waiting for quiet; the load average before and after goes with it."""
    busy = wait_for_quiet()
    before = loadavg()
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "cpu_busy_before": busy, "loadavg_before": before,
            "loadavg_after": loadavg()}, result


class Bench:
    """The four things timed, on one tenant database; each call times one of them."""

    def __init__(self, stack: Stack, connections: TenantConnections, tenant_id: int,
                 owner_url: str, db_name: str, home: Path, major: int) -> None:
        self.stack, self.connections, self.tenant_id = stack, connections, tenant_id
        self.owner_url, self.db_name, self.admin = owner_url, db_name, stack.pg.url()
        self.pg_dump, self.pg_restore = find_tool("pg_dump", major), find_tool("pg_restore", major)
        self.plain_file = home / "plain.dump"
        self.destination = LocalFolder(home / "backups")
        self.dump_bytes = self.backup_bytes = 0
        self.backup_id: str | None = None
        self.restores = 0

    def _drop(self, name: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    def run(self, which: str, *, timing: bool = True) -> dict[str, Any]:
        """Run ``which`` once (timed unless ``timing`` is false) and clean up after it."""
        if which == "pg_dump":
            fn: Callable[[], Any] = lambda: subprocess.run(  # noqa: E731, S603
                [str(self.pg_dump), "--format=custom", "--no-owner", "--no-privileges",
                 f"--file={self.plain_file}"], env=libpq_env(self.owner_url), check=True)
        elif which == "backup":
            fn = lambda: backup_tenant(  # noqa: E731
                self.stack.session_factory, self.connections, self.destination,
                self.tenant_id, actor=ACTOR)
        elif which == "pg_restore":
            self.restores += 1
            name = f"{self.db_name}_plain{self.restores}"
            with psycopg.connect(self.admin, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                    sql.Identifier(name)))
            restore_args = [str(self.pg_restore), "--no-owner", "--no-privileges",
                            "--exit-on-error", "--single-transaction", f"--dbname={name}",
                            str(self.plain_file)]
            restore_env = libpq_env(database.url_for(self.admin, database=name))
            fn = lambda: subprocess.run(restore_args, env=restore_env, check=True)  # noqa: E731, S603
        else:
            assert self.backup_id is not None, "a restore needs a backup first"
            backup_id = self.backup_id
            fn = lambda: restore_tenant(  # noqa: E731
                self.stack.session_factory, self.connections, self.destination, "bench",
                backup_id, actor=ACTOR)
        log(f"{which}{'' if timing else ' (warm-up, not timed)'}")
        if timing:
            figure, result = timed(fn)
        else:
            started = time.perf_counter()
            result = fn()
            figure = {"seconds": round(time.perf_counter() - started, 2)}
        if which == "pg_dump":
            self.dump_bytes = self.plain_file.stat().st_size
        elif which == "backup":
            self.backup_bytes, self.backup_id = result.size, result.backup_id
        elif which == "pg_restore":
            self._drop(f"{self.db_name}_plain{self.restores}")
        else:
            self._drop(result.database)
        return figure


def run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    stack.start()
    tenant_id = stack.add_tenant("bench", "Bench")
    connections = TenantConnections(sealer=stack.sealer, providers=stack.providers,
                                    dek_cache=DataKeyCache())
    try:
        with stack.session_factory() as s:
            tenant = s.get(Tenant, tenant_id)
            assert tenant is not None
            owner_url = connections.owner_url(tenant)
            db_name = tenant.db_name
        fill_started = time.perf_counter()
        rows = fill(owner_url, args.mb * 2**20)
        fill_seconds = time.perf_counter() - fill_started
        with psycopg.connect(stack.pg.url(), autocommit=True) as conn:
            size = one(conn, "SELECT pg_database_size(%s)", db_name)
            major = int(conn.info.server_version) // 10000
        size_mb = size / 2**20
        bench = Bench(stack, connections, tenant_id, owner_url, db_name, stack.home, major)
        # the warm-up: every tool once, untimed, so neither side pays for a cold cache
        warmup = {which: bench.run(which, timing=False)["seconds"] for which in FIGURES}
        runs: list[dict[str, Any]] = []
        for number in range(1, args.runs + 1):
            plain_first = number % 2 == 1
            figures: dict[str, Any] = {}
            for pair in PAIRS:
                for which in pair if plain_first else reversed(pair):
                    figures[which] = bench.run(which)
            record = {"run": number, "order": "plain first" if plain_first else "governed first",
                      **figures,
                      "backup_vs_pg_dump": round(figures["backup"]["seconds"]
                                                 / figures["pg_dump"]["seconds"], 2),
                      "restore_vs_pg_restore": round(figures["restore"]["seconds"]
                                                     / figures["pg_restore"]["seconds"], 2)}
            runs.append(record)
            log(f"run {number}: {json.dumps(record)}")
        median = {k: statistics.median(r[k]["seconds"] for r in runs) for k in FIGURES}
        best = {k: min(r[k]["seconds"] for r in runs) for k in FIGURES}
        return {
            "benchmark": "backup",
            "database_mb": round(size_mb, 1),
            "requested_database_mb": args.mb,
            "filler_rows": rows,
            "fill_seconds": round(fill_seconds, 1),
            "runs": args.runs,
            "dump_mb": round(bench.dump_bytes / 2**20, 1),
            "encrypted_backup_mb": round(bench.backup_bytes / 2**20, 1),
            "warmup_seconds": warmup,
            "each_run": runs,
            "seconds": {k: round(v, 2) for k, v in median.items()},  # the medians
            "best_seconds": {k: round(v, 2) for k, v in best.items()},
            "mb_per_s": {k: round(size_mb / v, 1) for k, v in median.items()},
            "backup_vs_pg_dump": round(median["backup"] / median["pg_dump"], 2),
            "restore_vs_pg_restore": round(median["restore"] / median["pg_restore"], 2),
            "target": {"backup_vs_pg_dump_max": TARGET_RATIO},
            "met": median["backup"] <= TARGET_RATIO * median["pg_dump"],
            "quiet_wait_seconds": args.quiet_wait,
            "pg_dump": str(bench.pg_dump), "postgres": stack.server_version(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_at_end": loadavg()},
        }
    finally:
        connections.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024,
                        help="size to fill the tenant database to (MiB, pg_database_size)")
    parser.add_argument("--runs", type=int, default=3,
                        help="timed runs of each, order alternating (median reported)")
    _stack.add_quiet_wait(parser)
    args = parser.parse_args()
    if args.runs < 1 or args.mb < 1:
        parser.error("--runs and --mb must be at least 1")
    _stack.run_benchmark(run, args)


if __name__ == "__main__":
    main()
