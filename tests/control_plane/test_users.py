"""The users page: Owners create accounts (one-time password shown once) and deactivate them."""

from __future__ import annotations

import html
import re

from sqlalchemy import select

from control_plane.audit import UserEvents
from control_plane.models import PlatformAuditEvent, User, WebSession
from tests.factories import csrf_token, make_user, post_form, sign_in


def test_owner_creates_a_user_who_must_choose_a_password(client, db):
    owner = make_user(db)
    sign_in(client, owner.email)
    created = post_form(client, "/users", {"email": "New.Person@Example.com",
                                           "display_name": "New Person"}, page="/users")
    assert created.status_code == 201
    password = re.search(r"shown only now\): <code>([^<]+)</code>", created.text).group(1)
    assert "new.person@example.com" in created.text
    assert password not in client.get("/users").text  # shown once
    with db() as s:
        event = s.scalars(select(PlatformAuditEvent)
                          .where(PlatformAuditEvent.event_type == UserEvents.CREATED)
                          .order_by(PlatformAuditEvent.seq.desc())).first()
        assert event.actor_name == owner.email
        assert password not in str(event.details)

    client.cookies.clear()
    first = sign_in(client, "new.person@example.com", password)
    assert first.headers["location"] == "/account"
    assert client.get("/", follow_redirects=False).headers["location"] == "/account"
    changed = post_form(client, "/account/password", {
        "current_password": password, "new_password": "my own long password",
        "confirm_password": "my own long password"})
    assert changed.status_code == 200 and "Your password was changed" in changed.text
    assert "Signed in as new.person@example.com" in client.get("/").text


def test_password_change_rejects_mismatch_weak_and_wrong_current(client, db):
    user = make_user(db)
    sign_in(client, user.email)
    cases = [
        ({"current_password": user.password, "new_password": "a long new password",
          "confirm_password": "a different one!!"}, "confirmation differ"),
        ({"current_password": user.password, "new_password": "short",
          "confirm_password": "short"}, "at least 12 characters"),
        ({"current_password": "not my password", "new_password": "a long new password",
          "confirm_password": "a long new password"}, "current password is not correct"),
    ]
    for data, message in cases:
        response = post_form(client, "/account/password", data)
        assert response.status_code == 422 and message in response.text


def test_non_owner_cannot_manage_users(client, db):
    make_user(db)
    member = make_user(db, "member@example.com", is_owner=False)
    sign_in(client, member.email)
    page = client.get("/users")
    assert page.status_code == 403 and "Only an Owner can manage users" in page.text
    assert post_form(client, "/users", {"email": "x@example.com"}, page="/").status_code == 403


def test_deactivation_revokes_sessions_and_blocks_sign_in(client, db):
    from starlette.testclient import TestClient

    owner = make_user(db)
    member = make_user(db, "member@example.com", is_owner=False)
    with TestClient(client.app, base_url="http://testserver") as member_browser:
        sign_in(member_browser, member.email)
        assert member_browser.get("/", follow_redirects=False).status_code == 200
        sign_in(client, owner.email)
        response = post_form(client, f"/users/{member.id}/deactivate", page="/users")
        assert response.status_code == 200 and "deactivated" in response.text
        assert member_browser.get("/", follow_redirects=False).status_code == 303
        member_browser.cookies.clear()
        assert sign_in(member_browser, member.email).status_code == 401
    with db() as s:
        assert all(r.revoked_at for r in s.scalars(
            select(WebSession).where(WebSession.user_id == member.id)))
    again = post_form(client, f"/users/{member.id}/reactivate", page="/users")
    assert again.status_code == 200
    with db() as s:
        assert s.get(User, member.id).is_active


def test_htmx_gets_the_partial(client, db):
    owner = make_user(db)
    member = make_user(db, "member@example.com", is_owner=False)
    sign_in(client, owner.email)
    token = csrf_token(client, "/users")
    response = client.post(f"/users/{member.id}/deactivate", data={"csrf_token": token},
                           headers={"HX-Request": "true", "X-CSRF-Token": token})
    assert response.status_code == 200
    assert response.text.lstrip().startswith('<div id="users-panel">')
    assert "<html" not in response.text


def test_owner_cannot_deactivate_self_and_duplicates_conflict(client, db):
    owner = make_user(db)
    sign_in(client, owner.email)
    own = post_form(client, f"/users/{owner.id}/deactivate", page="/users")
    assert own.status_code == 409 and "your own account" in own.text
    dup = post_form(client, "/users", {"email": owner.email}, page="/users")
    assert dup.status_code == 409 and "already exists" in dup.text
    missing = post_form(client, "/users/999999/deactivate", page="/users")
    assert missing.status_code == 404


def test_bad_input_is_a_clear_4xx(client, db):
    owner = make_user(db)
    sign_in(client, owner.email)
    unknown = post_form(client, "/users", {"email": "a@example.com", "role": "god"},
                        page="/users")
    assert unknown.status_code == 422 and "Unknown field 'role'" in html.unescape(unknown.text)
    bad_email = post_form(client, "/users", {"email": "not-an-email"}, page="/users")
    assert bad_email.status_code == 422 and "'email'" in html.unescape(bad_email.text)
    token = csrf_token(client, "/users")
    as_json = client.post("/users", json={"email": "a@example.com"},
                          headers={"X-CSRF-Token": token})
    assert as_json.status_code == 415
    with db() as s:
        assert s.scalars(select(User).where(User.email == "a@example.com")).first() is None
