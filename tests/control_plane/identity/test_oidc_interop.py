"""The whole sign-in against an OpenID provider that is not the project's: ``oidc-provider-mock``
(PyPI; Authlib's authorization server under Flask, its own discovery, key set, authorization
form, token endpoint and end-session endpoint), served on a loopback port. What the project's
own fake (tests/fakes/oidc_provider.py) cannot show, this does: that Magistrate's reading of
the protocol agrees with an implementation written by others.

(``oidc-provider-mock`` 0.4 needs Python 3.12; 0.3.4, pinned in the dev group, runs on 3.11.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import httpx2
import pytest
import werkzeug.serving
from sqlalchemy import select
from starlette.testclient import TestClient

from control_plane.models import ExternalIdentity, IdentityProvider, WebSession
from tests.control_plane.identity.test_oidc import _roles, _tenant, events, signed_in
from tests.factories import csrf_token, make_user, post_form, sign_in

# the provider's own code uses Authlib APIs that Authlib 1.x marks deprecated (authlib.jose,
# get_jwt_config): the provider's business, not a warning about ours
pytestmark = [
    pytest.mark.filterwarnings("ignore:authlib.jose module is deprecated:"
                               "authlib.deprecate.AuthlibDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:get_jwt_config.* is deprecated:DeprecationWarning"),
]


@pytest.fixture
def mock_op() -> Iterator[str]:
    """The provider's issuer, ``http://127.0.0.1:<port>``; requires a nonce."""
    import oidc_provider_mock  # here, under the module's warning filter

    server = werkzeug.serving.make_server(
        "127.0.0.1", 0, oidc_provider_mock.app(require_nonce=True), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="oidc-provider-mock")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def _person(issuer: str, sub: str, **claims: object) -> None:
    answer = httpx2.put(f"{issuer}/users/{quote(sub, safe='')}", json=claims)
    assert answer.status_code == 204, answer.text


def _sign_in_at(client: TestClient, issuer: str, provider_id: int, sub: str):  # noqa: ANN202
    """A browser following the button, picking ``sub`` on the provider's form, and coming
    back; answers our answer to the callback."""
    client.cookies.clear()
    client.get("/sign-in")
    start = client.get(f"/sign-in/sso/{provider_id}?next=/tenants", follow_redirects=False)
    assert start.status_code == 303, start.text
    authorize = start.headers["location"]
    assert authorize.startswith(issuer + "/oauth2/authorize?")
    form = httpx2.get(authorize)
    assert form.status_code == 200 and "<form" in form.text
    chosen = httpx2.post(authorize, data={"sub": sub}, follow_redirects=False)
    assert chosen.status_code == 302, chosen.text
    back = urlsplit(chosen.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == "http://testserver/sign-in/sso/callback"
    return client.get(f"{back.path}?{back.query}", follow_redirects=False)


def test_sign_in_mapping_and_sign_out_against_an_independent_provider(client, db, mock_op):
    _tenant(db, "acme")
    make_user(db, "root@magistrate.example")
    sign_in(client, "root@magistrate.example")
    added = post_form(client, "/sso/providers",
                      {"name": "mock", "discovery_url": mock_op + "/.well-known/openid-"
                       "configuration", "client_id": "magistrate", "client_secret": "any",
                       "create_accounts": "true", "groups_claim": "groups",
                       "group_roles": "ops = acme : Operator"}, page="/sso")
    assert added.status_code == 201, added.text
    with db() as s:
        provider = s.scalars(select(IdentityProvider)).one()
        provider_id = provider.id
        assert provider.issuer == mock_op  # read from its discovery document

    _person(mock_op, "dana-42", email="dana@corp.example", email_verified=True,
            name="Dana", groups=["ops"])
    done = _sign_in_at(client, mock_op, provider_id, "dana-42")
    assert done.status_code == 303 and done.headers["location"] == "/tenants", done.text
    assert signed_in(client)
    assert _roles(db, "dana@corp.example") == {"acme": "Operator"}
    with db() as s:
        identity = s.scalars(select(ExternalIdentity)).one()
        assert (identity.issuer, identity.subject) == (mock_op, "dana-42")
        session = s.scalars(select(WebSession).where(WebSession.revoked_at.is_(None),
                                                     WebSession.sso_subject.is_not(None))).one()
        assert session.sso_provider_id == provider_id and session.sso_subject == "dana-42"
    assert len(events(db, "sso.sign_in")) == 1

    # RP-initiated logout goes on to the provider's end-session endpoint
    out = client.post("/sign-out", data={"csrf_token": csrf_token(client, "/account")},
                      follow_redirects=False)
    assert out.status_code == 303
    assert out.headers["location"].startswith(mock_op + "/oauth2/end_session?")
    assert not signed_in(client)

    # a mapping changed on the provider's page applies at the next sign-in
    client.cookies.clear()
    sign_in(client, "root@magistrate.example")
    page = client.get(f"/sso/providers/{provider_id}").text
    assert 'value="mock"' in page and "ops = acme : Operator" in page
    saved = post_form(client, f"/sso/providers/{provider_id}",
                      {"name": "mock", "discovery_url": mock_op + "/.well-known/openid-"
                       "configuration", "client_id": "magistrate", "create_accounts": "true",
                       "groups_claim": "groups", "group_roles": "ops = acme : Approver"},
                      page=f"/sso/providers/{provider_id}")
    assert saved.status_code == 303, saved.text
    assert _roles(db, "dana@corp.example") == {"acme": "Operator"}
    assert _sign_in_at(client, mock_op, provider_id, "dana-42").status_code == 303
    assert _roles(db, "dana@corp.example") == {"acme": "Approver"}

    # the provider's word on the e-mail is required: unverified is refused with a page
    _person(mock_op, "erin-7", email="erin@corp.example", email_verified=False)
    refused = _sign_in_at(client, mock_op, provider_id, "erin-7")
    assert refused.status_code == 403 and not signed_in(client)
    assert events(db, "sso.sign_in_refused")[-1].details["reason"] == "email_unverified"
