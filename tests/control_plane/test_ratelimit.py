"""Sign-in rate limits: per address (fixed window), per address and account (exponential
backoff), and an account-wide alarm that gives each new address one attempt; 429 with
Retry-After; failing open to an in-process limiter (with a warning) when Redis is unreachable.

Security review finding 12: five failures locked the account for five minutes even for the
right password, so anyone could lock anyone out. Now failures slow only the addresses they come
from; the owner's right password (and MFA code) from another address passes at once, and from
the attacker's own address after the current delay."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from control_plane.audit import AuthEvents
from control_plane.auth.ratelimit import BASE_DELAY, LoginRateLimiter, backoff_seconds
from control_plane.exceptions import RateLimited
from control_plane.models import PlatformAuditEvent
from control_plane.web.app import build_app, build_services
from tests.conftest import TEST_SECRET_KEY, make_settings
from tests.factories import csrf_token, enable_mfa, make_user, next_code, sign_in

PROXY = "10.0.0.2"


class Clock:
    """The limiter's time source, moved forward by the test instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def app(database_url, redis_url, services, clock):
    """The app behind a proxy at 10.0.0.2 (so a test chooses each browser's address), with the
    limiter on the test's clock."""
    settings = make_settings(trusted_proxies=(f"{PROXY}/32",), login_max_per_ip=50,
                             login_max_per_account=5, login_max_backoff_seconds=900)
    svc = build_services(settings, database_url=database_url, redis_url=redis_url,
                         secret_key=TEST_SECRET_KEY)
    svc.limiter = LoginRateLimiter(svc.redis, max_per_ip=50, max_per_account=5,
                                   window_seconds=60, max_backoff_seconds=900, clock=clock)
    yield build_app(svc)
    svc.close()


def at(app, address: str) -> TestClient:
    client = TestClient(app, base_url="http://testserver", client=(PROXY, 50000))
    client.headers["x-forwarded-for"] = address
    return client


def mfa_step(client: TestClient, code: str):  # noqa: ANN201 - httpx.Response
    return client.post("/sign-in/mfa", data={"csrf_token": csrf_token(client, "/sign-in/mfa"),
                                             "code": code}, follow_redirects=False)


def test_an_address_guessing_one_account_waits_before_its_next_attempt(client, db,
                                                                      redis_client):
    user = make_user(db)
    for _ in range(5):
        assert sign_in(client, user.email, "wrong password!!").status_code == 401
    limited = sign_in(client, user.email)  # from this address even the right one waits now
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= BASE_DELAY
    assert "Too many attempts" in limited.text
    assert any(k.startswith(b"magistrate:rl:login:pair:") for k in redis_client.keys())
    with db() as s:
        kinds = s.scalars(select(PlatformAuditEvent.event_type)).all()
        assert kinds.count(AuthEvents.SIGN_IN_FAILED) == 5
        assert kinds.count(AuthEvents.SIGN_IN_RATE_LIMITED) == 1


def test_the_backoff_doubles_with_each_failure_up_to_the_cap(app, db, clock):
    user = make_user(db)
    guesser = at(app, "203.0.113.66")
    for _ in range(5):
        assert sign_in(guesser, user.email, "wrong password!!").status_code == 401
    waits = []
    for _ in range(12):
        refused = sign_in(guesser, user.email, "wrong password!!")
        assert refused.status_code == 429
        wait = int(refused.headers["retry-after"])
        waits.append(wait)
        clock.advance(wait - 0.5)
        assert sign_in(guesser, user.email, "wrong password!!").status_code == 429  # not yet
        clock.advance(0.5)
        assert sign_in(guesser, user.email, "wrong password!!").status_code == 401
    assert waits == [2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900]
    assert backoff_seconds(4, 5, 900) == 0 and backoff_seconds(5, 1, 900) == 32


def test_an_attacker_cannot_lock_the_owner_out(app, db, services, clock):
    """The review's probe: failures from the attacker's addresses, then the owner signs in
    with the right password and MFA code from a new address, at once."""
    owner = enable_mfa(db, make_user(db), services.sealer)
    evaluated = 0
    for i in range(20):  # each address guesses until it is made to wait
        attacker = at(app, f"198.51.100.{i}")
        while (answer := sign_in(attacker, owner.email, "wrong password!!")).status_code == 401:
            evaluated += 1
        assert answer.status_code == 429
    assert evaluated == 5 + 19  # five from the first address, then one from each other
    home = at(app, "203.0.113.5")
    first = sign_in(home, owner.email)
    assert first.status_code == 303 and first.headers["location"].startswith("/sign-in/mfa")
    assert mfa_step(home, next_code(owner.totp_secret)).status_code == 303
    assert "Signed in as" in home.get("/").text


def test_the_owner_behind_the_attackers_address_gets_in_after_the_delay(app, db, services,
                                                                       clock):
    owner = enable_mfa(db, make_user(db), services.sealer)
    shared = at(app, "198.51.100.9")  # one NAT for the attacker and the owner
    for _ in range(8):  # the attacker guesses as fast as it is let
        answer = sign_in(shared, owner.email, "wrong password!!")
        if answer.status_code == 429:
            clock.advance(int(answer.headers["retry-after"]))
            answer = sign_in(shared, owner.email, "wrong password!!")
        assert answer.status_code == 401
    waiting = sign_in(shared, owner.email)
    assert waiting.status_code == 429
    wait = int(waiting.headers["retry-after"])
    assert 0 < wait <= 900
    clock.advance(wait)
    assert sign_in(shared, owner.email).status_code == 303
    assert mfa_step(shared, next_code(owner.totp_secret)).status_code == 303
    # the whole sign-in cleared this address's backoff
    shared.cookies.clear()
    assert sign_in(shared, owner.email, "wrong password!!").status_code == 401


def test_an_account_under_attack_gives_each_new_address_one_attempt(app, db, clock):
    user = make_user(db)
    for i in range(5):  # five failures from five addresses: the account's alarm
        assert sign_in(at(app, f"198.51.100.{i}"), user.email,
                       "wrong password!!").status_code == 401
    newcomer = at(app, "198.51.100.200")
    assert sign_in(newcomer, user.email, "wrong password!!").status_code == 401
    second = sign_in(newcomer, user.email, "wrong password!!")
    assert second.status_code == 429 and int(second.headers["retry-after"]) == BASE_DELAY
    # the owner's first attempt from yet another address is evaluated: the right password
    assert sign_in(at(app, "203.0.113.5"), user.email).status_code == 303


def test_knowing_the_password_does_not_reset_mfa_guessing(app, db, services, clock):
    owner = enable_mfa(db, make_user(db), services.sealer)
    thief = at(app, "198.51.100.77")  # has the password, not the second factor
    assert sign_in(thief, owner.email).status_code == 303
    for _ in range(5):
        assert mfa_step(thief, "000000").status_code == 401
    assert mfa_step(thief, "000000").status_code == 429
    thief.cookies.clear()
    again = sign_in(thief, owner.email)  # the password again: still waiting
    assert again.status_code == 429


def test_the_limiter_refuses_before_the_password_is_checked(redis_client, clock):
    limiter = LoginRateLimiter(redis_client, max_per_ip=50, max_per_account=2,
                               window_seconds=60, max_backoff_seconds=10, clock=clock)
    limiter.check("192.0.2.1", "a@example.com")
    limiter.record_failure("192.0.2.1", "a@example.com")
    limiter.record_failure("192.0.2.1", "a@example.com")
    with pytest.raises(RateLimited) as refused:
        limiter.check("192.0.2.1", "A@Example.com ")  # the account, however it is typed
    assert refused.value.retry_after == BASE_DELAY
    limiter.check("192.0.2.3", "a@example.com")  # a first attempt from another address
    limiter.record_failure("192.0.2.3", "a@example.com")
    limiter.check("192.0.2.2", "a@example.com")  # another address: not slowed
    with pytest.raises(RateLimited):  # but the account's alarm (2 failures elsewhere) is on
        limiter.check("192.0.2.3", "a@example.com")
    limiter.record_success("192.0.2.1", "a@example.com")
    limiter.check("192.0.2.1", "a@example.com")


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
        database_url, services, db, caplog, refused_port):
    user = make_user(db)
    dead_redis = f"redis://127.0.0.1:{refused_port()}/0"
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
