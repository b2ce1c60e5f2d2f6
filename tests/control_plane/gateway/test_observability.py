"""Production observability of the gateway: ``/metrics`` (Prometheus text, behind the metrics
token) and OpenTelemetry spans. Calls carrying personal data, e-mail addresses and keys (in
prompts, model names, paths, query strings and headers) go through the real app; then every
label value of a scrape, and every attribute of every span, is checked: none carries content,
an e-mail address, a key or its prefix. The label values are checked by enumeration: each one
must belong to the closed vocabulary of its label."""

from __future__ import annotations

import re

import anthropic
import httpx2 as httpx
import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from control_plane.settings import Secret
from control_plane.tenancy.service import SLUG_PATTERN
from control_plane.web.metrics import OPEN_STATES, UNMATCHED, _templates, token_matches
from tenant_runtime.gateway import config
from tenant_runtime.observability import metrics, tracing
from tests.conftest import make_settings
from tests.control_plane.gateway.conftest import ROUTES, GatewayEnv

METRICS_TOKEN = "scrape-token-" + "k" * 40
PII = {"email": "jane.smith@example.com", "phone": "415-555-0134", "ssn": "123-45-6789",
       "card": "4111 1111 1111 1111", "person": "Jane Smith"}
PROMPT = (f"Please draft a reply to {PII['person']} ({PII['email']}, {PII['phone']}). Her SSN "
          f"is {PII['ssn']} and she paid with {PII['card']}. Quote ticket zephyr-quokka-42.")
FORGED_KEY = "mg_live_forgedkey0123456789abcdefghijkl"


@pytest.fixture
def settings(live_port, tmp_path):
    return make_settings(public_url=live_port.url,
                         allowed_hosts=("127.0.0.1",), home=tmp_path / "home",
                         gateway_private_networks=("127.0.0.0/8",),
                         metrics_token=Secret(METRICS_TOKEN))


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)


def oai(env: GatewayEnv, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{env.url}/v1", api_key=key or env.key, max_retries=0)


def drive_traffic(env: GatewayEnv) -> None:
    """Calls of every kind, every one carrying content that must not come out."""
    messages = [{"role": "user", "content": PROMPT}]
    with oai(env) as client:
        for model in ROUTES:
            client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=messages,  # type: ignore[arg-type]
                                                    stream=True):
            assert chunk is not None
        client.embeddings.create(model="gpt-4o-mini", input=[PROMPT])
        for model in (PII["email"], PROMPT[:60], env.key, "gpt-4.1"):  # refused: not allowed
            with pytest.raises(openai.PermissionDeniedError):
                client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    with anthropic.Anthropic(base_url=env.url, api_key=env.key, max_retries=0) as client:
        client.messages.create(model="claude-haiku", max_tokens=64, messages=messages)  # type: ignore[arg-type,list-item]
    for key in (FORGED_KEY, PII["email"]):
        with oai(env, key) as client, pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    with httpx.Client(base_url=env.url) as web:
        for path in (f"/v1/{PII['email']}", f"/api/tenants/{PII['email']}/keys",
                     f"/tenants/{env.tenant_id}/{env.key}"):
            assert web.get(path, params={"q": PROMPT, "key": env.key}).status_code == 404
        web.post("/v1/chat/completions", content=PROMPT.encode(),
                 headers={"Authorization": f"Bearer {env.key}",
                          "Content-Type": "application/json"})


def scrape(env: GatewayEnv, token: str | None = METRICS_TOKEN) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{env.url}/metrics", headers=headers)


def forbidden_fragments(env: GatewayEnv) -> list[str]:
    words = [w for w in re.findall(r"[A-Za-z][\w.@-]{5,}", PROMPT)]
    return [*PII.values(), PROMPT, "zephyr-quokka-42", env.key, env.key[:12], FORGED_KEY,
            FORGED_KEY[:12], METRICS_TOKEN, "@", *words]


def vocabulary(app_routes) -> dict[str, set[str] | re.Pattern[str]]:
    """Each label's closed set of values (or the pattern of an operator-chosen name)."""
    templates = {template for _, template in _templates(app_routes, "")}
    return {
        "route": templates | {UNMATCHED, metrics.OTHER},
        "method": {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", metrics.OTHER},
        "status": re.compile(r"[1-5]\d\d"),
        "provider": (metrics.PROVIDERS | metrics.KMS_PROVIDERS) | {metrics.OTHER},
        "endpoint": metrics.ENDPOINT_KINDS | {metrics.OTHER},
        "outcome": metrics.OUTCOMES | {"error", metrics.OTHER},
        "reason": metrics.REFUSAL_REASONS | {metrics.OTHER},
        "type": metrics.ENTITY_TYPES | {metrics.OTHER},
        "tenant": SLUG_PATTERN,
        "direction": {"input", "output"},
        "limiter": {"gateway", "sign_in"},
        "how": {"expired", "released"},
        "chain": {"tenant", "platform"},
        "operation": {"wrap", "unwrap"},
        "result": {"hit", "miss"},
        "state": set(OPEN_STATES),
        "queue": {"default"},
        "loop": metrics.LOOPS | {metrics.OTHER},
        "stage": metrics.STAGES | {metrics.OTHER},
        "le": re.compile(r"\+Inf|\d+(\.\d+)?(e[+-]?\d+)?"),
    }


def labels_of(text: str) -> list[tuple[str, str, str]]:
    """(sample name, label name, label value) of every labelled sample of a scrape."""
    return [(sample.name, name, value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples for name, value in sample.labels.items()]


def sample(text: str, name: str, **labels: str) -> float:
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_no_label_value_of_a_scrape_carries_content_an_address_or_a_key(gw, services):
    from control_plane.web.app import build_app

    before = scrape(gw).text
    drive_traffic(gw)
    response = scrape(gw)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    found = labels_of(text)
    assert len(found) > 100
    allowed = vocabulary(build_app(services).routes)
    for name, label, value in found:
        assert label in allowed, f"{name} has a label outside the documented ones: {label}"
        rule = allowed[label]
        ok = rule.fullmatch(value) if isinstance(rule, re.Pattern) else value in rule
        assert ok, f"{name}{{{label}={value!r}}} is not in the label's vocabulary"
        for fragment in forbidden_fragments(gw):
            assert fragment.lower() not in value.lower(), (name, label, value)

    # and the traffic is there, counted under the closed names
    def grew(name: str, **labels: str) -> float:
        return sample(text, name, **labels) - sample(before, name, **labels)

    assert grew("magistrate_gateway_calls_total", provider="openai", endpoint="openai",
                outcome="ok") >= 2  # chat, stream
    assert grew("magistrate_gateway_calls_total", provider="openai", endpoint="embeddings",
                outcome="ok") >= 1
    assert grew("magistrate_gateway_calls_total", provider="anthropic", outcome="ok") >= 2
    assert grew("magistrate_redactions_total", type="EMAIL") >= 7
    assert grew("magistrate_gateway_refusals_total", reason="model_not_allowed") >= 4
    assert grew("magistrate_gateway_refusals_total", reason="unauthenticated") >= 2
    assert grew("magistrate_gateway_tokens_total", tenant="acme", provider="openai",
                direction="input") > 0
    assert grew("magistrate_gateway_cost_dollars_total", tenant="acme") >= 0
    assert grew("magistrate_gateway_overhead_seconds_count", endpoint="openai") >= 2
    assert grew("magistrate_gateway_overhead_seconds_count", endpoint="embeddings") >= 1
    assert grew("magistrate_http_requests_total", route="/v1/chat/completions",
                method="POST", status="200") >= 6
    assert grew("magistrate_http_requests_total", route=UNMATCHED, status="404") >= 3
    assert grew("magistrate_audit_appends_total", chain="tenant") >= 10
    assert grew("magistrate_data_key_cache_total", result="hit") > 0
    assert sample(text, "magistrate_jobs", state="pending") >= 0
    assert "magistrate_rq_queue_length" in text


def test_the_overhead_excludes_the_provider(gw):
    """A provider that takes 3 s: the call's overhead stays far below it (an overhead that
    counted the provider's time would be 3 s and more), the provider histogram sees it. The 3 s
    is far above what a busy machine adds to a call; the route waits for it."""
    with gw.ctx.session() as s, s.begin():
        route = config.route_for(s, "gpt-4o-mini")
        assert route is not None
        route.timeout_seconds = 30
        config.bump(s)
    gw.llm.latency_seconds = 3.0
    before = scrape(gw).text
    with oai(gw) as client:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])
    text = scrape(gw).text
    overhead = (sample(text, "magistrate_gateway_overhead_seconds_sum", endpoint="openai")
                - sample(before, "magistrate_gateway_overhead_seconds_sum", endpoint="openai"))
    provider = (sample(text, "magistrate_gateway_provider_seconds_sum", provider="openai")
                - sample(before, "magistrate_gateway_provider_seconds_sum", provider="openai"))
    assert provider >= 3.0
    assert 0 < overhead < 1.5
    # the overhead's steps: one observation each for the call, each a part of the overhead
    stages = {stage: (sample(text, "magistrate_gateway_stage_seconds_sum", stage=stage)
                      - sample(before, "magistrate_gateway_stage_seconds_sum", stage=stage),
                      sample(text, "magistrate_gateway_stage_seconds_count", stage=stage)
                      - sample(before, "magistrate_gateway_stage_seconds_count", stage=stage))
              for stage in metrics.STAGES}
    assert {stage: count for stage, (_, count) in stages.items()} == {
        "admission": 1, "reservation": 1, "settlement": 1}
    assert all(seconds > 0 for seconds, _ in stages.values())
    assert sum(seconds for seconds, _ in stages.values()) <= overhead


def test_a_scrape_needs_the_token(gw):
    assert scrape(gw, None).status_code == 401
    refused = scrape(gw, "wrong-" + METRICS_TOKEN)
    assert refused.status_code == 401 and "MAGISTRATE_METRICS_TOKEN" in refused.text
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "magistrate_" not in refused.text
    assert httpx.get(f"{gw.url}/metrics",
                     headers={"Authorization": f"Basic {METRICS_TOKEN}"}).status_code == 401
    assert scrape(gw, gw.key).status_code == 401  # a gateway key is no metrics token
    assert scrape(gw).status_code == 200
    # a scraper reaching the process by an address that is no allowed host: the token decides
    by_address = {"Host": "10.0.0.5:8000"}
    assert httpx.get(f"{gw.url}/metrics", headers=by_address).status_code == 401
    assert httpx.get(f"{gw.url}/metrics", headers={
        **by_address, "Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
    assert httpx.get(f"{gw.url}/healthz", headers=by_address).status_code == 200
    assert httpx.get(f"{gw.url}/v1/models", headers=by_address).status_code == 400


def test_token_comparison_takes_any_length_and_scheme_case():
    assert token_matches("abc", "Bearer abc") and token_matches("abc", "bearer  abc")
    for presented in (None, "", "Bearer", "Bearer ", "Bearer ab", "Bearer abcd", "Token abc",
                      "abc", "Bearer \udcff"):
        assert not token_matches("abc", presented), presented


def test_without_a_token_configured_there_is_no_metrics_route(services):
    from dataclasses import replace

    from starlette.testclient import TestClient

    from control_plane.web.app import build_app

    untokened = replace(services, settings=replace(services.settings, metrics_token=None))
    client = TestClient(build_app(untokened), base_url="http://127.0.0.1")  # no lifespan
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer anything"}
                      ).status_code == 404


def test_gateway_spans_follow_the_genai_conventions_and_carry_no_content(gw, spans):
    drive_traffic(gw)
    finished = spans.get_finished_spans()
    calls = [s for s in finished if s.parent is None]
    attempts = [s for s in finished if s.parent is not None]
    assert {s.name for s in calls} >= {f"chat {model}" for model in ROUTES} | {
        "embeddings gpt-4o-mini"}
    assert len(attempts) >= len(calls)
    for span in calls:
        attributes = span.attributes or {}
        assert attributes["gen_ai.operation.name"] in ("chat", "embeddings")
        assert attributes["gen_ai.request.model"] in ROUTES
        assert attributes["gen_ai.provider.name"] in tracing.PROVIDER_NAMES.values()
        assert attributes["gen_ai.usage.input_tokens"] > 0
        assert "gen_ai.usage.output_tokens" in attributes
        assert attributes["magistrate.tenant"] == "acme"
        assert attributes["magistrate.redactions"] >= 1  # the e-mail address at least
        assert 0 <= attributes["magistrate.overhead_ms"] < 5000
        assert span.end_time > span.start_time
    streamed = [s for s in calls if (s.attributes or {}).get("magistrate.stream")]
    assert streamed and (streamed[0].attributes or {})["gen_ai.response.finish_reasons"]
    for span in finished:
        values = [span.name, *[str(v) for v in (span.attributes or {}).values()],
                  *[str(item) for v in (span.attributes or {}).values()
                    if isinstance(v, tuple) for item in v]]
        for value in values:
            for fragment in forbidden_fragments(gw):
                assert fragment.lower() not in value.lower(), (span.name, value)


def test_no_spans_when_tracing_is_off(gw):
    assert not tracing.enabled()
    with oai(gw) as client:  # nothing to export to, nothing recorded, the call still answers
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])
