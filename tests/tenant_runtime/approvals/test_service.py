"""The approval gate's service, on a real tenant database: a restricted action needs a fresh,
named approval by someone else, and the approval is consumed exactly once, also under races."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from tenant_runtime.approvals import service
from tenant_runtime.approvals.exceptions import (
    AlreadyDecided,
    AlreadyExecuted,
    NotAnApprover,
    NotApproved,
    ReasonRequired,
    RequestExpired,
    RequestNotFound,
    SelfApprovalRefused,
    UnknownAction,
)
from tenant_runtime.approvals.executors import register_executor, unregister_executor
from tenant_runtime.approvals.models import ApprovalDecision, ApprovalOutbox, ApprovalRequest
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.models import AuditEvent
from tests.control_plane.approvals.helpers import make_team
from tests.threads import run_together

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def team(services, db, database_url, primary_server, local_kek):
    return make_team(services, db, database_url)


def ask(team, action="deploy.production", who="operator", payload=None, now=None):
    ctx = team.ctx(who)
    with ctx.session() as s, s.begin():
        return service.request_action(s, ctx, action, payload or {"service_id": 7},
                                      via="dashboard", now=now).id


def decide(team, who, request_id, approve=True, comment=None, now=None):
    ctx = team.ctx(who)
    with ctx.session() as s, s.begin():
        return service.decide(s, ctx, request_id, approve, comment, now=now).state


def consume(team, request_id, who="operator", now=None):
    ctx = team.ctx(who)
    with ctx.session() as s, s.begin():
        return service.consume(s, ctx, request_id, now=now).state


def events(team, kind):
    with team.system().session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.event_type == kind)
                              .order_by(AuditEvent.seq)))


def request_row(team, request_id):
    with team.system().session() as s:
        return s.get(ApprovalRequest, request_id)


def test_a_restricted_request_waits_and_is_audited(team):
    team.add_class("deploy.production")
    rid = ask(team)
    row = request_row(team, rid)
    assert (row.state, row.restricted, row.approvals_needed, row.via) == (
        "pending", True, 1, "dashboard")
    assert row.requested_by_name == "operator@example.com"
    with pytest.raises(NotApproved, match="still waiting"):
        consume(team, rid)
    [event] = events(team, "approval.requested")
    assert event.target_id == str(rid) and event.details["action"] == "deploy.production"
    with team.system().session() as s:  # notifications queued in the request's transaction
        kinds = s.scalars(select(ApprovalOutbox.kind).where(ApprovalOutbox.request_id == rid))
        assert list(kinds) == ["email"]


def test_two_approvers_at_once_make_one_transition(team):
    team.add_class("deploy.production")
    rid = ask(team)
    outcomes = run_together(2, lambda i: decide(team, ("approver", "approver2")[i], rid))
    assert sorted(type(o).__name__ for o in outcomes) == ["AlreadyDecided", "str"]
    assert [o for o in outcomes if isinstance(o, str)] == ["approved"]
    assert request_row(team, rid).state == "approved"
    [granted] = events(team, "approval.approved")
    assert granted.details["granted"] is True
    with team.system().session() as s:
        assert s.scalar(select(func.count()).select_from(ApprovalDecision)) == 1


def test_racing_executions_on_one_approval_fire_once(team):
    team.add_class("deploy.production")
    rid = ask(team)
    decide(team, "approver", rid, comment="go")
    fired: list[int] = []

    def execute(i):
        state = consume(team, rid)
        fired.append(i)  # reached only by the caller that got the approval
        return state

    outcomes = run_together(8, execute)
    assert len(fired) == 1
    assert sum(o == "executed" for o in outcomes) == 1
    refused = [o for o in outcomes if not isinstance(o, str)]
    assert len(refused) == 7 and all(isinstance(o, AlreadyExecuted) for o in refused)
    assert "already used" in refused[0].message
    assert len(events(team, "approval.executed")) == 1
    with pytest.raises(AlreadyExecuted):
        consume(team, rid)


def test_expiry_follows_the_clock(team):
    team.add_class("deploy.production", expiry_seconds=3600)
    rid = ask(team, now=T0)
    with team.system().session() as s:
        assert service.current_state(s, rid, now=T0 + timedelta(minutes=59)) == "pending"
        assert service.current_state(s, rid, now=T0 + timedelta(minutes=61)) == "expired"
    with pytest.raises(RequestExpired, match="expired"):
        decide(team, "approver", rid, now=T0 + timedelta(minutes=61))
    assert request_row(team, rid).state == "pending"  # nothing was written
    # an approval is fresh for the window from the moment it is complete, then it expires
    second = ask(team, now=T0)
    decide(team, "approver", second, now=T0 + timedelta(minutes=50))
    with pytest.raises(RequestExpired):
        consume(team, second, now=T0 + timedelta(minutes=50 + 61))
    assert consume(team, second, now=T0 + timedelta(minutes=50 + 59)) == "executed"


def test_self_approval_and_other_roles_are_refused(team):
    team.add_class("deploy.production")
    rid = ask(team, who="owner")
    with pytest.raises(SelfApprovalRefused):
        decide(team, "owner", rid)
    for who in ("operator", "admin", "viewer", "compliance"):
        with pytest.raises(NotAnApprover, match="Only the Approver role"):
            decide(team, who, rid)
    other = ask(team, who="operator")
    assert decide(team, "owner", other) == "approved"  # the tenant's Owner may always decide
    # an approver who asks cannot approve their own request either
    mine = ask(team, who="approver")
    with pytest.raises(SelfApprovalRefused):
        decide(team, "approver", mine)
    api = team.system()
    with api.session() as s, s.begin(), pytest.raises(NotAnApprover, match="signed-in"):
        service.decide(s, api, mine, True, None)


def test_n_of_m_needs_distinct_approvers_and_any_rejection_rejects(team):
    team.add_class("db.drop", approvals_needed=2)
    rid = ask(team, "db.drop")
    assert decide(team, "approver", rid, comment="looks right") == "pending"
    with pytest.raises(AlreadyDecided, match="different approvers"):
        decide(team, "approver", rid)
    with pytest.raises(NotApproved):
        consume(team, rid)
    assert decide(team, "approver2", rid) == "approved"
    assert consume(team, rid) == "executed"

    second = ask(team, "db.drop")
    decide(team, "approver", second)
    with pytest.raises(ReasonRequired):
        decide(team, "approver2", second, approve=False, comment="  ")
    assert decide(team, "approver2", second, approve=False,
                  comment="Customer 42 still uses it") == "rejected"
    with pytest.raises(AlreadyDecided, match="already rejected"):
        decide(team, "owner", second)
    with pytest.raises(NotApproved, match="rejected"):
        consume(team, second)
    with team.system().session() as s:  # free text is sealed at rest
        sealed = s.scalars(select(ApprovalDecision.comment_sealed).where(
            ApprovalDecision.request_id == second, ApprovalDecision.approve.is_(False))).one()
    assert b"Customer 42" not in sealed
    ctx = team.ctx("viewer")
    with ctx.session() as s:
        view = service.request_view(s, ctx, second)
    assert view.state == "rejected"
    assert [e.text for e in view.timeline if e.kind == "rejected"] == ["Customer 42 still uses it"]
    [rejected] = events(team, "approval.rejected")
    assert "Customer 42" not in str(rejected.details)


def test_unknown_actions_and_bad_payloads_are_refused(team):
    with pytest.raises(UnknownAction, match="no action class named 'nope'"):
        ask(team, "nope")
    with pytest.raises(UnknownAction, match="lower-case letters"):
        ask(team, "Drop Tables!")
    team.add_class("deploy.production")
    with pytest.raises(TenantInvalidInput, match="never secrets"):
        ask(team, payload={"service_id": 7, "db_password": "hunter2"})
    with pytest.raises(TenantInvalidInput, match="non-integer"):
        ask(team, payload={"ratio": 0.5})
    with pytest.raises(RequestNotFound):
        consume(team, "not-a-uuid")


def test_internal_actions_run_in_the_consuming_transaction(team):
    ran: list[dict] = []

    @register_executor("test.promote")
    def promote(s, ctx, payload):
        ran.append(payload)
        if payload.get("fail"):
            raise TenantInvalidInput("The agent cannot be promoted now.")

    try:
        rid = ask(team, "test.promote", payload={"agent_id": 3})  # gets a default class
        row = request_row(team, rid)
        assert (row.state, row.restricted, row.approver_role) == ("pending", True, "Approver")
        assert ran == []
        assert decide(team, "approver", rid) == "executed"
        assert ran == [{"agent_id": 3}]
        assert request_row(team, rid).executed_via == "internal"
        with pytest.raises(AlreadyExecuted):
            consume(team, rid)
        # the executor fails: the decision and the approval's use roll back together
        failing = ask(team, "test.promote", payload={"agent_id": 4, "fail": True})
        with pytest.raises(TenantInvalidInput, match="cannot be promoted"):
            decide(team, "approver", failing)
        assert request_row(team, failing).state == "pending"
    finally:
        unregister_executor("test.promote")


def test_unrestricted_actions_run_at_once_and_are_recorded(team):
    team.add_class("cache.flush", restricted=False)
    rid = ask(team, "cache.flush")
    assert request_row(team, rid).state == "approved"  # waits only for the caller's execute
    assert consume(team, rid) == "executed"
    assert [e.details["restricted"] for e in events(team, "approval.requested")] == [False]
