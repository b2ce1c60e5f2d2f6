"""What the benchmarks under ``ops/bench`` share: an embedded Postgres in a temporary folder with
a migrated control database, an Owner, the server registered as ``primary`` and a local
key-encryption key (``Stack``), tenants created and provisioned through the real
``do_create_tenant`` and ``provision(...)``, an embedded Redis when a benchmark needs one, and
the helpers that keep timings honest on a shared machine (``wait_for_quiet``) and summarize them
(``percentile``).

Not a benchmark itself: ``make bench`` runs it like the others and it prints nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parents[2]
# the script's own folder holds mcp.py, which would shadow the mcp SDK the app imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from control_plane.db import make_engine, make_session_factory  # noqa: E402
from control_plane.embedded import EmbeddedPostgres, EmbeddedRedis  # noqa: E402
from control_plane.keys.local import LocalKeyProvider  # noqa: E402
from control_plane.keys.providers import KeyProvider  # noqa: E402
from control_plane.keys.registry import DataKeyCache  # noqa: E402
from control_plane.migrations import upgrade_control  # noqa: E402
from control_plane.models import Tenant, User  # noqa: E402
from control_plane.sealing import ControlSealer  # noqa: E402
from control_plane.tenancy.connections import TenantConnections  # noqa: E402
from control_plane.tenancy.provisioning import provision  # noqa: E402
from control_plane.tenancy.servers import ensure_primary_server  # noqa: E402
from control_plane.tenancy.service import do_create_tenant  # noqa: E402
from control_plane.users.service import do_create_user  # noqa: E402
from tenant_runtime.context import Actor, TenantContext  # noqa: E402

KEK = "bench-kek"
QUIET_BUSY = 0.10  # a timed run starts once at most this share of the CPUs is busy ...
QUIET_WAIT_SECONDS = 120  # ... or after this long, whatever the load (see machine_busy_before)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the value below which ``q`` of the samples fall."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def machine_busy(seconds: float) -> float | None:
    """The share of all CPUs busy over ``seconds`` (Linux ``/proc/stat``; None elsewhere)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # busy (not idle, not iowait), all

    if not Path("/proc/stat").exists():
        return None
    busy, total = sample()
    time.sleep(seconds)
    busy_after, total_after = sample()
    return (busy_after - busy) / max(1, total_after - total)


def wait_for_quiet() -> float | None:
    """Wait (up to ``QUIET_WAIT_SECONDS``) until the machine is idle before a timed run: on a
    shared 2-core machine, anyone else's test run halves the figures. Returns how busy it was."""
    deadline = time.monotonic() + QUIET_WAIT_SECONDS
    while True:
        busy = machine_busy(0.5)
        if busy is None or busy <= QUIET_BUSY or time.monotonic() > deadline:
            return None if busy is None else round(busy, 3)
        log(f"the machine is {busy:.0%} busy with something else; waiting")


class Stack:
    """The control plane's data side in ``home``: an embedded Postgres with the control
    database migrated, an Owner, the ``primary`` server and a local KEK; then tenants, and an
    embedded Redis on request. ``close()`` stops everything it started (the caller removes
    ``home``)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.pg = EmbeddedPostgres(home, free_port())
        self.redis: EmbeddedRedis | None = None
        self.secret_key = secrets.token_urlsafe(48)
        self.sealer = ControlSealer(self.secret_key)
        local = LocalKeyProvider(home / "keys")
        local.create_key(KEK)
        self.providers: dict[str, KeyProvider] = {"local": local}
        self.engines: list[Engine] = []
        self.factory: sessionmaker[Session] | None = None
        self.owner_id = 0
        self.owner_email = "bench@example.com"
        self.owner_password = secrets.token_urlsafe(24)  # to sign in through the form

    @property
    def session_factory(self) -> sessionmaker[Session]:
        if self.factory is None:
            raise RuntimeError("the control database is not set up")
        return self.factory

    def start(self) -> None:
        """Postgres, the migrated control database, the Owner and the primary server."""
        self.pg.start()
        self.pg.ensure_database()
        upgrade_control(self.pg.url())
        engine = make_engine(self.pg.url(), pool_size=2)
        self.engines.append(engine)
        self.factory = make_session_factory(engine)
        with self.session_factory() as s, s.begin():
            owner = do_create_user(s, email=self.owner_email, display_name="Bench",
                                   is_owner=True, password=self.owner_password,
                                   acting_user=None).user
            self.owner_id = owner.id
            ensure_primary_server(s, url=self.pg.url(), sealer=self.sealer)

    def start_redis(self) -> EmbeddedRedis:
        self.redis = EmbeddedRedis(self.home, free_port())
        self.redis.start()
        return self.redis

    def owner(self, s: Session) -> User:
        owner = s.get(User, self.owner_id)
        if owner is None:
            raise RuntimeError("the Owner is not set up")
        return owner

    def new_tenant(self, slug: str, name: str) -> int:
        """Record a tenant (``do_create_tenant``, by the Owner, on the local KEK); not yet
        provisioned."""
        with self.session_factory() as s, s.begin():
            tenant, _ = do_create_tenant(s, slug=slug, name=name, key_provider="local",
                                         key_ref=KEK, providers=self.providers,
                                         sealer=self.sealer, acting_user=self.owner(s))
            return tenant.id

    def add_tenant(self, slug: str, name: str,
                   progress: Callable[[int, int, str], None] | None = None) -> int:
        """A tenant recorded and provisioned, active."""
        tenant_id = self.new_tenant(slug, name)
        state = provision(self.session_factory, tenant_id, sealer=self.sealer,
                          providers=self.providers,
                          progress=progress or (lambda done, total, note: None))
        if state != "active":
            raise RuntimeError(f"the tenant ended {state}, not active")
        return tenant_id

    def tenant_context(self, tenant_id: int, *, actor: Actor, pool_size: int) -> TenantContext:
        """The tenant's context as the app builds it, on an engine of its own with
        ``pool_size`` connections (the app's per-tenant pool is sized for requests)."""
        connections = TenantConnections(sealer=self.sealer, providers=self.providers,
                                        dek_cache=DataKeyCache())
        with self.session_factory() as s:
            tenant = s.get(Tenant, tenant_id)
            assert tenant is not None
            engine = make_engine(connections.app_url(tenant), pool_size=pool_size)
            self.engines.append(engine)
            return TenantContext(tenant_id=tenant.id, slug=tenant.slug,
                                 session_factory=make_session_factory(engine),
                                 sealer=connections.sealer_for(s, tenant), actor=actor)

    def server_version(self) -> str:
        return self.server_settings(("server_version",))["server_version"]

    def server_settings(self, names: tuple[str, ...] = ("fsync", "synchronous_commit",
                                                         "wal_sync_method")) -> dict[str, str]:
        with psycopg.connect(self.pg.url(), autocommit=True) as conn:
            rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                                (list(names),)).fetchall()
        return {str(name): str(value) for name, value in rows}

    def close(self) -> None:
        for engine in self.engines:
            engine.dispose()
        if self.redis is not None:
            self.redis.stop()
        self.pg.stop()


def add_quiet_wait(parser: argparse.ArgumentParser) -> None:
    """The ``--quiet-wait`` option every benchmark takes (``run_benchmark`` applies it)."""
    parser.add_argument("--quiet-wait", type=float, default=QUIET_WAIT_SECONDS,
                        help="longest wait, in seconds, for the machine to be quiet before "
                             "each timed phase")


def run_benchmark(run: Callable[[Stack, argparse.Namespace], dict[str, Any]],
                  args: argparse.Namespace) -> int:
    """A benchmark's main: a stack in a fresh temporary home, ``run``, the report printed as
    JSON, and everything started removed, also when the run is terminated."""
    global QUIET_WAIT_SECONDS
    # a terminated run still stops what it started (the finally block below)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    QUIET_WAIT_SECONDS = args.quiet_wait
    # The home is the temporary folder itself: as root, the server's system user must be able
    # to reach it, which a folder inside mkdtemp's 0700 one would forbid.
    home = Path(tempfile.mkdtemp(prefix="magistrate-bench-"))
    stack = Stack(home)
    try:
        report = run(stack, args)
    finally:
        stack.close()
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0  # a missed target shows in "met"; a benchmark is not a test
