"""``magistrate tenant create`` and ``magistrate tenant list``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy import select


def register(sub: Any) -> None:
    tenant = sub.add_parser("tenant", help="create and list tenants",
                            description="Create and list tenants.")
    tsub = tenant.add_subparsers(dest="tenant_command", metavar="ACTION", required=True)
    create = tsub.add_parser(
        "create", help="create a tenant and provision its database",
        description="Create a tenant: its own database and roles on the least-loaded server, "
                    "and a data key wrapped by the key you name. Provisioning runs here, with "
                    "progress, unless --no-wait hands it to the workers.")
    create.add_argument("--slug", required=True, help="short name: a-z, 0-9 and '-'")
    create.add_argument("--name", default="", help="display name")
    create.add_argument("--key-provider", required=True,
                        help="local, aws-kms, azure-keyvault or gcp-kms")
    create.add_argument("--key-ref", required=True, help="the key-encryption key's reference")
    create.add_argument("--owner-email", required=True,
                        help="the existing Owner account that becomes the tenant's Owner")
    create.add_argument("--no-wait", action="store_true",
                        help="queue the provisioning job for the workers and return")
    create.set_defaults(func=cmd_tenant_create)
    listing = tsub.add_parser("list", help="list tenants", description="List every tenant.")
    listing.set_defaults(func=cmd_tenant_list)

    server = sub.add_parser("server", help="database servers that hold tenant databases",
                            description="Database servers that hold tenant databases. A new "
                                        "tenant goes to the active server with the fewest "
                                        "tenants.")
    ssub = server.add_subparsers(dest="server_command", metavar="ACTION", required=True)
    add = ssub.add_parser("add", help="register a Postgres server",
                          description="Register a Postgres server. The URL's role needs "
                                      "CREATEDB and CREATEROLE; the URL is stored sealed.")
    add.add_argument("--name", required=True, help="short name: a-z, 0-9 and '-'")
    add.add_argument("--url-stdin", action="store_true", required=True,
                     help="read the server's admin URL from standard input (keeps the "
                          "password out of the process list and shell history)")
    add.set_defaults(func=cmd_server_add)
    slist = ssub.add_parser("list", help="list servers and their tenant counts",
                            description="List database servers and their tenant counts.")
    slist.set_defaults(func=cmd_server_list)


def cmd_tenant_create(args: argparse.Namespace) -> int:
    from control_plane.cli.support import CommandError, check_database, prepare
    from control_plane.db import make_engine, make_session_factory
    from control_plane.exceptions import MagistrateError
    from control_plane.models import Job, Tenant, User
    from control_plane.tenancy.service import do_create_tenant
    from workers import runtime
    from workers.runner import run_job

    settings, endpoints = prepare(args)
    check_database(endpoints.database_url)
    env = runtime.configure(settings, database_url=endpoints.database_url,
                            secret_key=endpoints.secret_key)
    engine = make_engine(endpoints.database_url, pool_size=2)
    factory = make_session_factory(engine)
    try:
        with factory() as s, s.begin():
            owner = s.scalars(select(User).where(User.email == args.owner_email.strip().lower(),
                                                 User.is_active)).first()
            if owner is None:
                raise CommandError(f"no active account has the e-mail {args.owner_email}")
            tenant, job = do_create_tenant(
                s, slug=args.slug, name=args.name, key_provider=args.key_provider,
                key_ref=args.key_ref, providers=env.key_providers, sealer=env.sealer,
                acting_user=owner)
            tenant_id, job_id, slug = tenant.id, job.id, tenant.slug
        print(f"tenant {slug} (id {tenant_id}) recorded; provisioning job {job_id}")
        if args.no_wait:
            print("provisioning is queued for the workers")
            return 0
        outcome = run_job(job_id)
        with factory() as s:
            final = s.get(Job, job_id)
            state = s.get(Tenant, tenant_id)
            error = final.last_error if final else None
            tenant_state = state.state if state else "gone"
        if outcome.get("outcome") != "succeeded" or tenant_state != "active":
            raise CommandError(f"provisioning of {slug} did not finish: {error or outcome}")
        print(f"tenant {slug} is active", file=sys.stdout)
        return 0
    except MagistrateError as exc:
        raise CommandError(exc.message) from None
    finally:
        engine.dispose()


def cmd_tenant_list(args: argparse.Namespace) -> int:
    from control_plane.cli.support import check_database, prepare
    from control_plane.db import make_engine, make_session_factory
    from control_plane.models import DbServer, Tenant

    _, endpoints = prepare(args)
    check_database(endpoints.database_url)
    engine = make_engine(endpoints.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as s:
            rows = s.execute(select(Tenant, DbServer.name).outerjoin(
                DbServer, DbServer.id == Tenant.db_server_id).order_by(Tenant.id)).all()
        print(f"{'id':>5}  {'slug':<24} {'state':<13} {'server':<12} key provider")
        for tenant, server in rows:
            print(f"{tenant.id:>5}  {tenant.slug:<24} {tenant.state:<13} {server or '-':<12} "
                  f"{tenant.key_provider}")
        print(f"{len(rows)} tenant(s)")
        return 0
    finally:
        engine.dispose()


def cmd_server_add(args: argparse.Namespace) -> int:
    import psycopg

    from control_plane.audit import SYSTEM
    from control_plane.cli.support import CommandError, check_database, prepare
    from control_plane.db import make_engine, make_session_factory
    from control_plane.exceptions import MagistrateError
    from control_plane.sealing import ControlSealer
    from control_plane.tenancy.database import close_databases_to_public, libpq_url, url_for
    from control_plane.tenancy.servers import do_add_db_server

    _, endpoints = prepare(args)
    check_database(endpoints.database_url)
    url = sys.stdin.readline().strip()
    if not url:
        raise CommandError("no URL on standard input")
    try:
        with psycopg.connect(libpq_url(url_for(url, database="postgres")), connect_timeout=5
                             ) as conn:
            row = conn.execute("SELECT rolcreatedb, rolcreaterole, rolsuper FROM pg_roles "
                               "WHERE rolname = current_user").fetchone()
    except (psycopg.Error, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CommandError(f"cannot connect to that server: {first}") from None
    if row is None or not (row[2] or (row[0] and row[1])):
        raise CommandError("the URL's role needs CREATEDB and CREATEROLE on that server")
    try:  # tenants' roles must open their own database there and nothing else
        warning = close_databases_to_public(url).warning()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CommandError(f"cannot close that server's databases to PUBLIC: {first}") from None
    if warning:
        print(f"magistrate: warning: {warning}", file=sys.stderr, flush=True)
    engine = make_engine(endpoints.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as s, s.begin():
            server = do_add_db_server(s, name=args.name, url=url,
                                      sealer=ControlSealer(endpoints.secret_key), actor=SYSTEM)
            print(f"database server {server.name} ({server.host}:{server.port}) added")
    except MagistrateError as exc:
        raise CommandError(exc.message) from None
    finally:
        engine.dispose()
    return 0


def cmd_server_list(args: argparse.Namespace) -> int:
    from sqlalchemy import func

    from control_plane.cli.support import check_database, prepare
    from control_plane.db import make_engine, make_session_factory
    from control_plane.models import DbServer, Tenant

    _, endpoints = prepare(args)
    check_database(endpoints.database_url)
    engine = make_engine(endpoints.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as s:
            rows = s.execute(
                select(DbServer, func.count(Tenant.id))
                .outerjoin(Tenant, (Tenant.db_server_id == DbServer.id)
                           & (Tenant.state != "deleted"))
                .group_by(DbServer.id).order_by(DbServer.id)).all()
        for server, count in rows:
            status = "active" if server.is_active else "inactive"
            print(f"{server.name:<16} {server.host}:{server.port:<6} {status:<9} "
                  f"{count} tenant(s)")
        return 0
    finally:
        engine.dispose()
