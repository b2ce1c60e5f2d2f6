"""The ``magistrate`` command: up, web, worker, migrate, user create.

Every command prints what it did, and exits non-zero with one clear sentence on failure."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from control_plane.embedded import EmbeddedServiceError
from control_plane.runtime import (
    Endpoints,
    configure_logging,
    refuse_unsafe_production,
    resolve_endpoints,
)
from control_plane.settings import Settings, SettingsError


class CommandError(Exception):
    """A failure the user can act on; printed as 'magistrate: <message>', exit code 1."""


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise CommandError(str(exc)) from None


def _prepare(args: argparse.Namespace) -> tuple[Settings, Endpoints]:
    settings = _settings()
    refuse_unsafe_production(settings)
    configure_logging(settings)
    return settings, resolve_endpoints(settings)


def _check_database(url: str) -> None:
    import psycopg

    from control_plane.db import sqlalchemy_url

    plain = sqlalchemy_url(url).replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        psycopg.connect(plain, connect_timeout=5).close()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CommandError(f"cannot reach the control-plane database ({first}). Start it, or "
                           "run `magistrate up` for the embedded one.") from None


def _migrate(endpoints: Endpoints) -> str:
    from control_plane.db import make_engine, make_session_factory
    from control_plane.migrations import upgrade_control
    from control_plane.sealing import ControlSealer
    from control_plane.tenancy.servers import ensure_primary_server

    _check_database(endpoints.database_url)
    revision = upgrade_control(endpoints.database_url)
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
    _, endpoints = _prepare(args)
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


def cmd_web(args: argparse.Namespace) -> int:
    settings, endpoints = _prepare(args)
    _check_database(endpoints.database_url)
    import uvicorn

    from control_plane.web.app import build_app, build_services

    options: dict[str, Any] = {
        "host": args.host or settings.host, "port": args.port or settings.port,
        "log_config": None, "access_log": False, "server_header": False,
        "proxy_headers": settings.trust_proxy_headers,
        "forwarded_allow_ips": "*" if settings.trust_proxy_headers else None}
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
    settings, endpoints = _prepare(args)
    _check_database(endpoints.database_url)
    from workers.worker import run_worker

    run_worker(settings, database_url=endpoints.database_url, redis_url=endpoints.redis_url,
               secret_key=endpoints.secret_key, burst=args.burst)
    return 0


def cmd_user_create(args: argparse.Namespace) -> int:
    _, endpoints = _prepare(args)
    _check_database(endpoints.database_url)
    from control_plane.db import make_engine, make_session_factory
    from control_plane.exceptions import MagistrateError
    from control_plane.users.service import do_create_user

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    engine = make_engine(endpoints.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as s, s.begin():
            created = do_create_user(s, email=args.email, display_name=args.name or "",
                                     is_owner=args.owner, password=password, acting_user=None)
            email = created.user.email
    except MagistrateError as exc:
        raise CommandError(exc.message) from None
    finally:
        engine.dispose()
    print(f"created {'Owner' if args.owner else 'user'} {email}")
    if created.one_time_password:
        print(f"one-time password (shown once): {created.one_time_password}")
    return 0


def _bootstrap_owner(settings: Settings, endpoints: Endpoints) -> None:
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
        print("existing accounts kept; no new Owner created")
        return
    print(f"first Owner created: {email}")
    if created.one_time_password:
        print(f"one-time password (shown once, change it at first sign-in): "
              f"{created.one_time_password}")
    else:
        print("password: the one in MAGISTRATE_ADMIN_PASSWORD")


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
    settings, endpoints = _prepare(args)
    from control_plane.embedded import EmbeddedPostgres, EmbeddedRedis, ensure_home

    ensure_home(settings.home)
    lock = _lock_home(settings.home)
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
            print(f"starting embedded Postgres on 127.0.0.1:{pg.port} (data in {pg.pgdata})")
            pg.start()
            pg.ensure_database()
        if endpoints.embedded_redis:
            print(f"starting embedded Redis on 127.0.0.1:{rd.port} (data in {rd.folder})")
            rd.start()
        print(f"control plane migrated to revision {_migrate(endpoints)}")
        _bootstrap_owner(settings, endpoints)
        _bootstrap_demo_tenant(settings, endpoints)
        env = dict(os.environ)
        env.update(MAGISTRATE_DATABASE_URL=endpoints.database_url,
                   MAGISTRATE_REDIS_URL=endpoints.redis_url,
                   MAGISTRATE_SECRET_KEY=endpoints.secret_key)
        executable = [sys.executable, "-m", "control_plane"]
        for command in (["web"], ["worker"]):
            # a session of their own: Ctrl-C reaches only `up`, which stops them in order
            children.append(subprocess.Popen([*executable, *command], env=env,  # noqa: S603
                                             start_new_session=True))
        port = settings.port
        if _wait_ready(f"http://127.0.0.1:{port}/readyz", children, lambda: stopping):
            print(f"\nMagistrate is running. Sign in at {settings.public_url}/sign-in "
                  f"(Ctrl-C stops everything).", flush=True)
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    raise CommandError(f"a Magistrate process exited unexpectedly (code "
                                       f"{child.returncode}); everything was stopped.")
            time.sleep(0.3)
        print("\nstopping…", flush=True)
        return 0
    finally:
        # the worker finishes its running job within its grace (warm shutdown) before the
        # databases it writes to are stopped
        _terminate(children, grace=settings.job_shutdown_grace_seconds + 10)
        if endpoints.embedded_redis:
            rd.stop()
        if endpoints.embedded_postgres:
            pg.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.close()
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magistrate",
        description="Magistrate: a self-hosted control plane for AI-workflow governance.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = sub.add_parser("up", help="run everything on this machine (embedded Postgres and "
                                   "Redis unless their URLs are set)",
                        description="Start embedded Postgres and Redis under $MAGISTRATE_HOME "
                                    "(unless MAGISTRATE_DATABASE_URL / MAGISTRATE_REDIS_URL are "
                                    "set), migrate, create the first Owner, then run the web "
                                    "app and one worker until Ctrl-C.")
    up.set_defaults(func=cmd_up)

    web = sub.add_parser("web", help="serve the web app (dashboard and health endpoints)",
                         description="Serve the web app with uvicorn.")
    web.add_argument("--host", help="address to bind (default MAGISTRATE_HOST)")
    web.add_argument("--port", type=int, help="port to bind (default MAGISTRATE_PORT)")
    web.add_argument("--workers", type=int, default=1,
                     help="processes serving requests (default 1; one per CPU uses them all)")
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

    user = sub.add_parser("user", help="manage operator accounts",
                          description="Manage operator accounts.")
    user_sub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    create = user_sub.add_parser("create", help="create an account",
                                 description="Create an account. Without --password-stdin a "
                                             "one-time password is generated and printed once.")
    create.add_argument("--email", required=True, help="the account's e-mail address")
    create.add_argument("--name", help="display name")
    create.add_argument("--owner", action="store_true", help="make the account an Owner")
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")
    create.set_defaults(func=cmd_user_create)
    from control_plane.members_cli import register as register_member_commands

    register_member_commands(sub, user_sub)
    from control_plane.tenancy.cli import register as register_tenant_commands

    register_tenant_commands(sub)
    from control_plane.tenancy.rotation_cli import register as register_key_commands
    register_key_commands(sub)
    from control_plane.tenancy.audit_cli import register as register_audit_commands

    register_audit_commands(sub)
    from control_plane.redact_cli import register as register_redact_command

    register_redact_command(sub)
    from control_plane.reconcile_cli import register as register_reconcile_command

    register_reconcile_command(sub)
    from control_plane.signals_cli import register as register_signal_commands

    register_signal_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (CommandError, EmbeddedServiceError) as exc:
        print(f"magistrate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
