"""``magistrate up``, ``web``, ``worker`` and ``migrate``: running the stack and migrating it."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

from control_plane.cli.support import ONE_TIME_PASSWORD_LINE, CommandError, check_database, prepare
from control_plane.runtime import Endpoints, configure_logging
from control_plane.settings import Settings


def _migrate(endpoints: Endpoints) -> str:
    from control_plane.db import make_engine, make_session_factory
    from control_plane.migrations import upgrade_control
    from control_plane.sealing import ControlSealer
    from control_plane.tenancy.database import close_databases_to_public
    from control_plane.tenancy.servers import ensure_primary_server

    check_database(endpoints.database_url)
    revision = upgrade_control(endpoints.database_url)
    # tenants' roles must not open the control database, `postgres` or anything else here
    warning = close_databases_to_public(endpoints.database_url).warning()
    if warning:
        print(f"magistrate: warning: {warning}", file=sys.stderr, flush=True)
    # the control plane's own server holds tenant databases until others are added
    engine = make_engine(endpoints.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as s, s.begin():
            ensure_primary_server(s, url=endpoints.database_url,
                                  sealer=ControlSealer(endpoints.secret_key))
    finally:
        engine.dispose()
    return revision


# ------------------------------------------------------------------------------- commands


def cmd_migrate(args: argparse.Namespace) -> int:
    import logging

    from control_plane.db import make_engine, make_session_factory
    from control_plane.sealing import ControlSealer
    from control_plane.tenancy import fanout

    if args.concurrency < 1:
        raise CommandError("--concurrency must be at least 1")
    _, endpoints = prepare(args)
    revision = _migrate(endpoints)
    print(f"control plane migrated to revision {revision}", flush=True)
    # Alembic's "Context impl" lines, once per tenant, would bury the progress display
    logging.getLogger("alembic").setLevel(logging.WARNING)
    sealer = ControlSealer(endpoints.secret_key)
    on_terminal = sys.stderr.isatty()

    def show(done: int, total: int, result: fanout.TenantMigrationResult) -> None:
        if on_terminal:
            print("\r" + fanout.progress_bar(done, total), end="", file=sys.stderr, flush=True)
        else:
            print(fanout.progress_line(done, total, result), file=sys.stderr, flush=True)

    engine = make_engine(endpoints.database_url, pool_size=1)
    try:
        factory = make_session_factory(engine)
        templates = fanout.ensure_templates(factory, sealer)
        for template in templates:
            print(f"template on {template.server}: "
                  + (f"FAILED: {template.error}" if template.error else
                     f"{template.template} ready"), flush=True)
        results = fanout.migrate_tenants(factory, sealer, concurrency=args.concurrency,
                                         progress=show)
    finally:
        engine.dispose()
    if on_terminal and results:
        print(file=sys.stderr)
    if results:
        print("\n".join(fanout.result_table(results)))
    print(fanout.summary_line(results))
    failed_templates = [t.server for t in templates if t.error]
    if failed_templates:
        print(f"templates: {len(failed_templates)} failed ({', '.join(failed_templates)})")
    failed = bool(failed_templates) or any(r.status == "failed" for r in results)
    return 1 if failed else 0


def _observe(settings: Settings, *, clean: bool, service: str) -> None:
    """Metrics of this process (and of those it starts) in the machine's shared folder, and
    its gateway traces when ``MAGISTRATE_OTLP_ENDPOINT`` is set (docs/observability.md)."""
    from tenant_runtime.observability import metrics, tracing

    metrics.enable_multiprocess(settings.metrics_dir, clean=clean)
    tracing.configure(settings.otlp_endpoint, service_name=service,
                      sample_ratio=settings.trace_sample_ratio)


def cmd_web(args: argparse.Namespace) -> int:
    settings, endpoints = prepare(args)
    check_database(endpoints.database_url)
    # the web process empties the metrics folder, unless `up` did before starting it and the
    # worker, whose files are there already
    _observe(settings, clean=not args.keep_metrics, service="magistrate-web")
    import uvicorn

    from control_plane.web.app import build_app, build_services
    from control_plane.web.serving import fast_server_options

    options: dict[str, Any] = {
        **fast_server_options(),  # uvloop and httptools
        "host": args.host or settings.host, "port": args.port or settings.port,
        "log_config": None, "access_log": False, "server_header": False,
        # uvicorn rewrites nothing from forwarding headers: the app's security edge does, from
        # MAGISTRATE_TRUSTED_PROXIES only (control_plane/web/proxies.py)
        "proxy_headers": False}
    if args.workers > 1:  # each worker process builds the app from the resolved endpoints
        os.environ.update({"MAGISTRATE_DATABASE_URL": endpoints.database_url,
                           "MAGISTRATE_REDIS_URL": endpoints.redis_url,
                           "MAGISTRATE_SECRET_KEY": endpoints.secret_key})
        from control_plane.web.serving import serve_processes

        serve_processes(args.workers, **options)
        return 0
    svc = build_services(settings, database_url=endpoints.database_url,
                         redis_url=endpoints.redis_url, secret_key=endpoints.secret_key)
    uvicorn.run(build_app(svc), **options)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings, endpoints = prepare(args)
    check_database(endpoints.database_url)
    _observe(settings, clean=False, service="magistrate-worker")
    from workers.worker import run_worker

    run_worker(settings, database_url=endpoints.database_url, redis_url=endpoints.redis_url,
               secret_key=endpoints.secret_key, burst=args.burst)
    return 0

def _bootstrap_owner(settings: Settings, endpoints: Endpoints) -> list[str]:
    """Create the first Owner on a fresh installation; return the banner's lines about it."""
    from control_plane.db import make_engine, make_session_factory
    from control_plane.exceptions import MagistrateError
    from control_plane.users.service import ensure_first_owner

    engine = make_engine(endpoints.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as s, s.begin():
            password = settings.admin_password.reveal() if settings.admin_password else None
            created = ensure_first_owner(s, email=settings.admin_email, password=password)
            email = created.user.email if created else None
    except MagistrateError as exc:
        raise CommandError(f"cannot create the first Owner: {exc.message}") from None
    finally:
        engine.dispose()
    if created is None:
        return ["existing accounts kept; no new Owner created",
                "  lost a password? `magistrate user reset-password EMAIL` prints a new "
                "one-time password"]
    lines = [f"first Owner created: {email}"]
    if created.one_time_password:
        lines += [f"{ONE_TIME_PASSWORD_LINE}{created.one_time_password}",
                  f"  lost it? `magistrate user reset-password {email}` prints a new one"]
    else:
        lines.append("password: the one in MAGISTRATE_ADMIN_PASSWORD")
    return lines

def _bootstrap_demo_tenant(settings: Settings, endpoints: Endpoints) -> None:
    """Outside production, a first run also gets a demo tenant on a local development key, so
    the dashboard has something to show; the worker provisions it."""
    from sqlalchemy import func, select

    from control_plane.db import make_engine, make_session_factory
    from control_plane.keys.local import LocalKeyProvider
    from control_plane.models import Tenant, User
    from control_plane.sealing import ControlSealer
    from control_plane.tenancy.service import do_create_tenant

    if settings.is_production:
        return
    engine = make_engine(endpoints.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as s, s.begin():
            if s.scalar(select(func.count()).select_from(Tenant)):
                return
            owner = s.scalars(select(User).where(User.is_owner, User.is_active)
                              .order_by(User.id)).first()
            if owner is None:
                return
            local = LocalKeyProvider(settings.home / "keys")
            local.create_key("dev")
            do_create_tenant(s, slug="demo", name="Demo", key_provider="local", key_ref="dev",
                             providers={"local": local},
                             sealer=ControlSealer(endpoints.secret_key), acting_user=owner)
        print("demo tenant created (local development key 'dev'); the worker provisions it")
    finally:
        engine.dispose()


def cmd_up(args: argparse.Namespace) -> int:
    settings, endpoints = prepare(args)
    from control_plane.embedded import EmbeddedPostgres, EmbeddedRedis, ensure_home
    from control_plane.stack_state import StackState, clear_state, write_state

    ensure_home(settings.home)
    lock = _lock_home(settings.home)
    # On a terminal the JSON logs of every process go to a file, so the banner stays readable;
    # otherwise (CI, systemd, docker) and with --log-stderr they stay on standard error.
    log_path: Path | None = None
    log_file: IO[str] | None = None
    if sys.stderr.isatty() and not args.log_stderr:
        logs = settings.home / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        log_path = logs / "magistrate.log"
        log_file = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the whole run
        os.chmod(log_path, 0o600)
        configure_logging(settings, log_file)
    pg = EmbeddedPostgres(settings.home, settings.embedded_pg_port)
    rd = EmbeddedRedis(settings.home, settings.embedded_redis_port)
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if endpoints.embedded_postgres:
            print(f"starting embedded Postgres on 127.0.0.1:{pg.port} (data in {pg.pgdata})",
                  flush=True)
            pg.start()
            pg.ensure_database()
        if endpoints.embedded_redis:
            print(f"starting embedded Redis on 127.0.0.1:{rd.port} (data in {rd.folder})",
                  flush=True)
            rd.start()
        print(f"control plane migrated to revision {_migrate(endpoints)}", flush=True)
        owner_lines = _bootstrap_owner(settings, endpoints)
        _bootstrap_demo_tenant(settings, endpoints)
        from tenant_runtime.observability import metrics

        metrics.enable_multiprocess(settings.metrics_dir, clean=True)  # before the children
        env = dict(os.environ)
        env.update(MAGISTRATE_DATABASE_URL=endpoints.database_url,
                   MAGISTRATE_REDIS_URL=endpoints.redis_url,
                   MAGISTRATE_SECRET_KEY=endpoints.secret_key)
        executable = [sys.executable, "-m", "control_plane"]
        for command in (["web", "--keep-metrics"], ["worker"]):
            # a session of their own: Ctrl-C reaches only `up`, which stops them in order
            children.append(subprocess.Popen([*executable, *command], env=env,  # noqa: S603
                                             start_new_session=True, stderr=log_file))
        write_state(settings.home, StackState(
            pid=os.getpid(), home=str(settings.home), url=settings.public_url,
            port=settings.port, embedded_pg_port=pg.port if endpoints.embedded_postgres else None,
            embedded_redis_port=rd.port if endpoints.embedded_redis else None,
            log=str(log_path) if log_path else None))
        port = settings.port
        ready = _wait_ready(f"http://127.0.0.1:{port}/readyz", children, lambda: stopping)
        if not stopping:
            logs_line = (f"logs: {log_path} (--log-stderr keeps them on the terminal)"
                         if log_path else "logs: standard error")
            if not ready:
                logs_line += "; the web app did not answer /readyz within 60 s, see the logs"
            sys.stdout.write("\n" + "\n".join([
                *owner_lines, logs_line,
                f"Magistrate is running. Sign in at {settings.public_url}/sign-in "
                "(Ctrl-C stops everything)."]) + "\n")
            sys.stdout.flush()
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    raise CommandError(f"a Magistrate process exited unexpectedly (code "
                                       f"{child.returncode}); everything was stopped"
                                       + (f"; see {log_path}" if log_path else "") + ".")
            time.sleep(0.3)
        print("\nstopping…", flush=True)
        return 0
    finally:
        # the worker finishes its running job within its grace (warm shutdown) before the
        # databases it writes to are stopped
        _terminate(children, grace=settings.job_shutdown_grace_seconds + 10)
        clear_state(settings.home)
        if endpoints.embedded_redis:
            rd.stop()
        if endpoints.embedded_postgres:
            pg.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.close()
        if log_file is not None:
            log_file.close()
        print("stopped.", flush=True)


def _lock_home(home: Path) -> IO[str]:
    """One `magistrate up` per home: a second one would share, then stop, the first's servers."""
    handle = (home / "up.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CommandError(f"`magistrate up` is already running for {home}; stop it first, "
                           "or set MAGISTRATE_HOME to another folder.") from None
    return handle


def _wait_ready(url: str, children: list[subprocess.Popen[bytes]], stopping: object) -> bool:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if callable(stopping) and stopping():
            return False
        if any(c.poll() is not None for c in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URL
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    return False


def _terminate(children: list[subprocess.Popen[bytes]], *, grace: float) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            child.wait(remaining)
        except subprocess.TimeoutExpired:
            child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)

# ------------------------------------------------------------------------------- parser


def register(sub: Any) -> None:
    up = sub.add_parser("up", help="run everything on this machine (embedded Postgres and "
                                   "Redis unless their URLs are set)",
                        description="Start embedded Postgres and Redis under $MAGISTRATE_HOME "
                                    "(unless MAGISTRATE_DATABASE_URL / MAGISTRATE_REDIS_URL are "
                                    "set), migrate, create the first Owner, then run the web "
                                    "app and one worker until Ctrl-C. On a terminal the JSON "
                                    "logs go to $MAGISTRATE_HOME/logs/magistrate.log and a "
                                    "short banner comes last; otherwise they go to standard "
                                    "error.")
    up.add_argument("--log-stderr", action="store_true",
                    help="keep the JSON logs on standard error even on a terminal")
    up.set_defaults(func=cmd_up)

    web = sub.add_parser("web", help="serve the web app (dashboard and health endpoints)",
                         description="Serve the web app with uvicorn.")
    web.add_argument("--host", help="address to bind (default MAGISTRATE_HOST)")
    web.add_argument("--port", type=int, help="port to bind (default MAGISTRATE_PORT)")
    web.add_argument("--workers", type=int, default=1,
                     help="processes serving requests (default 1; one per CPU uses them all)")
    web.add_argument("--keep-metrics", action="store_true", help=argparse.SUPPRESS)  # by `up`
    web.set_defaults(func=cmd_web)

    worker = sub.add_parser("worker", help="run an RQ worker",
                            description="Run an RQ worker with the JSON serializer and the "
                                        "periodic jobs.")
    worker.add_argument("--burst", action="store_true",
                        help="process what is queued, then exit")
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser(
        "migrate", help="upgrade the control-plane database, then every tenant database",
        description="Apply the control-plane migrations (alembic/control), make sure every "
                    "active server has the current tenant template, then upgrade every active "
                    "or suspended tenant database (alembic/tenant) as its owner role, N at a "
                    "time. A tenant already at head is skipped, so a rerun resumes; one "
                    "failing tenant does not stop the others. Exits 1 if any tenant failed.")
    migrate.add_argument("--concurrency", type=int, default=8, metavar="N",
                         help="tenants migrated at the same time (default 8)")
    migrate.set_defaults(func=cmd_migrate)
