"""The drive layer: placeholder agents keep a narrow tool scope until credentials are wired,
shadow runs are sealed and counted per phase, the promotion gate holds at its exact boundaries,
and backward moves are immediate and audited."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tenant_runtime.agents import service
from tenant_runtime.agents.models import ShadowRun
from tenant_runtime.agents.service import PromotionRefused, gate
from tenant_runtime.credentials.service import do_add_credential
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.models import AuditEvent


@pytest.mark.parametrize(("runs", "agreed", "scored", "ready"), [
    (30, 30, 15, True),        # every threshold met exactly: 30 runs, 100 %, 50 %
    (29, 29, 29, False),       # 29 runs
    (1000, 850, 500, True),    # 85.0 % and 50.0 %
    (1000, 849, 1000, False),  # 84.9 %
    (1000, 1000, 499, False),  # 49.9 %
    (40, 34, 20, True),        # 85 % exactly on a small count
    (40, 33, 40, False),       # 82.5 %
    (0, 0, 0, False),
])
def test_the_promotion_gate_at_its_boundaries(runs, agreed, scored, ready):
    assert gate("shadow", runs, agreed, scored).ready is ready
    assert gate("assist", runs, agreed, scored).ready is ready


def test_the_gate_says_why_and_off_needs_no_evidence():
    found = gate("shadow", 29, 24, 10)
    assert found.reasons == [
        "29 shadow runs in the shadow phase; at least 30 are needed.",
        "Agreement with the human baseline is 82.8 %; at least 85 % is needed.",
        "34.5 % of the runs were scored against ground truth; at least 50 % must be."]
    assert gate("off", 0, 0, 0).ready
    assert gate("autonomous", 100, 100, 100).reasons == ["The agent is already autonomous."]


def test_a_placeholder_agent_stays_narrow_until_credentials_are_wired(ctx):
    with ctx.session() as s, s.begin():
        agent = service.create_placeholder(s, ctx, name="refund helper", task_id=7)
        assert agent.phase == "off" and sorted(agent.tools) == sorted(service.PLACEHOLDER_TOOLS)
        for tool in ("send_message", "schedule_meeting", "delete_records"):
            with pytest.raises(TenantInvalidInput, match="needs real credentials"):
                service.set_tools(s, ctx, agent.id, ["read_task", tool])
        credential = do_add_credential(s, ctx, name="crm", provider="openai",
                                       secret="sk-crm-12345678", contact_email=None)
        service.wire_credentials(s, ctx, agent.id, credential.id)
        service.set_tools(s, ctx, agent.id, ["read_task", "send_message"])
        with pytest.raises(TenantInvalidInput, match="Unknown tool 'rm_rf'"):
            service.set_tools(s, ctx, agent.id, ["rm_rf"])
    with ctx.session() as s:
        kinds = s.scalars(select(AuditEvent.event_type).order_by(AuditEvent.seq)).all()
    assert [k for k in kinds if k.startswith("agent.")] == [
        "agent.created", "agent.credentials_wired", "agent.tools_changed"]


def _runs(s, ctx, agent_id, n, *, agreed, scored):
    for i in range(n):
        service.record_run(s, ctx, agent_id, proposed=f"refund order {i} to Jane Doe",
                           actual=f"refunded order {i}", agreed=i < agreed,
                           ground_truth_score=1.0 if i < scored else None)


def test_shadow_runs_are_sealed_and_counted_for_the_phase_they_were_in(ctx):
    with ctx.session() as s, s.begin():
        agent = service.create_placeholder(s, ctx, name="triage", task_id=None)
        with pytest.raises(TenantInvalidInput, match="is off"):
            service.record_run(s, ctx, agent.id, proposed="x", actual="x", agreed=True)
        agent.phase = "shadow"  # (the approved promotion; its path is tested with approvals)
        _runs(s, ctx, agent.id, 30, agreed=26, scored=15)
        found = service.evidence(s, agent)
        assert (found.runs, found.agreed, found.scored, found.ready) == (30, 26, 15, True)
        service.apply_promotion(s, ctx, {"agent_id": agent.id, "from": "shadow"})
        assert agent.phase == "assist"
        assert service.evidence(s, agent).runs == 0  # assist starts collecting afresh
        with pytest.raises(PromotionRefused, match="0 shadow runs in the assist phase"):
            service.check_promotion(s, agent)
    with ctx.session() as s:
        run = s.scalars(select(ShadowRun)).first()
        assert b"Jane" not in run.proposed_sealed
        assert service.run_texts(ctx, run) == ("refund order 0 to Jane Doe", "refunded order 0")


def test_a_stale_promotion_moves_nothing_and_backward_moves_are_immediate(ctx):
    with ctx.session() as s, s.begin():
        agent = service.create_placeholder(s, ctx, name="scheduler", task_id=None)
        agent.phase = "shadow"
        _runs(s, ctx, agent.id, 30, agreed=30, scored=30)
        service.demote(s, ctx, agent.id, "off")
        assert service.apply_promotion(s, ctx, {"agent_id": agent.id, "from": "shadow"}) \
            is None
        assert agent.phase == "off"
        with pytest.raises(TenantInvalidInput, match="moving forward is a promotion"):
            service.demote(s, ctx, agent.id, "assist")
        agent.phase = "autonomous"
        service.demote(s, ctx, agent.id, "assist")
        assert agent.phase == "assist"
    with ctx.session() as s:
        demotions = s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "agent.demoted").order_by(AuditEvent.seq)).all()
    assert [(e.details["phase_from"], e.details["phase_to"]) for e in demotions] == [
        ("shadow", "off"), ("autonomous", "assist")]


def test_promotion_is_a_restricted_action_that_fires_once_on_approval(ctx):
    from dataclasses import replace

    from tenant_runtime.agents import promotion
    from tenant_runtime.approvals import service as approvals
    from tenant_runtime.context import Actor

    approver = replace(ctx, actor=Actor("user", "12", "approver@example.com", "Approver"))
    with ctx.session() as s, s.begin():
        agent = service.create_placeholder(s, ctx, name="billing", task_id=None)
        request = promotion.request(s, ctx, agent.id)  # off → shadow needs no evidence
        assert agent.phase == "off" and agent.pending_request_id == str(request.id)
        with pytest.raises(PromotionRefused, match="already waiting for approval"):
            promotion.request(s, ctx, agent.id)
        agent_id, request_id = agent.id, request.id
    with ctx.session() as s, s.begin(), pytest.raises(Exception, match="someone else must approve"):
        approvals.decide(s, ctx, request_id, True, None)  # the requester cannot approve
    with approver.session() as s, s.begin():
        approvals.decide(s, approver, request_id, True, "looks fine")
    with ctx.session() as s, s.begin():
        agent = service.get_agent(s, agent_id)
        assert (agent.phase, agent.pending_request_id) == ("shadow", None)
        with pytest.raises(PromotionRefused, match="0 shadow runs"):
            promotion.request(s, ctx, agent_id)  # shadow → assist needs the evidence
        _runs(s, ctx, agent_id, 30, agreed=30, scored=15)
        second = promotion.request(s, ctx, agent_id)
        service.demote(s, ctx, agent_id, "off")  # moved back while the request waits
    with approver.session() as s, s.begin():
        approvals.decide(s, approver, second.id, True, None)
    with ctx.session() as s:
        assert service.get_agent(s, agent_id).phase == "off"  # the stale promotion moved nothing
        kinds = [k for k in s.scalars(select(AuditEvent.event_type).order_by(AuditEvent.seq))
                 if k.startswith("agent.")]
    assert kinds.count("agent.promoted") == 1 and "agent.promotion_skipped" in kinds
