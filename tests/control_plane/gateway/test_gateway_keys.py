"""API keys across web processes: each process keeps what a key's calls reuse (the tenant's
engine, its configuration snapshot, unwrapped data keys), yet a revocation, an expiry or a
suspension made anywhere holds on the very next call in every process."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from sqlalchemy import func, select, update

from control_plane.models import ApiKey, User
from control_plane.tenancy import api_keys, service
from control_plane.web.app import build_services
from tests.conftest import TEST_SECRET_KEY, free_port
from tests.control_plane.gateway.conftest import GatewayEnv, calls, new_api_key
from tests.live_server import serve

PROMPT = "Say hello to the team."


@pytest.fixture
def second(gw, settings, database_url, redis_url) -> Iterator[str]:
    """A second app instance (its own services: engines, pools, caches) on the same
    databases, as a second web process would be; yields its base URL."""
    other = build_services(settings, database_url=database_url, redis_url=redis_url,
                           secret_key=TEST_SECRET_KEY)
    try:
        with serve(other, free_port()) as url:
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


def test_a_key_revoked_through_one_instance_is_refused_at_once_by_another(
        gw: GatewayEnv, services, second):
    for url in (gw.url, second, gw.url, second):  # both instances have served the key
        assert ask(url, gw.key) == f"You said: {PROMPT}"
    with services.session_factory() as s, s.begin():
        owner = s.get(User, gw.owner_id)
        access = service.access_tenant(s, gw.tenant_id, user=owner)
        key_id = s.scalars(select(ApiKey.id).where(ApiKey.tenant_id == gw.tenant_id)).one()
        api_keys.do_revoke_api_key(s, access, key_id, acting_user=owner)
    for url in (second, gw.url):
        assert "revoked" in refused(url, gw.key, openai.AuthenticationError)
    assert len(calls(gw)) == 4  # nothing reached the gateway's call path after the revocation


def test_a_suspension_and_an_expiry_hold_at_once_in_every_instance(gw: GatewayEnv, services,
                                                                  second):
    other_key = new_api_key(services, gw.tenant_id, gw.owner_id, name="nightly",
                            expires_in_days=30)
    for url in (gw.url, second):
        assert ask(url, gw.key) and ask(url, other_key)
    with services.session_factory() as s, s.begin():  # straight in the database
        s.execute(update(ApiKey).where(ApiKey.name == "nightly").values(expires_at=func.now()))
    assert "expired" in refused(second, other_key, openai.AuthenticationError)
    with services.session_factory() as s, s.begin():
        owner = s.get(User, gw.owner_id)
        service.do_suspend_tenant(s, service.access_tenant(s, gw.tenant_id, user=owner),
                                  reason="unpaid", acting_user=owner)
    for url in (second, gw.url):
        assert "suspended" in refused(url, gw.key, openai.PermissionDeniedError)
    with services.session_factory() as s, s.begin():
        owner = s.get(User, gw.owner_id)
        service.do_resume_tenant(s, service.access_tenant(s, gw.tenant_id, user=owner),
                                 acting_user=owner)
    assert ask(second, gw.key) == f"You said: {PROMPT}"


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
