"""Database servers that hold tenant databases, and placement: a new tenant goes to the active
server holding the fewest tenants."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.audit import Actor
from control_plane.exceptions import Conflict, InvalidInput, ServiceUnavailable
from control_plane.models import DbServer, Tenant
from control_plane.sealing import ControlSealer
from control_plane.tenancy.database import libpq_url

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


class ServerEvents:
    ADDED = "db_server.added"


def admin_url(sealer: ControlSealer, server: DbServer) -> str:
    return sealer.open(server.admin_url_sealed, table="db_servers", column="admin_url",
                       row_key=server.name).decode()


def do_add_db_server(s: Session, *, name: str, url: str, sealer: ControlSealer,
                     actor: Actor) -> DbServer:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInput("A server name is lowercase letters, digits and '-'.")
    try:
        parts = urlsplit(libpq_url(url))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if s.scalars(select(DbServer).where(DbServer.name == name)).first():
        raise Conflict(f"A database server named {name} already exists.")
    server = DbServer(name=name, host=parts.hostname or "localhost", port=parts.port or 5432,
                      admin_url_sealed=sealer.seal(url.encode(), table="db_servers",
                                                   column="admin_url", row_key=name))
    s.add(server)
    s.flush()
    audit.record(s, ServerEvents.ADDED, actor=actor, target_type="db_server",
                 target_id=server.id, details={"name": name, "host": server.host,
                                               "port": server.port})
    return server


def ensure_primary_server(s: Session, *, url: str, sealer: ControlSealer) -> DbServer:
    """Register the control plane's own server as ``primary`` when no server is known."""
    existing = s.scalars(select(DbServer).order_by(DbServer.id)).first()
    if existing is not None:
        return existing
    return do_add_db_server(s, name="primary", url=url, sealer=sealer, actor=audit.SYSTEM)


def pick_server(s: Session) -> DbServer:
    """The active server with the fewest live tenants (ties: the oldest server)."""
    load = (select(Tenant.db_server_id, func.count().label("n"))
            .where(Tenant.state != "deleted").group_by(Tenant.db_server_id).subquery())
    server = s.scalars(
        select(DbServer).outerjoin(load, load.c.db_server_id == DbServer.id)
        .where(DbServer.is_active)
        .order_by(func.coalesce(load.c.n, 0), DbServer.id).limit(1)
    ).first()
    if server is None:
        raise ServiceUnavailable("No database server is available for new tenants.")
    return server
