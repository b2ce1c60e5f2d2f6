"""Benchmark: tenant provisioning time and the no-op `magistrate migrate` fan-out.

Self-contained: starts its own embedded Postgres in a temporary folder, migrates a control
database, creates an Owner, registers the server and a local key-encryption key, then

1. builds the tenant template once (``template_build_ms``),
2. provisions 50 tenants one after another through the real ``do_create_tenant`` and
   ``provision(...)`` (the code the provisioning job runs), timing ``provision`` only, and each
   of its steps through its progress callback,
3. provisions more tenants up to 200 (not timed),
4. times the fan-out over the 200 tenants, all already at head (``fanout_noop_seconds``), and
   the whole ``magistrate migrate`` command around it (``migrate_command_seconds``),
5. times the building blocks on their own (``floor_ms``): an admin connection, the template
   check, ``CREATE DATABASE`` from the template with each strategy, and creating as many files
   as a new database has on the same filesystem.

Prints one JSON object on stdout (progress goes to stderr), and removes everything it started.
Run: ``.venv/bin/python ops/bench/provision.py`` or ``make bench``. See ops/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
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

from control_plane.tenancy import database  # noqa: E402
from control_plane.tenancy.fanout import migrate_tenants  # noqa: E402
from control_plane.tenancy.provisioning import STEPS, provision  # noqa: E402
from ops.bench._stack import Stack, log, percentile  # noqa: E402

TIMED_TENANTS = 50
COLD_TENANTS = 25  # then timed with no spare ready, for comparison
TOTAL_TENANTS = 200
CONCURRENCY = 8
TARGETS = {"provision_p95_ms": 300, "fanout_noop_seconds": 20}


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 1), "p95": round(percentile(values, 0.95), 1),
            "max": round(max(values), 1)}


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class Bench(Stack):
    """The shared stack (``ops/bench/_stack.py``): tenants are added one by one."""

    def set_up(self) -> None:
        self.start()

    def create_tenant(self, number: int) -> int:
        return self.new_tenant(f"bench-{number:03d}", f"Bench {number}")

    def provision(self, tenant_id: int) -> tuple[float, list[float]]:
        """Provisioning time in ms, and each step's share of it."""
        marks: list[float] = []
        started = time.perf_counter()
        state = provision(self.session_factory, tenant_id, sealer=self.sealer,
                          providers=self.providers,
                          progress=lambda done, total, note: marks.append(time.perf_counter()))
        total = ms_since(started)
        if state != "active":
            raise RuntimeError(f"tenant {tenant_id} ended {state}, not active")
        edges = [started, *marks]
        return total, [(b - a) * 1000 for a, b in zip(edges, edges[1:], strict=False)]

    def floors(self) -> dict[str, Any]:
        """The building blocks on their own: the floor under each provisioning step."""
        admin = database.url_for(self.pg.url(), database="postgres")
        template = database.template_name()

        def timed(action: Callable[[], object], n: int = 20) -> dict[str, float]:
            samples = []
            for _ in range(n):
                started = time.perf_counter()
                action()
                samples.append(ms_since(started))
            return summary(samples)

        def connect() -> None:
            psycopg.connect(database.libpq_url(admin), autocommit=True).close()

        out: dict[str, Any] = {
            "admin_connection": timed(connect),
            "ensure_template_when_present": timed(lambda: database.ensure_template(admin)),
        }
        created = []
        with psycopg.connect(database.libpq_url(admin), autocommit=True) as conn:
            for strategy in ("WAL_LOG", "FILE_COPY"):
                samples = []
                for i in range(10):  # dropped only at the end: a drop would hide the cost
                    name = f"bench_floor_{strategy.lower()}_{i}"
                    started = time.perf_counter()
                    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY {}").format(
                        sql.Identifier(name), sql.Identifier(template), sql.SQL(strategy)))
                    samples.append(ms_since(started))
                    created.append(name)
                out[f"create_database_{strategy.lower()}"] = summary(samples)
            row = conn.execute("SELECT count(*) FROM pg_ls_dir('base/' || (SELECT oid FROM "
                               "pg_database WHERE datname = %s))", (created[0],)).fetchone()
            files = int(row[0]) if row else 0
            out["files_per_database"] = files
            for name in created:
                conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
        out["filesystem_create_files"] = self.file_creation_ms(files)
        return out

    def file_creation_ms(self, files: int) -> dict[str, float]:
        """Creating as many files as a new database has, with one page each, on the
        filesystem that holds the data folder: what the kernel charges CREATE DATABASE."""
        samples = []
        for round_ in range(5):
            folder = self.home / f"files-{round_}"
            folder.mkdir()
            started = time.perf_counter()
            for i in range(files):
                fd = os.open(folder / str(i), os.O_CREAT | os.O_WRONLY, 0o600)
                os.pwrite(fd, bytes(8192), 0)
                os.close(fd)
            samples.append(ms_since(started))
            shutil.rmtree(folder)
        return summary(samples)

    def migrate_command_seconds(self) -> float:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
        env.update(MAGISTRATE_DATABASE_URL=self.pg.url(), MAGISTRATE_SECRET_KEY=self.secret_key,
                   MAGISTRATE_HOME=str(self.home), MAGISTRATE_ENV="development")
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "control_plane", "migrate",
                                 "--concurrency", str(CONCURRENCY)], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=600, check=False)
        seconds = time.perf_counter() - started
        last = result.stdout.strip().splitlines()[-1:] or [""]
        if result.returncode != 0 or not last[0].startswith(f"tenants: {TOTAL_TENANTS} ok"):
            raise RuntimeError(f"magistrate migrate failed ({result.returncode}): "
                               f"{last[0]} {result.stderr[-500:]}")
        return seconds


def run(bench: Bench) -> dict[str, Any]:
    log(f"starting Postgres on port {bench.pg.port} under {bench.home}")
    bench.set_up()
    admin = bench.pg.url()

    started = time.perf_counter()
    database.ensure_template(admin)
    template_build_ms = ms_since(started)
    log(f"template built in {template_build_ms:.0f} ms")

    # Steady state: the workers keep a spare clone of the template ready on each server
    # (refill_spare_databases, every 30 s), so a new tenant renames one into place. The refill
    # is untimed here, as it runs in the background in service.
    with bench.session_factory() as s:
        spares = database.spare_namespace(s.get_bind().engine.url)
    totals, steps, cold = [], [], []
    for number in range(1, TOTAL_TENANTS + 1):
        with_spare = number <= TIMED_TENANTS
        if with_spare:
            database.refill_spares(admin, namespace=spares, want=1)
        tenant_id = bench.create_tenant(number)
        total, per_step = bench.provision(tenant_id)
        if with_spare:
            totals.append(total)
            steps.append(per_step)
        elif number <= TIMED_TENANTS + COLD_TENANTS:
            cold.append(total)  # no spare ready: the template is cloned inline
        if number % 25 == 0:
            log(f"{number} tenants provisioned")

    started = time.perf_counter()
    results = migrate_tenants(bench.session_factory, bench.sealer, concurrency=CONCURRENCY)
    fanout_seconds = time.perf_counter() - started
    not_current = [r for r in results if r.status != "already-current"]
    if len(results) != TOTAL_TENANTS or not_current:
        raise RuntimeError(f"the no-op fan-out was not a no-op: {not_current[:3]}")
    log(f"no-op fan-out over {len(results)} tenants in {fanout_seconds:.2f} s")
    command_seconds = bench.migrate_command_seconds()
    log(f"`magistrate migrate` in {command_seconds:.2f} s")
    floors = bench.floors()

    provision_ms = {**summary(totals), "n": len(totals)}
    met = {"provision_p95_ms": provision_ms["p95"] <= TARGETS["provision_p95_ms"],
           "fanout_noop_seconds": fanout_seconds <= TARGETS["fanout_noop_seconds"]}
    return {
        "benchmark": "provision",
        "provision_ms": provision_ms,
        "provision_steps_ms": {name: summary([s[i] for s in steps])
                               for i, name in enumerate(STEPS)},
        "provision_cold_ms": {**summary(cold), "n": len(cold),
                              "note": "no spare ready: CREATE DATABASE from the template inline"},
        "template_build_ms": round(template_build_ms, 1),
        "fanout_noop_seconds": round(fanout_seconds, 2),
        "migrate_command_seconds": round(command_seconds, 2),
        "tenants": TOTAL_TENANTS,
        "concurrency": CONCURRENCY,
        "floor_ms": floors,
        "targets": TARGETS,
        "met": met,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "postgres": bench.server_version(), "platform": platform.platform()},
    }


def main() -> int:
    # The home is the temporary folder itself: as root, the server's system user must be able
    # to reach it, which a folder inside mkdtemp's 0700 one would forbid.
    home = Path(tempfile.mkdtemp(prefix="magistrate-bench-"))
    bench = Bench(home)
    try:
        report = run(bench)
    finally:
        bench.close()
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0  # a missed target shows in "met"; a benchmark is not a test


if __name__ == "__main__":
    sys.exit(main())
