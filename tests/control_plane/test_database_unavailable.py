"""A control-plane database that cannot be reached answers 503 with Retry-After and a sentence
in the shape each caller reads — an HTML page for the dashboard, JSON for the API and the
gateway's own error shape for ``/v1`` — never a 500 or a stack trace. (The whole story, with
Postgres restarting under load, is tests/chaos/test_postgres_restart.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from control_plane.web.app import build_app, build_services
from tests.conftest import TEST_SECRET_KEY


@pytest.fixture
def unreachable(settings, redis_url, refused_port) -> Iterator[TestClient]:
    nobody = f"postgresql://postgres@127.0.0.1:{refused_port()}/magistrate_control"
    svc = build_services(settings, database_url=nobody, redis_url=redis_url,
                         secret_key=TEST_SECRET_KEY)
    try:
        with TestClient(build_app(svc), base_url="http://testserver",
                        raise_server_exceptions=False) as client:
            client.cookies.set(settings.session_cookie_name,
                               svc.signer.sign_session("a-session"))
            yield client
    finally:
        svc.close()


def test_a_dashboard_page_is_a_503_page_to_retry(unreachable, caplog):
    answer = unreachable.get("/", headers={"Accept": "text/html"})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    assert answer.headers["content-type"].startswith("text/html")
    assert "unavailable right now; try again in a few seconds" in answer.text
    assert "Traceback" not in answer.text and "psycopg" not in answer.text
    assert answer.headers["x-content-type-options"] == "nosniff"  # the edge's headers, too
    # the operator's log says what happened in one line, without a trace
    records = [r for r in caplog.records if "database is unavailable" in r.getMessage()]
    assert records and all(r.exc_info is None for r in records)


def test_the_api_answers_json(unreachable):
    answer = unreachable.get("/api/whoami", headers={"Authorization": "Bearer mg_x_y"})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    body = answer.json()
    assert body["status"] == 503 and "unavailable right now" in body["error"]


def test_the_gateway_answers_in_its_own_shape_and_invites_a_retry(unreachable):
    unreachable.cookies.clear()  # a program: its key, no cookie
    answer = unreachable.post("/v1/chat/completions", headers={
        "Authorization": "Bearer mg_x_y"}, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    assert answer.headers["x-should-retry"] == "true"
    error = answer.json()["error"]
    assert error["type"] == "api_error" and "database" in error["message"]
