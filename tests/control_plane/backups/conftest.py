"""Backup fixtures: the tenancy fixtures (the test server as primary, a local KEK), two
provisioned tenants with audit events, and a local backup folder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import select

from control_plane.audit import Actor
from control_plane.backups.destinations import Destination, destination_for
from control_plane.models import Tenant
from tenant_runtime import audit as tenant_audit
from tenant_runtime.context import Actor as TenantActor
from tests.conftest import drop_database
from tests.control_plane.tenancy.conftest import local_kek, primary_server, settings  # noqa: F401
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user

ACTOR = Actor("system", None, "backup test")


@dataclass
class BackupWorld:
    services: object
    folder: Path
    destination: Destination
    tenant_id: int
    other_id: int
    slug: str = "acme"

    def opener(self, where: str) -> Destination:
        return destination_for(where, home=self.folder.parent, endpoint_url=None,
                               region="us-east-1", object_lock=None)


def add_events(services, tenant_id: int, n: int, label: str = "test.event") -> None:
    conns = services.tenant_connections
    with services.session_factory() as s:
        tenant = s.get(Tenant, tenant_id)
        ctx = conns.context(s, tenant, TenantActor("system", None, "test"))
        with ctx.session() as ts, ts.begin():
            for i in range(n):
                tenant_audit.record(ts, label, actor=ctx.actor, target_type="thing",
                                    target_id=str(i), details={"i": i})


def audit_rows(services, tenant_id: int) -> list[tuple]:
    from tenant_runtime.models import AuditEvent

    with services.session_factory() as s:
        tenant = s.get(Tenant, tenant_id)
        factory = services.tenant_connections.session_factory(tenant)
    with factory() as ts:
        return [tuple(r) for r in ts.execute(select(
            AuditEvent.seq, AuditEvent.event_type, AuditEvent.details, AuditEvent.chain_hash)
            .order_by(AuditEvent.seq))]


def drop_restored(server_url: str, tenant_ids: tuple[int, ...]) -> None:
    """Drop the databases restores made for these tenants (before their roles go)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        for tenant_id in tenant_ids:
            for (name,) in conn.execute("SELECT datname FROM pg_database WHERE starts_with("
                                        "datname, %s)", (f"magistrate_t_{tenant_id}_",)):
                drop_database(conn, name)


@pytest.fixture
def s3(monkeypatch) -> Iterator[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        if server._server is not None:
            server._server.server_close()


@pytest.fixture
def world(services, db, database_url, primary_server, local_kek, settings,  # noqa: F811
          pg_server_url) -> Iterator[BackupWorld]:
    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "acme")
    other_id = create_tenant(services, owner.email, "globex")
    run_pending_jobs(services, database_url)
    add_events(services, tenant_id, 5)
    add_events(services, other_id, 2)
    folder = settings.home / "backups"
    yield BackupWorld(services, folder, destination_for(
        str(folder), home=settings.home, endpoint_url=None, region="us-east-1",
        object_lock=None), tenant_id, other_id)
    services.tenant_connections.close()
    drop_restored(pg_server_url, (tenant_id, other_id))
