"""/openapi.json describes every programmatic route, and only routes that exist; the document
is committed as ``openapi.snapshot.json``, so a change to the public API is a reviewed diff."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route

from control_plane.web.app import build_app
from tests.conftest import assert_snapshot

SNAPSHOT = Path(__file__).with_name("openapi.snapshot.json")
REWRITE = "MAGISTRATE_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/control_plane/test_openapi.py"


def canonical(document: Any) -> str:
    """Pretty-printed with sorted keys, so the snapshot's diff shows only what changed."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def programmatic_routes(app) -> set[tuple[str, str]]:
    found = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith(("/api/", "/v1/")):
            path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", route.path)
            found |= {(m, path) for m in route.methods or () if m != "HEAD"}
    return found


def test_the_spec_names_every_programmatic_route_and_no_other(client, services):
    spec = client.get("/openapi.json").json()
    described = {(method.upper(), path) for path, item in spec["paths"].items()
                 for method in item}
    assert described == programmatic_routes(build_app(services))


def test_the_spec_is_openapi_3_1_with_every_reference_resolved(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    spec = response.json()
    assert spec["openapi"] == "3.1.0"
    schemas = spec["components"]["schemas"]
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', response.text))
    assert refs and refs <= set(schemas)
    for item in spec["paths"].values():
        for operation in item.values():
            assert operation["responses"], operation["operationId"]
            assert any(code.startswith("2") for code in operation["responses"])


def test_request_bodies_are_the_models_the_endpoints_validate_with(client):
    spec = client.get("/openapi.json").json()
    chat = spec["components"]["schemas"]["OpenAIChat"]
    assert chat["additionalProperties"] is False  # unknown fields are refused, and said so
    assert {"model", "messages"} <= set(chat["required"])
    action = spec["components"]["schemas"]["ActionRequest"]
    assert action["additionalProperties"] is False and action["required"] == ["action"]


def test_the_gateway_answers_are_described_as_they_come(client):
    """Streams, and the gateway's own statuses (a body that is not JSON, the spend cap, rate
    limits, a provider outage), each error in the API's own shape; the fuzz suite
    (tests/fuzz/test_schemathesis.py) checks real answers against all of it."""
    spec = client.get("/openapi.json").json()
    for path, error in (("/v1/chat/completions", "OpenAIError"),
                        ("/v1/messages", "AnthropicError")):
        responses = spec["paths"][path]["post"]["responses"]
        assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
        event = responses["200"]["content"]["text/event-stream"]["schema"]["$ref"]
        assert event == "#/components/schemas/StreamEvent"
        assert {"400", "402", "413", "415", "422", "429", "502", "503"} <= set(responses)
        assert "404" not in responses and "409" not in responses
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith(error)
    assert set(spec["paths"]["/v1/models"]["get"]["responses"]) == {"200", "401", "403", "503"}
    actions = spec["paths"]["/api/actions"]["post"]["responses"]
    assert {"413", "415", "422"} <= set(actions) and "400" not in actions


def test_the_public_api_is_the_committed_snapshot(client):
    assert_snapshot(SNAPSHOT, canonical(client.get("/openapi.json").json()), rewrite=REWRITE)


def test_a_changed_api_fails_with_its_diff_and_the_command_that_rewrites_the_snapshot(
        client, tmp_path, monkeypatch):
    monkeypatch.delenv("MAGISTRATE_UPDATE_SNAPSHOTS", raising=False)
    spec = client.get("/openapi.json").json()
    committed = tmp_path / "openapi.snapshot.json"
    committed.write_text(canonical(spec), encoding="utf-8")
    spec["paths"]["/api/actions"]["post"]["summary"] = "Something else"
    with pytest.raises(pytest.fail.Exception) as failed:
        assert_snapshot(committed, canonical(spec), rewrite=REWRITE)
    message = str(failed.value)
    assert REWRITE in message
    assert '+        "summary": "Something else",' in message
    assert len(message.splitlines()) < 80
    assert committed.read_text(encoding="utf-8") != canonical(spec)  # nothing was rewritten
