"""The approvals history (requests no longer waiting: who asked, who decided, the decision,
when, the action class) with its filters, sorting, paging and CSV; the inbox shows the payload
an approver approves, escaped, and folds a long one."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest

from tenant_runtime.approvals import history, service
from tests.control_plane.approvals.helpers import make_team
from tests.factories import sign_in

ROW_RE = re.compile(r'<tr data-status="(\w+)">\s*<td>[^<]*</td>\s*<td><a href="[^"]+">([^<]+)</a>')


@pytest.fixture
def team(services, db, database_url, primary_server, local_kek):
    return make_team(services, db, database_url)


def ask(team, action, payload=None, *, now=None):
    ctx = team.ctx("operator")
    with ctx.session() as s, s.begin():
        return service.request_action(s, ctx, action, payload or {}, via="dashboard",
                                      now=now).id


def decide(team, request_id, approve, who="approver"):
    ctx = team.ctx(who)
    with ctx.session() as s, s.begin():
        service.decide(s, ctx, request_id, approve, "ok" if approve else "no")


def rows(text):
    return ROW_RE.findall(text)


def test_the_history_filters_sorts_pages_and_downloads(client, team, monkeypatch):
    team.add_class("deploy.production", description="Ship")
    team.add_class("refund.customer", description="Refund")
    approved = ask(team, "deploy.production")
    decide(team, approved, True)
    rejected = ask(team, "refund.customer")
    decide(team, rejected, False, who="approver2")
    ask(team, "deploy.production", now=datetime.now(UTC) - timedelta(days=3))  # expired
    ask(team, "deploy.production")  # still waiting: not in the history
    sign_in(client, "viewer@example.com")  # every role that sees approvals sees the history
    url = f"/tenants/{team.tenant_id}/approvals/history"
    page = client.get(url)
    assert page.status_code == 200
    assert sorted(rows(page.text)) == [("approved", "deploy.production"),
                                       ("expired", "deploy.production"),
                                       ("rejected", "refund.customer")]
    assert "approver@example.com (approved)" in page.text
    assert "approver2@example.com (rejected)" in page.text
    assert rows(client.get(url, params={"status": "rejected"}).text) == [
        ("rejected", "refund.customer")]
    assert [a for _, a in rows(client.get(url, params={"action": "deploy.production"}).text)
            ] == ["deploy.production", "deploy.production"]
    by_action = rows(client.get(url, params={"sort": "action"}).text)
    assert [a for _, a in by_action] == sorted(a for _, a in by_action)
    oldest = rows(client.get(url, params={"sort": "oldest"}).text)
    assert oldest[0] == ("expired", "deploy.production")  # its expiry is its "when"
    partial = client.get(url, params={"status": "approved"}, headers={"HX-Request": "true"})
    assert partial.text.lstrip().startswith('{') or 'id="history-panel"' in partial.text
    assert "<html" not in partial.text

    for bad, sentence in (({"status": "maybe"}, "The status filter must be one of approved"),
                          ({"sort": "x"}, "The sort must be one of newest, oldest, action"),
                          ({"page": "0"}, "The page must be a number from 1 to 200")):
        refused = client.get(url, params=bad)
        assert refused.status_code == 422 and sentence in refused.text

    download = client.get(f"{url}.csv", params={"status": "approved"})
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert "attachment" in download.headers["content-disposition"]
    table = list(csv.reader(io.StringIO(download.text)))
    assert table[0] == list(history.CSV_HEADER)
    assert [(r[1], r[4], r[6]) for r in table[1:]] == [
        ("deploy.production", "approved", "approver@example.com (approved)")]

    monkeypatch.setattr(history, "PAGE_SIZE", 2)
    first = client.get(url)
    assert len(rows(first.text)) == 2 and 'data-testid="next-page"' in first.text
    second = client.get(url, params={"page": "2"})
    assert len(rows(second.text)) == 1 and 'data-testid="next-page"' not in second.text
    assert 'rel="prev"' in second.text


def test_the_inbox_shows_the_payload_escaped_and_folds_a_long_one(client, team):
    team.add_class("deploy.production", description="Ship")
    ask(team, "deploy.production", {"service": "<b>api</b>", "ids": list(range(40))})
    ask(team, "deploy.production", {"service_id": 7})
    sign_in(client, "approver@example.com")
    inbox = client.get(f"/tenants/{team.tenant_id}/approvals").text
    cells = re.findall(r'data-testid="inbox-payload">(.*?)</td>', inbox, re.S)
    assert len(cells) == 2
    long, short = cells
    assert "<b>" not in long and "\\u003cb\\u003eapi" in long  # escaped, never markup
    assert long.startswith('<details class="payload"><summary>') and "<pre>" in long
    assert short == '<code>{"service_id": 7}</code>'
    # a member who may not decide sees no inbox rows, so no payload there
    sign_in(client, "viewer@example.com")
    viewer = client.get(f"/tenants/{team.tenant_id}/approvals").text
    assert 'data-testid="inbox-payload"' not in viewer
