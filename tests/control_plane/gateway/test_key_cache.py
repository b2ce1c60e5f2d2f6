"""The gateway's per-process key cache (control_plane/tenancy/key_cache.py): a held key costs
no round trip, and every change that can refuse it (a revocation, an expiry, a suspension, a
role change, a deactivation), made through the app or straight in the database, holds in
another ``magistrate web`` process within the bound; a lost listener bypasses the cache; the
TTL bounds an entry even when no notification comes."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import httpx2 as httpx
import psycopg
import pytest
from sqlalchemy import event, select, text

from control_plane.db import utcnow
from control_plane.models import ApiKey, Membership, User
from control_plane.tenancy import api_keys, service
from control_plane.users.service import do_deactivate_user
from control_plane.web.app import build_services
from control_plane.web.services import Services
from tests.chaos.infra import WebProcess, process_env
from tests.conftest import TEST_SECRET_KEY, free_port, make_settings
from tests.control_plane.gateway.conftest import (
    KEY_CACHE_TTL_IN_TESTS,
    NOTIFIED_WITHIN,
    GatewayEnv,
    eventually,
    new_api_key,
)
from tests.factories import make_user
from tests.live_server import serve

BOUND, LONG_TTL = NOTIFIED_WITHIN, KEY_CACHE_TTL_IN_TESTS
# the listener's start: a connection and its first heartbeat, on a busy machine
LISTENS_WITHIN = 30


@pytest.fixture
def settings(settings):  # noqa: ANN001, ANN201 - the gateway's settings, with LONG_TTL
    return dataclasses.replace(settings, gateway_key_cache_seconds=LONG_TTL)


def status(url: str, key: str) -> int:
    return httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"},
                     timeout=10).status_code


def listens_since(services: Services, since: datetime) -> bool:
    """Another process's key cache has connected (and LISTENs) since ``since``."""
    with services.engine.connect() as conn:
        return bool(conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'magistrate-key-cache' AND backend_start >= %(since)s "
            "AND pid IS DISTINCT FROM %(ours)s",
            {"since": since, "ours": services.key_cache.listener_pid}).scalar())


@contextmanager
def counted(services: Services) -> Iterator[list[str]]:
    """The statements the gateway's key lookup sends while the block runs."""
    sent: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        sent.append(statement)

    engine = services.hot_path_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def other(gw, settings, database_url, redis_url, tmp_path, services) -> Iterator[str]:
    """A second ``magistrate web`` process on the same databases; its base URL, once its key
    cache listens (after its first gateway call) alongside this process's."""
    env = process_env(settings, database_url=database_url, redis_url=redis_url)
    env["MAGISTRATE_GATEWAY_KEY_CACHE_SECONDS"] = str(LONG_TTL)
    with WebProcess(env, free_port(), tmp_path / "other-web.log") as web:
        since = utcnow()
        status(gw.url, gw.key)
        status(web.url, gw.key)
        eventually(lambda: services.key_cache.listening, within=LISTENS_WITHIN,
                   what="this process listens")
        eventually(lambda: listens_since(services, since), within=LISTENS_WITHIN,
                   what="the other process listens")
        yield web.url


def held(urls: tuple[str, ...], keys: list[str]) -> None:
    """Every key works in every process (and, called twice, is in each one's cache)."""
    for _ in range(2):
        for url in urls:
            for key in keys:
                assert status(url, key) == 200


def refused_within(urls: tuple[str, ...], key: str, code: int, what: str) -> float:
    return max(eventually(lambda u=url: status(u, key) == code, within=BOUND,
                          what=f"{what} at {url}") for url in urls)


def add_admin(services, gw: GatewayEnv, email: str) -> int:
    made = make_user(services.session_factory, email, is_owner=False)
    with services.session_factory() as s, s.begin():
        owner = s.get(User, gw.owner_id)
        service.do_add_member(s, service.access_tenant(s, gw.tenant_id, user=owner),
                              email=email, role="Admin", acting_user=owner)
    return made.id


def test_a_held_key_is_checked_without_a_round_trip(gw: GatewayEnv, services):
    cache = services.key_cache
    assert make_settings().gateway_key_cache_seconds == 5  # the default
    assert cache is not None and cache.ttl_seconds == LONG_TTL
    status(gw.url, gw.key)  # starts the listener; until it listens every call reads the key
    eventually(lambda: cache.listening, within=LISTENS_WITHIN, what="the key cache listens")
    with counted(services) as sent:
        assert status(gw.url, gw.key) == 200
    assert len(sent) == 1 and "FROM api_keys" in sent[0]  # read, kept (last_used_at is fresh)
    with counted(services) as sent:
        for _ in range(3):
            assert status(gw.url, gw.key) == 200
    assert sent == []
    with counted(services) as sent:  # a wrong secret with a real prefix is read, never kept
        assert status(gw.url, gw.key[:-4] + "abcd") == 401
        assert status(gw.url, gw.key[:-4] + "abcd") == 401
    assert len(sent) == 2 and len(cache) == 1


def test_an_expiry_is_judged_against_the_clock_on_every_call_of_a_held_key(gw: GatewayEnv,
                                                                           services):
    """No notification marks the moment a key expires: the held entry carries ``expires_at``
    and the check runs on every call, so the key is refused the moment it passes, from the
    cache, without a round trip."""
    cache = services.key_cache
    status(gw.url, gw.key)
    eventually(lambda: cache.listening, within=LISTENS_WITHIN, what="the key cache listens")
    with services.engine.begin() as conn:
        expires_at = conn.exec_driver_sql(
            "UPDATE api_keys SET expires_at = now() + interval '4 seconds' "
            "RETURNING expires_at").scalar_one()
    eventually(lambda: status(gw.url, gw.key) == 200 and api_keys.key_hash(gw.key) in cache,
               within=BOUND, what="the key is held with its new expiry")
    with counted(services) as sent:
        eventually(lambda: status(gw.url, gw.key) == 401, within=BOUND, what="the expiry")
        refused_by = utcnow()  # the refusal was judged before this moment
    assert sent == [] and api_keys.key_hash(gw.key) in cache  # judged on the held entry
    # not before the expiry (this machine's clock is the database's); the calls of a busy
    # machine may make it seen a few seconds after
    assert expires_at <= refused_by < expires_at + timedelta(seconds=BOUND)


def test_changes_through_the_app_reach_another_process_within_the_bound(
        gw: GatewayEnv, services, other):
    admin_id = add_admin(services, gw, "admin@example.com")
    demoted = new_api_key(services, gw.tenant_id, admin_id, name="admin's")
    urls = (gw.url, other)
    held(urls, [gw.key, demoted])
    with services.session_factory() as s, s.begin():
        owner = s.get(User, gw.owner_id)
        access = service.access_tenant(s, gw.tenant_id, user=owner)
        member = s.scalars(select(Membership).where(Membership.user_id == admin_id)).one()
        service.do_change_member_role(s, access, member.id, role="Approver", acting_user=owner)
    refused_within(urls, demoted, 403, "a role change")
    with services.session_factory() as s, s.begin():
        do_deactivate_user(s, s.get(User, admin_id), acting_user=s.get(User, gw.owner_id))
    refused_within(urls, demoted, 401, "a deactivation")
    assert status(other, gw.key) == 200
    with services.session_factory() as s, s.begin():
        owner = s.get(User, gw.owner_id)
        service.do_suspend_tenant(s, service.access_tenant(s, gw.tenant_id, user=owner),
                                  reason="unpaid", acting_user=owner)
    refused_within(urls, gw.key, 403, "a suspension")
    with services.session_factory() as s, s.begin():
        owner = s.get(User, gw.owner_id)
        access = service.access_tenant(s, gw.tenant_id, user=owner)
        service.do_resume_tenant(s, access, acting_user=owner)
    held(urls, [gw.key])
    with services.session_factory() as s, s.begin():
        owner = s.get(User, gw.owner_id)
        access = service.access_tenant(s, gw.tenant_id, user=owner)
        key_id = s.scalars(select(ApiKey.id).where(ApiKey.name == "build bot")).one()
        api_keys.do_revoke_api_key(s, access, key_id, acting_user=owner)
    refused_within(urls, gw.key, 401, "a revocation")


# each change straight in the database, against a key of its own (whose creator is an Admin of
# their own): {admin} is that creator's id, {key} the key's name; the suspension comes last
STRAIGHT_IN_THE_DATABASE = (
    ("UPDATE api_keys SET revoked_at = now() WHERE name = '{key}'", 401),
    ("UPDATE api_keys SET expires_at = now() WHERE name = '{key}'", 401),
    ("UPDATE api_keys SET scopes = '{{read}}' WHERE name = '{key}'", 403),
    ("UPDATE memberships SET role = 'Viewer' WHERE user_id = {admin}", 403),
    ("DELETE FROM memberships WHERE user_id = {admin}", 401),
    ("UPDATE users SET is_active = false WHERE id = {admin}", 401),
    ("UPDATE tenants SET state = 'suspended'", 403),
)


def test_changes_straight_in_the_database_reach_another_process_within_the_bound(
        gw: GatewayEnv, services, other):
    urls = (gw.url, other)
    targets = []
    for number, (change, code) in enumerate(STRAIGHT_IN_THE_DATABASE):
        admin_id = add_admin(services, gw, f"admin{number}@example.com")
        name = f"target {number}"
        key = new_api_key(services, gw.tenant_id, admin_id, name=name)
        targets.append((change.format(admin=admin_id, key=name), code, key))
    witness = new_api_key(services, gw.tenant_id, gw.owner_id, name="witness")
    held(urls, [witness, *[key for _, _, key in targets]])
    # the other process answers from its cache: a revocation no trigger reports goes unseen
    # there, until a change that notifies
    with services.engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.exec_driver_sql("UPDATE api_keys SET revoked_at = now() WHERE name = 'witness'")
    assert status(other, witness) == 200
    with services.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE api_keys SET name = 'seen' WHERE name = 'witness'")
    refused_within((other,), witness, 401, "a notified change")
    for change, code, key in targets:
        with services.engine.begin() as conn:
            conn.exec_driver_sql(change)
        refused_within(urls, key, code, change)


def test_a_lost_listener_bypasses_the_cache_and_a_new_one_starts_empty(gw: GatewayEnv,
                                                                       services):
    """The listener's backend is terminated (as a Postgres restart or a network cut would):
    until it listens again every call reads the key, and the new connection starts with an
    empty cache, so what was notified while it was away cannot be missed. Shown with a
    revocation no trigger reports (``session_replication_role = replica`` skips triggers)."""
    cache = services.key_cache
    status(gw.url, gw.key)
    eventually(lambda: cache.listening, within=LISTENS_WITHIN, what="the key cache listens")
    held((gw.url,), [gw.key])
    assert len(cache) == 1
    pid = cache.listener_pid
    with services.engine.begin() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    eventually(lambda: cache.listener_pid != pid, within=BOUND, what="the listener notices")
    with services.engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.exec_driver_sql("UPDATE api_keys SET revoked_at = now()")
    assert status(gw.url, gw.key) == 401  # at once: not one call served from before the loss
    eventually(lambda: cache.listening, within=LISTENS_WITHIN,
               what="the key cache listens again")


def test_the_ttl_bounds_an_entry_that_no_notification_reaches(gw: GatewayEnv, settings,
                                                              database_url, redis_url):
    """The belt and braces: a change no trigger reports (replica mode) is still seen within
    the TTL (2 s here); before it, the process answered from its cache."""
    # 2 s: the check that the entry still answers after the change must come within it
    short = dataclasses.replace(settings, gateway_key_cache_seconds=2)
    svc = build_services(short, database_url=database_url, redis_url=redis_url,
                         secret_key=TEST_SECRET_KEY)
    try:
        with serve(svc) as url:
            status(url, gw.key)
            assert svc.key_cache is not None
            eventually(lambda: svc.key_cache.listening, within=LISTENS_WITHIN,
                       what="the cache listens")
            held((url,), [gw.key])
            with svc.engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
                conn.exec_driver_sql("UPDATE api_keys SET revoked_at = now()")
            assert status(url, gw.key) == 200  # held: nothing told this process
            # the TTL, plus a busy machine's calls; an entry the TTL did not bound would be
            # served for the rest of the test
            eventually(lambda: status(url, gw.key) == 401, within=2 + BOUND, what="the TTL")
    finally:
        svc.tenant_connections.close()
        svc.close()


def test_closing_ends_the_listener_and_its_connection(gw: GatewayEnv, settings, database_url,
                                                       redis_url, services):
    """An app's close ends its key cache's listener thread and closes its connection, so
    nothing of it runs (holds a connection, logs) after the app."""
    svc = build_services(settings, database_url=database_url, redis_url=redis_url,
                         secret_key=TEST_SECRET_KEY)
    try:
        cache = svc.key_cache
        assert cache is not None
        cache.start()
        eventually(lambda: cache.listening, within=LISTENS_WITHIN, what="the cache listens")
        pid = cache.listener_pid
        assert cache.close(wait=30)  # the thread has ended
        assert not cache.listening and cache.listener_pid is None
        eventually(lambda: not backend_alive(services, pid), within=BOUND,
                   what="the listener's backend is gone")
    finally:
        svc.tenant_connections.close()
        svc.close()


def backend_alive(services: Services, pid: int | None) -> bool:
    with services.engine.connect() as conn:  # a transaction of its own: a fresh snapshot
        return bool(conn.exec_driver_sql("SELECT count(*) FROM pg_stat_activity "
                                         "WHERE pid = %(pid)s", {"pid": pid}).scalar())


def test_the_triggers_notify_what_can_change_a_key_and_not_its_last_use(gw: GatewayEnv,
                                                                        services,
                                                                        database_url):
    with services.session_factory() as s:
        key_id = s.scalars(select(ApiKey.id)).one()
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN magistrate_auth")
        with services.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE api_keys SET last_used_at = now()")
        with services.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE api_keys SET name = 'renamed', last_used_at = now()")
            ids = {"tenant": gw.tenant_id, "owner": gw.owner_id}
            conn.execute(text("UPDATE tenants SET name = 'Acme Inc' WHERE id = :tenant"), ids)
            conn.execute(text("UPDATE users SET display_name = 'o' WHERE id = :owner"), ids)
            conn.exec_driver_sql("UPDATE memberships SET role = role")  # no change: silent
            conn.execute(text("UPDATE tenant_keys SET retired_at = NULL "  # nor here
                              "WHERE tenant_id = :tenant"), ids)
        with services.engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE web_sessions, backup_codes")  # not watched
        expected = [f"key:{key_id}", f"tenant:{gw.tenant_id}", f"user:{gw.owner_id}"]

        def heard() -> list[str]:  # for half a second; not a web process's heartbeat
            return [n.payload for n in listener.notifies(timeout=0.5)
                    if not n.payload.startswith("alive:")]

        payloads: list[str] = []
        deadline = time.monotonic() + BOUND  # what a busy machine may take to deliver them
        while len(payloads) < len(expected) and time.monotonic() < deadline:
            payloads += heard()
        payloads += heard()  # and nothing after them
    assert payloads == expected
