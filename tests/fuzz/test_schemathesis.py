"""Schemathesis against ``/openapi.json``: every operation the spec describes, with generated
well-formed (positive) and malformed (negative) requests, authenticated as the operation says
(an API key, or a signed-in session with its CSRF token), sent to the app in-process.

Every answer must be something other than a server error, carry a status code and content type
the spec declares, and match the declared response schema (streamed answers event by event);
negative data must be refused. Half of the positive cases are steered to values that exist
(the tenant's id, its agent, an approval request, an action class, an allowed model), so they
get past the lookups: gateway calls reach the local LLM server and come back through the real
path (redaction, spend, audit), shadow runs are recorded, actions requested and executed,
tenants created.

Then, explicitly for every operation with a JSON body: an unknown field is refused with 422 and
a body of another content type with 415, each in the API's own error shape (OpenAI's for
``/v1/chat/completions``, Anthropic's for ``/v1/messages``, ours for ``/api``).

Bounded and deterministic for CI: ``FUZZ_EXAMPLES`` cases per operation and mode (25 unless
``MAGISTRATE_FUZZ_EXAMPLES`` says more, e.g. 500 for a long run), derandomized, so every run
sends the same requests. With ``MAGISTRATE_CHAOS_RESULTS`` set, the figures (requests sent,
shrinking included, statuses, server errors, check failures) go to
``$MAGISTRATE_CHAOS_RESULTS/fuzz.json``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from control_plane.api.openapi import OPERATIONS
from tests.fuzz.conftest import EMBEDDING_MODEL, FUZZ_EXAMPLES, MODELS, ApiEnv

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
# refusing negative data with 413 (a string far past its maxLength makes the body too large)
# is a refusal too; a 5xx is reported by not_a_server_error
# Generated strings may hold NUL (``allow-x00``) and any character UTF-8 can carry (``codec``),
# control characters included. Schemathesis never draws a lone surrogate (not for any codec),
# so a test of its own puts one (and NUL, control characters and overlong strings, for
# certain) into every case it generates: a JSON body carries a surrogate as the escape
# ``\ud800``, which Python's json accepts.
CONFIG = schemathesis.Config.from_dict({
    "generation": {"allow-x00": True, "codec": "utf-8"},
    "checks": {"negative_data_rejection": {
        "expected-statuses": [400, 401, 403, 404, 409, 413, 415, 422, 429, "5xx"]}}})
# hostile text for any place a string goes (a body can hold all of it; a path or a query
# string travels as UTF-8 text, which cannot hold a lone surrogate)
HOSTILE_TEXT = ["\x00", "a\x00b", "\x1b[31m", "\x7f\x85", "\x01\x02\x03"]
HOSTILE_BODY_TEXT = [*HOSTILE_TEXT, "\ud800", "x\udfff", "\udc00\ud800", "o" * 100_000]
MODES = {"positive": GenerationMode.POSITIVE, "negative": GenerationMode.NEGATIVE}
# negative data needs something to break: a path parameter, a query parameter or a body
# (the credentials are always valid: refusing bad ones is tested where keys are)
RUNS = [(f"{op.method} {op.path}", mode) for op in OPERATIONS for mode in MODES
        if mode == "positive" or op.body is not None or op.query or "{" in op.path]

# a well-formed body for every operation that takes one: the explicit checks add to it
VALID_BODIES: dict[str, dict[str, Any]] = {
    "POST /api/tenants": {"slug": "never-made", "key_provider": "local",
                          "key_ref": "test-kek"},
    "POST /api/actions": {"action": "report.send", "payload": {"id": 7}},
    # the session user is the tenant's Owner: staying Owner is accepted and changes nothing
    "POST /api/tenants/{tenant_id}/members/{membership_id}/role": {"role": "Owner"},
    "POST /api/agents/{agent_id}/shadow-runs": {"proposed": "a", "actual": "a",
                                                "agreed": True},
    "POST /v1/chat/completions": {"model": "gpt-4o-mini",
                                  "messages": [{"role": "user", "content": "Hi"}]},
    "POST /v1/messages": {"model": "claude-haiku", "max_tokens": 16,
                          "messages": [{"role": "user", "content": "Hi"}]},
    "POST /v1/responses": {"model": "gpt-4o-mini", "input": [{"role": "user", "content": "Hi"}]},
    "POST /v1/embeddings": {"model": "gpt-4o-mini", "input": ["Hi"]},
    "POST /v1/messages/count_tokens": {"model": "claude-haiku",
                                       "messages": [{"role": "user", "content": "Hi"}]},
}
# an unknown field, where a caller could put one: (a JSON path, the name the answer must give)
UNKNOWN_FIELDS = {
    "POST /v1/chat/completions": [((), "audio"), (("messages", 0), "tool_calls")],
    "POST /v1/messages": [((), "container"), (("messages", 0), "citations")],
    "POST /v1/messages/count_tokens": [((), "max_tokens")],
    "POST /v1/embeddings": [((), "input_type")],
    "POST /v1/responses": [((), "top_k"), (("input", 0), "name")],
}
ANTHROPIC_SHAPED = ("POST /v1/messages", "POST /v1/messages/count_tokens")
WRONG_TYPES = {
    "text/plain": lambda body: json.dumps(body).encode(),
    "application/x-www-form-urlencoded": lambda body: urlencode(
        {k: json.dumps(v) if not isinstance(v, str) else v for k, v in body.items()}).encode(),
    "multipart/form-data; boundary=x": lambda body: (
        b'--x\r\nContent-Disposition: form-data; name="body"\r\n\r\n'
        + json.dumps(body).encode() + b"\r\n--x--\r\n"),
    "application/json-seq": lambda body: b"\x1e" + json.dumps(body).encode() + b"\n",
    None: lambda body: json.dumps(body).encode(),  # no Content-Type at all
}
FIGURES: dict[str, Any] = {"operations": {}, "unknown_field_checks": 0,
                           "wrong_content_type_checks": 0, "hostile_text_checks": 0}
# a string field of each JSON body, where the explicit check puts hostile text
TEXT_FIELDS = {
    "POST /api/tenants": ("name",),
    "POST /api/actions": ("payload", "note"),
    "POST /api/agents/{agent_id}/shadow-runs": ("proposed",),
    "POST /api/tenants/{tenant_id}/members/{membership_id}/role": ("role",),
    "POST /v1/chat/completions": ("messages", 0, "content"),
    "POST /v1/messages": ("messages", 0, "content"),
    "POST /v1/responses": ("input", 0, "content"),
    "POST /v1/embeddings": ("input", 0),
    "POST /v1/messages/count_tokens": ("messages", 0, "content"),
}


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def schema(api_env: ApiEnv) -> Iterator[Any]:
    loaded = schemathesis.openapi.from_asgi("/openapi.json", api_env.app, config=CONFIG)
    yield loaded
    shutdown_lifespans()  # the app's lifespan, which schemathesis started, ends with us


@pytest.fixture(scope="module", autouse=True)
def fuzz_figures() -> Iterator[dict[str, Any]]:
    yield FIGURES
    folder = os.environ.get("MAGISTRATE_CHAOS_RESULTS")
    if not folder or not FIGURES["operations"]:
        return
    operations = FIGURES["operations"]
    summary = {
        "tool": f"schemathesis {schemathesis.__version__}",
        "examples_per_operation_and_mode": FUZZ_EXAMPLES,
        "operations_in_spec": len(OPERATIONS),
        "operations_covered": len({name.rsplit(" [", 1)[0] for name in operations}),
        "cases": sum(o["cases"] for o in operations.values()),
        "server_errors": sum(o["server_errors"] for o in operations.values()),
        "hostile_text_cases": sum(o.get("hostile", 0) for o in operations.values()),
        "hostile_text_checks": FIGURES["hostile_text_checks"],
        "check_failures": sum(o["failures"] for o in operations.values()),
        "unknown_field_checks": FIGURES["unknown_field_checks"],
        "wrong_content_type_checks": FIGURES["wrong_content_type_checks"],
        "operations": operations,
    }
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "fuzz.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def client(api_env: ApiEnv) -> Iterator[TestClient]:
    """A plain client of the same app (no lifespan: the module's fixture owns the services)."""
    test_client = TestClient(api_env.app, base_url="http://testserver",
                             raise_server_exceptions=False)
    yield test_client
    test_client.close()


# ------------------------------------------------------------------------------- schemathesis


@pytest.mark.parametrize(("operation_id", "mode"), RUNS)
def test_generated_requests_get_no_server_error_and_answers_match_the_spec(
        api_env: ApiEnv, schema, operation_id: str, mode: str) -> None:
    method, path = operation_id.split(" ", 1)
    operation = schema[path][method]
    headers, cookies = api_env.auth_for(operation.definition.raw.get("security", []))
    figures = {"cases": 0, "server_errors": 0, "failures": 0, "statuses": Counter(),
               "seconds": 0.0}
    started = time.monotonic()

    @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=MODES[mode], headers=headers,
                                      cookies=cookies), data=st.data())
    def run(case, data) -> None:
        if "Authorization" in headers and not negates_cookies(case):
            # the session cookie is the other way in: with a key, a program sends none
            (case.cookies or {}).pop(api_env.services.settings.session_cookie_name, None)
        if mode == "positive" and data.draw(st.booleans(), label="use existing values"):
            steer(case, api_env, operation_id, data.draw)
        response = case.call()
        figures["cases"] += 1
        figures["statuses"][response.status_code] += 1
        if response.status_code >= 500:
            figures["server_errors"] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception:
            figures["failures"] += 1
            raise

    try:
        run()
    finally:
        figures["seconds"] = round(time.monotonic() - started, 2)
        figures["statuses"] = {str(k): v for k, v in sorted(figures["statuses"].items())}
        FIGURES["operations"][f"{operation_id} [{mode}]"] = figures
    assert figures["cases"] > 0
    if mode == "positive":  # the steered cases reached the code behind the lookups
        assert any(200 <= int(status) < 300 for status in figures["statuses"]), figures


@pytest.mark.parametrize("operation_id", [f"{op.method} {op.path}" for op in OPERATIONS])
def test_generated_requests_with_hostile_text_get_no_server_error(
        api_env: ApiEnv, schema, operation_id: str) -> None:
    """Well-formed generated requests, steered to existing values, then hostile text put in
    one place that holds text (a body string, a new key or member, a query or path
    parameter): never a server error, always an answer the spec declares."""
    method, path = operation_id.split(" ", 1)
    operation = schema[path][method]
    headers, cookies = api_env.auth_for(operation.definition.raw.get("security", []))
    figures = {"cases": 0, "hostile": 0, "server_errors": 0, "failures": 0,
               "statuses": Counter()}

    @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE,
                                      headers=headers, cookies=cookies), data=st.data())
    def run(case, data) -> None:
        if "Authorization" in headers:
            (case.cookies or {}).pop(api_env.services.settings.session_cookie_name, None)
        steer(case, api_env, operation_id, data.draw)
        figures["hostile"] += hostile(case, data.draw)
        response = case.call()
        figures["cases"] += 1
        figures["statuses"][response.status_code] += 1
        if response.status_code >= 500:
            figures["server_errors"] += 1
        try:
            case.validate_response(response, checks=[
                not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance])
        except Exception:
            figures["failures"] += 1
            raise

    try:
        run()
    finally:
        figures["statuses"] = {str(k): v for k, v in sorted(figures["statuses"].items())}
        FIGURES["operations"][f"{operation_id} [hostile]"] = figures
    assert figures["cases"] > 0


def _places(value: Any, where: tuple = ()) -> list[tuple]:
    """The paths of every string in a JSON value."""
    if isinstance(value, str):
        return [where]
    if isinstance(value, dict):
        new = [(*where, "fuzz")] if where else []
        return new + [p for k, v in value.items() for p in _places(v, (*where, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _places(v, (*where, i))]
    return []


def hostile(case, draw) -> int:
    """Put hostile text in one place of the case that holds text (a body string, a new body
    key, a query or path parameter): 1 if there was such a place."""
    places: list[tuple[str, tuple]] = [("query", (k,)) for k in (case.query or {})]
    places += [("path", (k,)) for k in (case.path_parameters or {})]
    if isinstance(case.body, dict):
        places += [("body", p) for p in _places(case.body)] + [("body-key", ())]
    if not places:
        return 0
    kind, where = draw(st.sampled_from(places), label="where")
    text = draw(st.sampled_from(HOSTILE_BODY_TEXT if kind.startswith("body")
                                else HOSTILE_TEXT), label="hostile text")
    if kind == "body-key":
        case.body[f"key{text[:10]}"] = "x"
        return 1
    target = {"query": case.query, "path": case.path_parameters, "body": case.body}[kind]
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = text
    return 1


def negates_cookies(case) -> bool:
    data = case.meta.phase.data if case.meta is not None else None
    location = getattr(data, "parameter_location", None)
    return location is not None and location.name == "COOKIE"


def steer(case, api_env: ApiEnv, operation_id: str, draw) -> None:
    """Well-formed values that also exist (the tenant, its agent, an approval request, an
    allowed model, an action class), so that positive cases get past the lookups to the code
    behind them."""
    member = (api_env.spare_membership_id if case.method.upper() == "DELETE"
              else api_env.owner_membership_id)
    for name, value in (("tenant_id", api_env.tenant_id), ("agent_id", api_env.agent_id),
                        ("request_id", api_env.request_id), ("membership_id", member)):
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = value
    if case.query and "Authorization" in (case.headers or {}):
        case.query.pop("tenant", None)  # a key names its tenant itself
    if not isinstance(case.body, dict):
        return
    if operation_id == "POST /v1/embeddings":
        case.body["model"] = EMBEDDING_MODEL
    elif operation_id.startswith("POST /v1/"):
        case.body["model"] = draw(st.sampled_from(sorted(MODELS)), label="model")
    elif operation_id == "POST /api/actions":
        case.body["action"] = draw(st.sampled_from(["report.send", "deploy.production"]))
    elif operation_id.endswith("/role"):
        case.body["role"] = "Owner"
    elif operation_id == "POST /api/tenants":
        case.body.update(slug=draw(st.from_regex(r"[a-z][a-z0-9-]{1,20}", fullmatch=True)),
                         key_provider="local", key_ref="test-kek")
    if operation_id.startswith("POST /v1/") and draw(st.integers(0, 3), label="a plain call") > 0:
        # a generated call is mostly one the gateway must refuse (a tool result that answers
        # no call, a legacy field, an option the model's provider cannot take): most of the
        # steered cases are the well-formed call, on an allowed model, streamed or not
        model = case.body.get("model")
        case.body.clear()
        case.body.update(json.loads(json.dumps(VALID_BODIES[operation_id])), model=model)
        if "count_tokens" not in operation_id and "embeddings" not in operation_id:
            case.body["stream"] = draw(st.booleans(), label="stream")


# ------------------------------------------------------------------------------- 422 and 415


def body_operations() -> list[str]:
    return [f"{op.method} {op.path}" for op in OPERATIONS if op.body is not None]


def test_every_operation_with_a_json_body_has_a_valid_example_here() -> None:
    assert sorted(VALID_BODIES) == sorted(body_operations())


def send(client: TestClient, api_env: ApiEnv, operation_id: str, content: bytes,
         content_type: str | None):
    method, path = operation_id.split(" ", 1)
    op = next(o for o in OPERATIONS if (o.method, o.path) == (method, path))
    headers, cookies = api_env.auth_for([{scheme: []} for scheme in op.security])
    if content_type is not None:
        headers["Content-Type"] = content_type
    client.cookies.clear()
    for name, value in cookies.items():
        client.cookies.set(name, value)
    url = (path.replace("{agent_id}", str(api_env.agent_id))
           .replace("{tenant_id}", str(api_env.tenant_id))
           .replace("{membership_id}", str(api_env.owner_membership_id)))
    return client.request(method, url, content=content, headers=headers)


def assert_error_shape(operation_id: str, answer, status: int) -> str:
    """The sentence of an error in the API's own shape."""
    assert answer.status_code == status, (operation_id, answer.status_code, answer.text)
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    if operation_id in ANTHROPIC_SHAPED:
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        assert set(body["error"]) == {"type", "message"}
        return str(body["error"]["message"])
    if operation_id.startswith("POST /v1/"):
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "invalid_request_error"
        assert answer.headers["x-should-retry"] == "false"
        return str(body["error"]["message"])
    assert set(body) == {"error", "status", "request_id"} and body["status"] == status
    assert body["request_id"] == answer.headers["x-request-id"]
    return str(body["error"])


def param_of(operation_id: str, path: list[Any]) -> str:
    """A field's path as the API's errors spell it: ``input[0].name`` in the Responses API,
    ``messages.0.name`` in chat completions."""
    if operation_id != "POST /v1/responses":
        return ".".join(map(str, path))
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def with_unknown(body: dict[str, Any], where: tuple, name: str) -> dict[str, Any]:
    copy = json.loads(json.dumps(body))
    target = copy
    for step in where:
        target = target[step]
    target[name] = "x"
    return copy


@pytest.mark.parametrize("operation_id", body_operations())
def test_an_unknown_field_is_refused_with_422_in_the_apis_shape(
        api_env: ApiEnv, client: TestClient, operation_id: str) -> None:
    before = len(api_env.llm.received)
    for where, name in [((), "surprise"), *UNKNOWN_FIELDS.get(operation_id, [])]:
        body = with_unknown(VALID_BODIES[operation_id], where, name)
        answer = send(client, api_env, operation_id, json.dumps(body).encode(),
                      "application/json")
        sentence = assert_error_shape(operation_id, answer, 422)
        assert name in sentence, (operation_id, sentence)
        if operation_id.startswith("POST /v1/") and operation_id not in ANTHROPIC_SHAPED:
            assert answer.json()["error"]["param"] == param_of(operation_id, [*where, name])
        FIGURES["unknown_field_checks"] += 1
    assert len(api_env.llm.received) == before  # nothing refused reached a provider


@pytest.mark.parametrize(("operation_id", "content_type"), [
    pytest.param(operation_id, content_type, id=f"{operation_id}-{content_type}".split(";")[0])
    for operation_id in body_operations() for content_type in WRONG_TYPES])
def test_another_content_type_is_refused_with_415_in_the_apis_shape(
        api_env: ApiEnv, client: TestClient, operation_id: str,
        content_type: str | None) -> None:
    before = len(api_env.llm.received)
    content = WRONG_TYPES[content_type](VALID_BODIES[operation_id])
    answer = send(client, api_env, operation_id, content, content_type)
    sentence = assert_error_shape(operation_id, answer, 415)
    assert "application/json" in sentence, sentence
    assert len(api_env.llm.received) == before
    FIGURES["wrong_content_type_checks"] += 1


@pytest.mark.parametrize("operation_id", [
    pytest.param(o) for o in body_operations()])
def test_json_nested_too_deep_is_refused_not_a_server_error(
        api_env: ApiEnv, client: TestClient, operation_id: str) -> None:
    nested = b'{"a":' * 5000 + b"1" + b"}" * 5000  # valid JSON, 30 KB, past any parser's depth
    answer = send(client, api_env, operation_id, nested, "application/json")
    status = 400 if operation_id.startswith("POST /v1/") else 422
    assert "not valid JSON" in assert_error_shape(operation_id, answer, status)


@pytest.mark.parametrize("operation_id", body_operations())
def test_the_valid_bodies_are_accepted(api_env: ApiEnv, client: TestClient,
                                       operation_id: str) -> None:
    """The explicit checks above refuse a body only for what was added to it."""
    if operation_id == "POST /api/tenants":
        body = {**VALID_BODIES[operation_id], "slug": "made-by-fuzz-check"}
    else:
        body = VALID_BODIES[operation_id]
    answer = send(client, api_env, operation_id, json.dumps(body).encode(), "application/json")
    expected = {"POST /api/tenants": 202, "POST /api/actions": 200,
                "POST /api/agents/{agent_id}/shadow-runs": 201,
                "POST /api/tenants/{tenant_id}/members/{membership_id}/role": 200,
                "POST /v1/chat/completions": 200, "POST /v1/messages": 200,
                "POST /v1/responses": 200, "POST /v1/embeddings": 200,
                "POST /v1/messages/count_tokens": 200}[operation_id]
    assert answer.status_code == expected, answer.text


# ------------------------------------------------------------------------------- hostile text


def test_every_operation_with_a_json_body_has_a_text_field_here() -> None:
    assert sorted(TEXT_FIELDS) == sorted(body_operations())


@pytest.mark.parametrize("text", ["a\x00b", "\ud800", "x\udfff"])
@pytest.mark.parametrize("operation_id", body_operations())
def test_a_nul_or_a_lone_surrogate_in_any_json_body_is_refused_naming_the_field(
        api_env: ApiEnv, client: TestClient, operation_id: str, text: str) -> None:
    """In a string value and in a key, with a sentence naming where, in the API's shape; a
    control character is text a program may send (tenant_runtime/text.py)."""
    before = len(api_env.llm.received)
    *parents, last = TEXT_FIELDS[operation_id]
    for where, key in ((TEXT_FIELDS[operation_id], last), ((), f"k{text}")):
        body = json.loads(json.dumps(VALID_BODIES[operation_id]))
        target = body
        for step in parents if where else ():
            target = target.setdefault(step, {}) if isinstance(step, str) else target[step]
        if where:
            target[last] = text
        else:
            body[key] = 1
        # json.dumps writes NUL and surrogates as escapes: the bytes on the wire are ASCII
        answer = send(client, api_env, operation_id, json.dumps(body).encode(),
                      "application/json")
        sentence = assert_error_shape(operation_id, answer, 422)
        assert "which cannot be stored; remove it." in sentence, sentence
        named = ".".join(map(str, where)) if where else "k"
        assert f"The field '{named}" in sentence, sentence
        FIGURES["hostile_text_checks"] += 1
    assert len(api_env.llm.received) == before
