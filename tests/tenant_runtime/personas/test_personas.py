"""The personas page: an Owner defines, edits, assigns, unassigns and deletes personas, every
change audited; bad input is a 422 with a sentence; other roles are refused; unknown ids 404."""

from __future__ import annotations

import html

from sqlalchemy import select

from tenant_runtime.models import AuditEvent
from tenant_runtime.personas.models import Persona, PersonaAssignment
from tenant_runtime.personas.scope import EVERYTHING, NOTHING, Scope, scope_for
from tests.factories import csrf_token, sign_in


def personas(env) -> list[Persona]:
    with env.ctx.session() as s:
        return list(s.scalars(select(Persona).order_by(Persona.id)))


def assignments(env) -> set[tuple[str, int]]:
    with env.ctx.session() as s:
        return {(a.user_id, a.persona_id) for a in s.scalars(select(PersonaAssignment))}


def persona_events(env) -> list[AuditEvent]:
    with env.ctx.session() as s:
        return list(s.scalars(select(AuditEvent).where(
            AuditEvent.event_type.startswith("persona.")).order_by(AuditEvent.seq)))


def scope_of(env, email: str) -> Scope:
    with env.ctx.session() as s:
        return scope_for(s, env.actor(email))


def test_an_owner_defines_assigns_edits_and_deletes_a_persona(client, tenancy_env):
    env = tenancy_env
    pay = env.source("jira-pay")
    env.source("cw-prod", "cloudwatch")
    base = f"/tenants/{env.tenant_id}/personas"
    sign_in(client, "owner@example.com")
    page = client.get(base)
    assert page.status_code == 200
    for email in ("admin@example.com", "op@example.com", "viewer@example.com"):
        assert email in page.text  # the members, from the control plane
    assert "everything, until the first persona is defined" in page.text
    assert scope_of(env, "op@example.com") == EVERYTHING
    token = csrf_token(client, base)

    def post(path: str, **data: str):
        return client.post(path, data={"csrf_token": token, **data})

    created = post(base, name="Payments", teams="payments,\nrefunds, payments",
                   sources="JIRA-PAY")
    assert created.status_code == 201 and "Persona &#39;Payments&#39; created." in created.text
    [persona] = personas(env)
    assert (persona.teams, persona.source_ids) == (["payments", "refunds"], [pay])
    # personas are in use now: a member without one sees nothing
    assert scope_of(env, "op@example.com") == NOTHING
    assert scope_of(env, "admin@example.com") == EVERYTHING  # Admins are not scoped

    op_id = str(env.user_ids["op@example.com"])
    given = post(f"{base}/{persona.id}/assign", user_id=op_id)
    assert given.status_code == 200 and "Persona given." in given.text
    assert assignments(env) == {(op_id, persona.id)}
    assert scope_of(env, "op@example.com") == Scope(frozenset({"payments", "refunds"}),
                                                    frozenset({pay}))
    assert "That member already holds" in post(f"{base}/{persona.id}/assign",
                                                user_id=op_id).text

    edited = post(f"{base}/{persona.id}", name="Payments", teams="payments", all_teams="false",
                  sources="", all_sources="true")
    assert edited.status_code == 200 and "saved" in edited.text
    assert scope_of(env, "op@example.com") == Scope(frozenset({"payments"}), None)
    assert "Nothing changed." in post(f"{base}/{persona.id}", name="Payments",
                                      teams="payments", all_sources="true").text

    taken = post(f"{base}/{persona.id}/unassign", user_id=op_id)
    assert "Persona taken away." in taken.text and assignments(env) == set()
    post(f"{base}/{persona.id}/assign", user_id=op_id)
    deleted = post(f"{base}/{persona.id}/delete")
    assert deleted.status_code == 200 and "deleted" in deleted.text
    assert personas(env) == [] and assignments(env) == set()
    assert scope_of(env, "op@example.com") == EVERYTHING  # no persona left in the tenant

    kinds = [(e.event_type, e.target_id) for e in persona_events(env)]
    pid = str(persona.id)
    assert kinds == [("persona.created", pid), ("persona.assigned", pid),
                     ("persona.changed", pid), ("persona.unassigned", pid),
                     ("persona.assigned", pid), ("persona.deleted", pid)]
    events = persona_events(env)
    assert events[0].details == {"name": "Payments", "teams": ["payments", "refunds"],
                                 "source_ids": [pay]}
    assert events[1].details == {"persona": "Payments", "user_id": op_id, "role": "Operator"}
    assert events[2].details["changed"] == ["teams", "source_ids"]
    assert events[2].details["source_ids"] == {"from": [pay], "to": ["*"]}
    assert events[5].details["unassigned_user_ids"] == [op_id]
    assert all(e.actor_name == "owner@example.com" for e in events)


def test_bad_persona_input_is_a_422_with_a_sentence_and_writes_nothing(client, tenancy_env):
    env = tenancy_env
    env.source("jira-pay")
    base = f"/tenants/{env.tenant_id}/personas"
    sign_in(client, "owner@example.com")
    token = csrf_token(client, base)

    def post(path: str, **data: str):
        return client.post(path, data={"csrf_token": token, **data})

    for data, sentence in (
            ({"name": " ", "teams": "a"}, "Give the persona a name"),
            ({"name": "P", "teams": " , "}, "Name at least one team"),
            ({"name": "P", "teams": "*"}, "is not a team name"),
            ({"name": "P", "teams": "a", "sources": "jira-pay, nowhere"},
             "There is no source named 'nowhere'")):
        refused = post(base, **data)
        assert refused.status_code == 422, data
        assert sentence in html.unescape(refused.text), data
    assert personas(env) == []
    assert post(base, name="P", all_teams="true").status_code == 201
    duplicate = post(base, name="p", teams="x")
    assert duplicate.status_code == 422 and "already exists" in html.unescape(duplicate.text)
    assert client.post(base, data={"csrf_token": token, "name": "Q", "teams": "a",
                                   "colour": "red"}).status_code == 422  # unknown field
    [persona] = personas(env)
    assert persona.teams == ["*"] and persona.source_ids == []

    not_member = post(f"{base}/{persona.id}/assign", user_id="999999")
    assert not_member.status_code == 422 and "member of this tenant" in not_member.text
    for path, data in ((f"{base}/999999", {"name": "Z", "teams": "a"}),
                       (f"{base}/999999/delete", {}),
                       (f"{base}/999999/assign",
                        {"user_id": str(env.user_ids["op@example.com"])}),
                       (f"{base}/999999/unassign", {"user_id": "1"})):
        assert post(path, **data).status_code == 404, path
    assert assignments(env) == set()
    assert [e.event_type for e in persona_events(env)] == ["persona.created"]


def test_only_owners_manage_personas(client, tenancy_env):
    env = tenancy_env
    pid = env.persona("Everyone", ["*"], ["*"])
    base = f"/tenants/{env.tenant_id}/personas"
    for email in ("admin@example.com", "op@example.com", "viewer@example.com"):
        sign_in(client, email)
        assert client.get(base).status_code == 403, email
        token = csrf_token(client, f"/tenants/{env.tenant_id}")
        me = str(env.user_ids[email])
        refused = client.post(f"{base}/{pid}/assign", data={"csrf_token": token, "user_id": me})
        assert refused.status_code == 403, email
    assert assignments(env) == set()
    # another tenant's personas page is a 404, like a missing tenant
    sign_in(client, "op@example.com")
    assert client.get(f"/tenants/{env.other_tenant_id}/personas").status_code == 404
