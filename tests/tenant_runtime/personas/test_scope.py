"""Persona scoping, end to end: a scoped Operator or Viewer who crafts requests for what is out
of their persona (``?team=`` of another team, task ids of another team, source ids of another
source) gets nothing: not in lists, 404 for ids, exactly like something that does not exist.
The filtering is on the server, in the queries, whatever the request asks for."""

from __future__ import annotations

import html

from sqlalchemy import func, select

from tenant_runtime.recommendations.models import RecommendationRun
from tenant_runtime.signals.models import SignalImport
from tests.factories import csrf_token, sign_in

PAY_TASK, HR_TASK = "Refund duplicate card charges", "Export the monthly payroll file"
PAY_OBS, HR_SOURCE_OBS, HR_TEAM_OBS = ("payments refunds a duplicate charge in 40 min",
                                       "seen in the HR tracker about payments",
                                       "people-ops exports payroll by hand")
PAY_TEMPLATE, HR_TEMPLATE = "refund duplicate charge <n>", "export payroll for <month>"


def build(env) -> dict[str, int]:
    """Two teams, two sources; the persona "Payments" sees team payments through jira-pay."""
    env.source("jira-pay")
    env.source("jira-hr")
    ids = {"pay_task": env.task(title=PAY_TASK, team="payments"),
           "hr_task": env.task(title=HR_TASK, team="people-ops")}
    env.observation(team="payments", source="jira-pay", summary=PAY_OBS,
                    task_id=ids["pay_task"])
    env.observation(team="payments", source="jira-hr", summary=HR_SOURCE_OBS,
                    task_id=ids["pay_task"])
    env.observation(team="people-ops", source="jira-pay", summary=HR_TEAM_OBS,
                    task_id=ids["hr_task"])
    for i in range(3):
        env.signal(team="payments", person=f"pay{i}", source="jira-pay",
                   template=PAY_TEMPLATE, cluster_key="pay")
        env.signal(team="payments", person=f"pay-hr{i}", source="jira-hr",
                   template=PAY_TEMPLATE, cluster_key="pay")
    for i in range(4):
        env.signal(team="people-ops", person=f"hr{i}", source="jira-hr",
                   template=HR_TEMPLATE, cluster_key="hr")
        env.signal(team="people-ops", person=f"hr{i}", source="jira-pay",
                   template=HR_TEMPLATE, cluster_key="hr")
    ids["pay_import"] = env.signal_import("jira-pay")
    ids["hr_import"] = env.signal_import("jira-hr")
    env.persona("Payments", ["payments"], [env.sources["jira-pay"]],
                holders=("op@example.com", "viewer@example.com"))
    env.persona("Unused", ["people-ops"], ["*"])
    return ids


def text_of(response) -> str:
    return html.unescape(response.text)


def team_rows(page: str) -> set[str]:
    import re

    return set(re.findall(r'data-team="([^"]*)"', page))


def test_a_scoped_operator_gets_nothing_outside_their_persona(client, tenancy_env):
    env = tenancy_env
    ids = build(env)
    t = f"/tenants/{env.tenant_id}"
    sign_in(client, "op@example.com")

    # the task list, whatever the query string says
    for query in ("", "?team=people-ops", f"?source={env.sources['jira-hr']}"):
        listing = client.get(f"{t}/tasks{query}")
        assert listing.status_code == 200
        assert PAY_TASK in text_of(listing) and HR_TASK not in text_of(listing), query

    # another team's task id answers exactly like a missing one
    hidden = client.get(f"{t}/tasks/{ids['hr_task']}")
    missing = client.get(f"{t}/tasks/999999")
    assert hidden.status_code == missing.status_code == 404
    assert HR_TASK not in text_of(hidden)
    assert "There is no such task." in text_of(hidden) and "There is no such task." in \
        text_of(missing)
    token = csrf_token(client, f"{t}/tasks")
    ran = client.post(f"{t}/tasks/{ids['hr_task']}/run", data={"csrf_token": token})
    assert ran.status_code == 404
    with env.ctx.session() as s:
        assert s.scalar(select(func.count()).select_from(RecommendationRun)) == 0

    # the task in scope shows only the observations of the persona's sources
    own = text_of(client.get(f"{t}/tasks/{ids['pay_task']}"))
    assert PAY_TASK in own and PAY_OBS in own
    assert HR_SOURCE_OBS not in own and HR_TEAM_OBS not in own

    # team aggregates: only the persona's team, counted over the persona's source
    teams = text_of(client.get(f"{t}/teams"))
    assert team_rows(teams) == {"payments"}
    assert 'data-people>3<' in teams.replace(" ", "")  # not the 3 seen by jira-hr as well
    assert team_rows(text_of(client.get(f"{t}/teams?team=people-ops"))) == set()
    assert client.get(f"{t}/teams?source={env.sources['jira-hr']}").status_code == 404

    # the signals page: sources and imports of the persona's sources only
    signals = text_of(client.get(f"{t}/signals"))
    assert "jira-pay" in signals and "jira-hr" not in signals
    assert client.get(f"{t}/signals/imports/{ids['pay_import']}").status_code == 200
    assert client.get(f"{t}/signals/imports/{ids['hr_import']}").status_code == 404
    token = csrf_token(client, f"{t}/signals")
    upload = client.post(f"{t}/signals/imports",
                         data={"csrf_token": token, "source_id": str(env.sources["jira-hr"]),
                               "file_format": "json"},
                         files={"signals_file": ("issues.json", b"[]", "application/json")})
    assert upload.status_code == 404
    with env.ctx.session() as s:
        assert s.scalar(select(func.count()).select_from(SignalImport).where(
            SignalImport.source_id == env.sources["jira-hr"])) == 1  # the fixture's only

    # clusters and observations by team
    clusters = text_of(client.get(f"{t}/signals/clusters"))
    assert PAY_TEMPLATE in clusters and HR_TEMPLATE not in clusters
    for crafted in ("?team=people-ops", "?team=people-ops&team=payments"):
        page = client.get(f"{t}/signals/clusters{crafted}")
        assert page.status_code == 200
        assert HR_TEMPLATE not in text_of(page) and HR_TEAM_OBS not in text_of(page), crafted


def test_a_scoped_viewer_sees_only_their_teams_aggregates(client, tenancy_env):
    env = tenancy_env
    build(env)
    t = f"/tenants/{env.tenant_id}"
    sign_in(client, "viewer@example.com")
    assert team_rows(text_of(client.get(f"{t}/teams"))) == {"payments"}
    for crafted in ("?team=people-ops", "?team=people-ops&period=7d"):
        assert team_rows(text_of(client.get(f"{t}/teams{crafted}"))) == set(), crafted
    out = client.get(f"{t}/teams?source={env.sources['jira-hr']}")
    assert out.status_code == 404 and "people-ops" not in out.text


def test_a_member_without_a_persona_sees_nothing_and_unscoped_roles_see_everything(
        client, tenancy_env):
    env = tenancy_env
    ids = build(env)
    t = f"/tenants/{env.tenant_id}"
    sign_in(client, "compliance@example.com")  # may view tasks, holds no persona
    listing = text_of(client.get(f"{t}/tasks"))
    assert PAY_TASK not in listing and HR_TASK not in listing
    assert client.get(f"{t}/tasks/{ids['pay_task']}").status_code == 404
    assert team_rows(text_of(client.get(f"{t}/teams"))) == set()

    for email in ("owner@example.com", "admin@example.com"):
        sign_in(client, email)
        listing = text_of(client.get(f"{t}/tasks"))
        assert PAY_TASK in listing and HR_TASK in listing, email
        assert team_rows(text_of(client.get(f"{t}/teams"))) == {"payments", "people-ops"}
        assert client.get(f"{t}/tasks/{ids['hr_task']}").status_code == 200
        clusters = text_of(client.get(f"{t}/signals/clusters?team=people-ops"))
        assert HR_TEMPLATE in clusters and HR_TEAM_OBS in clusters, email
