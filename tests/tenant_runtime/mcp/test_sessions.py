"""Sessions at the tenant's MCP endpoint (``Mcp-Session-Id``) and what travels over them: the
session is issued at initialize and required after, bound to the principal that opened it,
ended by DELETE, stopped by a revoked key; an upstream's elicitation, sampling and log
notifications reach the agent's client, a pending approval is told through elicitation, and a
subscription's updates are relayed. Through the official SDK client, in front of the
conformance suite's reference upstream (stateful) and the CRM upstream of conftest.py."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError
from sqlalchemy import select

from control_plane.models import ApiKey, User
from control_plane.tenancy import api_keys
from control_plane.tenancy import service as tenancy
from tenant_runtime.mcp import service
from tenant_runtime.models import AuditEvent
from tests.tenant_runtime.mcp.helpers import (
    add_slow_tool,
    calls_of,
    decide,
    endpoint,
    list_names,
    mcp_client,
    run,
    serve_magistrate,
    serve_reference,
    set_phase,
    text_of,
)

ACCEPT = {"Accept": "application/json, text/event-stream"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "probe", "version": "1"}}}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}


@pytest.fixture
def reference(team, base, key):
    """The reference upstream registered as ``ref``, its tools allowed, the agent
    autonomous."""
    with serve_reference() as url:
        ctx = team.ctx("admin")
        with ctx.session() as s, s.begin():
            service.do_add_upstream(s, ctx, service.UpstreamInput(
                name="ref", url=url, new_tools="allowed"))
        assert "ref__test_elicitation" in run(list_names, endpoint(base, team), key)
        set_phase(team, "autonomous")
        yield url


async def subscribe(session: Any, uri: str, *, undo: bool = False) -> None:
    """``resources/subscribe`` (or ``unsubscribe``) by its typed request: the SDK's helpers
    warn that a later revision replaces them."""
    request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri)) if undo \
        else types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
    await session.send_request(request, types.EmptyResult)


def events(team, event_type: str) -> list[dict[str, Any]]:
    with team.system().session() as s:
        return [e.details for e in s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == event_type).order_by(AuditEvent.seq))]


def post(url: str, key: str, body: dict[str, Any], session_id: str | None = None
         ) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {key}", **ACCEPT}
    if session_id is not None:
        headers["Mcp-Session-Id"] = session_id
    return httpx2.post(url, json=body, headers=headers, timeout=30)


def opened(url: str, key: str) -> str:
    answer = post(url, key, INITIALIZE)
    assert answer.status_code == 200, answer.text
    session_id = answer.headers["mcp-session-id"]
    note = post(url, key, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                session_id)
    assert note.status_code == 202, note.text
    return session_id


# --- the session itself ---------------------------------------------------------------------


def test_initialize_issues_a_session_that_later_requests_need_and_delete_ends(team, base,
                                                                              key):
    url = endpoint(base, team)
    session_id = opened(url, key)
    assert len(session_id) >= 32
    without = post(url, key, LIST)
    assert without.status_code == 400 and "session" in without.text.lower()
    assert post(url, key, LIST, "0" * 32).status_code == 404
    listed = post(url, key, LIST, session_id)
    assert listed.status_code == 200 and '"tools"' in listed.text
    ended = httpx2.delete(url, headers={"Authorization": f"Bearer {key}",
                                        "Mcp-Session-Id": session_id}, timeout=30)
    assert ended.status_code == 200
    assert post(url, key, LIST, session_id).status_code == 404


def test_a_session_answers_only_the_principal_that_opened_it(team, base, key):
    url = endpoint(base, team)
    other = team.api_key("other-agent", who="owner", scopes=("mcp",))
    session_id = opened(url, key)
    stolen = post(url, other, LIST, session_id)
    assert stolen.status_code == 404 and '"tools"' not in stolen.text
    assert post(url, key, LIST, session_id).status_code == 200  # the owner's still works


def revoke(services, team, name: str) -> None:
    with services.session_factory() as s, s.begin():
        owner = s.get(User, team.users["owner"].id)
        access = tenancy.access_tenant(s, team.tenant_id, user=owner)
        key_id = s.scalars(select(ApiKey.id).where(ApiKey.name == name)).one()
        api_keys.do_revoke_api_key(s, access, key_id, acting_user=owner)


def test_a_revoked_key_stops_its_live_session_at_the_next_request(services, team, base, key):
    url = endpoint(base, team)
    raw = opened(url, key)

    async def scenario() -> None:
        async with mcp_client(url, key) as session:
            await session.list_tools()
            revoke(services, team, "desk-agent")
            with pytest.raises(MCPError):
                await session.list_tools()

    run(scenario)
    refused = post(url, key, LIST, raw)
    assert refused.status_code == 401 and '"tools"' not in refused.text


def test_one_principal_holds_a_bounded_number_of_sessions_the_idlest_ends_first(
        services, team, key):
    services.settings = dataclasses.replace(services.settings, mcp_sessions_per_client=2)
    other = team.api_key("other-agent", who="owner", scopes=("mcp",))
    with serve_magistrate(services) as base:
        url = endpoint(base, team)
        first, second = opened(url, key), opened(url, key)
        third = opened(url, key)  # ends the idlest of this principal's two: the first
        assert post(url, key, LIST, first).status_code == 404
        assert post(url, key, LIST, second).status_code == 200
        assert post(url, key, LIST, third).status_code == 200
        opened(url, other)  # another principal's count is its own
        assert post(url, key, LIST, second).status_code == 200
        assert post(url, key, LIST, third).status_code == 200


# --- elicitation, sampling, logging from the upstream ---------------------------------------


def test_an_upstreams_elicitation_reaches_a_client_that_declares_it_and_is_audited(
        team, base, key, reference):
    asked: list[types.ElicitRequestParams] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="accept", content={"username": "jane",
                                                            "email": "jane@example.com"})

    async def scenario() -> tuple[types.CallToolResult, types.CallToolResult]:
        async with mcp_client(endpoint(base, team), key, elicitation_callback=answer) as s:
            declared = await s.call_tool("ref__test_elicitation", {"message": "Who are you?"})
        async with mcp_client(endpoint(base, team), key) as s:
            undeclared = await s.call_tool("ref__test_elicitation", {"message": "And you?"})
        return declared, undeclared

    declared, undeclared = run(scenario)
    assert [p.message for p in asked] == ["Who are you?"]
    assert "action=accept" in text_of(declared) and "jane" in text_of(declared)
    assert undeclared.is_error  # the upstream saw a client without elicitation
    [event] = events(team, service.McpEvents.CLIENT_ASKED)
    assert event["kind"] == "elicitation" and event["origin"] == "upstream"
    assert event["outcome"] == "accept" and event["upstream"] == "ref"
    assert "jane" not in str(event)


def test_an_external_upstream_asks_with_values_restored_and_gets_the_answer_redacted(
        team, base, key):
    seen: list[str] = []
    with serve_reference(seen) as url:
        ctx = team.ctx("admin")
        with ctx.session() as s, s.begin():
            service.do_add_upstream(s, ctx, service.UpstreamInput(
                name="ref", url=url, new_tools="allowed", redaction="external"))
        run(list_names, endpoint(base, team), key)
        set_phase(team, "autonomous")
        asked: list[str] = []

        async def answer(context: Any, params: types.ElicitRequestParams
                         ) -> types.ElicitResult:
            asked.append(params.message)
            return types.ElicitResult(action="accept", content={
                "username": "bob", "email": "bob.roe@example.com"})

        async def scenario() -> types.CallToolResult:
            async with mcp_client(endpoint(base, team), key,
                                  elicitation_callback=answer) as s:
                return await s.call_tool("ref__test_elicitation",
                                         {"message": "Write to jane.doe@example.com?"})

        result = run(scenario)
    # the person sees the value they know; the upstream saw placeholders, one per value
    assert asked == ["Write to jane.doe@example.com?"]
    assert seen == ["Write to [EMAIL_1]?", "{'username': 'bob', 'email': '[EMAIL_2]'}"]
    # the upstream got the answer redacted, and echoed placeholders of its own, which the
    # agent gets back restored: each to its own value
    assert text_of(result) == ("User response: action=accept, content={'username': 'bob', "
                               "'email': 'bob.roe@example.com'}")


def test_an_upstreams_sampling_request_reaches_the_client_without_context(team, base, key,
                                                                          reference):
    asked: list[types.CreateMessageRequestParams] = []

    async def sample(context: Any, params: types.CreateMessageRequestParams
                     ) -> types.CreateMessageResult:
        asked.append(params)
        return types.CreateMessageResult(role="assistant", model="test-model",
                                         content=types.TextContent(type="text", text="Paris"))

    async def scenario() -> types.CallToolResult:
        async with mcp_client(endpoint(base, team), key, sampling_callback=sample) as s:
            return await s.call_tool("ref__test_sampling", {"prompt": "Capital of France?"})

    result = run(scenario)
    assert text_of(result) == "LLM response: Paris"
    [params] = asked
    assert params.include_context is None and params.max_tokens == 100
    [event] = events(team, service.McpEvents.CLIENT_ASKED)
    assert (event["kind"], event["outcome"]) == ("sampling", "answered")


def test_an_upstreams_log_messages_are_relayed_at_or_above_the_sessions_level(team, base,
                                                                               key, reference):
    async def scenario() -> tuple[list[str], list[str]]:
        seen: list[str] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            seen.append(str(params.data))

        async with mcp_client(endpoint(base, team), key, logging_callback=on_log) as s:
            await s.call_tool("ref__test_tool_with_logging", {})
            before = list(seen)
            # the level is kept in the session: info messages are below warning
            await s.send_request(types.SetLevelRequest(
                params=types.SetLevelRequestParams(level="warning")), types.EmptyResult)
            await s.call_tool("ref__test_tool_with_logging", {})
        return before, seen

    before, after = run(scenario)
    assert before == ["Tool execution started", "Tool processing data",
                      "Tool execution completed"]
    assert after == before


def test_the_endpoint_declares_logging_and_subscriptions(team, base, key):
    async def scenario() -> types.ServerCapabilities:
        async with mcp_client(endpoint(base, team), key) as s:
            init = s.initialize_result
            assert init is not None
            return init.capabilities

    capabilities = run(scenario)
    assert capabilities.logging is not None
    assert capabilities.resources is not None and capabilities.resources.subscribe


# --- approvals: also said through elicitation -----------------------------------------------


def test_a_pending_approval_is_also_told_through_elicitation_where_declared(team, synced,
                                                                            base, key):
    decide(team, "delete_records", "restricted", action_class="crm.delete")
    decide(team, "send_email", "denied")
    set_phase(team, "autonomous")
    told: list[str] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        told.append(params.message)
        return types.ElicitResult(action="accept", content={})

    async def scenario() -> tuple[types.CallToolResult, types.CallToolResult,
                                  types.CallToolResult]:
        async with mcp_client(endpoint(base, team), key, elicitation_callback=answer) as s:
            pending = await s.call_tool("crm__delete_records", {"customer_id": 7})
            denied = await s.call_tool("crm__send_email", {"to": "a@b.c", "body": "hi"})
        async with mcp_client(endpoint(base, team), key) as s:
            quiet = await s.call_tool("crm__delete_records", {"customer_id": 7})
        return pending, denied, quiet

    pending, denied, quiet = run(scenario)
    approval = pending.structured_content["approval"]  # type: ignore[index]
    assert pending.is_error and approval["state"] == "pending"
    assert len(told) == 1 and approval["id"] in told[0]  # the denied call asked nothing
    assert quiet.is_error and quiet.structured_content["approval"]["id"] == approval["id"]  # type: ignore[index]
    assert denied.is_error
    assert synced.calls == []  # neither the restricted nor the denied call went upstream
    [event] = events(team, service.McpEvents.CLIENT_ASKED)
    assert (event["origin"], event["outcome"]) == ("approval", "accept")
    assert event["approval_id"] == approval["id"]


# --- resource subscriptions -------------------------------------------------------------------


def test_a_subscription_relays_the_upstreams_updates_until_unsubscribed(team, base, key,
                                                                        reference):
    async def scenario() -> tuple[list[str], str]:
        updated: list[str] = []
        arrived = anyio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                updated.append(str(message.params.uri))
                arrived.set()

        async with mcp_client(endpoint(base, team), key, message_handler=on_message) as s:
            await subscribe(s, "test://watched-resource")  # the bare URI
            told = await s.call_tool("ref__test_update_watched", {})
            assert text_of(told) == "told 1 subscribers"
            with anyio.fail_after(60):
                await arrived.wait()
            await subscribe(s, "test://watched-resource", undo=True)
            after = await s.call_tool("ref__test_update_watched", {})
        return updated, text_of(after)

    updated, after = run(scenario)
    assert updated == ["test://watched-resource"]
    assert after == "told 0 subscribers"  # unsubscribed at the upstream too
    [event] = events(team, service.McpEvents.RESOURCE_SUBSCRIBED)
    assert event["upstream"] == "ref" and event["outcome"] == "forwarded"


def test_a_subscription_is_decided_as_a_read_and_ends_with_its_session(team, base, key,
                                                                       reference):
    async def subscribed() -> str:
        async with mcp_client(endpoint(base, team), key) as s:
            try:
                await subscribe(s, "test://watched-resource")
            except MCPError as exc:
                return exc.message
            return "subscribed"

    async def told() -> str:
        async with mcp_client(endpoint(base, team), key) as s:
            return text_of(await s.call_tool("ref__test_update_watched", {}))

    # the client's DELETE on leaving ends the session, and its subscription with it
    assert run(subscribed) == "subscribed"
    deadline = time.monotonic() + 60  # the upstream hears the unsubscribe as the session ends
    while (answer := run(told)) != "told 0 subscribers":
        assert answer == "told 1 subscribers" and time.monotonic() < deadline
    set_phase(team, "off")
    assert "is off" in run(subscribed)
    outcomes = [e["outcome"] for e in events(team, service.McpEvents.RESOURCE_SUBSCRIBED)]
    assert outcomes == ["forwarded", "agent_off"]


def test_a_revoked_key_refused_on_its_session_ends_the_session_and_its_subscriptions(
        services, team, base, key, reference):
    other = team.api_key("other-agent", who="owner", scopes=("mcp",))
    url = endpoint(base, team)
    run(list_names, url, other)  # its agent, made on its first request, ...
    set_phase(team, "autonomous")  # ... may call the upstream's tools too

    async def scenario() -> None:
        async with mcp_client(url, key) as s:
            await subscribe(s, "test://watched-resource")
            revoke(services, team, "desk-agent")
            with pytest.raises(MCPError):  # 401, and the session ends with it
                await s.list_tools()

    async def told() -> str:
        async with mcp_client(url, other) as s:
            return text_of(await s.call_tool("ref__test_update_watched", {}))

    assert run(told) == "told 0 subscribers"
    run(scenario)
    deadline = time.monotonic() + 60  # the subscription's end reaches the upstream
    while (answer := run(told)) != "told 0 subscribers":
        assert answer == "told 1 subscribers" and time.monotonic() < deadline


def test_a_revoked_key_ends_a_silent_sessions_stream_and_subscriptions_within_the_recheck(
        services, team, key, reference):
    """The client sends nothing after its key is revoked: the periodic re-check of the
    session's credential ends the session, closing its GET stream (the SDK client's reconnect
    is refused 401) and ending its subscription at the upstream."""
    services.settings = dataclasses.replace(services.settings, mcp_session_recheck_seconds=1)
    other = team.api_key("other-agent", who="owner", scopes=("mcp",))
    with serve_magistrate(services) as base:
        url = endpoint(base, team)
        run(list_names, url, other)  # its agent, made on its first request, ...
        set_phase(team, "autonomous")  # ... may call the upstream's tools too
        streams: list[int] = []  # the status of each GET (stream) the client opened

        async def seen(response: httpx2.Response) -> None:
            if response.request.method == "GET":
                streams.append(response.status_code)

        async def told() -> str:
            async with mcp_client(url, other) as s:
                return text_of(await s.call_tool("ref__test_update_watched", {}))

        async def scenario() -> tuple[list[int], str]:
            async with mcp_client(url, key, event_hooks={"response": [seen]}) as s:
                await subscribe(s, "test://watched-resource")
                with anyio.fail_after(60):
                    while streams != [200]:  # the client's GET stream is open
                        await anyio.sleep(0.05)
                assert await told() == "told 1 subscribers"
                revoke(services, team, "desk-agent")
                # no request of this client from here on, yet within the bound the stream
                # closes (its reconnect is refused) and the upstream loses the subscriber
                with anyio.fail_after(60):
                    while 401 not in streams:
                        await anyio.sleep(0.05)
                    while (answer := await told()) != "told 0 subscribers":
                        assert answer == "told 1 subscribers"
                return list(streams), answer

        opened_streams, answer = run(scenario)
    assert opened_streams[0] == 200 and 401 in opened_streams
    assert answer == "told 0 subscribers"


# --- cancellation -----------------------------------------------------------------------------


def test_a_cancelled_call_is_cancelled_at_the_upstream_and_recorded_so(team, synced, base,
                                                                       key):
    """The SDK client abandons an in-flight ``tools/call`` (its ``notifications/cancelled``):
    the call Magistrate forwarded is cancelled at the upstream, and its audit event says
    ``cancelled``."""
    add_slow_tool(synced)
    run(list_names, endpoint(base, team), key)  # the new tool joins the catalogue
    decide(team, "slow_report", "allowed")

    async def scenario() -> None:
        async with mcp_client(endpoint(base, team), key) as s:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(s.call_tool, "crm__slow_report", {"name": "q3"})
                with anyio.fail_after(60):
                    while not synced.called("slow_report"):  # in flight at the upstream
                        await anyio.sleep(0.05)
                tasks.cancel_scope.cancel()  # the client sends notifications/cancelled
            await s.send_ping()  # the session itself goes on

    run(scenario)
    deadline = time.monotonic() + 60
    while not synced.called("slow_report:cancelled"):
        assert time.monotonic() < deadline, synced.calls
        time.sleep(0.05)
    while not (recorded := calls_of(team)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert synced.called("slow_report:finished") == []
    [event] = recorded
    assert (event["tool"], event["outcome"]) == ("slow_report", "cancelled")
    assert isinstance(event["latency_ms"], int)
