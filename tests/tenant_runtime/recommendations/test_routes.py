"""The dashboard: the task list (create, import), a task's page with "Run the panel", and the
panel settings; roles, CSRF, 404 for other tenants' ids, and every change audited."""

from __future__ import annotations

import html
import json
import re

from sqlalchemy import func, select

from control_plane.models import Job, Tenant, User
from control_plane.tenancy import service as tenancy
from tenant_runtime.context import Actor
from tenant_runtime.recommendations import jobs, service
from tenant_runtime.recommendations.models import (
    RecommendationRun,
    RecommendationSettings,
    Task,
)
from tenant_runtime.recommendations.schemas import TaskInput
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import csrf_token, make_user, sign_in
from tests.tenant_runtime.recommendations.conftest import PANEL

TASK = {"title": "Refund small orders", "description": "Refund orders under $20 on request.",
        "team": "Billing", "tags": "refunds, tier-1", "recurrence_occurrences": "50",
        "recurrence_period": "week", "uniformity": "0.9", "handler_consistency": "0.8"}


def add_member(env, email: str, role: str) -> None:
    with env.services.session_factory() as s, s.begin():
        owner = s.get(User, env.owner_id)
        access = tenancy.access_tenant(s, env.tenant_id, user=owner)
        tenancy.do_add_member(s, access, email=email, role=role, acting_user=owner)


def post(client, path: str, data: dict | None = None, **kwargs):
    token = csrf_token(client, "/tenants")
    return client.post(path, data={"csrf_token": token, **(data or {})}, **kwargs)


def tasks(env) -> list[Task]:
    with env.ctx.session() as s:
        return list(s.scalars(select(Task).order_by(Task.id)))


def test_an_operator_creates_a_task_runs_the_panel_and_sees_the_verdict(client, env, db):
    make_user(db, "op@example.com", is_owner=False)
    add_member(env, "op@example.com", "Operator")
    sign_in(client, "op@example.com")
    base = f"/tenants/{env.tenant_id}/tasks"
    assert client.get(base).status_code == 200

    created = post(client, base, TASK, follow_redirects=False)
    assert created.status_code == 303
    page = client.get(created.headers["location"])
    assert "Refund orders under $20 on request." in html.unescape(page.text)
    assert "has not judged this task yet" in page.text
    [task] = tasks(env)
    assert task.signals == {"recurrence": {"occurrences": 50, "period": "week"},
                            "uniformity": 0.9, "handler_consistency": 0.8}
    assert task.tags == ["refunds", "tier-1"] and b"Refund" not in task.description_sealed

    # "Run the panel": CSRF first
    assert client.post(f"{base}/{task.id}/run").status_code == 403
    ran = post(client, f"{base}/{task.id}/run", follow_redirects=False)
    assert ran.status_code == 303
    with env.services.session_factory() as s:
        job = s.scalars(select(Job).where(Job.kind == jobs.RUN)).one()
    assert job.tenant_id == env.tenant_id and job.payload["tenant_id"] == env.tenant_id
    running = client.get(f"{base}/{task.id}", headers={"HX-Request": "true"})
    assert 'hx-trigger="every 2s"' in running.text and "The panel is at work" in running.text
    assert post(client, f"{base}/{task.id}/run").status_code == 409  # one run at a time

    env.drain()
    page = client.get(f"{base}/{task.id}").text
    assert 'data-verdict="do_now"' in page
    for model in PANEL:
        assert f'data-model="{model}" data-vote="valid"' in page
    assert "The panel mostly agrees." in page  # the deliberator's synthesis
    assert "All 3 valid votes put cost/benefit at 8." in page
    assert "formed (3 of 3 valid votes" in page
    listing = client.get(base).text
    assert 'data-verdict="do_now"' in listing

    by = [(e.event_type, e.actor_name) for e in env.events()]
    assert ("recommendation.task_created", "op@example.com") in by
    assert ("recommendation.run_started", "op@example.com") in by
    assert ("recommendation.verdict", "recommendation gate") in by


def test_viewers_cannot_see_or_run_and_bad_input_writes_nothing(client, env, db):
    make_user(db, "viewer@example.com", is_owner=False)
    add_member(env, "viewer@example.com", "Viewer")
    make_user(db, "comp@example.com", is_owner=False)
    add_member(env, "comp@example.com", "Compliance")
    task_id = env.task()
    sign_in(client, "viewer@example.com")
    base = f"/tenants/{env.tenant_id}/tasks"
    assert client.get(base).status_code == 403
    assert post(client, f"{base}/{task_id}/run").status_code == 403
    client.cookies.clear()
    sign_in(client, "comp@example.com")
    assert client.get(f"{base}/{task_id}").status_code == 200  # Compliance reads
    assert post(client, base, TASK).status_code == 403
    assert post(client, f"{base}/{task_id}/run").status_code == 403
    client.cookies.clear()
    sign_in(client, "owner@example.com")
    before = len(env.events())
    for bad, sentence in (({**TASK, "uniformity": "1.5"}, "uniformity"),
                          ({**TASK, "title": "  "}, "title"),
                          ({**TASK, "recurrence_period": "fortnight"}, "period"),
                          ({**TASK, "recurrence_occurrences": "many"}, "whole number"),
                          ({**TASK, "tags": "ok, <script>"}, "tags")):
        response = post(client, base, bad)
        assert response.status_code == 422, bad
        assert sentence in response.text
    assert len(tasks(env)) == 1 and len(env.events()) == before


def test_import_reports_every_rejected_item_and_writes_nothing(client, env):
    sign_in(client, "owner@example.com")
    url = f"/tenants/{env.tenant_id}/tasks/import"
    before = env.events()  # the fixture's panel settings
    good = {"title": "Triage tickets", "description": "Sort incoming tickets.",
            "tags": ["support"], "signals": {"uniformity": 0.8}}
    document = {"tasks": [good,
                          {"title": "No description"},
                          {**good, "signals": {"uniformity": 2}},
                          {**good, "owner": "someone"},
                          "not an object",
                          {**good, "signals": {"recurrence": {"occurrences": 1.5,
                                                              "period": "week"}}}]}
    response = post(client, url, {"tasks_json": json.dumps(document)})
    assert response.status_code == 422
    text = html.unescape(response.text)
    assert "5 of 6 items were rejected; nothing was written" in text
    for number, why in ((2, "the field 'description' is required"),
                        (3, "the field 'signals.uniformity' is not valid"),
                        (4, "unknown field 'owner'"), (5, "the item is not a JSON object"),
                        (6, "the field 'signals.recurrence.occurrences' is not valid")):
        assert f"<td>{number}</td><td>{why}" in text, (number, why)
    assert tasks(env) == [] and len(env.events()) == len(before)

    assert post(client, url, {"tasks_json": "{not json"}).status_code == 422
    assert post(client, url, {"tasks_json": "{}"}).status_code == 422
    assert tasks(env) == []

    # a file upload, all valid
    token = csrf_token(client, "/tenants")
    upload = json.dumps([good, {**good, "title": "Second"}]).encode()
    response = client.post(url, data={"csrf_token": token},
                           files={"tasks_file": ("tasks.json", upload, "application/json")})
    assert response.status_code == 201 and "Imported 2 tasks." in response.text
    assert [t.title for t in tasks(env)] == ["Triage tickets", "Second"]
    assert {t.source for t in tasks(env)} == {"import"}
    types = [e.event_type for e in env.events()[len(before):]]
    assert types == ["recommendation.task_created"] * 2 + ["recommendation.tasks_imported"]
    assert env.events()[-1].details["imported"] == 2


def test_another_tenants_task_ids_answer_404(client, env, services, database_url, db):
    owner_b = make_user(db, "b@example.com")
    tenant_b = create_tenant(services, owner_b.email, "bravo")
    run_pending_jobs(services, database_url)
    with services.session_factory() as s:
        ctx_b = services.tenant_connections.context(
            s, s.get(Tenant, tenant_b), Actor("user", str(owner_b.id), owner_b.email, "Owner"))
    with ctx_b.session() as s, s.begin():
        for n in range(3):
            service.do_create_task(s, ctx_b, TaskInput(title=f"B{n}", description="b"))
    own = env.task()  # tenant A has task 1 only
    sign_in(client, "owner@example.com")
    a = f"/tenants/{env.tenant_id}/tasks"
    assert client.get(f"{a}/{own}").status_code == 200
    for path in (f"{a}/2", f"{a}/3", f"/tenants/{tenant_b}/tasks/1",
                 f"/tenants/{tenant_b}/tasks"):
        assert client.get(path).status_code == 404, path
    for path in (f"{a}/3/run", f"/tenants/{tenant_b}/tasks/1/run"):
        assert post(client, path).status_code == 404, path
    with ctx_b.session() as s:
        assert s.scalar(select(func.count()).select_from(RecommendationRun)) == 0


def test_panel_settings_are_the_owners_and_admins_and_audited(client, env, db):
    make_user(db, "op@example.com", is_owner=False)
    add_member(env, "op@example.com", "Operator")
    url = f"/tenants/{env.tenant_id}/tasks/settings"
    form = {"panel_models": "panel-a, panel-b", "architect_model": "chair",
            "deliberator_model": "", "min_cost_benefit": "8", "max_customer_risk": "2",
            "max_human_sensitivity": "4", "min_compliance": "7"}
    sign_in(client, "op@example.com")
    assert client.get(url).status_code == 403
    assert post(client, url, form).status_code == 403
    client.cookies.clear()
    sign_in(client, "owner@example.com")
    page = client.get(url)
    assert page.status_code == 200 and "panel-a, panel-b, panel-c" in page.text
    refused = post(client, url, {**form, "panel_models": "panel-a, gpt-9"})
    assert refused.status_code == 422 and "&#39;gpt-9&#39; is not a model" in refused.text
    assert post(client, url, {**form, "min_compliance": "11"}).status_code == 422
    saved = post(client, url, form)
    assert saved.status_code == 200 and "Panel settings saved." in saved.text
    with env.ctx.session() as s:
        row = s.get(RecommendationSettings, 1)
        assert row.panel_models == ["panel-a", "panel-b"] and row.min_cost_benefit == 8
        assert row.deliberator_model is None
    event = env.events()[-1]
    assert event.event_type == "recommendation.settings_changed"
    assert event.actor_name == "owner@example.com"
    assert set(event.details["changed"]) == {"panel_models", "deliberator_model",
                                             "min_cost_benefit", "max_customer_risk"}
    assert post(client, url, form).text.count("Nothing changed.") == 1
    assert len([e for e in env.events()
                if e.event_type == "recommendation.settings_changed"]) == 2  # fixture's + ours


def test_the_task_list_pages_by_fifty_newest_first(client, env):
    with env.ctx.session() as s, s.begin():
        ids = [service.do_create_task(s, env.ctx, TaskInput.model_validate({
            "title": f"Task number {n}", "description": "A recurring piece of work.",
            "team": "Support", "tags": [], "signals": {}})).id for n in range(53)]
    sign_in(client, "owner@example.com")
    base = f"/tenants/{env.tenant_id}/tasks"
    first = client.get(base)
    assert first.status_code == 200
    shown = [int(i) for i in re.findall(rf'href="{base}/(\d+)"', first.text)]
    assert shown == sorted(ids, reverse=True)[:50]
    older = html.unescape(
        re.search(r'href="([^"]+)" data-testid="older-tasks"', first.text)[1])
    assert older == f"{base}?before_id={shown[-1]}"
    second = client.get(older)
    rest = [int(i) for i in re.findall(rf'href="{base}/(\d+)"', second.text)]
    assert rest == sorted(ids, reverse=True)[50:]
    assert 'data-testid="older-tasks"' not in second.text and "Newest tasks" in second.text
    for bad in ("x", "-1", "9" * 30, "１２"):
        response = client.get(base, params={"before_id": bad})
        assert response.status_code == 422 and "before_id" in response.text
