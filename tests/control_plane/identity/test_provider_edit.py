"""An installation Owner changes an identity provider after adding it, on its page
(/sso/providers/{id}): the mapping, domains, accounts switch, MFA trust, name, client id and a
rotated client secret, each change audited without the secret and applied from the next
sign-in (through the real app and the test OpenID provider); refusals are 422 with one
sentence and the values typed; the issuer never changes."""

from __future__ import annotations

import re

from sqlalchemy import select
from starlette.testclient import TestClient

from control_plane.models import IdentityProvider, PlatformAuditEvent
from tests.control_plane.identity.test_oidc import (
    ALICE,
    _roles,
    _tenant,
    add_provider,
    events,
    sso,
)
from tests.factories import make_user, post_form, sign_in
from tests.fakes.oidc_provider import FakeOpenIDProvider


def _owner(client: TestClient) -> None:
    client.cookies.clear()
    assert sign_in(client, "root@magistrate.example").status_code == 303


def _form(client: TestClient, provider_id: int) -> dict[str, str]:
    """The edit form as the page fills it: the provider as it is, the secret empty."""
    page = client.get(f"/sso/providers/{provider_id}")
    assert page.status_code == 200, page.text
    html = page.text
    fields = dict(re.findall(r'<input name="(\w+)"[^>]*?value="([^"]*)"', html))
    fields.update(re.findall(r'<textarea name="(\w+)"[^>]*>([^<]*)</textarea>', html))
    for box in ("create_accounts", "trust_idp_mfa"):
        if re.search(rf'name="{box}" value="true" checked', html):
            fields[box] = "true"
    assert 'name="client_secret"' in html
    return {k: v.replace("&#34;", '"').replace("&amp;", "&") for k, v in fields.items()}


def _save(client: TestClient, provider_id: int, **changes: str):  # noqa: ANN202
    data = {**_form(client, provider_id), **changes}
    for box in ("create_accounts", "trust_idp_mfa"):
        if data.get(box) == "":
            del data[box]
    return post_form(client, f"/sso/providers/{provider_id}", data,
                     page=f"/sso/providers/{provider_id}")


def test_a_mapping_change_applies_at_the_next_sign_in_and_is_audited(client, db, op):
    _tenant(db, "acme")
    _tenant(db, "beta")
    provider_id = add_provider(client, db, op, groups_claim="groups",
                               group_roles="ops = acme : Operator")
    assert sso(client, op, provider_id, dict(ALICE, groups=["ops"])).status_code == 303
    assert _roles(db, "alice@corp.example") == {"acme": "Operator"}

    _owner(client)
    saved = _save(client, provider_id, group_roles="ops = acme : Admin\nops = beta : Viewer",
                  allowed_domains="corp.example", trust_idp_mfa="true", mfa_amr_values="hwk")
    assert saved.status_code == 303 and saved.headers["location"].startswith("/sso?done=")
    assert "the change applies from each person" in client.get(
        saved.headers["location"]).text
    # nothing changes for Alice until she signs in again
    assert _roles(db, "alice@corp.example") == {"acme": "Operator"}
    updated = events(db, "sso.provider_updated")
    assert len(updated) == 1 and updated[0].actor_name == "root@magistrate.example"
    changed = updated[0].details["changed"]
    assert set(changed) == {"group_roles", "allowed_domains", "trust_idp_mfa",
                            "mfa_amr_values"}
    assert changed["allowed_domains"] == {"from": [], "to": ["corp.example"]}
    assert [m["role"] for m in changed["group_roles"]["to"]] == ["Admin", "Viewer"]
    with db() as s:
        row = s.get(IdentityProvider, provider_id)
        assert row is not None and row.trust_idp_mfa and row.mfa_amr_values == ["hwk"]

    client.cookies.clear()
    assert sso(client, op, provider_id, dict(ALICE, groups=["ops"])).status_code == 303
    assert _roles(db, "alice@corp.example") == {"acme": "Admin", "beta": "Viewer"}
    assert [(e.details["from"], e.details["to"]) for e in events(db, "sso.role_changed")] == [
        ("Operator", "Admin")]
    # the domain list now applies too
    client.cookies.clear()
    other = sso(client, op, provider_id, dict(ALICE, sub="bob-2", email="bob@else.example"))
    assert other.status_code == 403

    # the form sent back as it is changes nothing and audits nothing
    _owner(client)
    again = _save(client, provider_id)
    assert again.status_code == 303 and "unchanged" in again.headers["location"]
    assert len(events(db, "sso.provider_updated")) == 1
    # the switch turned off: an unknown person is refused from now on
    assert _save(client, provider_id, create_accounts="").status_code == 303
    client.cookies.clear()
    refused = sso(client, op, provider_id,
                  dict(ALICE, sub="carol-3", email="carol@corp.example"))
    assert refused.status_code == 403 and "does not create accounts" in refused.text


def test_the_client_secret_is_rotated_sealed_never_shown_and_kept_when_left_empty(
        client, db, op):
    provider_id = add_provider(client, db, op)
    with db() as s:
        before = s.get(IdentityProvider, provider_id).client_secret_sealed  # type: ignore[union-attr]
    op.client_secret = "rotated-at-the-provider-7f3a"  # noqa: S105 - the test double's
    assert sso(client, op, provider_id).status_code == 403  # the old secret is refused

    _owner(client)
    page = client.get(f"/sso/providers/{provider_id}").text
    assert "s3cret" not in page and "empty keeps the current one" in page
    assert _save(client, provider_id, client_secret=op.client_secret).status_code == 303
    with db() as s:
        sealed = s.get(IdentityProvider, provider_id).client_secret_sealed  # type: ignore[union-attr]
    assert sealed is not None and sealed != before
    assert op.client_secret.encode() not in sealed
    assert op.client_secret not in client.get(f"/sso/providers/{provider_id}").text
    updated = events(db, "sso.provider_updated")
    assert updated[-1].details["changed"] == {"client_secret": "replaced"}
    with db() as s:
        every = " ".join(str(e.details) for e in s.scalars(select(PlatformAuditEvent)))
    assert op.client_secret not in every and "s3cret" not in every
    client.cookies.clear()
    assert sso(client, op, provider_id).status_code == 303  # the new secret is used

    # an empty field keeps the secret, and a renamed provider still opens it (sealed again
    # under the new name)
    _owner(client)
    assert _save(client, provider_id, name="corp-entra").status_code == 303
    with db() as s:
        row = s.get(IdentityProvider, provider_id)
        assert row is not None and row.name == "corp-entra"
    assert events(db, "sso.provider_updated")[-1].details["changed"] == {
        "name": {"from": "corp", "to": "corp-entra"}}
    client.cookies.clear()
    assert "Sign in with corp-entra" in client.get("/sign-in").text
    assert sso(client, op, provider_id).status_code == 303


def test_another_issuer_is_refused_and_another_address_of_the_same_one_is_taken(
        client, db, op):
    provider_id = add_provider(client, db, op)
    other = FakeOpenIDProvider().start()
    try:
        _owner(client)
        refused = _save(client, provider_id, discovery_url=other.discovery_url,
                        allowed_domains="typed.example")
        assert refused.status_code == 422
        assert f"names the issuer {other.issuer}, not {op.issuer}" in refused.text
        assert 'value="typed.example"' in refused.text  # what was typed is kept
        assert f'value="{other.discovery_url}"' in refused.text
    finally:
        other.stop()
    with db() as s:
        row = s.get(IdentityProvider, provider_id)
        assert row is not None and row.discovery_url == op.discovery_url
        assert row.allowed_domains == []
    assert events(db, "sso.provider_updated") == []
    same = op.discovery_url + "?tenant=corp"
    assert _save(client, provider_id, discovery_url=same).status_code == 303
    assert events(db, "sso.provider_updated")[-1].details["changed"]["discovery_url"] == {
        "from": op.discovery_url, "to": same}
    client.cookies.clear()
    assert sso(client, op, provider_id).status_code == 303


def test_bad_input_is_a_sentence_with_the_values_typed(client, db, op):
    provider_id = add_provider(client, db, op)
    _owner(client)
    post_form(client, "/sso/providers",
              {"name": "taken", "discovery_url": op.discovery_url, "client_id": "x"},
              page="/sso")
    cases = [({"group_roles": "ops = nowhere : Admin"}, 422, "no tenant has the slug"),
             ({"group_roles": "just words"}, 422, "of the group mapping is not"),
             ({"allowed_domains": "not a domain!"}, 422, "is not a domain name"),
             ({"name": "Bad Name"}, 422, "lowercase letters"),
             ({"name": "taken"}, 409, "already exists"),
             ({"client_id": "  "}, 422, "Enter the client id"),
             ({"discovery_url": op.issuer + "/nothing"}, 422, "404")]
    for change, status, says in cases:
        response = _save(client, provider_id, groups_claim="typed-claim", **change)
        assert response.status_code == status, (change, response.text)
        assert says in response.text, change
        assert 'value="typed-claim"' in response.text, change
        assert "Traceback" not in response.text
    assert events(db, "sso.provider_updated") == []
    with db() as s:
        assert s.get(IdentityProvider, provider_id).groups_claim is None  # type: ignore[union-attr]


def test_only_an_installation_owner_sees_or_changes_a_provider(client, db, op):
    provider_id = add_provider(client, db, op)
    make_user(db, "member@corp.example", is_owner=False)
    _owner(client)
    form = _form(client, provider_id)
    client.cookies.clear()
    assert client.get(f"/sso/providers/{provider_id}",
                      follow_redirects=False).headers["location"].startswith("/sign-in")
    sign_in(client, "member@corp.example")
    assert client.get(f"/sso/providers/{provider_id}").status_code == 403
    refused = post_form(client, f"/sso/providers/{provider_id}",
                        {**form, "name": "hijacked"}, page="/account")
    assert refused.status_code == 403
    _owner(client)
    assert client.get(f"/sso/providers/{provider_id + 99}").status_code == 404
    with db() as s:
        assert s.get(IdentityProvider, provider_id).name == "corp"  # type: ignore[union-attr]
    assert events(db, "sso.provider_updated") == []


def test_a_mapping_of_scim_groups_changed_applies_at_the_next_sign_in_too(client, db, op):
    """Without a groups claim the SCIM groups decide; a changed mapping reaches the person
    when they next sign in, not only at the provider's next group change."""
    from control_plane.models import User
    from control_plane.scim import service as scim

    _tenant(db, "acme")
    provider_id = add_provider(client, db, op, create_accounts="false",
                               group_roles="ops = acme : Viewer")
    with db() as s, s.begin():
        owner = s.scalars(select(User).where(User.email == "root@magistrate.example")).one()
        provider = s.get(IdentityProvider, provider_id)
        assert provider is not None
        _, secret = scim.do_create_token(s, provider, label="corp-scim", acting_user=owner)
    bearer = {"Authorization": f"Bearer {secret}"}
    user = client.post("/scim/v2/Users", headers=bearer, json={
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "alice@corp.example"})
    assert user.status_code == 201
    group = client.post("/scim/v2/Groups", headers=bearer, json={
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "ops",
        "members": [{"value": user.json()["id"]}]})
    assert group.status_code == 201
    assert _roles(db, "alice@corp.example") == {"acme": "Viewer"}

    _owner(client)
    assert _save(client, provider_id, group_roles="ops = acme : Approver").status_code == 303
    assert _roles(db, "alice@corp.example") == {"acme": "Viewer"}
    client.cookies.clear()
    assert sso(client, op, provider_id).status_code == 303  # ALICE: no groups claim read
    assert _roles(db, "alice@corp.example") == {"acme": "Approver"}
    changed = events(db, "sso.role_changed")
    assert [(e.details["from"], e.details["to"]) for e in changed] == [("Viewer", "Approver")]


def test_a_refused_new_provider_keeps_what_was_typed_but_the_secret(client, db, op):
    make_user(db, "root@magistrate.example")
    _owner(client)
    response = post_form(client, "/sso/providers",
                         {"name": "corp", "discovery_url": op.discovery_url,
                          "client_id": "typed-client", "client_secret": "typed-secret-9",
                          "allowed_domains": "corp.example", "create_accounts": "true",
                          "group_roles": "ops = nowhere : Admin"}, page="/sso")
    assert response.status_code == 422 and "no tenant has the slug" in response.text
    for kept in ('value="typed-client"', 'value="corp.example"', ">ops = nowhere : Admin<",
                 'name="create_accounts" value="true" checked'):
        assert kept in response.text, kept
    assert "typed-secret-9" not in response.text
