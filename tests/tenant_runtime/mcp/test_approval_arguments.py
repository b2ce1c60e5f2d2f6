"""Approvers see what they approve: a governed MCP tool call waiting for approval carries its
arguments, sealed on the approval request, shown opened (escaped, pretty JSON, size-capped) on
the request's page and in the inbox to the members who may decide it, and to nobody else; the
e-mail and the webhook name the tool and upstream and link to the page, never the arguments."""

from __future__ import annotations

import html
import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import update

from control_plane.models import Tenant
from tenant_runtime.approvals import arguments, notify
from tenant_runtime.approvals import service as approvals
from tenant_runtime.approvals.models import ApprovalRequest
from tenant_runtime.minimization.retention import sweep
from tests.conftest import with_database
from tests.factories import sign_in
from tests.tenant_runtime.mcp.helpers import (
    call,
    decide,
    endpoint,
    list_names,
    register,
    run,
    set_phase,
    text_of,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SECRETISH = "<script>alert('x')</script> Jane's ledger"


def page(client, team, email: str, path: str = "") -> str:
    client.cookies.clear()
    sign_in(client, email)
    response = client.get(f"/tenants/{team.tenant_id}/approvals{path}")
    assert response.status_code == 200
    return response.text


def box_of(text: str) -> str | None:
    """The arguments box of a page (its escaped HTML), or None."""
    found = re.search(r'<div class="arguments" data-testid="request-arguments">(.*?)</div>',
                      text, re.S)
    return found.group(1) if found else None


def shown(text: str) -> object:
    """The arguments a page shows, parsed back from their escaped pretty JSON."""
    box = box_of(text)
    assert box is not None
    found = re.search(r"<pre>(.*?)</pre>", box, re.S)
    assert found is not None
    return json.loads(html.unescape(found.group(1)))


def restricted_call(team, base, key, args) -> str:
    decide(team, "send_email", "restricted", action_class="crm.mail")
    set_phase(team, "autonomous")
    first = run(call, endpoint(base, team), key, "crm__send_email", args)
    assert first.is_error
    return str(first.structured_content["approval"]["id"])


def test_approvers_see_the_arguments_and_other_members_do_not(client, team, synced, base, key,
                                                              pg_server_url, db):
    args = {"to": "jane@example.com", "body": SECRETISH}
    rid = restricted_call(team, base, key, args)
    # the approver: on the request's page and in her inbox, escaped, as pretty JSON
    text = page(client, team, "approver@example.com", f"/{rid}")
    assert shown(text) == args
    assert "<script>alert" not in text and "&lt;script&gt;alert" in text  # escaped
    assert re.search(r'data-testid="request-tool"><code>send_email</code> of the MCP upstream '
                     r"<code>crm</code>", text)
    inbox = page(client, team, "approver@example.com")
    row = re.search(rf'<tr data-request="{rid}">(.*?)</tr>', inbox, re.S)
    assert row is not None and shown(row.group(1)) == args
    # members who may not decide it: the page, without the arguments
    for email in ("viewer@example.com", "operator@example.com", "compliance@example.com"):
        client.cookies.clear()
        sign_in(client, email)
        response = client.get(f"/tenants/{team.tenant_id}/approvals/{rid}")
        assert response.status_code == 200
        assert "jane@example.com" not in response.text and "Jane" not in response.text
        assert box_of(response.text) is None
        assert re.search(r'data-testid="arguments-hidden">Shown only to the members who may '
                         r"decide this request \(the Approver role", response.text)
    # at rest: ciphertext under the tenant's data key, read with psycopg on its database
    with db() as s:
        name = s.get(Tenant, team.tenant_id).db_name
    with psycopg.connect(with_database(pg_server_url, name)) as conn:
        [(sealed,)] = conn.execute("SELECT arguments_sealed FROM approval_requests WHERE id = %s",
                                   (uuid.UUID(rid),)).fetchall()
    assert bytes(sealed[:2]) == b"S1"
    assert b"jane" not in bytes(sealed) and b"ledger" not in bytes(sealed)
    # approve, repeat: the call goes through once; the next repeat needs a new approval
    ctx = team.ctx("approver")
    with ctx.session() as s, s.begin():
        approvals.decide(s, ctx, rid, True, None)
    done = run(call, endpoint(base, team), key, "crm__send_email", args)
    assert not done.is_error and text_of(done).startswith("sent to jane@example.com")
    again = run(call, endpoint(base, team), key, "crm__send_email", args)
    assert again.is_error and again.structured_content["approval"]["id"] != rid
    assert synced.called("send_email") == [args]
    # an approver still reads what was approved, afterwards
    assert shown(page(client, team, "approver2@example.com", f"/{rid}")) == args


def test_the_email_and_webhook_name_the_tool_and_never_carry_the_arguments(team, synced, base,
                                                                            key):
    rid = restricted_call(team, base, key, {"to": "jane@example.com", "body": "hello"})
    ctx = team.ctx("approver")
    with ctx.session() as s:
        req = s.get(ApprovalRequest, uuid.UUID(rid))
        url = notify.request_url("https://magistrate.example.com", team.tenant_id, rid)
        subject, body = notify.email_text(ctx, req, "", url)
        document = json.loads(notify._notification_body(ctx, req, url))
    assert "send_email of the MCP upstream crm" in body and url in body
    assert "jane@example.com" not in body + subject
    assert (document["upstream"], document["tool"]) == ("crm", "send_email")
    assert "jane@example.com" not in json.dumps(document)


def test_an_external_upstreams_arguments_are_shown_as_they_would_leave(client, team, upstream,
                                                                       base, key):
    register(team, upstream, redaction="external")
    run(list_names, endpoint(base, team), key)
    rid = restricted_call(team, base, key, {"to": "jane.doe@example.com",
                                            "body": "Call jane.doe@example.com"})
    text = page(client, team, "approver@example.com", f"/{rid}")
    assert shown(text) == {"to": "[EMAIL_1]", "body": "Call [EMAIL_1]"}
    box = box_of(text) or ""
    assert "the upstream is external" in box and "2 values replaced" in box
    assert "jane.doe" not in html.unescape(text)


def test_long_arguments_are_kept_up_to_the_cap_with_the_rest_counted(team, synced, base, key):
    body = "é" * 20_000  # two bytes each
    rid = restricted_call(team, base, key, {"to": "a@example.com", "body": body})
    ctx = team.ctx("approver")
    with ctx.session() as s:
        view = arguments.arguments_for(ctx, s.get(ApprovalRequest, uuid.UUID(rid)))
    assert view is not None
    whole = json.dumps({"body": body, "to": "a@example.com"}, indent=2, ensure_ascii=False)
    assert len(view.text.encode()) <= arguments.MAX_SHOWN_BYTES
    assert whole.startswith(view.text)
    assert len(view.text.encode()) + view.more_bytes == len(whole.encode())
    assert view.more_bytes > 0
    viewer = team.ctx("viewer")
    with viewer.session() as s:
        assert arguments.arguments_for(viewer, s.get(ApprovalRequest, uuid.UUID(rid))) is None


def test_retention_erases_the_arguments_and_keeps_the_request(client, team, synced, base, key):
    old = restricted_call(team, base, key, {"to": "old@example.com", "body": "then"})
    new = restricted_call(team, base, key, {"to": "new@example.com", "body": "now"})
    ctx = team.system()
    with ctx.session() as s, s.begin():
        s.execute(update(ApprovalRequest).where(ApprovalRequest.id == uuid.UUID(old)).values(
            created_at=datetime.now(UTC) - timedelta(days=400)))
    with ctx.session() as s, s.begin():
        result = sweep(s, ctx)
    assert result.approval_arguments == 1 and result.removed == 1
    with ctx.session() as s:
        kept = {str(r.id): r.arguments_sealed for r in s.query(ApprovalRequest)}
    assert kept[old] is None and kept[new] is not None  # the request itself stays
    text = page(client, team, "approver@example.com", f"/{old}")
    assert box_of(text) is None and 'data-testid="arguments-gone"' in text
    assert "old@example.com" not in text
    assert shown(page(client, team, "approver@example.com", f"/{new}"))["to"] == "new@example.com"
