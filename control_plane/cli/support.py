"""What the ``magistrate`` command groups share: ``CommandError`` (printed as one sentence),
the settings and the production refusal every command starts with, the database check that says
where the stack is when Postgres does not answer, and for the tenant commands (``audit export``,
``keys rotate``, ``signals import``) the connections to the control plane and to tenant
databases and finding the tenant a ``--tenant`` option names.

This module imports none of the command modules, and nothing outside ``control_plane/cli/``
imports it (tests/test_layers.py), so the command groups never import one another."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from control_plane.keys.registry import DataKeyCache, KeyProviderRegistry, build_key_providers
from control_plane.models import Tenant, User
from control_plane.runtime import (
    Endpoints,
    configure_logging,
    refuse_unsafe_production,
    resolve_endpoints,
)
from control_plane.settings import Settings, SettingsError
from control_plane.tenancy.connections import TenantConnections


class CommandError(Exception):
    """A failure the user can act on; printed as 'magistrate: <message>', exit code 1."""


def load_settings() -> Settings:
    """The settings from the environment, or the CLI's error naming what is wrong."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise CommandError(str(exc)) from None


def prepare(args: argparse.Namespace) -> tuple[Settings, Endpoints]:
    """Every command's start: the settings, the production refusal, logging, the endpoints."""
    settings = load_settings()
    refuse_unsafe_production(settings)
    configure_logging(settings)
    return settings, resolve_endpoints(settings)


def check_database(url: str) -> None:
    """The control-plane database answers, or the CLI's error saying where the stack is."""
    import psycopg

    from control_plane.db import sqlalchemy_url

    plain = sqlalchemy_url(url).replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        psycopg.connect(plain, connect_timeout=5).close()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CommandError(f"cannot reach the control-plane database ({first}). "
                           + where_is_the_stack()) from None


def where_is_the_stack() -> str:
    """What to do when the database does not answer: which setting differs from the stack that
    `magistrate up` runs, or that none runs."""
    from control_plane.stack_state import other_running_stacks, running_state

    settings = load_settings()
    if settings.database_url is not None:
        return "Start it, or check MAGISTRATE_DATABASE_URL."
    running = running_state(settings.home)
    if running is not None:
        return (f"`magistrate up` (pid {running.pid}) runs for MAGISTRATE_HOME={settings.home} "
                f"but its Postgres on port {running.embedded_pg_port} does not answer; see "
                f"{running.log or 'its standard error'}.")
    others = other_running_stacks(settings.home)
    if others:
        homes = " or ".join(f"MAGISTRATE_HOME={o.home}" for o in others)
        return (f"No `magistrate up` runs for MAGISTRATE_HOME={settings.home}, but one runs "
                f"with {homes}: set that in this shell (or run the command from the folder "
                "where `magistrate up` was started).")
    return (f"No `magistrate up` runs for MAGISTRATE_HOME={settings.home}; start it, or set "
            "MAGISTRATE_DATABASE_URL to your Postgres.")


# `.ci/run` and the README read this line; keep them in step
ONE_TIME_PASSWORD_LINE = "one-time password (shown once, change it at first sign-in): "  # noqa: S105


@dataclass
class TenantStack:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    providers: KeyProviderRegistry
    connections: TenantConnections


@contextmanager
def tenant_stack(args: argparse.Namespace, *, pool_size: int = 1) -> Iterator[TenantStack]:
    """Open the control database (checked first, with the CLI's own error) and the tenant
    connections; close both when the command is done."""
    from control_plane.db import make_engine, make_session_factory
    from control_plane.sealing import ControlSealer

    settings, endpoints = prepare(args)
    check_database(endpoints.database_url)
    providers = build_key_providers(
        home=settings.home, production=settings.is_production, aws_region=settings.aws_region,
        aws_endpoint_url=settings.aws_kms_endpoint, gcp_endpoint=settings.gcp_kms_endpoint)
    engine = make_engine(endpoints.database_url, pool_size=pool_size)
    connections = TenantConnections(sealer=ControlSealer(endpoints.secret_key),
                                    providers=providers, dek_cache=DataKeyCache())
    try:
        yield TenantStack(settings, engine, make_session_factory(engine), providers,
                          connections)
    finally:
        connections.close()
        engine.dispose()


def find_tenant(s: Session, ident: str) -> Tenant:
    """The tenant (not deleted) whose id or slug is ``ident``, or the CLI's error naming it."""
    ident = ident.strip()
    by_id = ident.isascii() and ident.isdigit() and len(ident) <= 18
    where = Tenant.id == int(ident) if by_id else Tenant.slug == ident.lower()
    tenant = s.scalars(select(Tenant).where(where, Tenant.state != "deleted")).first()
    if tenant is None:
        raise CommandError(f"no tenant has the slug or id {ident!r}")
    return tenant


@contextmanager
def control_session(args: argparse.Namespace) -> Iterator[Session]:
    """One transaction on the control database for a command; a ``MagistrateError`` raised
    inside is printed as its sentence."""
    from control_plane.db import make_engine, make_session_factory
    from control_plane.exceptions import MagistrateError

    _, endpoints = prepare(args)
    check_database(endpoints.database_url)
    engine = make_engine(endpoints.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as s, s.begin():
            yield s
    except MagistrateError as exc:
        raise CommandError(exc.message) from None
    finally:
        engine.dispose()


def find_user(s: Session, email: str, *, what: str) -> User:
    """The account with ``email``; ``what`` names the option that gave it."""
    user = s.scalars(select(User).where(User.email == email.strip().lower())).first()
    if user is None:
        raise CommandError(f"no account has the e-mail {email.strip()} ({what})")
    return user


def acting_user(s: Session, email: str) -> User:
    """The active account an ``--as`` option names."""
    user = find_user(s, email, what="--as")
    if not user.is_active:
        raise CommandError(f"the account {user.email} (--as) is deactivated")
    return user
