"""``magistrate doctor``: what is wrong with this installation, and what to do about it.

Read only. Each check gives one finding (``ok``, ``warn`` or ``FAIL``), a sentence, and for
anything not ok what to do: the configuration, the control-plane Postgres and its pending
migrations, Redis, each tenant's key (an unwrap of its current data key through its KMS), its
database and pending migrations, worker liveness (RQ heartbeats and the outbox's oldest waiting
job), clock skew against Postgres and Redis, and free disk space under ``$MAGISTRATE_HOME``.
No finding carries a password: servers are named by host and port.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from control_plane.settings import Settings, SettingsError

CONNECT_TIMEOUT = 5
SKEW_WARN_SECONDS = 2.0
SKEW_FAIL_SECONDS = 30.0
WORKER_HEARTBEAT_STALE_SECONDS = 120
OUTBOX_STALE_SECONDS = 300
DISK_FAIL_BYTES = 1 << 30
DISK_WARN_FRACTION = 0.10


@dataclass(frozen=True)
class Finding:
    status: str  # "ok", "warn" or "FAIL"
    check: str
    message: str
    action: str = ""

    def line(self) -> str:
        text = f"{self.status:<5} {self.check}: {self.message}"
        return text + (f"\n      → {self.action}" if self.action else "")


def _ok(check: str, message: str) -> Finding:
    return Finding("ok", check, message)


def _where(url: str) -> str:
    """A server's host and port, never its credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}:{parts.port or ''}".rstrip(":")


def _first_line(exc: BaseException) -> str:
    from control_plane.tenancy.fanout import one_line

    return one_line(exc)


def check_configuration() -> tuple[list[Finding], Settings | None]:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return [Finding("FAIL", "configuration", str(exc),
                        "fix that variable (docs/configuration.md lists every "
                        "setting)")], None
    findings = [_ok("configuration", f"{settings.env} settings parsed (home {settings.home})")]
    if settings.is_production:
        for problem in settings.production_problems():
            findings.append(Finding("FAIL", "configuration", problem,
                                    "production refuses to start until it is fixed "
                                    "(ops/PRODUCTION.md)"))
    return findings, settings


def _engine_checks(settings: Settings, database_url: str) -> Iterator[Finding]:
    """Postgres, its clock, the control migrations, then every tenant."""
    import psycopg

    from control_plane.db import make_engine, make_session_factory, sqlalchemy_url
    from control_plane.migrations import current_revision, head_revision

    plain = sqlalchemy_url(database_url).replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        before = time.time()
        with psycopg.connect(plain, connect_timeout=CONNECT_TIMEOUT) as conn:
            row = conn.execute("SELECT now(), version()").fetchone()
        after = time.time()
    except psycopg.Error as exc:
        from control_plane.cli.support import where_is_the_stack

        yield Finding("FAIL", "postgres", f"cannot reach the control-plane database at "
                      f"{_where(plain)} ({_first_line(exc)})", where_is_the_stack())
        return
    if row is None:  # (SELECT always returns its row)
        return
    yield _ok("postgres", f"the control-plane database at {_where(plain)} answers "
                          f"({str(row[1]).split(' on ')[0]})")
    yield _skew("clock (Postgres)", row[0].timestamp(), before, after)
    current, head = current_revision(plain), head_revision("control")
    if current != head:
        yield Finding("FAIL", "migrations", f"the control plane is at revision "
                      f"{current or 'base'}, the code's head is {head}",
                      "run `magistrate migrate` (it also upgrades every tenant)")
        return
    yield _ok("migrations", f"the control plane is at head ({head})")
    engine = make_engine(database_url, pool_size=1)
    try:
        yield from _tenant_checks(settings, make_session_factory(engine), database_url)
    finally:
        engine.dispose()


def _tenant_checks(settings: Settings, factory: Any, database_url: str) -> Iterator[Finding]:
    from sqlalchemy import select
    from sqlalchemy.orm import joinedload

    from control_plane.keys.registry import build_key_providers
    from control_plane.migrations import current_revision, head_revision
    from control_plane.models import Tenant, TenantKey
    from control_plane.runtime import resolve_endpoints
    from control_plane.sealing import ControlSealer
    from control_plane.tenancy import database
    from control_plane.tenancy.fanout import MIGRATED_STATES
    from control_plane.tenancy.provisioning import tenant_secrets

    sealer = ControlSealer(resolve_endpoints(settings).secret_key)
    providers = build_key_providers(
        home=settings.home, production=settings.is_production, aws_region=settings.aws_region,
        aws_endpoint_url=settings.aws_kms_endpoint, gcp_endpoint=settings.gcp_kms_endpoint)
    head = head_revision("tenant")
    with factory() as s:
        tenants = list(s.scalars(select(Tenant).options(joinedload(Tenant.db_server))
                                 .where(Tenant.state != "deleted").order_by(Tenant.id)))
        keys = {k.tenant_id: k for k in s.scalars(
            select(TenantKey).where(TenantKey.retired_at.is_(None))
            .order_by(TenantKey.version))}
        if not tenants:
            yield _ok("tenants", "no tenant yet")
        for tenant in tenants:
            name = f"tenant {tenant.slug}"
            if tenant.state == "provisioning":
                yield Finding("warn", name, "still provisioning (or its provisioning failed)",
                              f"open /tenants/{tenant.id}: retry, change its key, or delete it")
                continue
            key = keys.get(tenant.id)
            if key is None or key.provider not in providers:
                why = (f"its provider {key.provider} is not available here" if key
                       else "none is recorded")
                yield Finding("FAIL", f"{name} key", f"no usable data key ({why})",
                              "see ops/KEY_ROTATION.md")
            else:
                try:
                    providers[key.provider].unwrap(key.wrapped_dek, tenant_id=str(tenant.id),
                                                   key_ref=key.key_ref)
                    yield _ok(f"{name} key", f"{key.provider} unwraps data key version "
                                             f"{key.version}")
                except Exception as exc:
                    yield Finding("FAIL", f"{name} key", _first_line(exc),
                                  "the customer's KMS must let Magistrate use the key again "
                                  f"({key.provider}: {key.key_ref}); until then the tenant's "
                                  "sealed data is unreadable")
            if tenant.state not in MIGRATED_STATES:
                continue
            try:
                secrets = tenant_secrets(sealer, tenant)
                url = database.url_for(secrets.admin_url, database=tenant.db_name,
                                       user=tenant.owner_role, password=secrets.owner_password)
                current = current_revision(url + ("&" if "?" in url else "?")
                                           + f"connect_timeout={CONNECT_TIMEOUT}")
            except Exception as exc:
                server = tenant.db_server.name if tenant.db_server else "?"
                yield Finding("FAIL", f"{name} database", f"cannot reach it on server "
                              f"{server} ({_first_line(exc)})",
                              "start that Postgres server, or check `magistrate server list`")
                continue
            if current != head:
                yield Finding("FAIL", f"{name} database", f"at revision {current or 'base'}, "
                              f"the code's head is {head}", "run `magistrate migrate`")
            else:
                yield _ok(f"{name} database", f"reachable, at head ({head})")
    yield from _outbox(factory)


def _outbox(factory: Any) -> Iterator[Finding]:
    from sqlalchemy import func, select

    from control_plane.models import Job

    with factory() as s:
        oldest = s.scalar(select(func.min(Job.created_at)).where(Job.state == "pending"))
    if oldest is not None:
        waited = (datetime.now(UTC) - oldest).total_seconds()
        if waited > OUTBOX_STALE_SECONDS:
            yield Finding("FAIL", "jobs", f"a job has waited {waited / 60:.0f} minutes in the "
                          "outbox", "start a worker (`magistrate worker`, or `magistrate up`)")


def _skew(check: str, server: float, before: float, after: float) -> Finding:
    skew = server - (before + after) / 2
    uncertainty = (after - before) / 2
    size = max(0.0, abs(skew) - uncertainty)
    text = f"this machine's clock differs by {skew:+.2f} s (±{uncertainty:.2f} s)"
    if size > SKEW_FAIL_SECONDS:
        return Finding("FAIL", check, text, "synchronise the clocks (NTP): sessions, "
                       "approvals and one-time codes expire by them")
    if size > SKEW_WARN_SECONDS:
        return Finding("warn", check, text, "synchronise the clocks (NTP)")
    return _ok(check, text)


def _redis_checks(redis_url: str) -> Iterator[Finding]:
    import redis
    from rq import Worker

    client = redis.Redis.from_url(redis_url, socket_timeout=CONNECT_TIMEOUT,
                                  socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        before = time.time()
        seconds, micros = client.time()
        after = time.time()
        workers = Worker.all(connection=client)
    except redis.RedisError as exc:
        yield Finding("FAIL", "redis", f"cannot reach Redis at {_where(redis_url)} "
                      f"({_first_line(exc)})", "start it (`magistrate up` starts the embedded "
                      "one), or check MAGISTRATE_REDIS_URL")
        return
    yield _ok("redis", f"Redis at {_where(redis_url)} answers")
    yield _skew("clock (Redis)", seconds + micros / 1e6, before, after)
    now = datetime.now(UTC)
    alive = [w for w in workers if w.last_heartbeat is not None and
             (now - w.last_heartbeat.replace(tzinfo=UTC)).total_seconds()
             < WORKER_HEARTBEAT_STALE_SECONDS]
    if alive:
        yield _ok("workers", f"{len(alive)} worker(s) with a recent heartbeat")
    else:
        yield Finding("FAIL", "workers", "no worker has sent a heartbeat in the last "
                      f"{WORKER_HEARTBEAT_STALE_SECONDS} s: provisioning, exports and "
                      "rotations wait", "start one: `magistrate worker` (`magistrate up` runs "
                      "one)")


def _disk(settings: Settings) -> Finding:
    folder = settings.home if settings.home.exists() else settings.home.parent
    usage = shutil.disk_usage(folder)
    text = (f"{usage.free / (1 << 30):.1f} GiB free of {usage.total / (1 << 30):.1f} GiB "
            f"under {folder}")
    if usage.free < DISK_FAIL_BYTES:
        return Finding("FAIL", "disk", text, "free space there: Postgres stops writing when "
                       "the disk is full")
    if usage.free < usage.total * DISK_WARN_FRACTION:
        return Finding("warn", "disk", text, "free space there soon")
    return _ok("disk", text)


def run_checks() -> list[Finding]:
    from control_plane.runtime import resolve_endpoints

    findings, settings = check_configuration()
    if settings is None:
        return findings
    endpoints = resolve_endpoints(settings)
    steps: list[Callable[[], Iterator[Finding]]] = [
        lambda: _engine_checks(settings, endpoints.database_url),
        lambda: _redis_checks(endpoints.redis_url),
        lambda: iter([_disk(settings)]),
    ]
    for step in steps:
        findings.extend(step())
    return findings


def cmd_doctor(args: argparse.Namespace) -> int:
    findings = run_checks()
    failed = sum(f.status == "FAIL" for f in findings)
    warned = sum(f.status == "warn" for f in findings)
    for finding in findings:
        print(finding.line())
    print(f"{len(findings)} checks: {failed} failed, {warned} warnings")
    return 1 if failed else 0


def register(sub: Any) -> None:
    doctor = sub.add_parser(
        "doctor", help="check this installation and say what to do about each problem",
        description="Check the configuration, the control-plane Postgres and its migrations, "
                    "Redis, each tenant's key (through its KMS), database and migrations, "
                    "worker liveness, clock skew and free disk space under $MAGISTRATE_HOME. "
                    "Read only. Prints one finding per check, with what to do; exit 1 when any "
                    "check failed.")
    doctor.set_defaults(func=cmd_doctor)
