"""Team aggregates are k-anonymous: groups of 1 and 2 people are suppressed and 3 shown; a
configured k of 5 suppresses 4; a filter that would set 1 to k-1 people apart from a broader
view is suppressed (the differencing attack); the total never reveals a suppressed team; the
page follows the caller's persona (tests/tenant_runtime/personas/test_scope.py crafts more)."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta

import pytest

from tenant_runtime.minimization.aggregates import (
    DIFFERENCE,
    SMALL_GROUP,
    AggregateQuery,
    SignalFact,
    team_aggregates,
)
from tests.factories import sign_in
from tests.tenant_runtime.personas.conftest import tenancy_env  # noqa: F401

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
A, B = 1, 2  # source ids


def facts(team: str, people: list[str], *, source: int = A, days_ago: int = 1,
          resolve_minutes: list[float | None] | None = None) -> list[SignalFact]:
    minutes = resolve_minutes or [60.0] * len(people)
    occurred = NOW - timedelta(days=days_ago)
    return [SignalFact(team, person, source, occurred,
                       None if m is None else occurred + timedelta(minutes=m))
            for person, m in zip(people, minutes, strict=True)]


def people(n: int, prefix: str = "p") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def report(rows: list[SignalFact], query: AggregateQuery | None = None, *, k: int = 3):
    return team_aggregates(rows, query or AggregateQuery(), k=k, now=NOW)


def row(rep, team: str):
    [found] = [r for r in rep.rows if r.team == team]
    return found


# -- group sizes ---------------------------------------------------------------------------


def test_groups_of_one_and_two_people_are_suppressed_and_three_shown():
    rows = (facts("solo", ["ann"]) + facts("duo", ["ann", "bob", "bob"])
            + facts("trio", ["ann", "bob", "cy", "cy"], resolve_minutes=[30, 60, 90, None]))
    rep = report(rows)
    for team in ("solo", "duo"):
        suppressed = row(rep, team)
        assert suppressed.suppressed and suppressed.reason == SMALL_GROUP
        assert (suppressed.signals, suppressed.people, suppressed.median_resolve_seconds,
                suppressed.share_resolved) == (None, None, None, None)
    trio = row(rep, "trio")
    assert not trio.suppressed
    assert (trio.signals, trio.people) == (4, 3)
    assert trio.median_resolve_seconds == 60 * 60  # of 30, 60 and 90 minutes
    assert trio.share_resolved == 0.75


def test_a_configured_k_of_5_suppresses_a_group_of_4():
    rows = facts("four", people(4)) + facts("five", people(5))
    rep = report(rows, k=5)
    assert row(rep, "four").suppressed and row(rep, "four").reason == SMALL_GROUP
    assert not row(rep, "five").suppressed and row(rep, "five").people == 5
    assert not row(report(rows), "four").suppressed  # the same group under k = 3
    with pytest.raises(ValueError, match="at least 3"):
        report(rows, k=2)


def test_signals_that_name_no_one_are_not_a_group_of_people():
    rep = report(facts("alarms", [None, None, None, None]))  # type: ignore[list-item]
    assert row(rep, "alarms").suppressed and rep.total is None


# -- the differencing attack ---------------------------------------------------------------


def team_of(size: int, covered_by_a: int) -> list[SignalFact]:
    """A team of ``size`` people; source A saw the first ``covered_by_a``, B saw the others."""
    members = people(size)
    return (facts("ops", members[:covered_by_a], source=A)
            + facts("ops", members[covered_by_a:], source=B))


@pytest.mark.parametrize(("size", "covered", "suppressed", "reason"), [
    (5, 4, True, DIFFERENCE),  # team minus filtered = 1 person
    (5, 2, True, SMALL_GROUP),  # the filtered group itself is 2
    (5, 5, False, None),  # difference 0
    (6, 3, False, None),  # difference 3
])
def test_a_source_filter_that_would_set_fewer_than_k_people_apart_is_suppressed(
        size, covered, suppressed, reason):
    rows = team_of(size, covered)
    unfiltered = row(report(rows), "ops")
    assert not unfiltered.suppressed and unfiltered.people == size
    filtered = row(report(rows, AggregateQuery(source_id=A)), "ops")
    assert (filtered.suppressed, filtered.reason) == (suppressed, reason)
    if not suppressed:
        assert filtered.people == covered and filtered.signals == covered


def test_a_period_filter_that_would_set_one_person_apart_is_suppressed():
    rows = facts("ops", people(5), days_ago=3) + facts("ops", ["late"], days_ago=200)
    assert row(report(rows), "ops").people == 6
    assert row(report(rows, AggregateQuery(period="30d")), "ops").reason == DIFFERENCE
    # 365 days holds everyone: nothing set apart
    assert row(report(rows, AggregateQuery(period="365d")), "ops").people == 6
    # three people set apart by the period is a group of k: shown
    rows = facts("ops", people(5), days_ago=3) + facts("ops", people(3, "old"), days_ago=200)
    assert row(report(rows, AggregateQuery(period="30d")), "ops").people == 5


def test_nested_filters_are_checked_against_every_broader_view():
    """Source A in the last 30 days differs by one person from source A over all time, though
    it differs by three from the unfiltered team: still suppressed."""
    rows = (facts("ops", people(4), source=A, days_ago=3)
            + facts("ops", ["old-a"], source=A, days_ago=100)
            + facts("ops", people(3, "b"), source=B, days_ago=3))
    assert not row(report(rows, AggregateQuery(source_id=A)), "ops").suppressed  # 5 of 8
    narrow = row(report(rows, AggregateQuery(period="30d", source_id=A)), "ops")
    assert narrow.suppressed and narrow.reason == DIFFERENCE


# -- totals --------------------------------------------------------------------------------


def test_the_total_cannot_reveal_a_suppressed_team():
    rows = (facts("big", people(3, "big"))
            + facts("small", ["s1", "s2", "s2", "s2"], resolve_minutes=[1, 1, 1, 1])
            + facts("mid", people(4, "mid"), resolve_minutes=[600, 600, 600, 600]))
    rep = report(rows)
    assert row(rep, "small").suppressed
    shown = rep.shown
    assert {r.team for r in shown} == {"big", "mid"}
    total = rep.total
    # total minus the teams shown is nothing: "small" is not in it at all
    assert total.signals == sum(r.signals for r in shown) == 7
    assert total.people == 7
    assert total.share_resolved == 1.0
    # 60, 60, 60, 600, 600, 600, 600 minutes; with the 1-minute ones of "small" it would be 60
    assert total.median_resolve_seconds == 600 * 60
    # no team shown: no total
    assert report(facts("small", ["s1", "s2"])).total is None


def test_a_filter_on_team_shows_that_team_only():
    rows = facts("big", people(4)) + facts("mid", people(3))
    rep = report(rows, AggregateQuery(team="mid"))
    assert [r.team for r in rep.rows] == ["mid"]
    assert report(rows, AggregateQuery(team="absent")).rows == []


# -- the page and the settings ---------------------------------------------------------------


def page_rows(text_: str) -> dict[str, str]:
    """team → "shown" or "suppressed", from the rendered table."""
    import re

    return {html.unescape(team): "suppressed" if flag == "true" else "shown"
            for team, flag in re.findall(r'data-team="([^"]*)" data-suppressed="(\w+)"', text_)}


def test_the_page_shows_the_persona_s_teams_only_and_suppresses_small_ones(client,
                                                                           tenancy_env):  # noqa: F811 - the fixture imported above
    env = tenancy_env
    env.source("jira-pay")
    env.source("jira-hr")
    for i in range(4):
        env.signal(team="payments", person=f"pay{i}", source="jira-pay")
    env.signal(team="payments", person="pay0", source="jira-hr")  # out of the persona
    for i in range(2):
        env.signal(team="refunds", person=f"ref{i}", source="jira-pay")
    for i in range(5):
        env.signal(team="people-ops", person=f"hr{i}", source="jira-hr")
    env.persona("Money", ["payments", "refunds"], [env.sources["jira-pay"]],
                holders=("viewer@example.com",))
    base = f"/tenants/{env.tenant_id}/teams"

    sign_in(client, "viewer@example.com")
    page = client.get(base)
    assert page.status_code == 200
    assert page_rows(page.text) == {"payments": "shown", "refunds": "suppressed"}
    assert "fewer than 3" in page.text and "people-ops" not in page.text
    assert 'data-people>4<' in page.text.replace(" ", "")
    assert "jira-hr" not in page.text  # not even as a filter choice
    # crafted requests for what is out of scope get nothing
    assert page_rows(client.get(f"{base}?team=people-ops").text) == {}
    hr = client.get(f"{base}?source={env.sources['jira-hr']}")
    assert hr.status_code == 404 and "people-ops" not in hr.text
    assert client.get(f"{base}?source=999999").status_code == 404
    # malformed filters are a 422 with a sentence
    bad = client.get(f"{base}?period=forever")
    assert bad.status_code == 422 and "Choose a period" in bad.text
    assert client.get(f"{base}?source=abc").status_code == 422
    # no settings form for a Viewer, and no way to post one
    assert "k_anonymity" not in page.text

    sign_in(client, "owner@example.com")
    owner_page = client.get(base).text
    assert page_rows(owner_page) == {"payments": "shown", "refunds": "suppressed",
                                     "people-ops": "shown"}
