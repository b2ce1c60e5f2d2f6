"""Customer-held keys in use: a tenant on a KMS key (GCP's API, through the real SDK against
the protocol fake). Steady-state reads make no KMS call; revoking the key makes the tenant's
sealed data unreadable (503, "tenant key unavailable", nothing written) until access returns."""

from __future__ import annotations

import pytest
from google.auth.credentials import AnonymousCredentials
from sqlalchemy import func, select
from starlette.testclient import TestClient

from control_plane.keys.gcp import GcpKmsProvider
from control_plane.keys.local import LocalKeyProvider
from control_plane.web.app import build_app, build_services
from tenant_runtime.models import ProviderCredential
from tests.conftest import TEST_SECRET_KEY, make_settings
from tests.control_plane.tenancy.conftest import drop_tenant_leftovers
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs, tenant_state
from tests.factories import make_user, post_form, sign_in
from tests.fakes.gcp_kms import running_fake_gcp_kms


@pytest.fixture
def kms():
    with running_fake_gcp_kms() as fake:
        yield fake


@pytest.fixture
def kms_services(kms, database_url, redis_url, pg_server_url, services, tmp_path):
    """Services whose gcp-kms provider talks to the fake, with a cache TTL we control."""
    settings = make_settings(home=tmp_path / "home", dek_cache_seconds=3600)
    providers = {
        "gcp-kms": GcpKmsProvider(endpoint=kms.endpoint, credentials=AnonymousCredentials(),
                                  transport="rest"),
        "local": LocalKeyProvider(settings.home / "keys"),
    }
    svc = build_services(settings, database_url=database_url, redis_url=redis_url,
                         secret_key=TEST_SECRET_KEY, key_providers=providers)
    from control_plane.tenancy.servers import ensure_primary_server

    drop_tenant_leftovers(pg_server_url)
    with svc.session_factory() as s, s.begin():
        ensure_primary_server(s, url=pg_server_url, sealer=svc.sealer)
    yield svc
    svc.close()
    drop_tenant_leftovers(pg_server_url)


def decrypt_calls(kms) -> int:
    return sum(1 for path, _ in kms.requests if path.endswith(":decrypt"))


def test_kms_tenant_reads_from_cache_and_fails_closed_when_revoked(kms, kms_services, db,
                                                                   database_url):
    key_name = kms.create_key(key="tenant-kek")
    owner = make_user(db)
    tenant_id = create_tenant(kms_services, owner.email, "kms-co", key_provider="gcp-kms",
                              key_ref=key_name)
    assert run_pending_jobs(kms_services, database_url)[0]["outcome"] == "succeeded"
    assert tenant_state(kms_services, tenant_id) == "active"
    assert any(path.endswith(":encrypt") for path, _ in kms.requests)  # the DEK was wrapped
    with TestClient(build_app(kms_services), base_url="http://testserver") as client:
        sign_in(client, owner.email)
        page = f"/tenants/{tenant_id}/credentials"
        added = post_form(client, page, {"name": "main", "provider": "openai",
                                         "secret": "sk-kms-protected-secret",
                                         "contact_email": "ops@customer.example"}, page=page)
        assert added.status_code == 201
        first = decrypt_calls(kms)
        for _ in range(5):
            assert "ops@customer.example" in client.get(page).text
        assert decrypt_calls(kms) == first  # steady state: no KMS call

        kms.revoke_access()
        kms_services.dek_cache.clear()  # what the TTL does on its own after revocation
        refused = client.get(page)
        assert refused.status_code == 503
        assert "tenant key unavailable" in refused.text.lower()
        attempt = post_form(client, page, {"name": "second", "provider": "openai",
                                           "secret": "sk-must-not-be-written",
                                           "contact_email": ""}, page=page)
        assert attempt.status_code == 503
        banner = client.get(f"/tenants/{tenant_id}")
        assert banner.status_code == 200 and 'data-testid="key-banner"' in banner.text
        ctx_engine = kms_services.tenant_connections.engine
        with db() as s:
            from control_plane.models import Tenant

            engine = ctx_engine(s.get(Tenant, tenant_id))
        with engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(ProviderCredential)).scalar()
        assert count == 1  # nothing was written, no plaintext fallback

        kms.restore_access()
        assert "ops@customer.example" in client.get(page).text
        assert 'data-testid="key-banner"' not in client.get(f"/tenants/{tenant_id}").text
