"""The tenancy story from end to end, as an Owner lives it: two tenants on two database servers
with different key providers, both active; one tenant's key rotated; one exported; the other's
key access revoked (a clear failure) and restored; a tenant deleted."""

from __future__ import annotations

import io
import json
import re
import zipfile

import psycopg
import pytest
from google.auth.credentials import AnonymousCredentials
from starlette.testclient import TestClient

from control_plane.keys.gcp import GcpKmsProvider
from control_plane.keys.local import LocalKeyProvider
from control_plane.models import Tenant
from control_plane.tenancy import rotation
from control_plane.tenancy.servers import do_add_db_server, ensure_primary_server
from control_plane.web.app import build_app, build_services
from tenant_runtime.context import Actor
from tests.conftest import TEST_SECRET_KEY, make_settings
from tests.control_plane.tenancy.conftest import drop_tenant_leftovers
from tests.control_plane.tenancy.helpers import run_pending_jobs, tenant_state
from tests.factories import make_user, post_form, sign_in
from tests.fakes.gcp_kms import running_fake_gcp_kms


@pytest.fixture
def story(database_url, redis_url, pg_server_url, second_server, services, tmp_path):
    with running_fake_gcp_kms() as kms:
        settings = make_settings(home=tmp_path / "home")
        local = LocalKeyProvider(settings.home / "keys")
        local.create_key("north-v1")
        local.create_key("north-v2")
        providers = {"local": local,
                     "gcp-kms": GcpKmsProvider(endpoint=kms.endpoint,
                                               credentials=AnonymousCredentials(),
                                               transport="rest")}
        svc = build_services(settings, database_url=database_url, redis_url=redis_url,
                             secret_key=TEST_SECRET_KEY, key_providers=providers)
        for url in (pg_server_url, second_server):
            drop_tenant_leftovers(url)
        with svc.session_factory() as s, s.begin():
            ensure_primary_server(s, url=pg_server_url, sealer=svc.sealer)
            do_add_db_server(s, name="second", url=second_server, sealer=svc.sealer,
                             actor=Actor("system"))
        yield svc, kms, local
        svc.close()
        for url in (pg_server_url, second_server):
            drop_tenant_leftovers(url)


def create(client, slug: str, provider: str, key_ref: str) -> int:
    response = post_form(client, "/tenants", {"slug": slug, "name": slug.title(),
                                              "key_provider": provider, "key_ref": key_ref},
                         page="/tenants")
    assert response.status_code == 303, response.text
    return int(response.headers["location"].rsplit("/", 1)[1])


def add_credential(client, tenant_id: int, name: str, secret: str, email: str) -> None:
    page = f"/tenants/{tenant_id}/credentials"
    response = post_form(client, page, {"name": name, "provider": "openai", "secret": secret,
                                        "contact_email": email}, page=page)
    assert response.status_code == 201, response.text


def test_the_owner_story(story, db, database_url, second_server):
    svc, kms, local = story
    owner = make_user(db)
    with TestClient(build_app(svc), base_url="http://testserver") as client:
        sign_in(client, owner.email)
        north = create(client, "north", "local", "north-v1")
        south = create(client, "south", "gcp-kms", kms.create_key(key="south-kek"))
        assert [r["outcome"] for r in run_pending_jobs(svc, database_url)] == ["succeeded"] * 2
        listing = client.get("/tenants").text
        assert listing.count("state-active") == 2
        with db() as s:
            servers = {s.get(Tenant, north).db_server.name, s.get(Tenant, south).db_server.name}
        assert servers == {"primary", "second"}
        add_credential(client, north, "north-key", "sk-north-secret-1111", "n@north.example")
        add_credential(client, south, "south-key", "sk-south-secret-2222", "s@south.example")

        # rotate north onto a new key; the old key file can then go
        with db() as s, s.begin():
            report = rotation.rewrap(s, s.get(Tenant, north), svc.key_providers,
                                     new_key_ref="north-v2")
        assert report is not None
        svc.dek_cache.clear()
        local.path("north-v1").unlink()
        assert "n@north.example" in client.get(f"/tenants/{north}/credentials").text

        # export north; the zip carries the decrypted contact, never the secret
        post_form(client, f"/tenants/{north}/exports", page=f"/tenants/{north}")
        run_pending_jobs(svc, database_url)
        listing = client.get(f"/tenants/{north}/exports", headers={"HX-Request": "true"}).text
        status_url = re.search(rf'href="(/tenants/{north}/exports/\d+)"', listing).group(1)
        link = re.search(r'href="(/tenants/\d+/exports/\d+/download\?token=[^"]+)"',
                         client.get(status_url).text).group(1)
        download = client.get(link.replace("&amp;", "&"))
        assert download.status_code == 200
        assert b"sk-north-secret-1111" not in download.content
        with zipfile.ZipFile(io.BytesIO(download.content)) as zf:
            (row,) = [json.loads(x) for x in zf.read("provider_credentials.jsonl").splitlines()]
        assert row["contact_email_sealed"] == "n@north.example"

        # the customer of south revokes our access to its key: a clear failure, then recovery
        kms.revoke_access()
        svc.dek_cache.clear()
        refused = client.get(f"/tenants/{south}/credentials")
        assert refused.status_code == 503 and "tenant key unavailable" in refused.text.lower()
        assert 'data-testid="key-banner"' in client.get(f"/tenants/{south}").text
        assert "n@north.example" in client.get(f"/tenants/{north}/credentials").text
        kms.restore_access()
        assert "s@south.example" in client.get(f"/tenants/{south}/credentials").text

        # delete south: its database on the second server is gone
        deleted = post_form(client, f"/tenants/{south}/delete",
                            {"confirm_slug": "south", "reason": "end of contract"},
                            page=f"/tenants/{south}", follow=True)  # Post/Redirect/Get
        assert deleted.status_code == 200
        run_pending_jobs(svc, database_url)
        assert client.get(f"/tenants/{south}").status_code == 404
        assert tenant_state(svc, north) == "active"
    with psycopg.connect(second_server) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (f"magistrate_t_{south}",)).fetchone()[0] == 0
