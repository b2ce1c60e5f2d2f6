"""TOTP enrollment by QR code, the sign-in challenge, and one-time backup codes."""

from __future__ import annotations

import re

import pyotp
from sqlalchemy import select

from control_plane.audit import AuthEvents
from control_plane.auth import mfa
from control_plane.models import BackupCode, PlatformAuditEvent, User
from tests.factories import (
    csrf_token,
    enable_mfa,
    make_user,
    next_code,
    post_form,
    sign_in,
)


def events(db) -> list[str]:
    with db() as s:
        return list(s.scalars(select(PlatformAuditEvent.event_type)
                              .order_by(PlatformAuditEvent.seq)))


def test_enrollment_over_http(client, db):
    user = make_user(db)
    sign_in(client, user.email)
    started = post_form(client, "/account/mfa/start")
    assert started.status_code == 303 and started.headers["location"] == "/account/mfa"
    page = client.get("/account/mfa")
    assert page.status_code == 200 and "<svg" in page.text
    secret = re.search(r'data-testid="totp-secret">([A-Z2-7]+)<', page.text).group(1)
    wrong = post_form(client, "/account/mfa", {"code": "000000"}, page="/account/mfa")
    assert wrong.status_code == 422 and "does not match" in wrong.text
    done = post_form(client, "/account/mfa", {"code": pyotp.TOTP(secret).now()},
                     page="/account/mfa")
    assert done.status_code == 200
    codes = re.findall(r"<li><code>([0-9a-f]{8}-[0-9a-f]{8})</code></li>", done.text)
    assert len(codes) == 10
    with db() as s:
        stored = s.get(User, user.id)
        assert stored.mfa_enabled
        assert secret.encode() not in stored.mfa_secret_sealed
        hashes = s.scalars(select(BackupCode.code_hash)).all()
        assert len(hashes) == 10 and not set(codes) & set(hashes)
    assert AuthEvents.MFA_ENROLLED in events(db)
    # the codes are never shown again
    assert not any(code in client.get("/account").text for code in codes)


def test_challenge_with_totp(client, db, services):
    user = enable_mfa(db, make_user(db), services.sealer)
    response = sign_in(client, user.email)
    assert response.status_code == 303 and response.headers["location"].startswith(
        "/sign-in/mfa")
    # a pending session is not signed in
    assert client.get("/", follow_redirects=False).status_code == 303
    bad = client.post("/sign-in/mfa", data={"csrf_token": csrf_token(client, "/sign-in/mfa"),
                                            "code": "123456"})
    assert bad.status_code == 401 and "not correct" in bad.text
    ok = client.post("/sign-in/mfa", data={"csrf_token": csrf_token(client, "/sign-in/mfa"),
                                           "code": next_code(user.totp_secret)},
                     follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    assert "Signed in as" in client.get("/").text
    recorded = events(db)
    assert AuthEvents.MFA_CHALLENGE_FAILED in recorded
    assert recorded[-2:] == [AuthEvents.MFA_CHALLENGE_PASSED, AuthEvents.SIGN_IN]


def test_backup_code_works_exactly_once(client, db, services):
    user = enable_mfa(db, make_user(db), services.sealer)
    code = user.backup_codes[0]
    for expected in (303, 401):
        client.cookies.clear()
        sign_in(client, user.email)
        response = client.post("/sign-in/mfa", data={
            "csrf_token": csrf_token(client, "/sign-in/mfa"), "code": code.upper()},
            follow_redirects=False)
        assert response.status_code == expected
    assert AuthEvents.BACKUP_CODE_USED in events(db)


def test_disable_needs_the_password(client, db, services):
    user = enable_mfa(db, make_user(db), services.sealer)
    sign_in(client, user.email)
    client.post("/sign-in/mfa", data={"csrf_token": csrf_token(client, "/sign-in/mfa"),
                                      "code": next_code(user.totp_secret)})
    refused = post_form(client, "/account/mfa/disable", {"password": "wrong password!"})
    assert refused.status_code == 422
    done = post_form(client, "/account/mfa/disable", {"password": user.password})
    assert done.status_code == 200 and "Multi-factor authentication is off" in done.text
    with db() as s:
        assert not s.get(User, user.id).mfa_enabled
        assert s.scalars(select(BackupCode)).all() == []


def test_a_totp_code_is_accepted_only_once(client, db, services):
    user = enable_mfa(db, make_user(db), services.sealer)
    code = next_code(user.totp_secret)
    for expected in (303, 401):
        client.cookies.clear()
        sign_in(client, user.email)
        response = client.post("/sign-in/mfa", data={
            "csrf_token": csrf_token(client, "/sign-in/mfa"), "code": code},
            follow_redirects=False)
        assert response.status_code == expected
    with db() as s:
        assert s.get(User, user.id).mfa_last_step is not None


def test_matching_step_refuses_spent_and_far_steps():
    secret = pyotp.random_base32()
    now = 1_800_000_000.0
    step = int(now // 30)
    code = pyotp.TOTP(secret).at(now)
    assert mfa.matching_step(secret, code, now=now) == step
    assert mfa.matching_step(secret, code, last_used_step=step - 1, now=now) == step
    assert mfa.matching_step(secret, code, last_used_step=step, now=now) is None
    assert mfa.matching_step(secret, code, now=now + 60) is None  # two steps late
    assert mfa.matching_step(secret, code, now=now + 30) == step  # one step of drift
    assert mfa.matching_step(secret, "12345", now=now) is None
