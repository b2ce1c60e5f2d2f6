"""Sessions: signed cookie + server-side row; rotated at sign-in, host-bound, expiring,
revoked at sign-out (a replayed cookie is refused)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from starlette.testclient import TestClient

from control_plane.db import utcnow
from control_plane.models import WebSession
from tests.factories import make_user, post_form, sign_in

COOKIE = "magistrate_session"


def signed_in(client: TestClient, db) -> str:
    user = make_user(db)
    response = sign_in(client, user.email)
    assert response.status_code == 303
    set_cookie = response.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie.replace("Lax", "lax")
    assert "Secure" not in set_cookie  # plain http in tests; see test_headers for production
    return client.cookies[COOKIE]


def use_cookie(client: TestClient, value: str) -> None:
    client.cookies.clear()
    client.cookies.set(COOKIE, value)


def is_signed_in(client: TestClient) -> bool:
    response = client.get("/", follow_redirects=False)
    return response.status_code == 200 and "Signed in as" in response.text


def test_old_cookie_is_refused_after_sign_out(client, db):
    old = signed_in(client, db)
    assert is_signed_in(client)
    response = post_form(client, "/sign-out", page="/")
    assert response.status_code == 303 and response.headers["location"] == "/sign-in"
    assert not is_signed_in(client)
    use_cookie(client, old)  # replay the cookie captured before signing out
    replay = client.get("/", follow_redirects=False)
    assert replay.status_code == 303 and replay.headers["location"].startswith("/sign-in")


def test_token_is_rotated_at_every_sign_in_and_the_old_one_revoked(client, db):
    first = signed_in(client, db)
    again = sign_in(client, "owner@example.com")
    assert again.status_code == 303
    second = client.cookies[COOKIE]
    assert second != first
    with db() as s:
        rows = s.scalars(select(WebSession).order_by(WebSession.id)).all()
        assert len(rows) == 2 and rows[0].revoked_at is not None and rows[1].revoked_at is None
    use_cookie(client, first)
    assert not is_signed_in(client)


def test_only_a_hash_of_the_token_is_stored(client, db):
    cookie = signed_in(client, db)
    token = cookie.rsplit(".", 1)[0]
    with db() as s:
        row = s.scalars(select(WebSession)).one()
        assert row.token_hash != token and len(row.token_hash) == 64


def test_idle_and_absolute_expiry(client, db):
    signed_in(client, db)
    with db() as s, s.begin():
        s.execute(update(WebSession).values(last_seen_at=utcnow() - timedelta(hours=12,
                                                                              minutes=1)))
    assert not is_signed_in(client)
    sign_in(client, "owner@example.com")
    assert is_signed_in(client)
    with db() as s, s.begin():
        s.execute(update(WebSession).where(WebSession.revoked_at.is_(None))
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert not is_signed_in(client)


def test_absolute_lifetime_is_fourteen_days(client, db):
    signed_in(client, db)
    with db() as s:
        row = s.scalars(select(WebSession)).one()
        assert timedelta(days=13, hours=23) < row.expires_at - row.created_at <= timedelta(
            days=14)


def test_session_is_bound_to_its_host(client, db):
    signed_in(client, db)
    assert is_signed_in(client)
    moved = client.get("/", headers={"Host": "localhost"}, follow_redirects=False)
    assert moved.status_code == 303


def test_tampered_cookie_is_not_a_session(client, db):
    cookie = signed_in(client, db)
    use_cookie(client, cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"))
    assert not is_signed_in(client)


def test_sign_out_everywhere_revokes_every_session(client, db, services):
    signed_in(client, db)
    with TestClient(client.app, base_url="http://testserver") as other:
        sign_in(other, "owner@example.com")
        assert is_signed_in(other)
        response = post_form(client, "/account/sign-out-everywhere")
        assert response.status_code == 303
        assert not is_signed_in(client) and not is_signed_in(other)
