"""Every tenant-scoped route, enumerated from the router (new routes join automatically),
answers 404 for another tenant's id, exactly like a missing id, and writes nothing."""

from __future__ import annotations

import re

from sqlalchemy import func, select
from starlette.routing import Route

from control_plane.models import Membership, PlatformAuditEvent, Tenant
from control_plane.web.app import build_app
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import csrf_token, make_user, sign_in

SAMPLES = {"reason": "r", "email": "a@example.com", "role": "Owner",
           "confirm_slug": "tenant-b", "approval_id": "", "name": "n", "provider": "openai",
           "secret": "sk-should-never-be-stored", "contact_email": "", "key_provider": "local",
           "key_ref": "k", "slug": "s", "code": "123456", "webhook_url": "",
           "retention_days": "396", "expires_in_days": "", "redaction_profile": "standard",
           "custom_detectors": "", "custom_terms": "", "custom_patterns": "",
           "tool_rules": "", "image_policy": "default",
           "requests_per_minute": "600", "tokens_per_minute": "1000", "monthly_cap_usd": "5",
           "proposed": "p", "actual": "a", "agreed": "true", "ground_truth_score": "",
           "to_phase": "off", "tools": "read_task", "task_id": "",
           "model_name": "m", "provider_model": "m", "endpoint": "", "api_version": "",
           "region": "", "credential_id": "", "timeout_seconds": "60", "fallbacks": "",
           "allowed": "true", "required": "true", "input_usd_per_mtok": "1",
           "sso_required": "false", "break_glass_email": "", "sso_provider": "",
           "output_usd_per_mtok": "1",
           "action": "a", "payload": "", "comment": "", "description": "",
           "restricted": "true", "approver_role": "Approver", "expiry_hours": "24",
           "approvals_needed": "1", "execution_url": "", "email_approvers": "true",
           # recommendations ("description" is shared with the approvals area)
           "title": "t", "team": "", "tags": "", "uniformity": "", "recurrence_period": "",
           "recurrence_occurrences": "", "handler_consistency": "", "tasks_file": "",
           "tasks_json": "[]", "panel_models": "", "architect_model": "",
           "deliberator_model": "", "min_cost_benefit": "7", "max_customer_risk": "3",
           "max_human_sensitivity": "4", "min_compliance": "7",
           # personas and minimization settings ("name", "retention_days" are shared)
           "teams": "t", "all_teams": "false", "sources": "", "all_sources": "false",
           "user_id": "1", "k_anonymity": "3",
           # MCP upstreams and tool decisions ("name" is shared)
           "url": "http://127.0.0.1:9/mcp", "credential_kind": "none", "credential": "",
           "header_name": "", "redaction": "internal", "new_tools": "denied",
           "client_id": "", "token_endpoint": "", "auth_method": "client_secret_basic",
           "private_key": "", "scope": "",
           "policy": "denied", "action_class": "", "side_effecting": "",
           # signal sources and imports ("name", "team" are shared)
           "kind": "logs", "source_id": "", "file_format": "", "signals_file": "",
           "extraction": "off",
           # key rotation ("approval_id" is shared with deletion)
           "reencrypt": "true", "scopes": "gateway",
           # backups: restore as a new tenant, replace ("approval_id" is shared)
           "backup_id": "b", "new_slug": "copy-of-b"}


def tenant_routes(app) -> list[tuple[str, str, dict[str, str]]]:
    """(method, path, a valid form for the route) for every route below a tenant id."""
    found = []
    for route in app.routes:
        if isinstance(route, Route) and "{tenant_id" in route.path:
            model = getattr(route.endpoint, "form_model", None)
            fields = {} if model is None else {
                name: SAMPLES[name] for name in model.model_fields if name != "csrf_token"}
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    found.append((method, route.path, fields))
    return found


def fill(path: str, tenant_id: int) -> str:
    path = re.sub(r"\{tenant_id(:int)?\}", str(tenant_id), path)
    return re.sub(r"\{[^}]+\}", "1", path)


def snapshot(db, tenant_id: int) -> tuple:
    with db() as s:
        tenant = s.get(Tenant, tenant_id)
        members = s.scalar(select(func.count()).select_from(Membership)
                           .where(Membership.tenant_id == tenant_id))
        events = s.scalar(select(func.count()).select_from(PlatformAuditEvent))
        return tenant.state, tenant.key_ref, members, events


def test_another_tenants_ids_answer_404_on_every_tenant_route(client, services, db,
                                                             database_url, primary_server,
                                                             local_kek):
    owner_a = make_user(db, "a@example.com")
    owner_b = make_user(db, "b@example.com")
    a = create_tenant(services, owner_a.email, "tenant-a")
    b = create_tenant(services, owner_b.email, "tenant-b")
    run_pending_jobs(services, database_url)
    missing = b + 1000
    routes = tenant_routes(build_app(services))
    assert len(routes) >= 10
    sign_in(client, owner_a.email)
    token = csrf_token(client, "/tenants")
    before = snapshot(db, b)
    for method, path, fields in routes:
        data = {"csrf_token": token, **fields}
        for target in (b, missing):
            url = fill(path, target)
            response = client.request(method, url, data=data if method == "POST" else None,
                                      headers={"X-CSRF-Token": token})
            assert response.status_code == 404, (method, path, target, response.status_code)
        # the caller's own tenant answers something other than 404 on the same route
        own = client.request(method, fill(path, a), data=data if method == "POST" else None,
                             headers={"X-CSRF-Token": token})
        if not any(f"{{{sub}" in path for sub in ("credential_id", "membership_id", "job_id",
                                                  "route_id", "provider_model", "request_id",
                                                  "class_id", "task_id", "agent_id",
                                                  "persona_id", "source_id",
                                                  "import_id", "upstream_id", "tool_id",
                                                  "grant_id")):
            assert own.status_code != 404 or path.endswith("/delete"), (method, path)
    state, key_ref, members, _ = snapshot(db, b)
    assert (state, key_ref, members) == before[:3]
    with db() as s:
        assert s.get(Tenant, b).state == "active"
