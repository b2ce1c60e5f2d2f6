"""Postgres restarts while Magistrate serves load.

The test owns everything it breaks: an embedded Postgres (so it can ``pg_ctl stop -m fast`` and
start it again on the same port and data), a Redis, and ``magistrate web`` as its own process,
with a provisioned tenant whose gateway route leads to a local fake provider. Client threads
call the gateway (``/v1/chat/completions``), the JSON API (``/api/whoami``) and the signed-in
dashboard while Postgres goes down and comes back. What must hold:

- a request that fails during the outage fails cleanly: 503 with Retry-After and a sentence,
  in the API's error shape for ``/v1`` and ``/api`` and as an HTML page for the dashboard;
  never a 500, never a connection reset or a hang;
- within 5 s of Postgres accepting connections again each kind of request succeeds, with the
  same Magistrate process (no restart);
- every gateway call that answered 200 has exactly one ``gateway.call`` audit event, and the
  tenant's chain and the platform's chain verify with no gap.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from control_plane.audit import verify_chain
from control_plane.migrations import upgrade_control
from control_plane.tenancy.servers import ensure_primary_server
from control_plane.web.app import build_services
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.models import AuditEvent, GatewayCall
from tests.chaos.infra import (
    Load,
    Outcome,
    OwnedPostgres,
    OwnedRedis,
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
from tests.fakes.llm_servers import LLMServer

pytestmark = pytest.mark.chaos

DOWN_SECONDS = 2.0
RECOVERY_LIMIT_SECONDS = 5.0
KINDS = ("gateway", "api", "dashboard")


def clean_503(outcome: Outcome) -> bool:
    """A 503 with Retry-After and a sentence, in the shape its caller reads."""
    if outcome.status != 503 or not outcome.retry_after:
        return False
    if outcome.kind == "gateway":  # OpenAI's error shape, which the SDK raises as its own
        return ('"type":"api_error"' in outcome.body and "database" in outcome.body
                and outcome.content_type.startswith("application/json"))
    if outcome.kind == "api":
        return (outcome.content_type.startswith("application/json")
                and '"status":503' in outcome.body and "database" in outcome.body)
    return (outcome.content_type.startswith("text/html") and "Unavailable" in outcome.body
            and "unavailable right now" in outcome.body and "Traceback" not in outcome.body)


def test_postgres_restart_under_load_fails_cleanly_and_recovers():
    with scratch_home("magistrate-chaos-pg-") as home, LLMServer() as llm:
        pg = OwnedPostgres(home, free_port())
        redis_server = OwnedRedis(home, free_port())
        pg.start()
        redis_server.start()
        try:
            run(home, pg, redis_server, llm)
        finally:
            redis_server.stop()
            pg.stop()


def run(home, pg: OwnedPostgres, redis_server: OwnedRedis, llm: LLMServer) -> None:
    pg.ensure_database()
    database_url = pg.url()
    upgrade_control(database_url)
    port = free_port()
    settings = make_settings(home=home, public_url=f"http://127.0.0.1:{port}",
                             allowed_hosts=("127.0.0.1",),
                             gateway_private_networks=("127.0.0.0/8",))
    create_kek(settings)
    svc = build_services(settings, database_url=database_url, redis_url=redis_server.url(),
                         secret_key=TEST_SECRET_KEY)
    try:
        with svc.session_factory() as s, s.begin():
            ensure_primary_server(s, url=pg.url("postgres"), sealer=svc.sealer)
        tenant = provision(svc, database_url, llm)
        env = process_env(settings, database_url=database_url, redis_url=redis_server.url())
        with WebProcess(env, port, home / "web.log") as web:
            pid = web.process.pid
            cookies = web.signed_in_cookies(tenant.owner.email)
            load = Load(web.url)
            bearer = {"Authorization": f"Bearer {tenant.api_key}"}
            load.add("gateway", chat(tenant.api_key), threads=3)
            load.add("api", get("/api/whoami", bearer))
            load.add("dashboard", get(f"/tenants/{tenant.tenant_id}"), cookies=cookies)
            load.add("dashboard", get("/tenants"), cookies=cookies)
            with load:
                for kind in KINDS:
                    load.wait_for(kind, 5)
                stopping, back = pg.restart(DOWN_SECONDS)
                load.wait_until_all_recovered(KINDS, back, RECOVERY_LIMIT_SECONDS + 1)
                time.sleep(1.0)  # and a moment of steady service after that
            assert web.alive and web.process.pid == pid, "magistrate web restarted"
            log = web.log()
        outcomes = {kind: load.of(kind) for kind in KINDS}
        figures = judge(outcomes, stopping, back, log)
        svc.tenant_connections.close()  # its pooled connections died with the server
        ctx = owner_context(svc, tenant.tenant_id, tenant.owner.id)
        figures["audit"] = audit_figures(svc, tenant.tenant_id, ctx,
                                         sum(o.status == 200 for o in outcomes["gateway"]))
        write_figures("postgres_restart", figures)
        assert figures["audit"]["tenant_chain_ok"], figures["audit"]
        assert figures["audit"]["platform_chain_problems"] == []
        assert (figures["audit"]["gateway_call_events_ok"]
                == figures["audit"]["gateway_200_responses"]), figures["audit"]
    finally:
        svc.close()


def judge(outcomes: dict[str, list[Outcome]], stopping: float, back: float,
          log: str) -> dict[str, object]:
    figures: dict[str, object] = {
        "down_seconds_requested": DOWN_SECONDS,
        "outage_seconds": round(back - stopping, 3),
        "recovery_limit_seconds": RECOVERY_LIMIT_SECONDS,
        "magistrate_restarted": False,
    }
    for kind, seen in outcomes.items():
        failures = [o for o in seen if not o.ok]
        unclean = [o for o in failures if not clean_503(o)]
        assert not unclean, f"{kind}: failures other than a clean 503: " + "; ".join(
            f"{o.status} {o.error or o.body[:200]}" for o in unclean[:5])
        # failures only around the outage: in flight when it began, or before recovery
        stray = [o for o in failures
                 if o.ended < stopping or o.started > back + RECOVERY_LIMIT_SECONDS]
        assert not stray, f"{kind}: failures outside the outage: {stray[:3]}"
        first_ok = next((o for o in seen if o.ok and o.started >= back), None)
        assert first_ok is not None, f"{kind}: nothing succeeded after Postgres came back"
        recovery = first_ok.ended - back
        assert recovery <= RECOVERY_LIMIT_SECONDS, f"{kind}: recovered after {recovery:.2f} s"
        last_failure = max((o.ended for o in failures), default=stopping)
        figures[kind] = {**counts(seen), "recovery_seconds": round(recovery, 3),
                         "last_failure_after_back_seconds": round(last_failure - back, 3)}
    # the outage was seen (else this test proved nothing) and it was not logged as a crash
    assert any(not o.ok for o in outcomes["gateway"]), "no gateway call met the outage"
    assert any(not o.ok for o in outcomes["dashboard"]), "no dashboard page met the outage"
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
    return figures


def audit_figures(svc, tenant_id: int, ctx, gateway_200: int) -> dict[str, object]:
    with ctx.session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.event_type == "gateway.call"))
        outcomes = [e.details["outcome"] for e in events]
        settled_ok = s.scalar(select(func.count()).select_from(GatewayCall)
                              .where(GatewayCall.status == "ok"))
        # calls whose settlement met the outage: the sweeper charges them (no 200 was sent)
        left_reserved = s.scalar(select(func.count()).select_from(GatewayCall)
                                 .where(GatewayCall.status == "reserved"))
        result = verify_tenant_chain(s, tenant_id)
    with svc.session_factory() as s:
        platform_problems = verify_chain(s)
    return {"gateway_200_responses": gateway_200,
            "gateway_call_events_ok": outcomes.count("ok"),
            "gateway_call_events_other": len(outcomes) - outcomes.count("ok"),
            "gateway_calls_settled_ok": settled_ok,
            "gateway_calls_left_reserved": left_reserved,
            "tenant_chain_ok": result.ok, "tenant_chain_rows": result.rows,
            "tenant_chain_problem": result.problem,
            "platform_chain_problems": platform_problems}
