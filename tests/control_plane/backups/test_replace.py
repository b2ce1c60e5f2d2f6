"""Restoring a backup over the live tenant: only on a decided ``tenant.restore`` approval (single
use, for this very backup), into a verified new database first, then one atomic rename; the
replaced database is retained, closed."""

from __future__ import annotations

from dataclasses import replace

import psycopg
import pytest
from sqlalchemy import select

from control_plane.backups.events import BackupEvents
from control_plane.backups.exceptions import BackupRefused
from control_plane.backups.replace import ACTION, replace_tenant, request_replace
from control_plane.backups.service import backup_tenant
from control_plane.models import BackupReplacement, PlatformAuditEvent, Tenant
from tenant_runtime.approvals import classes
from tenant_runtime.approvals import service as approvals
from tenant_runtime.approvals.gates import ApprovalPending
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.context import Actor
from tests.control_plane.backups.conftest import ACTOR, add_events, audit_rows


def _ask(world, backup_id: str) -> str:
    with pytest.raises(ApprovalPending, match="tenant.restore always needs an approval") as got:
        request_replace(world.services.session_factory, world.services.tenant_connections,
                        "acme", backup_id, actor=ACTOR)
    return got.value.request_id


def _replace(world, backup_id: str, approval_id: str):
    return replace_tenant(world.services.session_factory, world.services.tenant_connections,
                          world.destination, "acme", backup_id, approval_id=approval_id,
                          actor=ACTOR)


def _member(world, role: str, user_id: str):
    with world.services.session_factory() as s:
        return world.services.tenant_connections.context(
            s, s.get(Tenant, world.tenant_id), Actor("user", user_id, f"{role}@example.com",
                                                     role))


def _approve(world, request_id: str) -> None:
    approver = _member(world, "Approver", "2")
    with approver.session() as s, s.begin():
        approvals.decide(s, approver, request_id, True, None)


def _databases(server_url: str, tenant_id: int) -> dict[str, bool]:
    with psycopg.connect(server_url) as conn:
        return {str(n): bool(a) for n, a in conn.execute(
            "SELECT datname, datallowconn FROM pg_database WHERE datname = %s "
            "OR starts_with(datname, %s)", (f"magistrate_t_{tenant_id}",
                                            f"magistrate_t_{tenant_id}_"))}


def test_replace_waits_for_a_decided_approval_then_swaps_atomically(world, pg_server_url):
    done = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR)
    at_backup = audit_rows(world.services, world.tenant_id)
    add_events(world.services, world.tenant_id, 3, "after.backup")
    request_id = _ask(world, done.backup_id)
    live = f"magistrate_t_{world.tenant_id}"
    # not yet decided: refused before any work, no database made
    with pytest.raises(BackupRefused, match="still waiting for approval.*Nothing was restored"):
        _replace(world, done.backup_id, request_id)
    assert set(_databases(pg_server_url, world.tenant_id)) == {live}
    # the requester is the operator's command; a member with the approving role decides
    _approve(world, request_id)
    # an approval is for one backup: another backup's id does not use it
    other = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                          world.destination, world.tenant_id, actor=ACTOR)
    with pytest.raises(BackupRefused, match="is for another action"):
        _replace(world, other.backup_id, request_id)

    result = _replace(world, done.backup_id, request_id)
    rows = audit_rows(world.services, world.tenant_id)
    # the live name now holds the backup's rows (plus the event that links the two chains)
    assert rows[:len(at_backup)] == at_backup
    assert [r[1] for r in rows[len(at_backup):]] == [BackupEvents.RESTORED_OVER]
    assert not any(r[1] == "after.backup" for r in rows)
    linked = rows[-1][2]
    assert linked["approval_id"] == request_id and linked["backup_id"] == done.backup_id
    assert linked["retained_database"] == result.retained
    with world.services.session_factory() as s:
        factory = world.services.tenant_connections.session_factory(
            s.get(Tenant, world.tenant_id))
        events = {e.event_type: e.details for e in s.scalars(select(PlatformAuditEvent))}
    with factory() as ts:
        assert verify_tenant_chain(ts, world.tenant_id).ok
    assert events[BackupEvents.REPLACED]["retained_database"] == result.retained
    # the replaced database is retained, closed to connections, with the events after backup
    assert _databases(pg_server_url, world.tenant_id) == {live: True, result.retained: False}
    assert linked["replaced_head"]["seq"] == result.replaced_head[0] > len(at_backup) + 3
    # single use: the same approval cannot replace again
    with world.services.session_factory() as s:
        recorded = s.get(BackupReplacement, request_id)
    assert recorded.retained_database == result.retained
    for spelling in (request_id, request_id.upper()):
        with pytest.raises(BackupRefused, match="was already used at .* Nothing was restored"):
            _replace(world, done.backup_id, spelling)
    with pytest.raises(BackupRefused, match="no such approval request. Nothing was restored"):
        _replace(world, done.backup_id, "not-an-id")


def test_a_tenant_cannot_switch_the_restore_gate_off(world):
    done = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR)
    owner = _member(world, "Owner", "1")
    with owner.session() as s, s.begin():
        classes.do_add_action_class(s, owner, classes.ClassInput(name=ACTION,
                                                                 restricted=False))
    with pytest.raises(Exception, match="always needs an approval, but this tenant's "
                                        "tenant.restore action class is marked not restricted"):
        request_replace(world.services.session_factory, world.services.tenant_connections,
                        "acme", done.backup_id, actor=ACTOR)


def test_the_requester_cannot_approve_and_an_unknown_backup_is_refused(world):
    done = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR)
    member = _member(world, "Owner", "1")
    with pytest.raises(BackupRefused, match="has no backup with the id"):
        request_replace(world.services.session_factory, world.services.tenant_connections,
                        "acme", "nope", actor=ACTOR)
    # a member who asks (e.g. through the approvals API) cannot decide her own request
    from tenant_runtime.approvals import gates
    from tenant_runtime.approvals.exceptions import SelfApprovalRefused

    with pytest.raises(ApprovalPending) as got:
        gates.require(member, ACTION, {"tenant_id": world.tenant_id,
                                       "backup_id": done.backup_id})
    with member.session() as s, s.begin(), pytest.raises(SelfApprovalRefused):
        approvals.decide(s, member, got.value.request_id, True, None)
    other = replace(member, actor=Actor("user", "3", "viewer@example.com", "Viewer"))
    with other.session() as s, s.begin(), pytest.raises(Exception, match="may decide"):
        approvals.decide(s, other, got.value.request_id, True, None)
