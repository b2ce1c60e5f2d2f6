"""SCIM filters beyond ``eq`` and sorting, as Entra ID and Okta send them, through the real
app and Postgres: each filter's answer is the set of userNames it matched."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from control_plane.scim import filters
from control_plane.scim.service import USER_ATTRIBUTES
from tests.control_plane.identity.test_scim import (
    GROUP,
    call,
    create_user,
)

PEOPLE = [
    ("ann@corp.example", "Ann Archer", "ext-1", [{"value": "ann@corp.example", "type": "work",
                                                  "primary": True},
                                                 {"value": "ann@home.example", "type": "home"}]),
    ("bob@corp.example", "Bob Baker", "ext-2", None),
    ("cara@other.example", "Cara 100%_Cook", None, None),
    ("dan", "Dan Dunn", "EXT-4", [{"value": "dan@corp.example", "primary": True}]),
]


@pytest.fixture
def people(client: TestClient, token: str) -> dict[str, str]:
    ids = {}
    for user_name, display, external, emails in PEOPLE:
        extra: dict[str, object] = {"displayName": display}
        if external:
            extra["externalId"] = external
        if emails:
            extra["emails"] = emails
        ids[user_name] = create_user(client, token, user_name, **extra)["id"]
    return ids


def found(client: TestClient, token: str, query: str) -> list[str]:
    response = call(client, token, "GET", "/Users?" + query)
    assert response.status_code == 200, response.text
    return [r["userName"] for r in response.json()["Resources"]]


def matched(client: TestClient, token: str, filter_text: str) -> set[str]:
    return set(found(client, token, "filter=" + quote(filter_text)))


MATCHES = [
    ('userName eq "ANN@corp.example"', {"ann@corp.example"}),
    ('userName co "corp"', {"ann@corp.example", "bob@corp.example"}),
    ('userName sw "B"', {"bob@corp.example"}),
    ('userName ew ".EXAMPLE"', {"ann@corp.example", "bob@corp.example", "cara@other.example"}),
    ('userName ne "dan"', {"ann@corp.example", "bob@corp.example", "cara@other.example"}),
    ('externalId pr', {"ann@corp.example", "bob@corp.example", "dan"}),
    ('externalId eq "ext-4"', set()),  # externalId is case-exact
    ('externalId eq "EXT-4"', {"dan"}),
    ('emails.value eq "ann@home.example"', {"ann@corp.example"}),
    ('emails.value co "@corp."', {"ann@corp.example", "bob@corp.example", "dan"}),
    ('emails co "home"', {"ann@corp.example"}),
    ('displayName co "100%_"', {"cara@other.example"}),  # % and _ are not wildcards
    ('displayName co "%"', {"cara@other.example"}),
    ('displayName sw "bob" and userName ew "example"', {"bob@corp.example"}),
    ('userName eq "dan" or displayName eq "ann archer"', {"ann@corp.example", "dan"}),
    ('not (userName co "corp") and externalId pr', {"dan"}),
    ('(userName sw "a" or userName sw "b") and not(externalId eq "ext-2")',
     {"ann@corp.example"}),
    ('active eq true', {"ann@corp.example", "bob@corp.example", "cara@other.example", "dan"}),
    ('urn:ietf:params:scim:schemas:core:2.0:User:userName eq "dan"', {"dan"}),
    ('USERNAME EQ "dan" OR userName Eq "bob@corp.example"', {"dan", "bob@corp.example"}),
    ('userName gt "c"', {"cara@other.example", "dan"}),
    ('externalId eq null', {"cara@other.example"}),
]


def test_filters_match_what_they_say(client, token, people):
    for filter_text, expected in MATCHES:
        assert matched(client, token, filter_text) == expected, filter_text


REFUSALS = [
    ('userName xx "a"', "is not an operator"),
    ('userName eq', "ends too early"),
    ('userName eq "a" and', "ends too early"),
    ('(userName eq "a"', "ends too early"),
    ('userName eq "a")', "Unexpected"),
    ('name.familyName eq "a"', "cannot be filtered on"),
    ('emails[type eq "work"].value eq "a"', "Value paths"),
    ('userName eq bare', "Expected a value"),
    ('active eq "yes"', "boolean attribute"),
    ('userName co null', "Only eq and ne"),
    ('userName eq "a" ; drop', "cannot read"),
    ('"x" eq "y"', "Expected an attribute"),
    ("not userName eq \"a\"", "Expected '('"),
    (" and ".join(['userName eq "a"'] * 70), "more than 64 comparisons"),
    ("(" * 20 + 'userName eq "a"' + ")" * 20, "nests deeper"),
]


def test_a_bad_filter_is_400_invalid_filter_with_a_sentence(client, token):
    for filter_text, says in REFUSALS:
        response = call(client, token, "GET", "/Users?filter=" + quote(filter_text))
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["scimType"] == "invalidFilter"
        assert says in body["detail"], body["detail"]


def test_users_sort_by_an_attribute_either_way_and_page_after_sorting(client, token, people):
    ascending = found(client, token, "sortBy=displayName")
    assert ascending == ["ann@corp.example", "bob@corp.example", "cara@other.example", "dan"]
    descending = found(client, token, "sortBy=userName&sortOrder=descending")
    assert descending == ["dan", "cara@other.example", "bob@corp.example", "ann@corp.example"]
    second_page = found(client, token, "sortBy=userName&sortOrder=descending&startIndex=2"
                                       "&count=2")
    assert second_page == ["cara@other.example", "bob@corp.example"]
    # externalId: the ones without come last
    assert found(client, token, "sortBy=externalId")[-1] == "cara@other.example"
    for query, says in (("sortBy=password", "cannot be sorted on"),
                        ("sortBy=userName&sortOrder=sideways", "ascending or descending")):
        response = call(client, token, "GET", "/Users?" + query)
        assert response.status_code == 400 and response.json()["scimType"] == "invalidValue"
        assert says in response.json()["detail"]
    # the POST .search body takes them too
    searched = call(client, token, "POST", "/Users/.search",
                    {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                     "filter": 'userName co "corp"', "sortBy": "userName",
                     "sortOrder": "descending"})
    assert searched.status_code == 200, searched.text
    assert [r["userName"] for r in searched.json()["Resources"]] == [
        "bob@corp.example", "ann@corp.example"]
    config = call(client, token, "GET", "/ServiceProviderConfig").json()
    assert config["sort"] == {"supported": True} and config["filter"]["supported"] is True


def test_groups_filter_by_name_without_case_and_by_member(client, token, people):
    made = {}
    for name, members in (("Ops", ["ann@corp.example"]), ("Operators-EU", []),
                          ("Finance", ["bob@corp.example", "dan"])):
        response = call(client, token, "POST", "/Groups", {
            "schemas": [GROUP], "displayName": name,
            "members": [{"value": people[m]} for m in members]})
        assert response.status_code == 201, response.text
        made[name] = response.json()["id"]

    def names(filter_text: str) -> set[str]:
        response = call(client, token, "GET", "/Groups?filter=" + quote(filter_text))
        assert response.status_code == 200, response.text
        return {g["displayName"] for g in response.json()["Resources"]}

    assert names('displayName eq "ops"') == {"Ops"}
    assert names('displayName sw "OP"') == {"Ops", "Operators-EU"}
    assert names(f'members eq "{people["dan"]}"') == {"Finance"}
    assert names(f'id eq "{made["Ops"]}" and members.value eq "{people["ann@corp.example"]}"'
                 ) == {"Ops"}
    assert names('members pr') == {"Ops", "Finance"}
    assert names('id eq "not-a-number"') == set()
    ordered = call(client, token, "GET", "/Groups?sortBy=displayName&sortOrder=descending")
    assert [g["displayName"] for g in ordered.json()["Resources"]] == [
        "Ops", "Operators-EU", "Finance"]  # without case: "ops" after "operators-eu"


def test_every_filterable_user_attribute_compiles_each_operator_or_says_why():
    """Enumeration over the attributes and operators: each one compiles to SQL or is refused
    with a FilterError sentence, never another exception."""
    for name in USER_ATTRIBUTES:
        for op in (*filters.OPERATORS, "pr"):
            for value in ('"x"', "true", "null", "3"):
                text = f"{name} {op}" if op == "pr" else f"{name} {op} {value}"
                try:
                    filters.compile_filter(text, USER_ATTRIBUTES)
                except filters.FilterError as exc:
                    assert str(exc)
