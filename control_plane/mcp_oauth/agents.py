"""The agent a grant acts as, inside the tenant's database.

The MCP service knows each client's agent by a number in ``mcp_clients.api_key_id``: an API
key's id, or, for an OAuth grant, ``-grant_id`` (bearer.py presents the grant so). Binding a
grant writes that row when the member approves: to a new agent (in the phase every MCP client
starts in) or to an agent this member's earlier grant acts as. Audited in the tenant's chain."""

from __future__ import annotations

from control_plane.mcp_oauth.exceptions import InvalidRequest
from tenant_runtime import audit
from tenant_runtime.agents.models import Agent
from tenant_runtime.agents.service import AgentEvents, record_event
from tenant_runtime.context import TenantContext
from tenant_runtime.mcp.models import McpClient
from tenant_runtime.mcp.service import CLIENT_PHASE, McpEvents


def bind_agent(ctx: TenantContext, grant_id: int, *, agent_id: int | None,
               client_name: str) -> tuple[int, str]:
    """Bind grant ``grant_id`` to agent ``agent_id`` (None: a new agent); its id and name."""
    with ctx.session() as s, s.begin():
        if agent_id is None:
            agent = Agent(name=f"mcp: {client_name[:60]} (OAuth grant {grant_id})",
                          phase=CLIENT_PHASE, tools=[], created_by=ctx.actor.name)
            s.add(agent)
            s.flush()
            record_event(s, ctx, AgentEvents.CREATED, agent, mcp_grant=grant_id,
                         phase=agent.phase)
        else:
            found = s.get(Agent, agent_id)
            if found is None:
                raise InvalidRequest("That agent no longer exists; pick another or a new one.")
            agent = found
        s.add(McpClient(api_key_id=-grant_id, agent_id=agent.id))
        s.flush()
        audit.record(s, McpEvents.CLIENT_CONNECTED, actor=ctx.actor, target_type="agent",
                     target_id=agent.id, details={"oauth_grant": grant_id})
        return agent.id, agent.name
