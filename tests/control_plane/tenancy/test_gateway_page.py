"""The tenant's gateway page in the dashboard: who may see and change what, form validation
with clear sentences, and every change audited (field names, never custom terms)."""

from __future__ import annotations

import html
import json

from sqlalchemy import select

from control_plane.models import Tenant, User
from control_plane.tenancy import service
from tenant_runtime.context import Actor
from tenant_runtime.credentials.service import do_add_credential
from tenant_runtime.gateway import config
from tenant_runtime.models import AuditEvent, GatewayPrice, GatewayRoute
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import csrf_token, make_user, sign_in


def setup_tenant(services, db, database_url) -> tuple[int, dict[str, str]]:
    owner = make_user(db, "owner@example.com")
    make_user(db, "admin@example.com", is_owner=False)
    make_user(db, "viewer@example.com", is_owner=False)
    tid = create_tenant(services, owner.email, "acme")
    run_pending_jobs(services, database_url)
    with services.session_factory() as s, s.begin():
        me = s.get(User, owner.id)
        access = service.access_tenant(s, tid, user=me)
        service.do_add_member(s, access, email="admin@example.com", role="Admin", acting_user=me)
        service.do_add_member(s, access, email="viewer@example.com", role="Viewer",
                              acting_user=me)
        ctx = services.tenant_connections.context(s, s.get(Tenant, tid),
                                                  Actor("user", str(me.id), me.email, "Owner"))
    with ctx.session() as s, s.begin():
        do_add_credential(s, ctx, name="main", provider="openai", secret="sk-test-12345678",
                          contact_email=None)
    return tid, {"owner": owner.email}


def tenant_context(services, tid):
    with services.session_factory() as s:
        return services.tenant_connections.context(s, s.get(Tenant, tid), Actor("system"))


def post(client, tid, path, data):
    token = csrf_token(client, f"/tenants/{tid}/gateway")
    return client.post(f"/tenants/{tid}/gateway{path}", data={"csrf_token": token, **data})


ROUTE = {"model_name": "GPT-4o-mini", "provider": "openai", "provider_model": "gpt-4o-mini",
         "endpoint": "", "api_version": "", "region": "", "credential_id": "1",
         "timeout_seconds": "30", "fallbacks": "", "allowed": "true"}


def test_owners_and_admins_configure_the_gateway_and_each_change_is_audited(
        client, services, db, database_url, primary_server, local_kek):
    tid, _ = setup_tenant(services, db, database_url)
    sign_in(client, "admin@example.com")
    page = client.get(f"/tenants/{tid}/gateway")
    assert page.status_code == 200 and "No routes yet" in page.text
    assert "Save cap" not in page.text and "Save price" not in page.text  # the Owner's
    assert post(client, tid, "/routes", ROUTE).status_code == 200
    bad = post(client, tid, "/routes", {**ROUTE, "model_name": "second",
                                        "provider": "azure-openai"})
    assert bad.status_code == 422 and "needs its endpoint URL" in bad.text
    again = post(client, tid, "/routes", ROUTE)
    assert again.status_code == 422
    assert "already a route for 'gpt-4o-mini'" in html.unescape(again.text)
    ctx = tenant_context(services, tid)
    with ctx.session() as s:
        route = s.scalars(select(GatewayRoute)).one()
    assert (route.model_name, route.allowed) == ("gpt-4o-mini", True)
    assert post(client, tid, f"/routes/{route.id}/disallow", {}).status_code == 200
    settings = {"redaction_profile": "custom", "custom_detectors": "email, ssn",
                "custom_terms": "Project Falcon\nACME-42", "custom_patterns": r"INV-\d{6}",
                "requests_per_minute": "120", "tokens_per_minute": "50000"}
    assert post(client, tid, "/settings", settings).status_code == 200
    bad = post(client, tid, "/settings", {**settings, "custom_patterns": "(unclosed"})
    assert bad.status_code == 422
    forbidden = post(client, tid, "/cap", {"monthly_cap_usd": "5000"})
    assert forbidden.status_code == 403
    with ctx.session() as s:
        row = config.load_settings(s)
        assert (row.redaction_profile, row.custom_detectors, row.requests_per_minute) == (
            "custom", ["email", "ssn"], 120)
        assert config.custom_terms(ctx, row) == ["Project Falcon", "ACME-42"]
        assert b"Falcon" not in (row.custom_terms_sealed or b"")  # sealed at rest
        events = s.scalars(select(AuditEvent).where(
            AuditEvent.event_type.like("gateway.%")).order_by(AuditEvent.seq)).all()
    assert [e.event_type for e in events] == ["gateway.route_added", "gateway.route_changed",
                                              "gateway.settings_changed"]
    assert events[2].details["changed"] == ["redaction_profile", "custom_detectors",
                                            "custom_terms", "custom_patterns",
                                            "requests_per_minute", "tokens_per_minute"]
    assert "Falcon" not in json.dumps([e.details for e in events])
    assert events[0].actor_name == "admin@example.com"


def test_the_owner_sets_the_cap_and_prices(client, services, db, database_url, primary_server,
                                           local_kek):
    tid, _ = setup_tenant(services, db, database_url)
    sign_in(client, "owner@example.com")
    assert post(client, tid, "/cap", {"monthly_cap_usd": "$1,250.50"}).status_code == 200
    bad = post(client, tid, "/cap", {"monthly_cap_usd": "lots"})
    assert bad.status_code == 422 and "an amount in US dollars" in bad.text
    assert post(client, tid, "/prices", {"provider_model": "gpt-4o-mini",
                                         "input_usd_per_mtok": "0.2",
                                         "output_usd_per_mtok": "0.8"}).status_code == 200
    page = client.get(f"/tenants/{tid}/gateway")
    assert "$0.00</strong> of the $1,250.50 monthly cap" in page.text
    assert "<svg" in page.text and "$0.80" in page.text
    ctx = tenant_context(services, tid)
    with ctx.session() as s:
        assert config.load_settings(s).monthly_cap_micros == 1_250_500_000
        assert s.get(GatewayPrice, "gpt-4o-mini").output_micros_per_mtok == 800_000
    assert post(client, tid, "/prices/gpt-4o-mini/delete", {}).status_code == 200
    with ctx.session() as s:
        assert s.get(GatewayPrice, "gpt-4o-mini") is None
        kinds = s.scalars(select(AuditEvent.event_type)).all()
    assert {"gateway.settings_changed", "gateway.price_set", "gateway.price_removed"} <= set(
        kinds)


def test_a_viewer_cannot_open_the_gateway_page(client, services, db, database_url,
                                                primary_server, local_kek):
    tid, _ = setup_tenant(services, db, database_url)
    sign_in(client, "viewer@example.com")
    assert client.get(f"/tenants/{tid}/gateway").status_code == 403


def test_a_credential_in_use_by_a_route_cannot_be_deleted(client, services, db, database_url,
                                                          primary_server, local_kek):
    tid, _ = setup_tenant(services, db, database_url)
    sign_in(client, "owner@example.com")
    assert post(client, tid, "/routes", ROUTE).status_code == 200
    token = csrf_token(client, f"/tenants/{tid}/credentials")
    refused = client.post(f"/tenants/{tid}/credentials/1/delete", data={"csrf_token": token})
    assert refused.status_code == 422
    assert "used by the gateway route(s) gpt-4o-mini" in html.unescape(refused.text)


def test_a_refused_route_keeps_the_form_and_says_why_beside_it(client, services, db,
                                                              database_url, primary_server,
                                                              local_kek):
    import re

    tid, _ = setup_tenant(services, db, database_url)
    sign_in(client, "owner@example.com")
    local = {**ROUTE, "model_name": "llama-local", "provider": "on-prem",
             "provider_model": "llama3.2", "endpoint": "http://127.0.0.1:11434/v1",
             "credential_id": "", "timeout_seconds": "45", "fallbacks": "gpt-4o-mini"}
    for form, words in ((local, "MAGISTRATE_GATEWAY_PRIVATE_NETWORKS"),
                        ({**local, "timeout_seconds": "0"}, "from 1 to 600"),
                        ({**local, "timeout_seconds": "soon"}, "from 1 to 600")):
        refused = post(client, tid, "/routes", form)
        assert refused.status_code == 422
        page = html.unescape(refused.text)
        # the sentence sits right above the route form, not at the top of the page
        error = re.search(r'data-testid="route-error">([^<]+)<', page)
        assert error and words in error.group(1)
        assert page.index('data-testid="route-error"') > page.index('id="add-route"')
        assert 'class="error" role="alert">' not in page[:page.index('id="add-route"')]
        for name in ("model_name", "provider_model", "endpoint", "fallbacks",
                     "timeout_seconds"):
            assert re.search(rf'name="{name}"[^>]*value="{re.escape(form[name])}"', page), name
        assert re.search(rf'<option selected>{form["provider"]}</option>', page)
        assert 'action="/tenants/' in page and '/gateway/routes#add-route"' in page
    with tenant_context(services, tid).session() as s:
        assert s.scalars(select(GatewayRoute)).all() == []
