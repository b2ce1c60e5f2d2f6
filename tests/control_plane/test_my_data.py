""""Download my data": a member gets one JSON file of what Magistrate holds about them (and
nothing secret, and nothing of anyone else), three times an hour at most, each download
audited with counts; a tenant that cannot be read is listed with a note instead of failing
the download."""

from __future__ import annotations

import html
import json
import re

import psycopg
import pytest
import redis
from sqlalchemy import select

from control_plane.exceptions import RateLimited
from control_plane.keys.local import LocalKeyProvider
from control_plane.models import ApiKey, BackupCode, Membership, PlatformAuditEvent, Tenant, User
from control_plane.tenancy import api_keys
from control_plane.tenancy.service import access_tenant
from control_plane.users import my_data
from control_plane.users.my_data import AccountEvents, ExportLimiter, do_export_my_data
from tenant_runtime import audit as tenant_audit
from tenant_runtime.context import Actor
from tenant_runtime.personas.models import Persona, PersonaAssignment
from tests.conftest import with_database
from tests.control_plane.tenancy.conftest import (  # noqa: F401 - fixtures
    local_kek,
    primary_server,
    settings,
)
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs, tenant_state
from tests.factories import enable_mfa, make_user, next_code, post_form, sign_in

MEMBER = "member@example.com"


@pytest.fixture
def world(services, db, database_url, settings, primary_server, local_kek):  # noqa: F811
    """An owner with tenants alpha and bravo (bravo under its own KEK); a member of both with
    events, a persona and an API key in alpha; another member's events beside theirs."""
    LocalKeyProvider(settings.home / "keys").create_key("bravo-kek")
    owner = make_user(db)
    member = make_user(db, MEMBER, is_owner=False)
    other = make_user(db, "other@example.com", is_owner=False)
    ids = {"alpha": create_tenant(services, owner.email, "alpha"),
           "bravo": create_tenant(services, owner.email, "bravo", key_ref="bravo-kek")}
    run_pending_jobs(services, database_url)
    assert {tenant_state(services, i) for i in ids.values()} == {"active"}
    with db() as s, s.begin():
        s.add_all([Membership(user_id=member.id, tenant_id=ids["alpha"], role="Admin"),
                   Membership(user_id=member.id, tenant_id=ids["bravo"], role="Viewer"),
                   Membership(user_id=other.id, tenant_id=ids["alpha"], role="Operator")])
    with db() as s, s.begin():
        user = s.get(User, member.id)
        api_keys.do_create_api_key(s, access_tenant(s, ids["alpha"], user=user),
                                   name="ci bot", acting_user=user, scopes=["gateway"])
    for slug, events in (("alpha", 3), ("bravo", 1)):
        ctx = tenant_context(services, ids[slug], member.id, MEMBER)
        with ctx.session() as ts, ts.begin():
            for i in range(events):
                tenant_audit.record(ts, "test.member_did", actor=ctx.actor, details={"i": i})
            tenant_audit.record(ts, "test.other_did",
                                actor=Actor("user", str(other.id), "other@example.com"))
            tenant_audit.record(ts, "test.system_did", actor=Actor("system"))
            if slug == "alpha":
                persona = Persona(name="On-call", teams=["ops"], source_ids=["*"],
                                  created_by=owner.email)
                ts.add(persona)
                ts.flush()
                ts.add(PersonaAssignment(user_id=str(member.id), persona_id=persona.id,
                                         assigned_by=owner.email))
                ts.add(PersonaAssignment(user_id=str(other.id), persona_id=persona.id))
    return {"ids": ids, "owner": owner, "member": member, "other": other}


def tenant_context(services, tenant_id: int, user_id: int, email: str):
    with services.session_factory() as s:
        return services.tenant_connections.context(
            s, s.get(Tenant, tenant_id), Actor("user", str(user_id), email, "Admin"))


def download(client):
    return post_form(client, "/account/my-data")


def exported_events(db, user_id: int) -> list[PlatformAuditEvent]:
    with db() as s:
        return list(s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == AccountEvents.DATA_EXPORTED,
            PlatformAuditEvent.actor_id == str(user_id)).order_by(PlatformAuditEvent.seq)))


def test_a_member_downloads_what_magistrate_holds_about_them(client, db, services, world):
    member = enable_mfa(db, world["member"], services.sealer)
    sign_in(client, MEMBER)
    passed = post_form(client, "/sign-in/mfa", {"code": next_code(member.totp_secret)},
                       page="/sign-in/mfa")
    assert passed.status_code == 303

    response = download(client)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="magistrate-my-data-')
    assert disposition.endswith('.json"')
    assert response.headers["cache-control"] == "no-store"
    assert int(response.headers["content-length"]) == len(response.content)
    data = json.loads(response.content)

    account = data["account"]
    assert account["email"] == MEMBER and account["display_name"] == "member"
    assert account["mfa_enabled"] is True and account["installation_owner"] is False
    raw = response.content.decode()
    with db() as s:
        user = s.get(User, member.id)
        codes = list(s.scalars(select(BackupCode.code_hash).where(BackupCode.user_id == user.id)))
        key_hash = s.scalars(select(ApiKey.secret_hash)).one()
        secrets = [user.password_hash, user.mfa_secret_sealed.hex(), key_hash, *codes]
    for secret in [*secrets, member.totp_secret, *member.backup_codes]:
        assert secret not in raw
    assert "password_hash" not in raw and "mfa_secret" not in raw

    assert {(m["tenant"], m["role"]) for m in data["memberships"]} == {("alpha", "Admin"),
                                                                      ("bravo", "Viewer")}
    assert any(sess["current"] for sess in data["sessions"])
    assert all(sess["user_agent"] == "testclient" for sess in data["sessions"])
    assert [(k["tenant"], k["name"]) for k in data["api_keys"]] == [("alpha", "ci bot")]

    platform = {e["event_type"] for e in data["platform_audit_events"]}
    assert {"user.created", "auth.sign_in", "auth.mfa_enrolled", "api_key.created"} \
        <= platform
    for event in data["platform_audit_events"]:
        assert str(member.id) in (event["actor_id"], event["target_id"])

    tenants = {t["slug"]: t for t in data["tenants"]}
    assert tenants["alpha"]["available"] and tenants["bravo"]["available"]
    assert [e["details"]["i"] for e in tenants["alpha"]["audit_events"]] == [0, 1, 2]
    assert [e["event_type"] for e in tenants["bravo"]["audit_events"]] == ["test.member_did"]
    assert {e["actor_id"] for t in tenants.values() for e in t["audit_events"]} \
        == {str(member.id)}
    assert [(p["persona"], p["teams"], p["assigned_by"])
            for p in tenants["alpha"]["persona_assignments"]] \
        == [("On-call", ["ops"], "owner@example.com")]
    assert tenants["bravo"]["persona_assignments"] == []

    [event] = exported_events(db, member.id)
    assert event.target_type == "user" and event.target_id == str(member.id)
    assert event.details == {
        "memberships": 2, "sessions": len(data["sessions"]), "api_keys": 1,
        "platform_events": len(data["platform_audit_events"]), "tenants": 2,
        "tenants_unavailable": 0, "tenant_events": 4, "persona_assignments": 1,
        "bytes": len(response.content)}


def test_the_fourth_download_within_the_hour_is_refused_with_retry_after(client, db, world):
    sign_in(client, MEMBER)
    for _ in range(3):
        assert download(client).status_code == 200
    refused = download(client)
    assert refused.status_code == 429
    assert 3500 < int(refused.headers["retry-after"]) <= 3600
    error = re.search(r'data-testid="my-data-error">([^<]*)<', refused.text)
    assert error is not None
    assert html.unescape(error.group(1)) == (
        "You downloaded your data 3 times in the last hour, the most allowed. You can "
        "download it again in 60 minutes.")
    assert len(exported_events(db, world["member"].id)) == 3

    # the limit is per member: the owner still has all of theirs
    client.cookies.clear()
    sign_in(client, "owner@example.com")
    assert download(client).status_code == 200


def test_a_window_that_has_moved_on_frees_a_slot(db, services, world):
    now = [1_000_000.0]
    limiter = ExportLimiter(services.redis, clock=lambda: now[0])
    with db() as s, s.begin():
        for _ in range(3):
            limiter.acquire(s, 7)
            now[0] += 600
        with pytest.raises(RateLimited) as refused:
            limiter.acquire(s, 7)
        assert refused.value.retry_after == 1800  # the first frees at 3600 after it was taken
        now[0] += 1800
        limiter.acquire(s, 7)
        with pytest.raises(RateLimited):
            limiter.acquire(s, 7)


def test_without_redis_the_audit_chain_counts_the_downloads(db, services, world, caplog,
                                                            refused_port):
    dead = redis.Redis.from_url(f"redis://127.0.0.1:{refused_port()}/0",
                                socket_connect_timeout=0.2)
    limiter = ExportLimiter(dead)
    for _ in range(3):
        with db() as s, s.begin():
            user = s.get(User, world["member"].id)
            export = do_export_my_data(s, connections=services.tenant_connections,
                                       limiter=limiter, current_session_id=None,
                                       acting_user=user)
        assert json.loads(b"".join(export.chunks()))["account"]["email"] == MEMBER
    with db() as s, s.begin(), pytest.raises(RateLimited) as refused:
        do_export_my_data(s, connections=services.tenant_connections, limiter=limiter,
                          current_session_id=None, acting_user=s.get(User, world["member"].id))
    assert 3500 < refused.value.retry_after <= 3600
    assert len(exported_events(db, world["member"].id)) == 3
    assert "Redis unreachable for the data download limit" in caplog.text
    dead.close()


def test_a_tenant_whose_key_is_revoked_is_listed_with_a_note(client, db, services, world):
    # the customer revokes bravo's key
    LocalKeyProvider(services.settings.home / "keys").path("bravo-kek").unlink()
    services.dek_cache.clear()
    sign_in(client, MEMBER)
    response = download(client)
    assert response.status_code == 200
    tenants = {t["slug"]: t for t in json.loads(response.content)["tenants"]}
    assert len(tenants["alpha"]["audit_events"]) == 3
    assert tenants["bravo"] == {
        "tenant_id": world["ids"]["bravo"], "slug": "bravo", "name": "Bravo", "role": "Viewer",
        "state": "active", "available": False,
        "note": "This tenant's customer-held key is unavailable, so Magistrate cannot read its "
                "data now. Ask the tenant's Owner, or try again later."}
    [event] = exported_events(db, world["member"].id)
    assert event.details["tenants_unavailable"] == 1 and event.details["tenant_events"] == 3


def test_a_tenant_that_fails_midway_is_cut_out_cleanly(client, db, services, pg_server_url,
                                                       world, monkeypatch):
    """Bravo's personas are written before its audit events fail: what was written of it is
    cut from the file, which stays valid JSON (and rolled over to disk on the way)."""
    monkeypatch.setattr(my_data, "SPOOL_BYTES", 64)
    bravo = world["ids"]["bravo"]
    member = world["member"]
    ctx = tenant_context(services, bravo, member.id, MEMBER)
    with ctx.session() as ts, ts.begin():  # a long persona: more is written than the note
        persona = Persona(name="Everything", teams=[f"team-{i}" for i in range(60)])
        ts.add(persona)
        ts.flush()
        ts.add(PersonaAssignment(user_id=str(member.id), persona_id=persona.id))
    with psycopg.connect(with_database(pg_server_url, f"magistrate_t_{bravo}"),
                         autocommit=True) as conn:
        conn.execute(f"REVOKE SELECT ON audit_events FROM magistrate_t_{bravo}_app")  # noqa: S608
    sign_in(client, MEMBER)
    response = download(client)
    assert response.status_code == 200
    tenants = {t["slug"]: t for t in json.loads(response.content)["tenants"]}
    assert len(tenants["alpha"]["audit_events"]) == 3
    assert tenants["bravo"]["available"] is False
    assert tenants["bravo"]["note"] == ("This tenant's database could not be read just now. "
                                        "Try again later.")
    assert "persona_assignments" not in tenants["bravo"]


def test_the_account_page_offers_the_download_and_it_needs_a_signed_in_member(client, db,
                                                                             world):
    anonymous = post_form(client, "/account/my-data", page="/sign-in")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/sign-in")
    assert client.post("/account/my-data", data={}).status_code == 403  # no CSRF token
    sign_in(client, MEMBER)
    page = client.get("/account").text
    form = re.search(r'<form method="post" action="/account/my-data">\s*'
                     r'<input type="hidden" name="csrf_token" value="([^"]+)">\s*'
                     r'<button type="submit">Download my data</button>', page)
    assert form is not None
    assert download(client).status_code == 200
    unknown = post_form(client, "/account/my-data", {"everything": "yes"})
    assert unknown.status_code == 422
    assert "Unknown field 'everything'" in html.unescape(unknown.text)
