"""A model provider goes down: the gateway retries, falls back where the tenant allows, and says
clearly what failed; the recommendation gate degrades instead of guessing.

What the rest of the suite already proves, and this module does not repeat:
- retries per fault, on every provider's adapter: 5xx then success, 429 with Retry-After
  honoured or refused past the cap, Anthropic's 529, timeouts, resets, answers cut short,
  connection refused (``tests/tenant_runtime/gateway/test_providers.py``);
- through the gateway: three 5xx named in a 502, and a fallback after a timeout, a reset and a
  500 (``tests/control_plane/gateway/test_gateway_api.py``);
- the panel: every provider down, every model refused, the spend cap, a timeout leaving one
  valid vote (``tests/tenant_runtime/recommendations/test_panel.py``).

Here: a provider that refuses connections, under concurrent calls through the real HTTP
gateway — first with no fallback (every call a clean 502 naming the provider and its attempts,
audited, its reservation released), then with the tenant's fallback route (every call answered
by it), then back to the primary once it answers; and a panel whose members fail in different
ways (connection refused, a 429 asking for longer than we wait) never saying "do now".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import func, select

from tenant_runtime.gateway import config, spend
from tenant_runtime.models import AuditEvent, GatewayCall
from tests.chaos.infra import write_figures
from tests.conftest import make_settings
from tests.control_plane.gateway.conftest import (  # noqa: F401 - fixtures
    GatewayEnv,
    calls,
    gw,
    live_port,
    llm,
)
from tests.tenant_runtime.recommendations.conftest import (  # noqa: F401 - fixtures
    PANEL,
    env,
    servers,
)

pytestmark = pytest.mark.chaos

CALLERS = 8
MODEL = "gpt-4o-mini"
FALLBACK = "claude-haiku"
FIGURES: dict[str, Any] = {}


@pytest.fixture
def settings(live_port, tmp_path):  # noqa: F811 - what the gateway and the panel both need
    return make_settings(public_url=live_port.url,
                         allowed_hosts=("127.0.0.1",), home=tmp_path / "home",
                         gateway_private_networks=("127.0.0.0/8",))  # the fake providers


def point_route(gateway: GatewayEnv, *, endpoint: str, fallbacks: list[str]) -> None:
    with gateway.ctx.session() as s, s.begin():
        route = config.route_for(s, MODEL)
        route.endpoint = endpoint
        route.fallbacks = fallbacks
        config.bump(s)  # as every change through the dashboard does


def concurrent_calls(gateway: GatewayEnv) -> list[tuple[float, httpx.Response]]:
    """CALLERS chat completions at once, each on its own connection: (seconds, answer)."""
    body = {"model": MODEL, "max_tokens": 40,
            "messages": [{"role": "user", "content": "Is the provider up?"}]}

    def one(_: int) -> tuple[float, httpx.Response]:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            started = time.monotonic()
            answer = client.post("/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {gateway.key}"})
            answer.read()
            return time.monotonic() - started, answer

    with ThreadPoolExecutor(max_workers=CALLERS) as pool:
        return list(pool.map(one, range(CALLERS)))


def phase(results: list[tuple[float, httpx.Response]]) -> dict[str, Any]:
    statuses = [answer.status_code for _, answer in results]
    return {"attempted": len(results), "succeeded": statuses.count(200),
            "status_502": statuses.count(502), "status_500": statuses.count(500),
            "max_seconds": round(max(seconds for seconds, _ in results), 3)}


def gateway_events(gateway: GatewayEnv) -> list[AuditEvent]:
    with gateway.ctx.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.event_type == "gateway.call")
                              .order_by(AuditEvent.seq)))


def test_a_provider_refusing_connections_under_load(gw: GatewayEnv,  # noqa: F811
                                                    refused_port: Callable[[], int]):
    down = f"http://127.0.0.1:{refused_port()}/v1"

    # 1. the provider is down and the tenant has no fallback: a clean 502 each, named
    point_route(gw, endpoint=down, fallbacks=[])
    refused = concurrent_calls(gw)
    for _, answer in refused:
        assert answer.status_code == 502, answer.text
        error = answer.json()["error"]
        assert (error["type"], error["code"]) == ("api_error", "upstream_error")
        assert f"The model '{MODEL}' could not answer: openai failed after 3 attempts" in \
            error["message"]
        assert answer.headers["x-should-retry"] == "false"  # we retried already
    rows = calls(gw)
    assert [(r.status, r.attempts) for r in rows] == [("error", 3)] * CALLERS
    assert all(f"could not connect to {down}" in r.error for r in rows), rows[0].error
    assert all(r.cost_micros == 0 for r in rows)
    with gw.ctx.session() as s:  # every reservation released, nothing charged
        assert spend.month_totals(s, rows[0].month)[1] == 0
    events = gateway_events(gw)
    assert [(e.details["outcome"], e.details["attempts"]) for e in events] == \
        [("error", 3)] * CALLERS

    # 2. the tenant allows a fallback: every call is answered by it
    point_route(gw, endpoint=down, fallbacks=[FALLBACK])
    fell_back = concurrent_calls(gw)
    for _, answer in fell_back:
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "You said: Is the provider up?"
    rows = calls(gw)[CALLERS:]
    assert [(r.status, r.provider, r.attempts) for r in rows] == \
        [("ok", "anthropic", 4)] * CALLERS
    assert all(e.details["fallback"] for e in gateway_events(gw)[CALLERS:])

    # 3. the provider is back: the primary answers again, no fallback taken
    point_route(gw, endpoint=f"{gw.llm.base_url}/v1", fallbacks=[FALLBACK])
    gw.llm.clear()
    recovered = concurrent_calls(gw)
    assert [answer.status_code for _, answer in recovered] == [200] * CALLERS
    assert [(r.provider, r.attempts) for r in calls(gw)[2 * CALLERS:]] == \
        [("openai", 1)] * CALLERS
    assert {r.path for r in gw.llm.received} == {"/v1/chat/completions"}

    with gw.ctx.session() as s:
        total = s.scalar(select(func.count()).select_from(GatewayCall))
    assert total == len(gateway_events(gw)) == 3 * CALLERS  # one audit event per call
    FIGURES["gateway"] = {"callers": CALLERS, "no_fallback": phase(refused),
                          "with_fallback": phase(fell_back), "after_recovery": phase(recovered),
                          "audit_events_per_call": 1}
    write_figures("provider_outage", FIGURES)


def test_a_panel_whose_members_fail_does_not_form_and_never_says_do_now(env, servers):  # noqa: F811
    # every answer that arrives would clear the thresholds: only the failures stand between
    # the task and "do now"
    servers["panel-b"].stop()  # connection refused
    servers["panel-c"].fail_next((429, 120))  # asks for longer than the gateway waits
    run = env.judge(env.task())
    votes = env.votes(run.id)
    assert votes["panel-a"].valid
    assert (votes["panel-b"].abstention, votes["panel-c"].abstention) == (
        "unreachable", "unreachable")
    assert "anthropic failed after 3 attempts" in votes["panel-b"].abstention_detail
    assert "(last: HTTP 429)" in votes["panel-c"].abstention_detail
    assert run.verdict != "do_now" and run.verdict == "pilot"
    reasons = " ".join(run.reasons)
    assert "did not form: only 1 of 3" in reasons, reasons
    verdict = env.events()[-1]
    assert verdict.event_type == "recommendation.verdict"
    assert verdict.details["verdict"] == "pilot" and verdict.details["valid_votes"] == 1
    FIGURES["recommendation_gate"] = {
        "panel_size": len(PANEL), "valid_votes": 1, "verdict": run.verdict, "formed": False,
        "abstentions": {model: v.abstention for model, v in votes.items() if not v.valid}}
    write_figures("provider_outage", FIGURES)
