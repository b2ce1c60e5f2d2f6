"""Sign-in rate limits: per account and per address in Redis, answering 429 with Retry-After;
failing open to an in-process limiter (with a warning) when Redis is unreachable."""

from __future__ import annotations

import logging

from sqlalchemy import select
from starlette.testclient import TestClient

from control_plane.audit import AuthEvents
from control_plane.models import PlatformAuditEvent
from control_plane.web.app import build_app, build_services
from tests.conftest import TEST_SECRET_KEY, free_port, make_settings
from tests.factories import make_user, sign_in


def test_account_limit_answers_429_with_retry_after(client, db, redis_client):
    user = make_user(db)
    for _ in range(5):
        assert sign_in(client, user.email, "wrong password!!").status_code == 401
    limited = sign_in(client, user.email)  # even the right password waits now
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "Too many attempts" in limited.text
    assert any(k.startswith(b"magistrate:rl:login:acct:") for k in redis_client.keys())
    with db() as s:
        kinds = s.scalars(select(PlatformAuditEvent.event_type)).all()
        assert kinds.count(AuthEvents.SIGN_IN_FAILED) == 5
        assert kinds.count(AuthEvents.SIGN_IN_RATE_LIMITED) == 1


def test_address_limit(database_url, redis_url, services, db):
    settings = make_settings(login_max_per_ip=3)
    svc = build_services(settings, database_url=database_url, redis_url=redis_url,
                         secret_key=TEST_SECRET_KEY)
    try:
        with TestClient(build_app(svc), base_url="http://testserver") as client:
            for i in range(3):
                assert sign_in(client, f"nobody{i}@example.com").status_code == 401
            assert sign_in(client, "another@example.com").status_code == 429
    finally:
        svc.close()


def test_fails_open_to_the_in_process_limiter_when_redis_is_unreachable(
        database_url, services, db, caplog):
    user = make_user(db)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    svc = build_services(make_settings(), database_url=database_url, redis_url=dead_redis,
                         secret_key=TEST_SECRET_KEY)
    try:
        with TestClient(build_app(svc), base_url="http://testserver") as client, \
                caplog.at_level(logging.WARNING, logger="magistrate.ratelimit"):
            assert sign_in(client, user.email).status_code == 303  # sign-in still works
            for _ in range(5):
                assert sign_in(client, user.email, "wrong password!!").status_code == 401
            limited = sign_in(client, user.email)
            assert limited.status_code == 429 and "retry-after" in limited.headers
        warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
        assert len(warnings) >= 1
    finally:
        svc.close()
