"""The periodic checkpoint task: every active tenant gets a signed checkpoint of its audit chain
when one is due (tenant_runtime/checkpoints.py decides; most runs write nothing).

It runs in the periodic process of every worker. Two workers on one tenant are safe: the
tenant's checkpoint lock serializes them and the second finds nothing due. One failing tenant
(a revoked customer key, a database that does not answer) is logged and skipped; the others go
on, and the next run tries it again."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_plane.models import Membership, Tenant, User
from control_plane.settings import Settings
from control_plane.tenancy.connections import TenantConnections, egress_policy
from tenant_runtime.audit_retention import deliver_checkpoints, prune
from tenant_runtime.checkpoints import make_checkpoint
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.exceptions import TenantError
from tenant_runtime.gateway.service import forget_kept_answers
from tenant_runtime.gateway.spend import settle_abandoned
from tenant_runtime.key_notices import deliver_key_notices
from tenant_runtime.minimization.retention import sweep as sweep_minimization
from tenant_runtime.models import AuditCheckpoint
from tenant_runtime.observability import metrics
from tenant_runtime.signals.service import fail_abandoned_imports
from tenant_runtime.webhooks import Poster
from workers import runtime

log = logging.getLogger("magistrate.checkpoints")
SYSTEM = Actor("system", None, "checkpoints")


def compliance_contacts(session_factory: sessionmaker[Session],
                        tenant_id: int) -> Callable[[], list[str]]:
    """The tenant's compliance contacts, who get its checkpoint keys by e-mail: its active
    members with the Compliance role, or its Owners when it has none (resolved here, at
    sending time: the tenant database holds no e-mail addresses)."""

    def contacts() -> list[str]:
        with session_factory() as s:
            rows = s.execute(
                select(Membership.role, User.email).join(User, Membership.user_id == User.id)
                .where(Membership.tenant_id == tenant_id, User.is_active,
                       Membership.role.in_(("Compliance", "Owner")))
                .order_by(User.id)).all()
        compliance = [email for role, email in rows if role == "Compliance"]
        return compliance or [email for role, email in rows if role == "Owner"]

    return contacts


def checkpoint_all_tenants(session_factory: sessionmaker[Session],
                           connections: TenantConnections, settings: Settings | None = None,
                           *, post: Poster | None = None) -> dict[str, int]:
    """Write the due checkpoint of every active tenant, send its checkpoints to its checkpoint
    webhook and its key notices to its notification webhook and compliance contacts; each
    tenant in its own transactions. Returns ``{"tenants", "written", "not_due", "failed"}``."""
    from workers.approvals import mailer_for  # workers.approvals imports this module

    mailer = mailer_for(settings) if settings is not None else None
    with session_factory() as s:
        tenant_ids = list(s.scalars(select(Tenant.id).where(Tenant.state == "active")
                                    .order_by(Tenant.id)))
    counts = {"tenants": len(tenant_ids), "written": 0, "not_due": 0, "failed": 0}
    for tenant_id in tenant_ids:
        try:
            with session_factory() as s:
                tenant = s.get(Tenant, tenant_id)
                if tenant is None or tenant.state != "active":
                    counts["not_due"] += 1  # deleted or suspended since the list was read
                    continue
                ctx = connections.context(s, tenant, SYSTEM)
            with ctx.session() as ts, ts.begin():
                checkpoint = make_checkpoint(ts, ctx)
                newest = ts.scalar(select(func.max(AuditCheckpoint.created_at)))
            if newest is not None:  # its age is the dashboard's "checkpoint age"
                metrics.CHECKPOINT_TIME.labels(ctx.slug).set(newest.timestamp())
            with ctx.session() as ts, ts.begin():  # send what is made, retry what failed
                deliver_checkpoints(ts, ctx, post)
            with ctx.session() as ts, ts.begin():
                deliver_key_notices(ts, ctx, recipients=compliance_contacts(
                    session_factory, tenant_id), mailer=mailer, post=post)
        except TenantError as exc:
            counts["failed"] += 1
            log.warning("checkpoint of tenant %d failed: %s", tenant_id, exc.message)
            continue
        except Exception as exc:  # noqa: BLE001 - one tenant must not stop the others
            counts["failed"] += 1
            # the type only: a driver message may carry a host or a role name
            log.warning("checkpoint of tenant %d failed: %s", tenant_id, type(exc).__name__)
            continue
        if checkpoint is None:
            counts["not_due"] += 1
        else:
            counts["written"] += 1
            log.info("checkpoint of tenant %d at seq %d (key %s)", tenant_id, checkpoint.seq,
                     checkpoint.key_id)
    return counts


def for_each_tenant(session_factory: sessionmaker[Session], connections: TenantConnections,
                    work: Callable[[Session, TenantContext], int], what: str
                    ) -> dict[str, int]:
    """``work`` in each active tenant, each in its own transaction; a failing tenant is logged
    and skipped. Returns ``{"tenants", "done", "failed"}`` (``done`` sums what work returns)."""
    with session_factory() as s:
        tenant_ids = list(s.scalars(select(Tenant.id).where(Tenant.state == "active")))
    counts = {"tenants": len(tenant_ids), "done": 0, "failed": 0}
    for tenant_id in tenant_ids:
        try:
            with session_factory() as s:
                tenant = s.get(Tenant, tenant_id)
                if tenant is None or tenant.state != "active":
                    continue
                ctx = connections.context(s, tenant, SYSTEM)
            with ctx.session() as ts, ts.begin():
                counts["done"] += work(ts, ctx)
        except Exception as exc:  # noqa: BLE001 - one tenant must not stop the others
            counts["failed"] += 1
            log.warning("%s of tenant %d failed: %s", what, tenant_id, type(exc).__name__)
    return counts


def prune_all_tenants(session_factory: sessionmaker[Session], connections: TenantConnections,
                      *, now: datetime | None = None) -> dict[str, int]:
    """Retention for every active tenant, each in its own transaction on a connection as the
    tenant's owner role (the only role the database lets remove audit rows, and only up to a
    checkpoint); a failing tenant is logged and skipped."""
    with session_factory() as s:
        tenant_ids = list(s.scalars(select(Tenant.id).where(Tenant.state == "active")))
    counts = {"tenants": len(tenant_ids), "removed": 0, "failed": 0}
    for tenant_id in tenant_ids:
        try:
            with session_factory() as s:
                tenant = s.get(Tenant, tenant_id)
                if tenant is None or tenant.state != "active":
                    continue
                with connections.owner_context(s, tenant, SYSTEM) as ctx, \
                        ctx.session() as ts, ts.begin():
                    counts["removed"] += prune(ts, ctx, now=now).removed
        except Exception as exc:  # noqa: BLE001 - one tenant must not stop the others
            counts["failed"] += 1
            log.warning("retention of tenant %d failed: %s", tenant_id, type(exc).__name__)
    return counts


def settle_abandoned_calls() -> dict[str, int]:
    """Gateway reservations whose call never finished (its web process died), charged in full
    so the spend cap is not undercounted (tenant_runtime/gateway/spend.py); and answers kept
    for a job step that never released them, cleared (tenant_runtime/gateway/service.py)."""
    return for_each_tenant(runtime.session_factory(), _process_connections(),
                           lambda ts, ctx: settle_abandoned(ts) + forget_kept_answers(ts),
                           "settling abandoned calls")


def fail_abandoned_signal_imports() -> dict[str, int]:
    """Signal imports whose process died mid-file, marked failed in every tenant
    (tenant_runtime/signals/service.py)."""
    return for_each_tenant(runtime.session_factory(), _process_connections(),
                           lambda ts, ctx: fail_abandoned_imports(ts, ctx),
                           "failing abandoned signal imports")


def run_retention() -> dict[str, int]:
    return prune_all_tenants(runtime.session_factory(), _process_connections())


def sweep_minimization_all_tenants(session_factory: sessionmaker[Session],
                                   connections: TenantConnections) -> dict[str, int]:
    """Observations and signals past each active tenant's retention
    (tenant_runtime/minimization/retention.py); a tenant whose key is revoked is skipped."""
    counts = for_each_tenant(session_factory, connections,
                             lambda ts, ctx: sweep_minimization(ts, ctx).removed,
                             "minimization retention")
    return {"tenants": counts["tenants"], "removed": counts["done"], "failed": counts["failed"]}


def run_minimization_retention() -> dict[str, int]:
    return sweep_minimization_all_tenants(runtime.session_factory(), _process_connections())


_connections: TenantConnections | None = None
_connections_for: tuple[int, runtime.WorkerEnv] | None = None
_lock = threading.Lock()


def _process_connections() -> TenantConnections:
    """One pool of tenant engines per worker process (and configuration), reused from run to
    run, so a minute's run does not open a new engine per tenant."""
    global _connections, _connections_for
    env = runtime.env()
    with _lock:
        owner = _connections_for
        if _connections is None or owner is None or owner[0] != os.getpid() \
                or owner[1] is not env:
            if _connections is not None and owner is not None and owner[0] == os.getpid():
                _connections.close()  # reconfigured in this process (never after a fork)
            _connections = TenantConnections(sealer=env.sealer, providers=env.key_providers,
                                             dek_cache=env.dek_cache,
                                             egress=egress_policy(env.settings))
            _connections_for = (os.getpid(), env)
        return _connections


def run_checkpoints() -> dict[str, int]:
    """The periodic task's body: every active tenant, with this process's tenant engines."""
    from control_plane.audit_checkpoints import make_platform_checkpoint

    try:
        with runtime.session_factory()() as s, s.begin():  # the platform chain's, when due
            make_platform_checkpoint(s, runtime.env().sealer)
    except Exception as exc:  # noqa: BLE001 - the tenants' checkpoints still run
        log.warning("checkpoint of the platform chain failed: %s", type(exc).__name__)
    return checkpoint_all_tenants(runtime.session_factory(), _process_connections(),
                                  runtime.env().settings)


def close_connections() -> None:
    """Dispose of this process's tenant engines (worker shutdown, tests)."""
    global _connections, _connections_for
    with _lock:
        if _connections is not None and _connections_for is not None \
                and _connections_for[0] == os.getpid():
            _connections.close()
        _connections, _connections_for = None, None
