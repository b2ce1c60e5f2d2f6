"""API keys across web processes: each process keeps what a key's calls reuse (the tenant's
engine, its configuration snapshot, unwrapped data keys, the checked key itself), yet a
revocation, an expiry or a suspension made anywhere holds in every process within the key
cache's bound (the notification delay, milliseconds; test_key_cache.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import openai
import pytest
from sqlalchemy import func, select, text, update

from control_plane.models import ApiKey, User
from control_plane.tenancy import api_keys, service
from control_plane.web.app import build_services
from tests.conftest import TEST_SECRET_KEY
from tests.control_plane.gateway.conftest import (
    KEY_CACHE_TTL_IN_TESTS,
    NOTIFIED_WITHIN,
    GatewayEnv,
    calls,
    eventually,
    new_api_key,
)
from tests.live_server import serve

PROMPT = "Say hello to the team."
BOUND = NOTIFIED_WITHIN  # a change reaches every process's key cache by notification


@pytest.fixture
def settings(settings):  # noqa: ANN001, ANN201 - both instances keep entries past any test
    return dataclasses.replace(settings, gateway_key_cache_seconds=KEY_CACHE_TTL_IN_TESTS)


@pytest.fixture
def second(gw, settings, database_url, redis_url) -> Iterator[str]:
    """A second app instance (its own services: engines, pools, caches) on the same
    databases, as a second web process would be; yields its base URL."""
    other = build_services(settings, database_url=database_url, redis_url=redis_url,
                           secret_key=TEST_SECRET_KEY)
    try:
        with serve(other) as url:
            yield url
    finally:
        other.tenant_connections.close()
        other.close()


def ask(url: str, key: str) -> str:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], max_tokens=50)
    return answer.choices[0].message.content or ""


def refused(url: str, key: str, error: type[openai.APIStatusError]) -> str:
    with pytest.raises(error) as raised:
        ask(url, key)
    return raised.value.message


def answers(url: str, key: str) -> bool:
    try:
        return ask(url, key) == f"You said: {PROMPT}"
    except openai.APIStatusError:
        return False


def refused_within(url: str, key: str, error: type[openai.APIStatusError],
                   served: list[str] | None = None) -> str:
    """The refusal a change brings ``url`` within BOUND; calls it still served meanwhile (the
    notification on its way) are added to ``served``."""
    refusals: list[str] = []

    def check() -> bool:
        try:
            (served if served is not None else []).append(ask(url, key))
        except error as exc:
            refusals.append(exc.message)
            return True
        return False

    eventually(check, within=BOUND, what=f"a refusal at {url}")
    return refusals[-1]


def test_a_key_revoked_through_one_instance_is_refused_by_another_within_the_bound(
        gw: GatewayEnv, services, second):
    for url in (gw.url, second, gw.url, second):  # both instances have served the key
        assert ask(url, gw.key) == f"You said: {PROMPT}"
    with services.session_factory() as s, s.begin():
        owner = s.get(User, gw.owner_id)
        access = service.access_tenant(s, gw.tenant_id, user=owner)
        key_id = s.scalars(select(ApiKey.id).where(ApiKey.tenant_id == gw.tenant_id)).one()
        api_keys.do_revoke_api_key(s, access, key_id, acting_user=owner)
    served: list[str] = []
    for url in (second, gw.url):
        assert "revoked" in refused_within(url, gw.key, openai.AuthenticationError, served)
    # nothing reached the gateway's call path after the revocation reached the process
    assert len(calls(gw)) == 4 + len(served)
    assert "revoked" in refused(second, gw.key, openai.AuthenticationError)


def test_a_suspension_and_an_expiry_hold_in_every_instance_within_the_bound(
        gw: GatewayEnv, services, second):
    other_key = new_api_key(services, gw.tenant_id, gw.owner_id, name="nightly",
                            expires_in_days=30)
    for url in (gw.url, second):
        assert ask(url, gw.key) and ask(url, other_key)
    with services.session_factory() as s, s.begin():  # straight in the database
        s.execute(update(ApiKey).where(ApiKey.name == "nightly").values(expires_at=func.now()))
    assert "expired" in refused_within(second, other_key, openai.AuthenticationError)
    with services.session_factory() as s, s.begin():
        owner = s.get(User, gw.owner_id)
        service.do_suspend_tenant(s, service.access_tenant(s, gw.tenant_id, user=owner),
                                  reason="unpaid", acting_user=owner)
    for url in (second, gw.url):
        assert "suspended" in refused_within(url, gw.key, openai.PermissionDeniedError)
    with services.session_factory() as s, s.begin():
        owner = s.get(User, gw.owner_id)
        service.do_resume_tenant(s, service.access_tenant(s, gw.tenant_id, user=owner),
                                 acting_user=owner)
    eventually(lambda: answers(second, gw.key), within=BOUND,
               what="the resumed tenant's key works")


def test_last_used_is_written_at_most_once_a_minute(gw: GatewayEnv, services):
    def last_used():
        with services.session_factory() as s:
            return s.scalars(select(ApiKey.last_used_at)
                             .where(ApiKey.tenant_id == gw.tenant_id)).one()

    assert last_used() is None
    ask(gw.url, gw.key)
    first = last_used()
    assert first is not None
    ask(gw.url, gw.key)
    assert last_used() == first


def test_the_key_lookup_outlives_a_dead_pooled_connection_without_a_pre_ping(
        gw: GatewayEnv, services):
    """The key lookup's connections are taken without a pre-ping: one that died while pooled
    (here: its backend terminated, as a Postgres restart would) fails the read, is dropped, and
    the read runs again on a fresh connection; the caller sees nothing, not a 503."""
    assert ask(gw.url, gw.key) == f"You said: {PROMPT}"
    engine = services.hot_path_engine
    assert engine is not None and engine.pool._pre_ping is False  # noqa: SLF001
    with engine.connect() as conn:  # the pooled connection the next call will take
        backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with services.session_factory() as s, s.begin():
        assert s.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar()
    assert ask(gw.url, gw.key) == f"You said: {PROMPT}"
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != backend
    assert len(calls(gw)) == 2
