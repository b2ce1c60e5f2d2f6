"""A key stops with its creator (DESIGN.md, invariant 9; review issue 15, finding 8):
deactivating the creator, or removing their membership, revokes their keys at once (gateway and
JSON API alike), audited; reactivating the account or adding the member back revives none. A
creator deactivated or removed behind the service's back (straight in the database) is refused
all the same, since every use reads the creator."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from control_plane.models import ApiKey, Membership, PlatformAuditEvent, User
from tests.control_plane.credentials.helpers import bearer, make_key, message, provisioned, user_id
from tests.factories import csrf_token, sign_in

SCOPES = ["gateway", "actions:request", "read"]


def works(client, key: str) -> list[int]:
    client.cookies.clear()
    return [client.get("/v1/models", headers=bearer(key)).status_code,
            client.post("/api/actions", headers=bearer(key),
                        json={"action": "no.such", "payload": {}}).status_code,
            client.get("/api/whoami", headers=bearer(key)).status_code]


def revocations(services) -> list[tuple[str, dict]]:
    with services.session_factory() as s:
        return [(e.target_id, e.details) for e in s.scalars(
            select(PlatformAuditEvent).where(PlatformAuditEvent.event_type == "api_key.revoked")
            .order_by(PlatformAuditEvent.seq))]


def test_deactivation_and_removal_stop_keys_at_once_and_nothing_revives_them(
        services, db, database_url, primary_server, local_kek, client):
    tenant_id = provisioned(services, db, database_url,
                            members=[("dora", "Admin"), ("remy", "Admin")])
    dora = make_key(services, tenant_id, "dora@cred.example", SCOPES, name="dora's")
    remy = make_key(services, tenant_id, "remy@cred.example", SCOPES, name="remy's")
    assert works(client, dora) == [200, 422, 200]
    assert works(client, remy) == [200, 422, 200]
    with services.session_factory() as s:
        dora_key, remy_key = (s.scalars(select(ApiKey.id).where(ApiKey.name == n)).one()
                              for n in ("dora's", "remy's"))
    # an installation Owner deactivates Dora on the users page
    sign_in(client, "owner@cred.example")
    token = csrf_token(client, "/users")
    dora_id = user_id(services, "dora@cred.example")
    assert client.post(f"/users/{dora_id}/deactivate",
                       data={"csrf_token": token}).status_code == 200
    assert works(client, dora) == [401, 401, 401]
    client.cookies.clear()
    assert message(client.get("/v1/models", headers=bearer(dora))) == \
        "This API key was revoked."
    assert revocations(services) == [(str(dora_key), {"tenant_id": tenant_id, "prefix":
                                                      dora.split("_")[1],
                                                      "reason": "creator deactivated"})]
    with services.session_factory() as s:
        event = s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == "user.deactivated")).one()
        assert event.details["api_keys_revoked"] == 1
    sign_in(client, "owner@cred.example")
    token = csrf_token(client, "/users")
    assert client.post(f"/users/{dora_id}/reactivate",
                       data={"csrf_token": token}).status_code == 200
    assert works(client, dora) == [401, 401, 401]  # reactivation revives no key
    # an Owner removes Remy from the tenant (the dashboard)
    sign_in(client, "owner@cred.example")
    with services.session_factory() as s:
        membership = s.scalars(select(Membership.id).where(
            Membership.user_id == user_id(services, "remy@cred.example"))).one()
    token = csrf_token(client, f"/tenants/{tenant_id}")
    assert client.post(f"/tenants/{tenant_id}/members/{membership}/remove",
                       data={"csrf_token": token}).status_code == 200
    assert works(client, remy) == [401, 401, 401]
    assert revocations(services)[-1] == (str(remy_key), {
        "tenant_id": tenant_id, "prefix": remy.split("_")[1], "reason": "membership removed"})
    sign_in(client, "owner@cred.example")
    token = csrf_token(client, f"/tenants/{tenant_id}")
    assert client.post(f"/tenants/{tenant_id}/members",
                       data={"csrf_token": token, "email": "remy@cred.example",
                             "role": "Admin"}).status_code == 200
    assert works(client, remy) == [401, 401, 401]  # nor does coming back


def test_a_creator_gone_behind_the_services_back_is_refused_on_the_next_call(
        services, db, database_url, primary_server, local_kek, client):
    tenant_id = provisioned(services, db, database_url,
                            members=[("dora", "Admin"), ("remy", "Admin")])
    dora = make_key(services, tenant_id, "dora@cred.example", SCOPES)
    remy = make_key(services, tenant_id, "remy@cred.example", SCOPES)
    with services.session_factory() as s, s.begin():
        s.execute(update(User).where(User.email == "dora@cred.example").values(is_active=False))
        s.execute(delete(Membership).where(
            Membership.user_id == user_id(services, "remy@cred.example")))
    assert works(client, dora) == [401, 401, 401]
    assert works(client, remy) == [401, 401, 401]
    client.cookies.clear()
    assert "the account that created it is deactivated" in message(
        client.get("/v1/models", headers=bearer(dora)))
    assert "no longer a member of this tenant" in message(
        client.get("/api/whoami", headers=bearer(remy)))
    with services.session_factory() as s, s.begin():
        s.execute(update(ApiKey).values(created_by=None))  # the account deleted outright
        s.execute(update(User).values(is_active=True))
    assert works(client, dora) == [401, 401, 401]
