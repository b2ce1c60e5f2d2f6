"""The single sign-on tests' OpenID provider, on a loopback port the operator allows; the SCIM
tests' provider and the token an Owner makes for it on the page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from control_plane.models import IdentityProvider, Tenant
from tests.conftest import make_settings
from tests.factories import make_user, post_form, sign_in
from tests.fakes.oidc_provider import FakeOpenIDProvider


@pytest.fixture
def settings():  # noqa: ANN201 - the provider listens on 127.0.0.1: the operator allows it
    return make_settings(gateway_private_networks=("127.0.0.0/8",))


@pytest.fixture
def op() -> Iterator[FakeOpenIDProvider]:
    provider = FakeOpenIDProvider().start()
    yield provider
    provider.stop()


@pytest.fixture
def provider_id(db) -> int:
    with db() as s, s.begin():
        tenant = Tenant(slug="acme", name="Acme", state="active")
        s.add(tenant)
        s.flush()
        provider = IdentityProvider(
            name="entra", discovery_url="https://login.example/.well-known/openid-configuration",
            issuer="https://login.example", client_id="magistrate",
            group_roles=[{"group": "magistrate-operators", "tenant_id": tenant.id,
                          "role": "Operator"}])
        s.add(provider)
        s.flush()
        return provider.id


@pytest.fixture
def token(client: TestClient, db, provider_id: int) -> str:
    make_user(db, "root@magistrate.example")
    sign_in(client, "root@magistrate.example")
    response = post_form(client, "/sso/scim-tokens",
                         {"provider_id": str(provider_id), "label": "entra-provisioning"},
                         page="/sso")
    assert response.status_code == 201, response.text
    secret = response.text.split('data-testid="scim-token">')[1].split("<code>")[1]
    secret = secret.split("</code>")[0]
    client.cookies.clear()
    return secret
