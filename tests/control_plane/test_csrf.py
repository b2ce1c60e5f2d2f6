"""Every state-changing route refuses a request without a valid CSRF token (403). The routes are
enumerated from the router, so a route added later without protection fails here."""

from __future__ import annotations

import re

import pytest
from starlette.routing import Mount, Route

from control_plane.web.app import build_app
from control_plane.web.security import CSRF_EXEMPT_PREFIXES
from tests.conftest import make_settings
from tests.factories import csrf_token, make_user, sign_in

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def mutating_routes(app) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def walk(routes, prefix: str = "") -> None:
        for route in routes:
            if isinstance(route, Route):
                for method in sorted((route.methods or set()) & MUTATING):
                    found.append((method, prefix + route.path))
            elif isinstance(route, Mount):
                walk(getattr(route, "routes", []) or [], prefix + route.path)

    walk(app.routes)
    return found


def concrete(path: str, user_id: int) -> str:
    return re.sub(r"\{[^}]+\}", str(user_id), path)


def test_the_router_has_mutating_routes(services):
    routes = mutating_routes(build_app(services))
    assert ("POST", "/sign-in") in routes and ("POST", "/users") in routes
    assert len(routes) >= 10


def test_every_mutating_route_refuses_missing_and_wrong_tokens(client, db, services):
    owner = make_user(db)
    other = make_user(db, "other@example.com", is_owner=False)
    assert sign_in(client, owner.email).status_code == 303
    routes = mutating_routes(build_app(services))
    for method, path in routes:
        url = concrete(path, other.id)
        missing = client.request(method, url, data={"email": "x@example.com"})
        assert missing.status_code == 403, (method, path, missing.status_code)
        assert "security token" in missing.text
        wrong = client.request(method, url, data={"csrf_token": "0" * 64},
                               headers={"X-CSRF-Token": "f" * 64})
        assert wrong.status_code == 403, (method, path)
    # nothing changed: the other user is still active, and no user was created
    page = client.get("/users")
    assert page.text.count("deactivated") == 0
    assert "x@example.com" not in page.text


def test_token_from_header_or_field_is_accepted_and_bound_to_the_browser(client, db):
    owner = make_user(db)
    token = csrf_token(client)
    ok = client.post("/sign-in", data={"email": owner.email, "password": "wrong-password!"},
                     headers={"X-CSRF-Token": token})
    assert ok.status_code == 401  # past CSRF, refused by the password check
    # another browser's token does not work here
    from starlette.testclient import TestClient

    with TestClient(client.app, base_url="http://testserver") as stranger:
        stranger.get("/sign-in")
        refused = stranger.post("/sign-in", data={"csrf_token": token, "email": owner.email,
                                                  "password": "x"})
        assert refused.status_code == 403


def test_cross_origin_posts_are_refused_even_with_a_token(client, db):
    owner = make_user(db)
    token = csrf_token(client)
    for header in ({"Origin": "https://evil.example"},
                   {"Referer": "https://evil.example/page"}, {"Origin": "null"}):
        response = client.post("/sign-in", data={"csrf_token": token, "email": owner.email,
                                                 "password": "correct horse battery staple"},
                               headers=header)
        assert response.status_code == 403, header
    same = client.post("/sign-in", data={"csrf_token": token, "email": owner.email,
                                         "password": "correct horse battery staple"},
                       headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert same.status_code == 303


@pytest.mark.parametrize("prefix", CSRF_EXEMPT_PREFIXES)
def test_exemption_is_decided_by_how_the_request_authenticates(client, db, prefix):
    url = prefix + "no/such/route"  # (/mcp/{slug} is a route: one segment would match it)
    from starlette.testclient import TestClient

    # a key and no cookie: not refused by CSRF (the route does not exist: 404)
    with TestClient(client.app, base_url="http://testserver") as program:
        bearer = program.post(url, json={}, headers={"Authorization": "Bearer mg_test"})
        assert bearer.status_code == 404
        assert program.post(url, json={}, headers={"x-api-key": "mg_test"}).status_code == 404
    # a signed-in browser's request uses its session: it needs the token
    owner = make_user(db)
    assert sign_in(client, owner.email).status_code == 303
    assert client.post(url, json={}).status_code == 403
    assert client.post(url, json={}, headers={"Authorization": "Basic eDp5"}).status_code == 403
    # the same browser presenting a key is authenticated by the key alone (the session is not
    # consulted: see test_csrf_cookies.py), so it is exempt
    keyed = client.post(url, json={}, headers={"Authorization": "Bearer mg_test"})
    assert keyed.status_code == 404
    # no key and no session (an anonymous cookie is not a credential): nothing ambient to
    # forge; the route answers (401 from a real one)
    with TestClient(client.app, base_url="http://testserver") as anonymous:
        anonymous.get("/sign-in")
        assert anonymous.cookies
        assert anonymous.post(url, json={}).status_code == 404
        real = "/v1/chat/completions" if prefix == "/v1/" else "/api/actions"
        keyless = anonymous.post(real, json={"model": "m", "messages": []})
        assert keyless.status_code == 401, keyless.text
        if prefix == "/v1/":  # in the OpenAI shape, so the SDKs raise AuthenticationError
            assert keyless.json()["error"]["type"] == "authentication_error" or \
                keyless.json()["error"]["code"] is not None


def test_a_program_with_a_key_gets_no_cookie_to_trip_over(client):
    """A GET with a bearer key under /api/ sets no anonymous cookie, so the program's next
    POST (without cookies) keeps its CSRF exemption; a browser GET still gets one."""
    client.cookies.clear()
    answered = client.get("/api/whoami", headers={"Authorization": "Bearer mg_x_y"})
    assert answered.status_code == 401 and "set-cookie" not in answered.headers
    assert "set-cookie" in client.get("/sign-in").headers


BIG = 10 * 1024 * 1024 + 4096  # past the buffered form's limit


def test_a_large_upload_with_the_header_token_streams_past_the_form_limit(client, db):
    owner = make_user(db)
    sign_in(client, owner.email)
    token = csrf_token(client)
    page = client.post("/users", headers={"X-CSRF-Token": token},
                       data={"email": "", "role": "member"},
                       files={"attachment": ("big.bin", b"x" * BIG, "application/octet-stream")})
    # the body reached the form handler whole, which judged the fields, not the size
    assert page.status_code == 422, page.status_code
    assert "larger than the limit" not in page.text


def test_a_large_form_without_script_is_refused_with_a_sentence(client, db):
    owner = make_user(db)
    sign_in(client, owner.email)
    token = csrf_token(client)
    page = client.post("/users", data={"csrf_token": token, "email": ""},
                       files={"attachment": ("big.bin", b"x" * BIG, "application/octet-stream")})
    assert page.status_code == 413
    assert "larger than 10 MB" in page.text and "Traceback" not in page.text


@pytest.mark.parametrize("settings", [make_settings(signal_upload_max_mb=10)])
def test_the_streamed_body_is_still_capped_at_the_upload_limit(client, db, settings):
    owner = make_user(db)
    sign_in(client, owner.email)
    page = client.post("/users", headers={"X-CSRF-Token": csrf_token(client)},
                       data={"email": ""},
                       files={"attachment": ("big.bin", b"x" * BIG, "text/plain")})
    assert page.status_code == 413 and "larger than the limit of 10 MB" in page.text


def test_a_wrong_header_token_is_refused_before_the_body_is_read(client, db):
    owner = make_user(db)
    sign_in(client, owner.email)
    page = client.post("/users", headers={"X-CSRF-Token": "f" * 64},
                       files={"attachment": ("big.bin", b"x" * BIG, "text/plain")})
    assert page.status_code == 403 and "security token" in page.text
