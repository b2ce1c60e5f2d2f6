"""What the tenant commands (``audit export``, ``keys rotate``, ``signals import``) share: the
connections to the control plane and to tenant databases, opened from the command line's
settings, and finding the tenant a ``--tenant`` option names."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from control_plane.keys.registry import DataKeyCache, KeyProviderRegistry, build_key_providers
from control_plane.models import Tenant
from control_plane.settings import Settings
from control_plane.tenancy.connections import TenantConnections


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
    from control_plane.cli.stack import _check_database, _prepare
    from control_plane.db import make_engine, make_session_factory
    from control_plane.sealing import ControlSealer

    settings, endpoints = _prepare(args)
    _check_database(endpoints.database_url)
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
    from control_plane.cli.stack import CommandError

    ident = ident.strip()
    by_id = ident.isascii() and ident.isdigit() and len(ident) <= 18
    where = Tenant.id == int(ident) if by_id else Tenant.slug == ident.lower()
    tenant = s.scalars(select(Tenant).where(where, Tenant.state != "deleted")).first()
    if tenant is None:
        raise CommandError(f"no tenant has the slug or id {ident!r}")
    return tenant
