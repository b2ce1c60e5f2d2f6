"""Security headers on every response, errors included; request ids everywhere."""

from __future__ import annotations

import logging

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from control_plane.web.app import build_app, build_services
from tests.conftest import TEST_SECRET_KEY, make_settings

EXPECTED = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
}


def boom(request):
    raise RuntimeError("secret internals: password=hunter2")


def check_headers(response, *, production: bool = False) -> None:
    for name, value in EXPECTED.items():
        assert response.headers[name] == value, name
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert "camera=()" in response.headers["permissions-policy"]
    assert len(response.headers["x-request-id"]) == 16
    if production:
        assert response.headers["strict-transport-security"] == (
            "max-age=63072000; includeSubDomains")
    else:
        assert "strict-transport-security" not in response.headers


@pytest.fixture
def app_with_error_route(services):
    app = build_app(services)
    app.router.routes.append(Route("/boom", boom))
    return app


def test_headers_on_200_404_and_500(app_with_error_route, caplog):
    with TestClient(app_with_error_route, base_url="http://testserver",
                    raise_server_exceptions=False) as client:
        ok = client.get("/sign-in")
        assert ok.status_code == 200
        check_headers(ok)
        missing = client.get("/no/such/page")
        assert missing.status_code == 404
        check_headers(missing)
        assert missing.headers["x-request-id"] in missing.text
        with caplog.at_level(logging.ERROR):
            failed = client.get("/boom")
        assert failed.status_code == 500
        check_headers(failed)
        assert failed.headers["x-request-id"] in failed.text
        assert "hunter2" not in failed.text and "Traceback" not in failed.text
        assert "Something went wrong on our side" in failed.text
        # the same failure as JSON on API paths
        api = client.get("/api/nothing")
        assert api.status_code == 404 and api.json()["request_id"] == api.headers[
            "x-request-id"]
        check_headers(api)


def test_hsts_and_host_cookies_in_production(database_url, redis_url, services):
    settings = make_settings(env="production", public_url="https://testserver")
    svc = build_services(settings, database_url=database_url, redis_url=redis_url,
                         secret_key=TEST_SECRET_KEY)
    try:
        with TestClient(build_app(svc), base_url="https://testserver") as client:
            page = client.get("/sign-in")
            check_headers(page, production=True)
            cookie = page.headers["set-cookie"]
            assert cookie.startswith("__Host-magistrate_anon=")
            assert "Secure" in cookie and "HttpOnly" in cookie and "Path=/" in cookie
    finally:
        svc.close()


def test_unknown_host_is_refused_with_headers(client):
    response = client.get("/sign-in", headers={"Host": "evil.example"})
    assert response.status_code == 400
    check_headers(response)
    assert "host name is not served here" in response.text


def test_one_structured_log_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="magistrate.http"):
        response = client.get("/healthz")
    lines = [r for r in caplog.records if r.name == "magistrate.http"]
    assert len(lines) == 1
    record = lines[0].structured
    assert record["request_id"] == response.headers["x-request-id"]
    assert record["path"] == "/healthz" and record["status"] == 200
    assert "tenant" in record and "actor" in record
