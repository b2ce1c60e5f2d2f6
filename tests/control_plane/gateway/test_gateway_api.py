"""The gateway through the official SDKs: each provider's wire gets redacted text and the caller
gets the original values back (streaming included); the allowlist cannot be bypassed; keys,
rate limits, spend cap, provider failures and malformed requests answer in each API's shape."""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx2 as httpx
import openai
import pytest
import redis
from sqlalchemy import select, update

from control_plane.models import ApiKey
from tenant_runtime.gateway import admin, config
from tenant_runtime.models import AuditEvent, GatewaySettings
from tests.control_plane.gateway.conftest import ROUTES, GatewayEnv, calls, new_api_key
from tests.fakes.redirects import REFUSED_HOST, Redirector, Trap

PII = {
    "email": "jane.smith@example.com",
    "phone": "415-555-0134",
    "ssn": "123-45-6789",
    "card": "4111 1111 1111 1111",
    "person": "Jane Smith",
}
PROMPT = (f"Please draft a reply to {PII['person']} ({PII['email']}, {PII['phone']}). "
          f"Her SSN is {PII['ssn']} and she paid with {PII['card']}.")


def oai(env: GatewayEnv, key: str | None = None, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{env.url}/v1", api_key=key or env.key, **kw)


def ant(env: GatewayEnv, key: str | None = None, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=env.url, api_key=key or env.key, **kw)


def wire(env: GatewayEnv) -> bytes:
    return b"\n".join(r.body for r in env.llm.received)


def assert_no_pii(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for kind, value in PII.items():
        assert value not in text, f"{kind} reached the provider: {text[:300]}"
    assert "4111111111111111" not in text and "123456789" not in text


def set_settings(env: GatewayEnv, **values) -> None:
    with env.ctx.session() as s, s.begin():
        config.load_settings(s)
        s.execute(update(GatewaySettings).values(**values))
        config.bump(s)  # as every change through the dashboard does


def chat(client: openai.OpenAI, model: str, **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": "You are terse."},
                               {"role": "user", "content": PROMPT}], max_tokens=300, **kw)


@pytest.mark.parametrize("model", sorted(ROUTES))
def test_every_provider_gets_redacted_text_and_the_caller_the_original(gw, model):
    with oai(gw) as client:
        answer = chat(client, model)
        assert answer.choices[0].message.content == f"You said: {PROMPT}"
        assert answer.model == model and answer.usage.total_tokens > 0
        assert_no_pii(wire(gw))
        assert b"[EMAIL_1]" in wire(gw) and b"[SSN_1]" in wire(gw)
        gw.llm.clear()
        stream = chat(client, model, stream=True, stream_options={"include_usage": True})
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert "".join(pieces) == f"You said: {PROMPT}"
        assert_no_pii(wire(gw))
    rows = calls(gw)
    assert [(r.status, r.model_name, r.stream) for r in rows] == [
        ("ok", model, False), ("ok", model, True)]
    assert rows[0].redactions["EMAIL"] == 1 and rows[0].cost_micros > 0


def test_the_anthropic_sdk_streams_and_restores(gw):
    gw.llm.chunk_size = 1  # every placeholder split across many chunks
    with ant(gw) as client:
        message = client.messages.create(model="claude-haiku", max_tokens=300,
                                         system="You are terse.",
                                         messages=[{"role": "user", "content": PROMPT}])
        assert message.content[0].text == f"You said: {PROMPT}"
        assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
        with client.messages.stream(model="claude-haiku", max_tokens=300,
                                    messages=[{"role": "user", "content": PROMPT}]) as stream:
            text = "".join(stream.text_stream)
        assert text == f"You said: {PROMPT}"
        # the Anthropic endpoint routes to any allowed model, through the same redaction
        other = client.messages.create(model="gpt-4o-mini", max_tokens=100,
                                       messages=[{"role": "user", "content": PROMPT}])
        assert other.content[0].text == f"You said: {PROMPT}"
    assert_no_pii(wire(gw))
    system = [r.json() for r in gw.llm.received if r.path == "/v1/messages"][0]["system"]
    assert "terse" in json.dumps(system)


def test_profile_off_sends_the_text_as_it_is_and_aggressive_redacts_more(gw):
    set_settings(gw, redaction_profile="off")
    with oai(gw) as client:
        chat(client, "gpt-4o-mini")
        assert PII["email"].encode() in wire(gw)
        set_settings(gw, redaction_profile="aggressive")
        gw.llm.clear()
        text = "Server 10.20.30.40 at 1234 Elm Street; DOB 04/12/1985. " + PROMPT
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}], max_tokens=200)
        assert answer.choices[0].message.content == f"You said: {text}"
    sent = wire(gw).decode()
    assert "10.20.30.40" not in sent and "Elm Street" not in sent and "1985" not in sent
    assert_no_pii(wire(gw))


def _in_script(value: str, zero: int) -> str:
    return "".join(chr(zero + int(c)) if c.isdigit() else c for c in value)


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


# The review's bypasses (issue 15, finding 5): (as written in the prompt, as a person reads it)
WRITTEN = {
    "email --": ("ann.lee@example.org--", "ann.lee@example.org"),
    "email _": ("bo.chen@example.net_", "bo.chen@example.net"),
    "email -x": ("cy.diaz@example.io-x", "cy.diaz@example.io"),
    "ssn U+2010": ("123\u201045\u20106789", "123-45-6789"),
    "ssn U+2011": ("234\u201156\u20117890", "234-56-7890"),
    "card U+2013": ("4111\u20131111\u20131111\u20131111", "4111-1111-1111-1111"),
    "phone U+2212": ("415\u2212555\u22120134", "415-555-0134"),
    "ssn dots": ("345.67.8901", "345-67-8901"),
    "card slashes": ("5555/5555/5555/4444", "5555-5555-5555-4444"),
    "phone slashes": ("212/555/0173", "212-555-0173"),
    "ssn arabic-indic": (_in_script("456-78-9012", 0x660), "456-78-9012"),
    "card extended arabic-indic": (_in_script("4012 8888 8888 1881", 0x6F0),
                                   "4012 8888 8888 1881"),
    "phone devanagari": (_in_script("(646) 555-0199", 0x966), "(646) 555-0199"),
    "ssn bengali": (_in_script("567-89-0123", 0x9E6), "567-89-0123"),
    "card fullwidth": (_in_script("3782 822463 10005", 0xFF10), "3782 822463 10005"),
    "name in capitals": ("MARIA LOPEZ", "MARIA LOPEZ"),
    "name in lowercase": ("james wilson", "james wilson"),
    "name with a cyrillic letter": ("\u0415lizabeth Moore", "Elizabeth Moore"),
    "name with greek letters": ("\u039cich\u03b1el Brown", "Michael Brown"),
    "email percent-encoded": ("dee.ng%40example.com", "dee.ng@example.com"),
    "ssn html decimal": ("".join(f"&#{ord(c)};" for c in "678-90-1234"), "678-90-1234"),
    "phone html hex": ("".join(f"&#x{ord(c):x};" for c in "303-555-0147"), "303-555-0147"),
    "email html named": ("eve.ito&commat;example&period;com", "eve.ito@example.com"),
    "card base64": (_b64("6011 1111 1111 1117"), "6011 1111 1111 1117"),
    "name base64": (_b64("Patricia Nguyen"), "Patricia Nguyen"),
}
WRITTEN_PROMPT = "Notes: " + "; ".join(f"{kind}: {text}" for kind, (text, _) in WRITTEN.items())


def wire_strings(env: GatewayEnv) -> str:
    """Every string in the JSON bodies the provider received (JSON may escape non-ASCII
    characters, so the raw bytes would hide them), one a line."""
    out: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(key)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for request in env.llm.received:
        try:
            walk(json.loads(request.body))
        except ValueError:
            out.append(request.body.decode("utf-8", "replace"))
    return "\n".join(out)


@pytest.mark.parametrize("model", sorted(ROUTES))
def test_no_provider_wire_sees_a_value_however_it_is_written(gw, model):
    with oai(gw) as client:
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": WRITTEN_PROMPT}], max_tokens=900)
    # restored exactly as written, escapes and all
    assert answer.choices[0].message.content == f"You said: {WRITTEN_PROMPT}"
    sent = wire_strings(gw)
    assert "Notes: email --: [EMAIL_" in sent  # the check reads the prompt itself
    for kind, (text, plain) in WRITTEN.items():
        assert text not in sent, f"{kind} reached the provider as written"
        assert plain not in sent, f"{kind} reached the provider in plain"
        digits = "".join(c for c in plain if c.isdigit())
        assert not digits or digits not in "".join(c for c in sent if c.isdigit() or c == "\n")
    assert calls(gw)[0].redactions == {"EMAIL": 5, "SSN": 6, "CARD": 5, "PHONE": 4, "PERSON": 5}


# ------------------------------------------------------------------------------- allowlist


def test_the_allowlist_cannot_be_bypassed(gw):
    with oai(gw, max_retries=0) as client:
        for model in ("gpt-4.1", "GPT-4.1", " gpt-4.1 ", "ｇｐｔ-4.1", "gpt\u200b-4.1",
                      "gpt-4.1-2025-04-14", "gpt-4o", "openai/gpt-4.1", "unknown"):
            with pytest.raises(openai.PermissionDeniedError) as refused:
                chat(client, model)
            assert "is not on this tenant's allowlist" in refused.value.message, model
        # the same model names mean the same allowed route
        for model in ("GPT-4o-mini", " gpt-4o-mini\t", "ｇｐｔ-4o-mini"):
            assert chat(client, model).choices[0].message.content.startswith("You said")
        listed = sorted(m.id for m in client.models.list())
    assert listed == sorted(ROUTES)  # gpt-4.1 has a route but is not allowed
    with ant(gw, max_retries=0) as client, pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(model="GPT-4.1", max_tokens=10,
                               messages=[{"role": "user", "content": "hi"}])
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = {"Authorization": f"Bearer {gw.key}"}
        if content_type:
            headers["Content-Type"] = content_type
        body = json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
        refused = httpx.post(f"{gw.url}/v1/chat/completions", content=body, headers=headers)
        assert refused.status_code == 415, refused.text
        assert refused.json()["error"]["type"] == "invalid_request_error"
    assert all(r.json()["model"] != "gpt-4.1" for r in gw.llm.received if r.body)
    with gw.ctx.session() as s:
        denials = s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "gateway.model_refused")).all()
    assert len(denials) == 10 and denials[0].actor_type == "api_key"


# ------------------------------------------------------------------------------- keys


def test_revoked_expired_and_unknown_keys_are_refused(gw, services):
    short = new_api_key(services, gw.tenant_id, gw.owner_id, name="short", expires_in_days=1)
    with oai(gw, short, max_retries=0) as client:
        assert chat(client, "gpt-4o-mini").choices
    with services.session_factory() as s, s.begin():
        s.execute(update(ApiKey).where(ApiKey.name == "short").values(
            expires_at=ApiKey.created_at))
        s.execute(update(ApiKey).where(ApiKey.name == "build bot").values(
            revoked_at=ApiKey.created_at))
    for key, message in ((short, "expired"), (gw.key, "revoked"),
                         ("mg_nope_nope", "not valid"), ("sk-other", "mg_")):
        with oai(gw, key, max_retries=0) as client, pytest.raises(
                openai.AuthenticationError) as refused:
            chat(client, "gpt-4o-mini")
        assert message in refused.value.message
    with ant(gw, gw.key, max_retries=0) as client, pytest.raises(anthropic.AuthenticationError):
        client.messages.create(model="claude-haiku", max_tokens=10,
                               messages=[{"role": "user", "content": "hi"}])


# ------------------------------------------------------------------------------- bad input


def test_malformed_requests_get_a_clear_4xx_in_each_apis_shape(gw):
    auth = {"Authorization": f"Bearer {gw.key}", "Content-Type": "application/json"}
    for body, status, needle in (
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 422, "must be a JSON object"),
        (json.dumps({"model": "gpt-4o-mini"}).encode(), 422, "Missing required parameter: "
                                                             "messages"),
        (json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                     "audio": {}}).encode(), 422, "Unrecognized request argument supplied: "
                                                  "audio"),
        (json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]}).encode(), 422,
         "messages.0.content.0.image_url.url must be an https URL"),
        (json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                     "max_tokens": -1}).encode(), 422, "max_tokens"),
        (b"x" * (5 * 1024 * 1024), 413, "4 MiB"),
    ):
        answer = httpx.post(f"{gw.url}/v1/chat/completions", content=body, headers=auth)
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert needle in error["message"] and error["type"] == "invalid_request_error"
        assert answer.headers["x-should-retry"] == "false"
    with ant(gw, max_retries=0) as client, pytest.raises(
            anthropic.UnprocessableEntityError) as bad:
        client.messages.create(model="claude-haiku", max_tokens=10, messages=[],
                               extra_body={"mcp_servers": []})
    assert bad.value.body["type"] == "error"
    answer = httpx.post(f"{gw.url}/v1/messages", headers={**auth, "anthropic-version": "1"},
                        content=json.dumps({"model": "claude-haiku", "messages": [
                            {"role": "user", "content": "hi"}]}))
    assert answer.status_code == 422
    assert answer.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "Missing required parameter: max_tokens."}}
    assert gw.llm.received == []


# ------------------------------------------------------------------------------- providers


@pytest.mark.parametrize("model", sorted(ROUTES))
def test_a_system_only_request_is_refused_where_the_provider_needs_a_turn(gw, model):
    """Anthropic and Bedrock take the system prompt apart from the conversation and refuse an
    empty conversation: such a request is a 422 naming what to add, before any spend or call
    (it was a 502 after the provider's refusal). The other providers answer it."""
    provider = ROUTES[model][0]
    with oai(gw, max_retries=0) as client:
        if provider in ("anthropic", "bedrock"):
            with pytest.raises(openai.UnprocessableEntityError) as bad:
                client.chat.completions.create(
                    model=model, messages=[{"role": "system", "content": "Be terse."}])
            assert bad.value.body["message"] == (
                f"The model '{model}' is served by {provider}, which needs at least one user or "
                "assistant message; this request has only system messages. Add the user's "
                "message.")
            assert gw.llm.received == [] and calls(gw) == []
        else:
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "system", "content": "Be terse."}])
            assert answer.choices[0].message.content


def test_provider_failures_are_retried_then_named(gw):
    with oai(gw) as client:  # the SDK's own retries stay on: ours must stop them
        gw.llm.fail_next(503)
        assert chat(client, "gpt-4o-mini").choices[0].message.content.startswith("You said")
        gw.llm.fail_next((429, 0.2))
        assert chat(client, "claude-haiku").choices
        gw.llm.fail_next(500, 502, 503)
        with pytest.raises(openai.APIStatusError) as failed:
            chat(client, "gpt-4o-mini")
    assert failed.value.status_code == 502
    assert "openai failed after 3 attempts" in failed.value.message
    rows = calls(gw)
    assert [(r.status, r.attempts) for r in rows] == [("ok", 2), ("ok", 2), ("error", 3)]
    assert len(gw.llm.received) == 2 + 2 + 3  # not retried again by the SDK
    assert rows[-1].cost_micros == 0
    with gw.ctx.session() as s:  # a failed call releases its reservation
        assert s.execute(select(1)).scalar() == 1
        from tenant_runtime.gateway import spend
        assert spend.month_totals(s, rows[-1].month)[1] == 0


def test_a_timeout_is_retried_and_a_fallback_takes_over(gw):
    with gw.ctx.session() as s, s.begin():
        route = config.route_for(s, "gpt-4o-mini")
        route.fallbacks = ["claude-haiku"]
        route.timeout_seconds = 1.5  # the server hangs for 3 s
        config.bump(s)
    gw.llm.fail_next("timeout", "reset", 500)  # all three attempts at openai fail
    with oai(gw) as client:
        answer = chat(client, "gpt-4o-mini")
    assert answer.choices[0].message.content == f"You said: {PROMPT}"
    assert [r.path for r in gw.llm.received][-1] == "/v1/messages"  # anthropic answered
    assert_no_pii(wire(gw))  # redaction holds on the fallback path too
    row = calls(gw)[-1]
    assert (row.status, row.provider, row.attempts) == ("ok", "anthropic", 4)


def test_a_stream_cut_short_by_the_provider_ends_with_an_error_event(gw):
    gw.llm.fail_next("cut")
    with oai(gw, max_retries=0) as client:
        stream = chat(client, "gpt-4o-mini", stream=True)
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass
    assert calls(gw)[-1].status == "error"


def test_a_caller_hanging_up_mid_stream_settles_the_call_at_once(gw):
    gw.llm.reply = "word " * 40_000
    with oai(gw, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}],
            max_tokens=100_000, stream=True)
        next(iter(stream))
        stream.close()
    deadline = time.monotonic() + 60
    while (row := calls(gw)[-1]).status == "reserved" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert row.status == "cut short"
    assert row.cost_micros == row.reserved_micros > 0  # the provider may have billed it all
    from tenant_runtime.gateway import spend
    with gw.ctx.session() as s:
        assert spend.month_totals(s, row.month) == (row.cost_micros, 0)


# ------------------------------------------------------------------------------- limits


def test_the_spend_cap_refuses_with_a_sentence_and_an_audit_event(gw):
    set_settings(gw, monthly_cap_micros=0)
    with oai(gw) as client, pytest.raises(openai.APIStatusError) as refused:
        chat(client, "gpt-4o-mini")
    assert refused.value.status_code == 402
    assert "monthly AI spend cap of $0.00 is reached; it resets on" in refused.value.message
    assert gw.llm.received == []
    with gw.ctx.session() as s:
        assert s.scalars(select(AuditEvent.event_type).where(
            AuditEvent.event_type == "gateway.spend_cap_reached")).all()


def test_100_concurrent_calls_at_the_edge_of_the_cap_never_overspend(gw):
    with oai(gw, max_retries=0) as client:
        chat(client, "gpt-4o-mini")
    one_call = calls(gw)[0]
    cap = one_call.reserved_micros * 12 + one_call.reserved_micros // 2
    set_settings(gw, monthly_cap_micros=cap, requests_per_minute=10_000,
                 tokens_per_minute=100_000_000)
    start = threading.Barrier(100, timeout=120)  # one caller failing fails all, never hangs

    def call(_: int) -> int:
        with oai(gw, max_retries=0, timeout=60) as client:
            start.wait()
            try:
                chat(client, "gpt-4o-mini")
                return 200
            except openai.APIStatusError as exc:
                return exc.status_code

    with ThreadPoolExecutor(100) as pool:
        statuses = list(pool.map(call, range(100)))
    from tenant_runtime.gateway import spend
    with gw.ctx.session() as s:
        spent, reserved = spend.month_totals(s, one_call.month)
    assert reserved == 0 and spent <= cap
    assert set(statuses) <= {200, 402} and statuses.count(200) >= 11
    assert spent == sum(r.cost_micros for r in calls(gw))


def fresh_minute(needed: int = 20) -> None:
    """Fixed one-minute windows: start well inside one, so the counts are not reset midway
    (``needed`` seconds at least for a few calls: a busy machine's calls may take seconds
    each)."""
    into = time.time() % 60
    if into > 60 - needed:
        time.sleep(61 - into)


def test_rate_limits_answer_429_with_retry_after(gw):
    fresh_minute()
    set_settings(gw, requests_per_minute=2)
    with oai(gw, max_retries=0) as client:
        chat(client, "gpt-4o-mini")
        chat(client, "gpt-4o-mini")
        with pytest.raises(openai.RateLimitError) as limited:
            chat(client, "gpt-4o-mini")
    assert "limit of 2 requests per minute is reached" in limited.value.message
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 61


def test_token_limits_answer_429_and_an_impossible_request_400(gw):
    fresh_minute()
    set_settings(gw, requests_per_minute=100, tokens_per_minute=800)
    with oai(gw, max_retries=0) as client:
        chat(client, "gpt-4o-mini")  # about 600 tokens at most (prompt bytes + max_tokens 300)
        with pytest.raises(openai.RateLimitError) as limited:
            chat(client, "gpt-4o-mini")
        assert "800 tokens per minute" in limited.value.message
        with pytest.raises(openai.BadRequestError) as never:  # could never fit in a minute
            client.chat.completions.create(model="gpt-4o-mini", max_tokens=5000,
                                           messages=[{"role": "user", "content": "hi"}])
    assert "more than the tenant's limit of 800 tokens per minute" in never.value.message


def test_without_redis_rate_limits_fail_open_to_the_process(gw, services, caplog):
    fresh_minute()
    services.redis.close()
    services.redis = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    set_settings(gw, requests_per_minute=2)
    with oai(gw, max_retries=0) as client:
        chat(client, "gpt-4o-mini")  # still served, still counted
        chat(client, "gpt-4o-mini")
        with pytest.raises(openai.RateLimitError):
            chat(client, "gpt-4o-mini")
    assert "Redis unreachable for gateway rate limits" in caplog.text


def test_a_custom_profile_redacts_the_tenants_own_terms(gw):
    set_settings(gw, redaction_profile="custom", custom_detectors=["email"],
                 custom_patterns=[r"INV-\d{6}"],
                 custom_terms_sealed=config.seal_terms(gw.ctx, ["Project Falcon"]))
    text = f"Invoice INV-123456 for project falcon, mail {PII['email']}, call {PII['phone']}."
    with oai(gw) as client:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}], max_tokens=100)
    assert answer.choices[0].message.content == f"You said: {text}"
    sent = wire(gw).decode()
    assert "INV-123456" not in sent and "falcon" not in sent.lower()
    assert PII["email"] not in sent and PII["phone"] in sent  # phone is not in this profile


# ------------------------------------------------------------------------------- audit


def test_each_call_is_audited_with_counts_never_text(gw):
    with oai(gw) as client:
        chat(client, "gpt-4o-mini")
    with gw.ctx.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.event_type == "gateway.call")
                          ).one()
    details = event.details
    assert details["provider"] == "openai" and details["model"] == "gpt-4o-mini"
    assert details["redactions"]["EMAIL"] == 1 and details["outcome"] == "ok"
    assert details["tokens_in"] > 0 and details["cost_micros"] > 0
    assert event.actor_type == "api_key" and details["api_key_id"] == event.actor_id
    dumped = json.dumps(details)
    assert "You said" not in dumped and "[EMAIL_1]" not in dumped
    for value in PII.values():
        assert value not in dumped


def test_route_changes_are_validated_and_audited(gw):
    with gw.ctx.session() as s, s.begin():
        with pytest.raises(Exception, match="not one of this tenant's routes"):
            admin.add_route(s, gw.ctx, admin.RouteInput(
                model_name="x", provider="on-prem", provider_model="m",
                endpoint="http://127.0.0.1:9", fallbacks=("nope",)))
    for endpoint, message in (("http://169.254.169.254/v1", "link-local"),
                              ("http://10.9.8.7/v1", "private or loopback")):
        with gw.ctx.session() as s, s.begin(), pytest.raises(Exception, match=message):
            admin.add_route(s, gw.ctx, admin.RouteInput(
                model_name="metadata", provider="on-prem", provider_model="m",
                endpoint=endpoint))
    with gw.ctx.session() as s, s.begin():
        admin.set_allowed(s, gw.ctx, gw.routes["gpt-4.1"], True)
    with oai(gw) as client:
        assert chat(client, "gpt-4.1").choices
    with gw.ctx.session() as s:
        kinds = s.scalars(select(AuditEvent.event_type)).all()
    assert kinds.count("gateway.route_added") == len(ROUTES) + 1
    assert "gateway.route_changed" in kinds


def test_a_call_the_sweeper_charged_meanwhile_is_corrected_not_settled_twice(gw):
    from sqlalchemy import text

    from tenant_runtime.gateway import spend
    from tenant_runtime.gateway.messages import ChatMessage, ChatRequest
    from tenant_runtime.gateway.service import Gateway

    gateway = Gateway(gw.ctx)
    call = gateway.prepare(ChatRequest("gpt-4o-mini", (ChatMessage("user", "hi"),), 50),
                           endpoint_kind="openai")
    with gw.ctx.session() as s, s.begin():  # as if the call had run for three hours
        s.execute(text("UPDATE gateway_calls SET created_at = now() - interval '3 hours'"))
        assert spend.settle_abandoned(s) == 1
        assert spend.month_totals(s, call.month) == (call.reserved_micros, 0)
    result = gateway.complete(call)
    with gw.ctx.session() as s:
        assert spend.month_totals(s, call.month) == (result.cost_micros, 0)
    row = calls(gw)[-1]
    assert (row.status, row.cost_micros) == ("ok", result.cost_micros)


def test_a_revoked_customer_key_stops_the_gateway_though_its_configuration_is_cached(
        gw, services, settings):
    """The call path keeps the tenant's routes (credentials opened) in memory between calls;
    once the customer's key is gone, the next call needing the data key is refused, as any
    read of sealed data would be."""
    from control_plane.keys.local import LocalKeyProvider

    with oai(gw, max_retries=0) as client:
        assert chat(client, "gpt-4o-mini").choices  # the snapshot is built and cached
        LocalKeyProvider(settings.home / "keys").path("test-kek").unlink()  # revoked
        services.tenant_connections.forget(gw.tenant_id)  # the data key cache expires
        with pytest.raises(openai.APIStatusError) as refused:
            chat(client, "gpt-4o-mini")
    assert refused.value.status_code == 503
    assert "Tenant key unavailable" in refused.value.message


def test_a_route_whose_provider_redirects_answers_502_and_nothing_follows_it(gw):
    """Security review issue 15, finding 1, end to end: the prompt is not POSTed on to where a
    provider's 307 points; the caller reads the status, the tenant's call log the sentence."""
    with Trap() as trap, Redirector(307, trap.url("/v1/chat/completions")) as upstream:
        with gw.ctx.session() as s, s.begin():
            config.route_for(s, "gpt-4o-mini").endpoint = upstream.base_url + "/v1"
            config.route_for(s, "nova-lite").endpoint = upstream.base_url
            config.bump(s)
        with oai(gw) as client:
            for model in ("gpt-4o-mini", "nova-lite"):
                with pytest.raises(openai.APIStatusError) as failed:
                    chat(client, model)
                assert failed.value.status_code == 502
                assert "failed after 1 attempt (last: HTTP 307)" in failed.value.message
        assert len(upstream.requests) == 2  # once each, not retried
    assert (trap.connections, trap.data) == (0, b"")
    rows = calls(gw)
    assert [(r.status, r.attempts) for r in rows] == [("error", 1), ("error", 1)]
    for row in rows:
        assert (f"the provider answered with a redirect to http://{REFUSED_HOST}:{trap.port}"
                "/v1/chat/completions, which Magistrate does not follow") in row.error


def _prepare(gw, model: str, rate_limit=None):
    from tenant_runtime.gateway.messages import ChatMessage, ChatRequest
    from tenant_runtime.gateway.service import Gateway

    return Gateway(gw.ctx).prepare(ChatRequest(model, (ChatMessage("user", "hi"),), 50),
                                   endpoint_kind="openai", rate_limit=rate_limit)


def _allow(gw, model: str, allowed: bool) -> None:
    with gw.ctx.session() as s, s.begin():
        config.route_for(s, model).allowed = allowed
        config.bump(s)


def test_a_change_committed_while_a_call_is_admitted_is_the_one_its_reservation_sees(gw):
    """The reservation's statement checks the configuration's version (one round trip for the
    check and the reservation): a call admitted under the snapshot this process holds, whose
    model is taken off the allowlist before its reservation, is refused and reserves nothing:
    it was admitted again under the new version (the edge's rate limit counts a request once
    however often it is admitted: test_governance_everywhere.py)."""
    from tenant_runtime.gateway.service import ModelRefused

    assert _prepare(gw, "gpt-4o-mini").reserved_micros > 0  # the snapshot is held
    counted = []

    def changing(allowed: bool):
        def limit(**_: object) -> None:
            counted.append(1)
            if len(counted) == 1:  # in another transaction, after admission, before reserving
                _allow(gw, "gpt-4o-mini", allowed)
        return limit

    before = len(calls(gw))
    with pytest.raises(ModelRefused):
        _prepare(gw, "gpt-4o-mini", rate_limit=changing(False))
    assert len(calls(gw)) == before  # nothing reserved under the old configuration
    assert len(counted) == 2  # admitted under the held snapshot, then under the new one
    _allow(gw, "gpt-4o-mini", True)
    counted.clear()  # a change that refuses nothing: reserved under the new version
    assert _prepare(gw, "gpt-4o-mini", rate_limit=changing(True)).reserved_micros > 0
    assert len(counted) == 2 and len(calls(gw)) == before + 1


def test_a_refusal_under_an_old_snapshot_is_checked_against_the_configuration(gw):
    """A model allowed since this process built its snapshot (another process's change) is
    not refused on the strength of the old one."""
    assert _prepare(gw, "gpt-4o-mini").reserved_micros > 0  # the snapshot is held
    with gw.ctx.session() as s, s.begin():  # as another process would: the version moves on
        config.route_for(s, "gpt-4.1").allowed = True
        config.bump(s)
    assert config.held(gw.ctx) is not None and "gpt-4.1" not in config.held(gw.ctx).allowed
    assert _prepare(gw, "gpt-4.1").model_name == "gpt-4.1"
