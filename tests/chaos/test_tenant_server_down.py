"""One of two tenant database servers goes down under load, then comes back.

The test owns two embedded Postgres servers: the first holds the control plane and tenant A's
database (registered as the ``primary`` database server), the second holds only tenant B's
(registered as a second server, where placement puts the next tenant). ``magistrate web`` runs
as its own process; client threads call the gateway (``/v1/chat/completions``) with each
tenant's API key and load each tenant's audit page signed in as its Owner.

Injected: the second server is stopped with ``pg_ctl stop -m immediate`` for three seconds, then
started again on the same port and data. An immediate stop is what a crash of the server leaves
behind: every backend is ended at once, in-flight transactions are lost without a checkpoint and
the next start replays the write-ahead log. It is chosen over ``kill -9`` of the postmaster
because the postmaster alone dying leaves its backends running (pooled connections keep
answering until each backend notices) and a restart that depends on when the orphans exit and
the dead postmaster is reaped: a fault whose shape changes from run to run.

What must hold:

- tenant A is not affected: every one of its requests, during the outage too, answers 200;
- tenant B's requests during the outage get a clean answer: 503 with Retry-After, in OpenAI's
  error shape on ``/v1`` and as an HTML page on the dashboard; never a 500, never a reset;
- within 5 s of B's server accepting connections again, B's requests succeed, with the same
  Magistrate process (no restart);
- afterwards both tenants' audit chains and the platform's chain verify, and each tenant has
  exactly one ``gateway.call`` audit event per gateway call that answered 200.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from control_plane import audit
from control_plane.audit import verify_chain
from control_plane.migrations import upgrade_control
from control_plane.models import DbServer, Tenant
from control_plane.tenancy.servers import do_add_db_server, ensure_primary_server
from control_plane.web.app import build_services
from control_plane.web.services import Services
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.gateway.service import GatewayEvents
from tenant_runtime.models import AuditEvent
from tests.chaos.infra import (
    Load,
    Outcome,
    OwnedPostgres,
    OwnedRedis,
    Provisioned,
    WebProcess,
    chat,
    counts,
    create_kek,
    get,
    owner_context,
    process_env,
    provision,
    scratch_home,
    write_figures,
)
from tests.conftest import TEST_SECRET_KEY, free_port, make_settings
from tests.factories import make_user
from tests.fakes.llm_servers import LLMServer

pytestmark = pytest.mark.chaos

DOWN_SECONDS = 3.0
RECOVERY_LIMIT_SECONDS = 5.0
TENANTS = ("a", "b")
KINDS = ("gateway", "dashboard")
CRASH_RECOVERY = "database system was not properly shut down; automatic recovery in progress"


def kind_of(tenant: str, kind: str) -> str:
    return f"{tenant}-{kind}"


def clean_503(outcome: Outcome) -> bool:
    """A 503 with Retry-After and a sentence, in the shape its caller reads."""
    if outcome.status != 503 or not outcome.retry_after:
        return False
    if outcome.kind.endswith("gateway"):  # OpenAI's error shape, which the SDK raises
        return ('"type":"api_error"' in outcome.body and "database" in outcome.body
                and outcome.content_type.startswith("application/json"))
    return (outcome.content_type.startswith("text/html") and "Unavailable" in outcome.body
            and "unavailable right now" in outcome.body and "Traceback" not in outcome.body)


def test_one_tenant_server_down_under_load_spares_the_other_tenant() -> None:
    with scratch_home("magistrate-chaos-servers-") as home, \
            scratch_home("magistrate-chaos-second-pg-") as second_home, LLMServer() as llm:
        main = OwnedPostgres(home, free_port())
        second = OwnedPostgres(second_home, free_port())
        redis_server = OwnedRedis(home, free_port())
        main.start()
        second.start()
        redis_server.start()
        try:
            run(home, main, second, redis_server, llm)
        finally:
            redis_server.stop()
            second.stop()
            main.stop()


def run(home: Path, main: OwnedPostgres, second: OwnedPostgres, redis_server: OwnedRedis,
        llm: LLMServer) -> None:
    main.ensure_database()
    database_url = main.url()
    upgrade_control(database_url)
    port = free_port()
    settings = make_settings(home=home, public_url=f"http://127.0.0.1:{port}",
                             allowed_hosts=("127.0.0.1",),
                             gateway_private_networks=("127.0.0.0/8",))
    create_kek(settings)
    svc = build_services(settings, database_url=database_url, redis_url=redis_server.url(),
                         secret_key=TEST_SECRET_KEY)
    try:
        tenants = place_tenants(svc, database_url, main, second, llm)
        env = process_env(settings, database_url=database_url, redis_url=redis_server.url())
        with WebProcess(env, port, home / "web.log") as web:
            assert web.process is not None
            pid = web.process.pid
            load = Load(web.url)
            for name, tenant in tenants.items():
                cookies = web.signed_in_cookies(tenant.owner.email)
                load.add(kind_of(name, "gateway"), chat(tenant.api_key), threads=2)
                load.add(kind_of(name, "dashboard"), get(f"/tenants/{tenant.tenant_id}/audit"),
                         cookies=cookies)
            with load:
                for name in TENANTS:
                    for kind in KINDS:
                        load.wait_for(kind_of(name, kind), 5)
                stopping = time.monotonic()
                second.stop_immediately()
                time.sleep(DOWN_SECONDS)
                second.start()
                back = time.monotonic()
                load.wait_until_all_recovered(tuple(kind_of("b", k) for k in KINDS), back,
                                              RECOVERY_LIMIT_SECONDS + 1)
                time.sleep(1.0)  # and a moment of steady service after that
            assert web.alive and web.process.pid == pid, "magistrate web restarted"
            log = web.log()
        # the stop was a crash's: the server replayed its log when it started again
        assert CRASH_RECOVERY in second.logfile.read_text(errors="replace")
        outcomes = {kind_of(n, k): load.of(kind_of(n, k)) for n in TENANTS for k in KINDS}
        figures = judge(outcomes, stopping, back, log)
        svc.tenant_connections.close()  # its pooled connections to B died with the server
        chains = {name: audit_figures(svc, tenant, sum(
            o.status == 200 for o in outcomes[kind_of(name, "gateway")]))
            for name, tenant in tenants.items()}
        with svc.session_factory() as s:
            platform_problems = verify_chain(s)
        figures["audit"] = {**chains, "platform_chain_problems": platform_problems}
        write_figures("tenant_server_down", figures)
        for name, seen in chains.items():
            assert seen["tenant_chain_ok"], (name, seen)
            # a call whose commit reached the disk as the server died, but whose answer from
            # the server never came back, is committed and answered 503 (its outcome was
            # unknown to the gateway): at most one per request in flight at the crash
            in_doubt = sum(1 for o in outcomes[kind_of(name, "gateway")]
                           if not o.ok and o.started <= stopping <= o.ended)
            for figure in ("gateway_call_events", "gateway_call_events_ok"):
                assert seen["gateway_200_responses"] <= seen[figure] \
                    <= seen["gateway_200_responses"] + in_doubt, (name, in_doubt, seen)
        assert platform_problems == []
    finally:
        svc.close()


def place_tenants(svc: Services, database_url: str, main: OwnedPostgres,
                  second: OwnedPostgres, llm: LLMServer) -> dict[str, Provisioned]:
    """Tenant A on the primary server; then a second server, where placement puts tenant B
    (it holds no tenant yet)."""
    with svc.session_factory() as s, s.begin():
        ensure_primary_server(s, url=main.url("postgres"), sealer=svc.sealer)
    tenant_a = provision(svc, database_url, llm, slug="north")
    with svc.session_factory() as s, s.begin():
        do_add_db_server(s, name="second", url=second.url("postgres"), sealer=svc.sealer,
                         actor=audit.SYSTEM)
    tenant_b = provision(svc, database_url, llm, slug="south",
                         owner=make_user(svc.session_factory, "owner-b@example.com"))
    with svc.session_factory() as s:
        placed = dict(s.execute(select(Tenant.id, DbServer.name).join(
            DbServer, DbServer.id == Tenant.db_server_id)).all())
    assert placed == {tenant_a.tenant_id: "primary", tenant_b.tenant_id: "second"}, placed
    return {"a": tenant_a, "b": tenant_b}


def overlaps(o: Outcome, start: float, end: float) -> bool:
    return o.started <= end and o.ended >= start


def median_ms(outcomes: list[Outcome]) -> float | None:
    if not outcomes:
        return None
    return round(1000 * statistics.median(o.ended - o.started for o in outcomes), 1)


def judge(outcomes: dict[str, list[Outcome]], stopping: float, back: float,
          log: str) -> dict[str, object]:
    figures: dict[str, object] = {
        "stop": "pg_ctl stop -m immediate (crash recovery at start)",
        "down_seconds_requested": DOWN_SECONDS,
        "outage_seconds": round(back - stopping, 3),
        "recovery_limit_seconds": RECOVERY_LIMIT_SECONDS,
        "magistrate_restarted": False,
    }
    for name in TENANTS:
        per_kind: dict[str, object] = {}
        for kind in KINDS:
            seen = outcomes[kind_of(name, kind)]
            before = [o for o in seen if o.ended < stopping]
            during = [o for o in seen if overlaps(o, stopping, back)]
            first_ok = next((o for o in seen if o.ok and o.started >= back), None)
            assert first_ok is not None, f"{name}-{kind}: nothing succeeded after the outage"
            recovery = first_ok.ended - back
            per_kind[kind] = {
                **counts(seen), "status_200": sum(o.status == 200 for o in seen),
                "during_outage": len(during),
                "during_outage_status_200": sum(o.status == 200 for o in during),
                "before_outage_latency_ms_median": median_ms(before),
                "during_outage_latency_ms_median": median_ms(during),
                "during_outage_latency_ms_max": round(
                    1000 * max((o.ended - o.started for o in during), default=0), 1),
                "recovery_seconds": round(recovery, 3)}
            if name == "a":
                judge_unaffected(kind, seen, during)
            else:
                judge_affected(kind, seen, stopping, back, recovery)
        figures[f"tenant_{name}"] = per_kind
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
    return figures


def judge_unaffected(kind: str, seen: list[Outcome], during: list[Outcome]) -> None:
    """Tenant A: every request answered 200, and enough of them met the outage."""
    assert len(during) >= 3, f"a-{kind}: too few requests met the outage to say anything"
    others = [o for o in seen if o.status != 200]
    assert not others, f"a-{kind}: {len(others)} answers other than 200: " + "; ".join(
        f"{o.status} {o.error or o.body[:200]}" for o in others[:5])


def judge_affected(kind: str, seen: list[Outcome], stopping: float, back: float,
                   recovery: float) -> None:
    """Tenant B: clean 503s, only around the outage, and back within the limit."""
    failures = [o for o in seen if not o.ok]
    assert failures, f"b-{kind}: no request met the outage"
    unclean = [o for o in failures if not clean_503(o)]
    assert not unclean, f"b-{kind}: failures other than a clean 503: " + "; ".join(
        f"{o.status} {o.retry_after} {o.error or o.body[:200]}" for o in unclean[:5])
    # failures only around the outage: in flight when it began, or before recovery
    stray = [o for o in failures
             if o.ended < stopping or o.started > back + RECOVERY_LIMIT_SECONDS]
    assert not stray, f"b-{kind}: failures outside the outage: {stray[:3]}"
    assert recovery <= RECOVERY_LIMIT_SECONDS, f"b-{kind}: recovered after {recovery:.2f} s"


def audit_figures(svc: Services, tenant: Provisioned, gateway_200: int) -> dict[str, object]:
    ctx = owner_context(svc, tenant.tenant_id, tenant.owner.id)
    with ctx.session() as s:
        outcomes = [e.details["outcome"] for e in s.scalars(
            select(AuditEvent).where(AuditEvent.event_type == GatewayEvents.CALL))]
        result = verify_tenant_chain(s, tenant.tenant_id)
    return {"gateway_200_responses": gateway_200,
            "gateway_call_events": len(outcomes),
            "gateway_call_events_ok": outcomes.count("ok"),
            "tenant_chain_ok": result.ok, "tenant_chain_rows": result.rows,
            "tenant_chain_problem": result.problem}
