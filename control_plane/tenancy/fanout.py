"""``magistrate migrate``'s fan-out: every tenant database to the tenant tree's head.

- **Resumable.** Each tenant's current revision is read first; a tenant already at head is
  reported ``already-current`` without running Alembic, so a rerun after a crash or a failure
  only does what is left (and Alembic commits each revision on its own).
- **Concurrent.** ``concurrency`` tenants at a time. The revision checks run in threads. The
  upgrades run in worker processes: Alembic keeps its ``context`` and ``op`` proxies in module
  globals, so two upgrades in one process hand migration steps to each other's connections —
  one tenant's DDL on another tenant's database (tried: eight threads deadlocked with two
  sessions in one tenant's database). The pool is started (``spawn``) only when some tenant is
  behind, so a no-op run never pays for it, and has at most one process per CPU: a worker
  costs about a second of CPU to start and Alembic's side of an upgrade is CPU-bound Python
  (100 upgrades on 2 cores: 6.6 s with 2 processes, 13.1 s with 8). As with any
  ``multiprocessing`` user, a script that calls ``migrate_tenants`` needs the
  ``if __name__ == "__main__":`` guard.
- **Isolated failures.** A failing tenant is reported with one line of error; the others go on.
- **As the tenant's owner.** Each tenant is migrated as its ``_owner`` role, which owns the
  tenant's objects; the admin role never touches the tenant's tables.

Only ``active`` and ``suspended`` tenants are migrated: a ``provisioning`` one is being cloned
from the current template, which ``ensure_templates`` (re)builds on every active server.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, sessionmaker

from control_plane.migrations import current_revision, head_revision, upgrade_tenant
from control_plane.models import DbServer, Tenant
from control_plane.sealing import ControlSealer
from control_plane.tenancy import database
from control_plane.tenancy.provisioning import tenant_secrets
from control_plane.tenancy.servers import admin_url

MIGRATED_STATES = ("active", "suspended")
CONNECT_TIMEOUT_SECONDS = 10
MAX_ERROR_LENGTH = 300

Status = Literal["ok", "already-current", "failed"]


@dataclass(frozen=True)
class TenantMigrationResult:
    tenant_id: int
    slug: str
    server: str
    status: Status
    before: str | None  # None: no revision (an empty database), or not read (failed)
    after: str | None
    error: str | None  # one line, never a password
    seconds: float


@dataclass(frozen=True)
class TemplateResult:
    server: str
    template: str | None
    error: str | None
    seconds: float


MigrationProgress = Callable[[int, int, TenantMigrationResult], None]


# ------------------------------------------------------------------------------- templates


def ensure_templates(session_factory: sessionmaker[Session],
                     sealer: ControlSealer) -> list[TemplateResult]:
    """The migrated template for the current head on every active server (built when missing).
    One at a time, in this process: building one runs Alembic here."""
    with session_factory() as s:
        servers = list(s.scalars(select(DbServer).where(DbServer.is_active)
                                 .order_by(DbServer.id)))
    results = []
    for server in servers:
        started = time.monotonic()
        url = None
        try:
            url = admin_url(sealer, server)
            name: str | None = database.ensure_template(url)
            error = None
        except Exception as exc:  # one server failing does not stop the others
            name, error = None, one_line(exc, _url_secrets(url))
        results.append(TemplateResult(server.name, name, error, time.monotonic() - started))
    return results


# ------------------------------------------------------------------------------- tenants


@dataclass(frozen=True)
class _Target:
    tenant_id: int
    slug: str
    server: str
    url: str
    secrets: tuple[str, ...]


def migrate_tenants(session_factory: sessionmaker[Session], sealer: ControlSealer, *,
                    concurrency: int = 8, progress: MigrationProgress | None = None,
                    ) -> list[TenantMigrationResult]:
    """Upgrade every active or suspended tenant to the tenant tree's head; one result per
    tenant, in tenant id order. ``progress(done, total, result)`` is called, in the calling
    thread, as each tenant finishes."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    head = head_revision("tenant")
    targets, results = _targets(session_factory, sealer)
    total = len(targets) + len(results)
    for done, result in enumerate(results, 1):
        if progress is not None:
            progress(done, total, result)
    upgrades = _UpgradeWorkers(min(concurrency, os.cpu_count() or 1))
    threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="migrate")
    try:
        pending: set[Future[TenantMigrationResult]] = {
            threads.submit(_migrate_one, target, head, upgrades) for target in targets}
        while pending:
            finished, pending = wait_futures(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                results.append(future.result())
                if progress is not None:
                    progress(len(results), total, results[-1])
    finally:
        # on Ctrl-C: tenants not yet started stay untouched; a rerun picks them up
        threads.shutdown(wait=True, cancel_futures=True)
        upgrades.close()
    return sorted(results, key=lambda r: r.tenant_id)


def _targets(session_factory: sessionmaker[Session], sealer: ControlSealer,
             ) -> tuple[list[_Target], list[TenantMigrationResult]]:
    """Each tenant's owner URL; a tenant whose secrets do not open is a failure right away."""
    targets, failures = [], []
    with session_factory() as s:
        tenants = s.scalars(select(Tenant).options(joinedload(Tenant.db_server))
                            .where(Tenant.state.in_(MIGRATED_STATES)).order_by(Tenant.id))
        for tenant in tenants:
            server = tenant.db_server.name if tenant.db_server else "?"
            try:
                secrets = tenant_secrets(sealer, tenant)
            except Exception as exc:
                failures.append(TenantMigrationResult(tenant.id, tenant.slug, server, "failed",
                                                      None, None, one_line(exc), 0.0))
                continue
            url = database.url_for(secrets.admin_url, database=tenant.db_name,
                                   user=tenant.owner_role, password=secrets.owner_password)
            targets.append(_Target(tenant.id, tenant.slug, server, _with_timeout(url),
                                   (secrets.owner_password, *_url_secrets(secrets.admin_url))))
    return targets, failures


def _migrate_one(target: _Target, head: str | None,
                 upgrades: _UpgradeWorkers) -> TenantMigrationResult:
    started = time.monotonic()
    before: str | None = None
    after: str | None = None

    def result(status: Status, error: str | None = None) -> TenantMigrationResult:
        return TenantMigrationResult(target.tenant_id, target.slug, target.server, status,
                                     before, after, error, time.monotonic() - started)

    try:
        before = current_revision(target.url)
        if before == head:
            after = before
            return result("already-current")
        after = upgrades.upgrade(target.url)
    except Exception as exc:
        return result("failed", one_line(exc, target.secrets))
    if after != head:
        return result("failed", f"ended at revision {after}, not at head {head}")
    return result("ok")


class UpgradeFailed(Exception):
    """Alembic failed in a worker process; the message is its one-line summary."""


def _upgrade_in_worker(url: str) -> tuple[str | None, str | None]:
    """In a worker process: ``(revision, None)`` or ``(None, one line of error)``. Errors
    travel as text, since driver exceptions do not all survive pickling."""
    try:
        return upgrade_tenant(url), None
    except Exception as exc:
        return None, one_line(exc)


class _UpgradeWorkers:
    """A process pool for Alembic upgrades, started on first use."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def upgrade(self, url: str) -> str | None:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self._size, mp_context=multiprocessing.get_context("spawn"))
            pool = self._pool
        revision, error = pool.submit(_upgrade_in_worker, url).result()
        if error is not None:
            raise UpgradeFailed(error)
        return None if revision == "base" else revision

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------- helpers


_DRIVER_PREFIX = re.compile(r"^\([\w.]+\)\s*")


def one_line(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """The first line of an error, without SQLAlchemy's ``(module.Class)`` prefix, with any
    of ``secrets`` masked, at most ``MAX_ERROR_LENGTH`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = _DRIVER_PREFIX.sub("", lines[0]) if lines else ""
    text = text or type(exc).__name__
    for secret in secrets:
        if secret:
            text = text.replace(secret, "**********").replace(quote(secret, safe=""),
                                                              "**********")
    return text[:MAX_ERROR_LENGTH]


def _url_secrets(url: str | None) -> tuple[str, ...]:
    if not url:
        return ()
    password = urlsplit(url).password
    return (unquote(password),) if password else ()


def _with_timeout(url: str) -> str:
    """A hung server must fail its tenants, not hang the fan-out."""
    if "connect_timeout=" in url:
        return url
    return url + ("&" if "?" in url else "?") + f"connect_timeout={CONNECT_TIMEOUT_SECONDS}"


# ------------------------------------------------------------------------------- display


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """``[#####-----] 12/200``"""
    filled = width if total == 0 else width * done // total
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total}"


def progress_line(done: int, total: int, result: TenantMigrationResult) -> str:
    """One line per tenant, for logs (stderr is not a terminal)."""
    before, after = _revisions(result)
    line = (f"[{done}/{total}] {result.slug} (id {result.tenant_id}): {result.status} "
            f"{before} -> {after} in {result.seconds:.2f}s")
    return line + (f": {result.error}" if result.error else "")


def result_table(results: Sequence[TenantMigrationResult]) -> list[str]:
    header = ("id", "tenant", "server", "status", "before", "after", "seconds", "error")
    rows = [(str(r.tenant_id), r.slug, r.server, r.status, *_revisions(r), f"{r.seconds:.2f}",
             r.error or "") for r in results]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    return ["  ".join([cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)]
                      + [row[-1]]).rstrip() for row in (header, *rows)]


def summary_line(results: Sequence[TenantMigrationResult]) -> str:
    upgraded = sum(r.status == "ok" for r in results)
    current = sum(r.status == "already-current" for r in results)
    failed = len(results) - upgraded - current
    return (f"tenants: {upgraded + current} ok, {failed} failed ({upgraded} upgraded, "
            f"{current} already current)")


def _revisions(result: TenantMigrationResult) -> tuple[str, str]:
    """No revision reads ``base``; on a failed tenant, what was not learned reads ``?``."""
    unknown = "?" if result.status == "failed" else "base"
    return result.before or unknown, result.after or unknown
