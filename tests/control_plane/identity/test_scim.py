"""SCIM 2.0 provisioning through the real app: tokens an Owner makes on the page, Users and
Groups as Entra ID and Okta send them, deprovisioning cutting sessions and keys at once, group
membership mapped to roles, ETags, and the discovery documents."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from control_plane.auth import sessions
from control_plane.mcp_oauth.models import OAuthGrant
from control_plane.models import (
    ApiKey,
    Membership,
    PlatformAuditEvent,
    ScimToken,
    Tenant,
    User,
    WebSession,
)
from control_plane.users import deprovision
from tests.factories import make_user, post_form, sign_in

SCIM = "application/scim+json"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"


def call(client: TestClient, token: str, method: str, path: str,
         body: dict[str, Any] | None = None, **headers: str):  # noqa: ANN201
    sent = {"Authorization": f"Bearer {token}", **headers}
    if body is not None:
        sent["Content-Type"] = SCIM
    return client.request(method, "/scim/v2" + path, json=body, headers=sent)


def create_user(client: TestClient, token: str, email: str, **extra: Any) -> dict[str, Any]:
    response = call(client, token, "POST", "/Users",
                    {"schemas": [USER], "userName": email, "active": True,
                     "displayName": email.split("@")[0], **extra})
    assert response.status_code == 201, response.text
    return response.json()


def events(db, event_type: str) -> list[PlatformAuditEvent]:
    with db() as s:
        return list(s.scalars(select(PlatformAuditEvent)
                              .where(PlatformAuditEvent.event_type == event_type)
                              .order_by(PlatformAuditEvent.seq)))


# ------------------------------------------------------------------------------- tokens


def test_the_token_is_shown_once_kept_hashed_and_revocable(client, db, token):
    with db() as s:
        row = s.scalars(select(ScimToken)).one()
        assert row.scopes == ["scim"] and token not in row.secret_hash
    assert call(client, token, "GET", "/Users").status_code == 200
    assert token not in TestClient(client.app).get("/sso").text
    sign_in(client, "root@magistrate.example")
    page = client.get("/sso").text
    assert token not in page and f"mgscim_{row.prefix}" in page
    post_form(client, f"/sso/scim-tokens/{row.id}/revoke", page="/sso")
    client.cookies.clear()
    refused = call(client, token, "GET", "/Users")
    assert refused.status_code == 401
    assert refused.json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert [e.details["label"] for e in events(db, "scim.token_revoked")] == [
        "entra-provisioning"]


def test_no_token_a_wrong_one_or_a_session_is_refused(client, db, token):
    assert client.get("/scim/v2/Users").status_code == 401
    assert call(client, "mgscim_0000_nope", "GET", "/Users").status_code == 401
    assert call(client, token[:-2] + "xx", "GET", "/Users").status_code == 401
    sign_in(client, "root@magistrate.example")  # an Owner's session is not a SCIM token
    assert client.get("/scim/v2/Users").status_code == 401


def test_a_token_stops_when_its_creator_is_no_longer_an_owner(client, db, token):
    with db() as s, s.begin():
        s.scalars(select(User).where(User.email == "root@magistrate.example")).one() \
            .is_owner = False
    assert call(client, token, "GET", "/Users").status_code == 401


# ------------------------------------------------------------------------------- users


def test_users_are_created_found_by_username_and_paged(client, db, token):
    created = create_user(client, token, "Ann@Corp.example", externalId="entra-1")
    # userName is kept as sent; the account's e-mail is its lowercase form
    assert created["userName"] == "Ann@Corp.example" and created["active"] is True
    assert created["emails"][0]["value"] == "ann@corp.example"
    for n in range(4):
        create_user(client, token, f"user{n}@corp.example")
    found = call(client, token, "GET", '/Users?filter=userName eq "ANN@corp.example"').json()
    assert found["totalResults"] == 1 and found["Resources"][0]["id"] == created["id"]
    by_external = call(client, token, "GET", '/Users?filter=externalId eq "entra-1"').json()
    assert by_external["totalResults"] == 1
    page = call(client, token, "GET", "/Users?startIndex=2&count=2").json()
    assert (page["totalResults"], page["startIndex"], page["itemsPerPage"]) == (5, 2, 2)
    assert call(client, token, "GET", '/Users?filter=name.familyName co "x"').json()[
        "scimType"] == "invalidFilter"
    duplicate = call(client, token, "POST", "/Users", {"schemas": [USER],
                                                       "userName": "ANN@corp.example"})
    assert duplicate.status_code == 409 and duplicate.json()["scimType"] == "uniqueness"
    assert [e.actor_name for e in events(db, "scim.user_created")] == [
        "entra-provisioning"] * 5


def test_an_existing_local_account_is_not_taken_over_by_scim(client, db, token):
    make_user(db, "local@corp.example", is_owner=False)
    response = call(client, token, "POST", "/Users", {"schemas": [USER],
                                                      "userName": "local@corp.example"})
    assert response.status_code == 409
    assert call(client, token, "GET", "/Users").json()["totalResults"] == 0


def test_etags_are_returned_and_if_match_is_checked(client, db, token):
    created = create_user(client, token, "ann@corp.example")
    got = call(client, token, "GET", f"/Users/{created['id']}")
    assert got.headers["etag"] == created["meta"]["version"]
    stale = call(client, token, "PUT", f"/Users/{created['id']}",
                 {"schemas": [USER], "userName": "ann@corp.example", "displayName": "Ann"},
                 **{"If-Match": 'W/"stale"'})
    assert stale.status_code == 412
    fresh = call(client, token, "PUT", f"/Users/{created['id']}",
                 {"schemas": [USER], "userName": "ann@corp.example", "displayName": "Ann"},
                 **{"If-Match": got.headers["etag"]})
    assert fresh.status_code == 200 and fresh.json()["displayName"] == "Ann"
    assert fresh.headers["etag"] != got.headers["etag"]


def _live_session_and_key(db, user_id: int) -> None:
    with db() as s, s.begin():
        user = s.get(User, user_id)
        assert user is not None
        sessions.start_session(s, user, host="testserver", ip="127.0.0.1", user_agent="t")
        tenant = s.scalars(select(Tenant)).one()
        s.add(ApiKey(tenant_id=tenant.id, name="k", prefix=f"k{user_id}", secret_hash="0" * 64,
                     created_by=user_id, scopes=["gateway"]))
        # an MCP client the user connected by OAuth: a standing grant like the key
        s.add(OAuthGrant(tenant_id=tenant.id, user_id=user_id, client_id="desk-client",
                         client_name="Desk agent", redirect_uri="http://127.0.0.1:8765/cb",
                         resource=f"http://testserver/mcp/{tenant.slug}", scope="mcp",
                         agent_id=1, agent_name="desk"))


def _assert_cut_off(db, user_id: int) -> None:
    with db() as s:
        user = s.get(User, user_id)
        assert user is not None and not user.is_active
        assert s.scalars(select(WebSession).where(WebSession.user_id == user_id,
                                                  WebSession.revoked_at.is_(None))).all() == []
        assert s.scalars(select(ApiKey).where(ApiKey.created_by == user_id,
                                              ApiKey.revoked_at.is_(None))).all() == []
        assert s.scalars(select(OAuthGrant).where(OAuthGrant.user_id == user_id,
                                                  OAuthGrant.revoked_at.is_(None))).all() == []


@pytest.mark.parametrize("shape", ["entra", "okta"])
def test_deactivation_by_patch_cuts_sessions_keys_and_mcp_grants_at_once(client, db, token, shape):
    user_id = int(create_user(client, token, "ann@corp.example")["id"])
    _live_session_and_key(db, user_id)
    operation = ({"op": "Replace", "path": "active", "value": "False"} if shape == "entra"
                 else {"op": "replace", "value": {"active": False}})
    response = call(client, token, "PATCH", f"/Users/{user_id}",
                    {"schemas": [PATCH], "Operations": [operation]})
    assert response.status_code == 200, response.text
    assert response.json()["active"] is False
    _assert_cut_off(db, user_id)
    deactivated = events(db, "user.deactivated")[-1]
    assert (deactivated.actor_type, deactivated.actor_name) == ("api_key", "entra-provisioning")
    assert deactivated.details == {"sessions_revoked": 1, "api_keys_revoked": 1,
                                   "mcp_grants_revoked": 1}
    # every revocation of the one hook point ran, and is in the audit event
    assert set(deactivated.details) == {name for name, _ in deprovision.REVOCATIONS}


def test_delete_deactivates_keeps_the_audit_and_answers_404_after(client, db, token):
    user_id = int(create_user(client, token, "ann@corp.example")["id"])
    _live_session_and_key(db, user_id)
    before = len(events(db, "scim.user_created"))
    assert call(client, token, "DELETE", f"/Users/{user_id}").status_code == 204
    _assert_cut_off(db, user_id)
    assert call(client, token, "GET", f"/Users/{user_id}").status_code == 404
    assert len(events(db, "scim.user_created")) == before  # nothing removed from the log
    assert len(events(db, "scim.user_deleted")) == 1


def test_a_patch_that_names_an_unknown_attribute_is_a_scim_error(client, db, token):
    user_id = create_user(client, token, "ann@corp.example")["id"]
    response = call(client, token, "PATCH", f"/Users/{user_id}",
                    {"schemas": [PATCH], "Operations": [{"op": "explode", "path": "x"}]})
    assert response.status_code == 400 and response.json()["status"] == "400"


# ------------------------------------------------------------------------------- groups


def _role(db, user_id: int) -> str | None:
    with db() as s:
        return s.scalars(select(Membership.role).where(Membership.user_id == user_id)).first()


def test_group_membership_maps_to_roles_in_entra_and_okta_shapes(client, db, token):
    ann = create_user(client, token, "ann@corp.example")["id"]
    bob = create_user(client, token, "bob@corp.example")["id"]
    group = call(client, token, "POST", "/Groups",
                 {"schemas": [GROUP], "displayName": "magistrate-operators",
                  "members": [{"value": ann}]})
    assert group.status_code == 201, group.text
    group_id = group.json()["id"]
    assert _role(db, int(ann)) == "Operator" and _role(db, int(bob)) is None
    # Okta adds with a value list
    added = call(client, token, "PATCH", f"/Groups/{group_id}",
                 {"schemas": [PATCH],
                  "Operations": [{"op": "add", "path": "members", "value": [{"value": bob}]}]})
    assert added.status_code == 200, added.text
    assert {m["value"] for m in added.json()["members"]} == {ann, bob}
    assert _role(db, int(bob)) == "Operator"
    # Entra removes with path "members" and a value list
    removed = call(client, token, "PATCH", f"/Groups/{group_id}",
                   {"schemas": [PATCH], "Operations": [
                       {"op": "Remove", "path": "members", "value": [{"value": ann}]}]})
    assert removed.status_code == 200, removed.text
    assert _role(db, int(ann)) is None and _role(db, int(bob)) == "Operator"
    # Okta removes with a filter in the path
    filtered = call(client, token, "PATCH", f"/Groups/{group_id}",
                    {"schemas": [PATCH], "Operations": [
                        {"op": "remove", "path": f'members[value eq "{bob}"]'}]})
    assert filtered.status_code == 200, filtered.text
    assert filtered.json().get("members", []) == []
    assert _role(db, int(bob)) is None
    assert len(events(db, "sso.role_granted")) == 2
    assert len(events(db, "sso.role_removed")) == 2
    found = call(client, token, "GET",
                 '/Groups?filter=displayName eq "magistrate-operators"').json()
    assert found["totalResults"] == 1


def test_deleting_a_group_takes_its_roles(client, db, token):
    ann = create_user(client, token, "ann@corp.example")["id"]
    group_id = call(client, token, "POST", "/Groups",
                    {"schemas": [GROUP], "displayName": "magistrate-operators",
                     "members": [{"value": ann}]}).json()["id"]
    assert _role(db, int(ann)) == "Operator"
    assert call(client, token, "DELETE", f"/Groups/{group_id}").status_code == 204
    assert _role(db, int(ann)) is None
    assert call(client, token, "GET", f"/Groups/{group_id}").status_code == 404


# ------------------------------------------------------------------------------- discovery


def test_discovery_documents(client, db, token):
    config = call(client, token, "GET", "/ServiceProviderConfig")
    assert config.status_code == 200 and config.headers["content-type"].startswith(SCIM)
    assert config.json()["patch"]["supported"] and config.json()["etag"]["supported"]
    types = call(client, token, "GET", "/ResourceTypes").json()
    assert {t["id"] for t in types["Resources"]} == {"User", "Group"}
    schemas = call(client, token, "GET", "/Schemas").json()
    assert USER in {s["id"] for s in schemas["Resources"]}
    assert call(client, token, "GET", f"/Schemas/{USER}").status_code == 200
    assert call(client, token, "GET", "/ResourceTypes/Nope").status_code == 404
