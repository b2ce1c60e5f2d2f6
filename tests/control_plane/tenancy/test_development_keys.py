"""A second development tenant is never a dead end: the form offers `local` by default and
creates its key, a key that fails its test is refused on every surface that creates a tenant,
and a tenant stuck in provisioning on its key gets another key (tested, audited) and provisions,
or is deleted."""

from __future__ import annotations

import re

from sqlalchemy import select

from control_plane.models import Job, PlatformAuditEvent, Tenant
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs, tenant_state
from tests.factories import csrf_token, make_user, post_form, sign_in


def _input_value(html: str, name: str) -> str:
    match = re.search(rf'name="{name}"[^>]*value="([^"]*)"', html)
    assert match, name
    return match.group(1)


def _events(db, event_type: str) -> list[PlatformAuditEvent]:
    with db() as s:
        return list(s.scalars(select(PlatformAuditEvent)
                              .where(PlatformAuditEvent.event_type == event_type)))


def test_the_form_offers_local_by_default_and_creates_its_key(client, db, services,
                                                               primary_server, database_url):
    owner = make_user(db)
    sign_in(client, owner.email)
    page = client.get("/tenants").text
    assert re.search(r'<option value="local"\s+selected', page)
    assert "Create a local key" in page
    made = post_form(client, "/tenants/local-key", {"slug": "beta", "name": "Beta",
                                                    "key_provider": "aws-kms", "key_ref": ""},
                     page="/tenants")
    assert made.status_code == 200
    name = _input_value(made.text, "key_ref")
    assert name.startswith("beta-") and "was created" in made.text
    assert _input_value(made.text, "slug") == "beta"  # the rest of the form is kept
    assert re.search(r'<option value="local"\s+selected', made.text)
    key_file = services.settings.home / "keys" / f"{name}.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and len(key_file.read_bytes()) == 32
    assert [e.details["key_ref"] for e in _events(db, "key.local_created")] == [name]
    created = post_form(client, "/tenants", {"slug": "beta", "name": "Beta",
                                             "key_provider": "local", "key_ref": name},
                        page="/tenants")
    assert created.status_code == 303
    assert run_pending_jobs(services, database_url)[0]["outcome"] == "succeeded"
    with db() as s:
        assert s.scalars(select(Tenant.state).where(Tenant.slug == "beta")).one() == "active"
    bad = post_form(client, "/tenants/local-key", {"slug": "x", "key_ref": "../etc"},
                    page="/tenants")
    assert bad.status_code == 422 and "file name of letters" in bad.text


def test_a_key_that_failed_its_test_is_refused_on_every_creating_surface(client, db,
                                                                        primary_server):
    owner = make_user(db)
    sign_in(client, owner.email)
    form = post_form(client, "/tenants", {"slug": "gamma", "name": "Gamma",
                                          "key_provider": "local", "key_ref": "no-such-key"},
                     page="/tenants")
    assert form.status_code == 422
    assert "The key did not pass its test (tenant key unavailable" in form.text
    assert _input_value(form.text, "slug") == "gamma"
    assert _input_value(form.text, "key_ref") == "no-such-key"
    api = client.post("/api/tenants", json={"slug": "gamma", "key_provider": "local",
                                            "key_ref": "no-such-key"},
                      headers={"X-CSRF-Token": csrf_token(client, "/tenants")})
    assert api.status_code == 422 and "did not pass its test" in api.json()["error"]
    with db() as s:
        assert s.scalars(select(Tenant)).all() == []
        assert s.scalars(select(Job)).all() == []


def test_a_tenant_stuck_on_its_key_gets_another_key_and_provisions(client, db, services,
                                                                  primary_server, database_url,
                                                                  local_kek):
    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "stuck", key_ref=local_kek)
    (services.settings.home / "keys" / f"{local_kek}.key").unlink()  # the key went away
    assert run_pending_jobs(services, database_url)[0]["outcome"] != "succeeded"
    assert tenant_state(services, tenant_id) == "provisioning"
    sign_in(client, owner.email)
    page = client.get(f"/tenants/{tenant_id}").text
    assert "Provisioning failed" in page and "Change key and retry" in page
    refused = post_form(client, f"/tenants/{tenant_id}/key",
                        {"key_provider": "local", "key_ref": "still-missing"},
                        page=f"/tenants/{tenant_id}")
    assert refused.status_code == 422 and "did not pass its test" in refused.text
    assert _input_value(refused.text, "key_ref") == "still-missing"  # kept for fixing
    with db() as s:
        assert s.get(Tenant, tenant_id).key_ref == local_kek
    made = post_form(client, "/tenants/local-key", {"key_ref": "stuck-new"}, page="/tenants")
    assert made.status_code == 200
    changed = post_form(client, f"/tenants/{tenant_id}/key",
                        {"key_provider": "local", "key_ref": "stuck-new"},
                        page=f"/tenants/{tenant_id}")
    assert changed.status_code == 303
    assert run_pending_jobs(services, database_url)[0]["outcome"] == "succeeded"
    assert tenant_state(services, tenant_id) == "active"
    (event,) = _events(db, "tenant.provisioning_key_changed")
    assert event.target_id == str(tenant_id)
    assert event.details == {"before": {"key_provider": "local", "key_ref": local_kek},
                             "after": {"key_provider": "local", "key_ref": "stuck-new"}}
    # once provisioned, the key is changed only by a rotation
    again = post_form(client, f"/tenants/{tenant_id}/key",
                      {"key_provider": "local", "key_ref": "stuck-new"},
                      page=f"/tenants/{tenant_id}")
    assert again.status_code == 409 and "key rotation" in again.text


def test_a_tenant_stuck_on_its_key_can_be_deleted(client, db, services, primary_server,
                                                  database_url, local_kek):
    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "doomed", key_ref=local_kek)
    (services.settings.home / "keys" / f"{local_kek}.key").unlink()
    run_pending_jobs(services, database_url)
    sign_in(client, owner.email)
    deleted = post_form(client, f"/tenants/{tenant_id}/delete",
                        {"confirm_slug": "doomed", "reason": "its key is gone"},
                        page=f"/tenants/{tenant_id}", follow=True)  # Post/Redirect/Get
    assert deleted.status_code == 200 and "is being deleted" in deleted.text
    run_pending_jobs(services, database_url)
    with db() as s:
        assert s.get(Tenant, tenant_id) is None
