"""Text that cannot be stored (a NUL, an unpaired surrogate) or typed (a control character) is
refused at the edge with a sentence naming where it is, never a 500 and never a trace; a model
name holding it is refused by the allowlist and audited like any other unlisted name, and the
raw string reaches neither the audit chain nor a log line (SECURITY_REVIEW finding 9, issue 15).

One regression test per probe of the review, then the edge of each input kind (form bodies,
JSON bodies, JSON inside a form field, query strings, paths, headers)."""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from tenant_runtime.approvals.models import ApprovalRequest
from tenant_runtime.models import AuditEvent
from tenant_runtime.text import escaped, first_unstorable, loads_storable, unstorable, untypable
from tests.control_plane.gateway.conftest import owner_context
from tests.factories import csrf_token
from tests.fuzz.conftest import ApiEnv

RAW = ("\x00", "\ud800")  # what must never reach a log line or a row
TRACE = ("Traceback", 'File "')


@pytest.fixture
def client(api_env: ApiEnv) -> Iterator[TestClient]:
    test_client = TestClient(api_env.app, base_url="http://testserver",
                             raise_server_exceptions=False)
    yield test_client
    test_client.close()


def gateway(client: TestClient, api_env: ApiEnv, path: str, body: dict[str, object]):  # noqa: ANN201
    client.cookies.clear()
    # json.dumps escapes NUL and surrogates as \u0000 and \ud800: the bytes are ASCII
    return client.post(path, content=json.dumps(body).encode(),
                       headers={"Authorization": f"Bearer {api_env.api_key}",
                                "Content-Type": "application/json"})


def page(answer) -> str:  # noqa: ANN001 - httpx.Response
    return html.unescape(answer.text)


def as_owner(client: TestClient, api_env: ApiEnv) -> dict[str, str]:
    client.cookies.clear()
    client.cookies.set(*api_env.session_cookie)
    return {"X-CSRF-Token": api_env.csrf_token}


def refusals(api_env: ApiEnv) -> list[AuditEvent]:
    ctx = owner_context(api_env.services, api_env.tenant_id, api_env.owner_id)
    with ctx.session() as s:
        return list(s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "gateway.model_refused").order_by(AuditEvent.seq)))


def assert_nothing_raw_logged(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert not any(raw in text for raw in RAW), text
        assert record.levelno < logging.ERROR, text  # nothing was an unexpected failure


# ------------------------------------------------------------------------ the review's probes


def test_a_nul_in_the_sign_in_email_is_refused_with_a_sentence(
        api_env: ApiEnv, client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    client.cookies.clear()
    token = csrf_token(client)
    answer = client.post("/sign-in", data={"csrf_token": token, "email": "a\x00",
                                           "password": "whatever it is"})
    assert answer.status_code == 422, answer.text
    assert "The field 'email' contains a NUL character, which cannot be stored" in page(answer)
    assert not any(marker in answer.text for marker in TRACE)
    assert "session" not in answer.headers.get("set-cookie", "")
    assert_nothing_raw_logged(caplog)


@pytest.mark.parametrize("model", ["x\u0000", "x\ud800", "gpt-4o-mini\u0000"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_model_name_with_a_nul_or_a_lone_surrogate_is_refused_and_audited(
        api_env: ApiEnv, client: TestClient, caplog: pytest.LogCaptureFixture, path: str,
        model: str) -> None:
    caplog.set_level(logging.INFO)
    before, calls = len(refusals(api_env)), len(api_env.llm.received)
    body: dict[str, object] = {"model": model, "max_tokens": 16,
                               "messages": [{"role": "user", "content": "Hi"}]}
    answer = gateway(client, api_env, path, body)
    assert answer.status_code == 403, answer.text
    message = (answer.json()["error"]["message"])
    assert "is not on this tenant's allowlist" in message
    assert not any(raw in message for raw in RAW)
    if path == "/v1/chat/completions":
        assert answer.json()["error"]["code"] == "model_not_allowed"
    else:
        assert answer.json()["error"]["type"] == "permission_error"
    events = refusals(api_env)
    assert len(events) == before + 1  # audited, as any unlisted model is
    event = events[-1]
    assert event.target_id.startswith("unlisted:")  # the digest, never the raw string
    assert event.actor_type == "api_key"
    assert not any(raw in json.dumps(event.details) for raw in RAW)
    assert len(api_env.llm.received) == calls  # nothing went to a provider
    assert_nothing_raw_logged(caplog)


@pytest.mark.parametrize("content", ["\ud800", "a\u0000b", "\udfff tail"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_content_with_a_lone_surrogate_or_a_nul_is_refused_naming_the_field(
        api_env: ApiEnv, client: TestClient, caplog: pytest.LogCaptureFixture, path: str,
        content: str) -> None:
    calls = len(api_env.llm.received)
    model = "gpt-4o-mini" if path == "/v1/chat/completions" else "claude-haiku"
    answer = gateway(client, api_env, path, {
        "model": model, "max_tokens": 16, "messages": [{"role": "user", "content": content}]})
    assert answer.status_code == 422, answer.text
    message = answer.json()["error"]["message"]
    assert "The field 'messages.0.content' contains" in message
    assert "which cannot be stored; remove it." in message
    if path == "/v1/chat/completions":
        assert answer.json()["error"]["param"] == "messages.0.content"
    assert len(api_env.llm.received) == calls
    assert_nothing_raw_logged(caplog)


def test_a_surrogate_pair_is_one_character_and_goes_through(
        api_env: ApiEnv, client: TestClient) -> None:
    answer = gateway(client, api_env, "/v1/chat/completions", {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "smile \ud83d\ude00"}]})
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("payload", [{"id": "a\u0000"}, {"note\u0000": 1},
                                     {"list": [1, "\ud800"]}])
def test_a_nul_in_an_api_actions_payload_is_refused_and_nothing_is_requested(
        api_env: ApiEnv, client: TestClient, caplog: pytest.LogCaptureFixture,
        payload: dict[str, object]) -> None:
    ctx = owner_context(api_env.services, api_env.tenant_id, api_env.owner_id)
    with ctx.session() as s:
        before = s.scalar(select(func.count()).select_from(ApprovalRequest))
    answer = gateway(client, api_env, "/api/actions",
                     {"action": "report.send", "payload": payload})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"].startswith("The field 'payload.")
    assert "which cannot be stored" in answer.json()["error"]
    with ctx.session() as s:
        assert s.scalar(select(func.count()).select_from(ApprovalRequest)) == before
    assert_nothing_raw_logged(caplog)


# ------------------------------------------------------------------------ every input kind


def test_a_form_field_with_a_control_character_is_refused(api_env: ApiEnv,
                                                          client: TestClient) -> None:
    headers = as_owner(client, api_env)
    answer = client.post(f"/tenants/{api_env.tenant_id}/api-keys",
                         data={"name": "bot\x1b[31m"}, headers=headers)
    assert answer.status_code == 422, answer.text
    assert "The field 'name' contains a control character (U+001B)" in page(answer)
    # tab, line feed and carriage return are text
    answer = client.post(f"/tenants/{api_env.tenant_id}/api-keys",
                         data={"name": "line\tone\r\nline two", "scopes": "gateway"},
                         headers=headers)
    assert answer.status_code == 201, answer.text


def test_a_nul_in_a_form_field_name_is_refused_without_repeating_it(
        api_env: ApiEnv, client: TestClient) -> None:
    headers = as_owner(client, api_env)
    answer = client.post(f"/tenants/{api_env.tenant_id}/api-keys",
                         content=b"na%00me=x", headers={
                             **headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 422, answer.text
    assert "The field 'na?me' contains a NUL character" in page(answer)


def test_json_inside_a_form_field_is_checked_after_decoding(api_env: ApiEnv,
                                                            client: TestClient) -> None:
    """The approvals page takes a payload as JSON text: ``\\u0000`` is six typable
    characters, which decode to a NUL."""
    headers = as_owner(client, api_env)
    answer = client.post(f"/tenants/{api_env.tenant_id}/approvals/requests",
                         data={"action": "report.send", "payload": '{"id": "\\u0000"}'},
                         headers=headers)
    assert answer.status_code == 422, answer.text
    assert "The field 'payload.id' contains a NUL character" in page(answer)
    answer = client.post(f"/tenants/{api_env.tenant_id}/tasks/import",
                         data={"tasks_json": '[{"title": "\\ud800", "description": "d"}]'},
                         headers=headers)
    assert answer.status_code == 422, answer.text
    assert "contains an unpaired surrogate" in page(answer)
    assert "Nothing was written." in page(answer)


@pytest.mark.parametrize("query", ["tenant=1%00", "state=%01", "n%00ame=1",
                                   "next=/%00", "before_id=%7F"])
def test_a_query_parameter_with_a_nul_or_a_control_character_is_refused(
        api_env: ApiEnv, client: TestClient, query: str) -> None:
    as_owner(client, api_env)
    for path in ("/jobs", "/sign-in", f"/tenants/{api_env.tenant_id}/tasks",
                 "/api/audit/export"):
        answer = client.get(f"{path}?{query}")
        assert answer.status_code == 422, (path, query, answer.text)
        assert "The query parameter '" in page(answer)
        assert not any(marker in answer.text for marker in TRACE)


@pytest.mark.parametrize("path", ["/api/actions/1%00", "/users/%00", "/static/%00.css",
                                  "/tenants/1/gateway/prices/gpt%00/delete",
                                  "/api/agents/%01/shadow-runs"])
def test_a_path_with_a_nul_or_a_control_character_is_refused(
        api_env: ApiEnv, client: TestClient, path: str) -> None:
    headers = as_owner(client, api_env)
    method = "POST" if path.endswith(("delete", "shadow-runs")) else "GET"
    answer = client.request(method, path, headers=headers)
    assert answer.status_code == 422, (path, answer.text)
    assert "The address contains a" in page(answer)


def test_a_header_value_with_a_nul_is_refused(api_env: ApiEnv, client: TestClient) -> None:
    """A server in front (h11, httptools) refuses it first; behind any other, this edge does:
    the user agent is stored with a session."""
    client.cookies.clear()
    answer = client.get("/sign-in", headers={"User-Agent": "probe\x00"})
    assert answer.status_code == 422, answer.text
    assert "The header 'user-agent' contains a NUL character" in page(answer)


# ------------------------------------------------------------------------ the rules themselves


def test_the_rules_name_what_they_refuse() -> None:
    assert unstorable("a\x00") == "a NUL character"
    assert unstorable("\ud800").startswith("an unpaired surrogate")
    assert unstorable("tab\tnew\nline\r\x1b\x7f\x85") is None  # storable, if not typable
    assert untypable("tab\tnew\nline\r") is None
    assert [untypable(c) for c in "\x01\x1b\x7f\x85"] == [
        "a control character (U+0001)", "a control character (U+001B)",
        "a control character (U+007F)", "a control character (U+0085)"]
    assert untypable("café ✓ 😀") is None
    assert first_unstorable({"a": [1, {"b": "ok", "c": "\x00"}]}) == ("a.1.c",
                                                                       "a NUL character")
    assert first_unstorable({"model": "\x00"}, skip=frozenset({"model"})) is None
    assert escaped("x\x00\ud800\x1b") == "x\\u0000\\ud800\x1b"
    assert loads_storable('{"a": "\\ud83d\\ude00"}') == {"a": "😀"}
    with pytest.raises(ValueError, match="'payload.a' contains a NUL"):
        loads_storable('{"a": "\\u0000"}', field="payload")
