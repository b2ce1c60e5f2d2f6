"""Registering upstream MCP servers and deciding their tools (the catalogue).

- ``do_add_upstream``: an Owner or Admin registers a Streamable HTTP URL under a short name
  (the prefix of its tools at Magistrate's endpoint), with a sealed credential Magistrate sends
  towards the upstream (``Authorization: Bearer``, a custom header, or OAuth client credentials
  whose tokens oauth.py fetches), a redaction mode and the
  policy new tools start with (``denied`` by default). The URL passes the egress policy when it
  is saved, and again at every connection (tenant_runtime/outbound.py).
- ``do_sync_tools``: the upstream's ``tools/list`` folded into the catalogue. A new tool takes
  the upstream's default policy; a decided tool whose name, description, schema or annotations
  changed since an Admin decided it (``pinned_digest``) is quarantined: hidden and refused until
  decided again; the change is audited. Every description is scanned (scan.py).
- ``do_decide_tool``: allowed / denied / restricted (with an approval action class), pinning
  the tool as it is now and lifting a quarantine.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.agents.models import Agent
from tenant_runtime.agents.service import AgentEvents, record_event
from tenant_runtime.approvals import classes
from tenant_runtime.context import TenantContext
from tenant_runtime.gateway.egress import check_address
from tenant_runtime.mcp import oauth
from tenant_runtime.mcp.exceptions import UpstreamInvalid, UpstreamNotFound
from tenant_runtime.mcp.models import (
    CREDENTIAL_KINDS,
    OAUTH_AUTH_METHODS,
    POLICIES,
    REDACTION_MODES,
    McpCall,
    McpClient,
    McpTool,
    McpUpstream,
)
from tenant_runtime.mcp.scan import scan

TABLE = "mcp_upstreams"
NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
HEADER = re.compile(r"^[A-Za-z0-9-]{1,100}$")
SEPARATOR = "__"  # upstream name + SEPARATOR + tool name, at Magistrate's endpoint
FORBIDDEN_HEADERS = frozenset({"host", "content-type", "content-length", "accept",
                               "mcp-session-id", "mcp-protocol-version", "cookie"})
CLIENT_PHASE = "shadow"  # the phase an MCP client's agent starts in


class McpEvents:
    UPSTREAM_ADDED = "mcp.upstream_added"
    UPSTREAM_REMOVED = "mcp.upstream_removed"
    UPSTREAM_TOKEN_REFUSED = "mcp.upstream_token_refused"  # noqa: S105 - an event type
    TOOL_DISCOVERED = "mcp.tool_discovered"
    TOOL_DECIDED = "mcp.tool_decided"
    TOOL_QUARANTINED = "mcp.tool_quarantined"
    TOOL_CALLED = "mcp.tool_called"
    RESOURCE_READ = "mcp.resource_read"
    PROMPT_GOT = "mcp.prompt_got"
    COMPLETION_ASKED = "mcp.completion_asked"
    RESOURCE_SUBSCRIBED = "mcp.resource_subscribed"
    CLIENT_ASKED = "mcp.client_asked"  # a server-to-client request sent to the agent's client
    CLIENT_CONNECTED = "mcp.client_connected"


def now() -> datetime:
    return datetime.now(UTC)


# --- upstreams ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamInput:
    name: str
    url: str
    credential_kind: str = "none"
    credential: str = ""
    header_name: str = ""
    redaction: str = "internal"
    new_tools: str = "denied"
    # OAuth client credentials (credential_kind "oauth"): ``credential`` is the client secret,
    # or the PEM private key for private_key_jwt
    client_id: str = ""
    scope: str = ""
    token_endpoint: str = ""
    auth_method: str = "client_secret_basic"


def _checked_url(ctx: TenantContext, url: str, what: str) -> str:
    """An http(s) URL without credentials in it, that the egress policy lets Magistrate reach
    (checked again at every connection)."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamInvalid(f"The {what} must be an http:// or https:// URL.")
    if parts.username or parts.password:
        raise UpstreamInvalid(f"Put the credential in its own field, not in the {what}.")
    if len(url) > 2000:
        raise UpstreamInvalid(f"The {what} is over 2,000 characters.")
    check_address(ctx.egress, url)
    return url


def _checked_oauth(ctx: TenantContext, data: UpstreamInput) -> UpstreamInput:
    """Client id, secret (or private key), scope, token endpoint and method of an ``oauth``
    credential."""
    client_id, scope = data.client_id.strip(), " ".join(data.scope.split())
    if not client_id or len(client_id) > 255 or not client_id.isprintable():
        raise UpstreamInvalid("Give the OAuth client id (at most 255 printable characters).")
    if len(scope) > 1000 or not scope.isprintable():
        raise UpstreamInvalid("The OAuth scope is at most 1,000 printable characters, scopes "
                              "separated by spaces.")
    if data.auth_method not in OAUTH_AUTH_METHODS:
        raise UpstreamInvalid("The client authentication is one of "
                              f"{', '.join(OAUTH_AUTH_METHODS)}.")
    endpoint = _checked_url(ctx, data.token_endpoint, "token endpoint") \
        if data.token_endpoint.strip() else ""
    secret = data.credential.strip()
    if data.auth_method == "private_key_jwt":
        try:
            if len(secret) > 10_000:
                raise ValueError("too long")
            oauth.signing_algorithm(secret)
        except ValueError:
            raise UpstreamInvalid("For private_key_jwt give the client's private key in PEM "
                                  "(EC P-256/384/521, RSA or Ed25519).") from None
    elif not secret or len(secret) > 4096 or any(ch in secret for ch in "\r\n"):
        raise UpstreamInvalid("Give the OAuth client secret: one line of at most 4,096 "
                              "characters.")
    return UpstreamInput(data.name, data.url, "oauth", secret, "", data.redaction,
                         data.new_tools, client_id, scope, endpoint, data.auth_method)


def _checked(ctx: TenantContext, data: UpstreamInput) -> UpstreamInput:
    name = data.name.strip().lower()
    if not NAME.match(name) or SEPARATOR in name:
        raise UpstreamInvalid("Name the upstream with 1 to 32 lowercase letters, digits or "
                              "single hyphens, starting with a letter (it prefixes its tools).")
    url = _checked_url(ctx, data.url, "upstream's URL (its Streamable HTTP endpoint)")
    if data.credential_kind not in CREDENTIAL_KINDS:
        raise UpstreamInvalid(f"The credential kind is one of {', '.join(CREDENTIAL_KINDS)}.")
    if data.redaction not in REDACTION_MODES:
        raise UpstreamInvalid("Redaction is 'internal' (arguments go as they are) or "
                              "'external' (arguments are redacted before they leave).")
    if data.new_tools not in POLICIES:
        raise UpstreamInvalid(f"New tools start as one of {', '.join(POLICIES)}.")
    if data.credential_kind == "oauth":
        return _checked_oauth(ctx, UpstreamInput(
            name, url, "oauth", data.credential, "", data.redaction, data.new_tools,
            data.client_id, data.scope, data.token_endpoint, data.auth_method))
    credential = data.credential.strip()
    if data.credential_kind != "none" and not credential:
        raise UpstreamInvalid("Give the credential Magistrate sends to the upstream.")
    if len(credential) > 4096 or any(ch in credential for ch in "\r\n"):
        raise UpstreamInvalid("The credential is one line of at most 4,096 characters.")
    header = data.header_name.strip()
    if data.credential_kind == "header" and (
            not HEADER.match(header) or header.lower() in FORBIDDEN_HEADERS):
        raise UpstreamInvalid("Name the custom header with letters, digits and hyphens (not "
                              "one HTTP or MCP itself uses).")
    return UpstreamInput(name, url, data.credential_kind,
                         credential if data.credential_kind != "none" else "",
                         header if data.credential_kind == "header" else "",
                         data.redaction, data.new_tools)


def do_add_upstream(s: Session, ctx: TenantContext, data: UpstreamInput) -> McpUpstream:
    data = _checked(ctx, data)
    oauth_kind = data.credential_kind == "oauth"
    row = McpUpstream(name=data.name, url=data.url, credential_kind=data.credential_kind,
                      header_name=data.header_name or None, redaction=data.redaction,
                      new_tools=data.new_tools, created_by=ctx.actor.name,
                      oauth_client_id=data.client_id if oauth_kind else None,
                      oauth_scope=(data.scope or None) if oauth_kind else None,
                      oauth_token_endpoint=(data.token_endpoint or None) if oauth_kind else None,
                      oauth_auth_method=data.auth_method if oauth_kind else None)
    try:
        with s.begin_nested():
            s.add(row)
            s.flush()
    except IntegrityError:
        raise UpstreamInvalid(f"There is already an upstream named {data.name!r}.") from None
    if data.credential:
        row.credential_sealed = ctx.sealer.seal(data.credential, table=TABLE,
                                                column="credential_sealed", row_key=row.id)
    audit.record(s, McpEvents.UPSTREAM_ADDED, actor=ctx.actor, target_type="mcp_upstream",
                 target_id=row.id, details={"name": row.name, "host": urlsplit(row.url).hostname,
                                            "credential_kind": row.credential_kind,
                                            **({"client_id": row.oauth_client_id,
                                                "auth_method": row.oauth_auth_method,
                                                "token_endpoint": row.oauth_token_endpoint
                                                or "discovered"} if oauth_kind else {}),
                                            "redaction": row.redaction,
                                            "new_tools": row.new_tools})
    return row


def access_upstream(s: Session, upstream_id: int) -> McpUpstream:
    row = s.get(McpUpstream, upstream_id)
    if row is None:
        raise UpstreamNotFound()
    return row


def do_remove_upstream(s: Session, ctx: TenantContext, upstream_id: int) -> None:
    row = access_upstream(s, upstream_id)
    audit.record(s, McpEvents.UPSTREAM_REMOVED, actor=ctx.actor, target_type="mcp_upstream",
                 target_id=row.id, details={"name": row.name})
    s.delete(row)
    s.flush()


def list_upstreams(s: Session) -> list[McpUpstream]:
    return list(s.scalars(select(McpUpstream).order_by(McpUpstream.name)))


def upstream_credential(ctx: TenantContext, row: McpUpstream) -> oauth.UpstreamCredential:
    """What Magistrate presents to the upstream: its own credential, never the client's."""
    if row.credential_sealed is None or row.credential_kind == "none":
        return oauth.UpstreamCredential()
    secret = ctx.sealer.open_text(row.credential_sealed, table=TABLE,
                                  column="credential_sealed", row_key=row.id)
    if row.credential_kind == "bearer":
        return oauth.UpstreamCredential({"Authorization": f"Bearer {secret}"})
    if row.credential_kind == "header":
        return oauth.UpstreamCredential({str(row.header_name): secret})
    grant = oauth.ClientCredentials(
        upstream=row.name, server_url=row.url, client_id=str(row.oauth_client_id),
        secret=secret, method=str(row.oauth_auth_method), scope=row.oauth_scope or "",
        token_endpoint=row.oauth_token_endpoint or "",
        key=(ctx.tenant_id, row.id, hashlib.sha256(json.dumps(
            [row.url, row.oauth_client_id, row.oauth_auth_method, row.oauth_scope,
             row.oauth_token_endpoint, row.credential_sealed.hex()]).encode()).hexdigest()))
    return oauth.UpstreamCredential(grant=grant,
                                    on_refused=_token_refused(ctx, row.id, row.name))


def _token_refused(ctx: TenantContext, upstream_id: int, name: str) -> oauth.Refused:
    """The audit event of an authorization server's refusal (its sentence, no secret)."""
    def record(reason: str) -> None:
        with ctx.session() as s, s.begin():
            audit.record(s, McpEvents.UPSTREAM_TOKEN_REFUSED, actor=ctx.actor,
                         target_type="mcp_upstream", target_id=upstream_id,
                         details={"name": name, "reason": reason})

    async def report(reason: str) -> None:
        await anyio.to_thread.run_sync(record, reason)

    return report


# --- the catalogue -----------------------------------------------------------------------------


def tool_digest(name: str, description: str, schema: Any, annotations: Any) -> str:
    """What an Admin's decision pins: name, description, input schema and annotations."""
    blob = json.dumps([name, description, schema, annotations], sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def side_effecting_of(annotations: dict[str, Any]) -> bool:
    """Read-only only when the upstream says so (``readOnlyHint``); anything else may act."""
    return annotations.get("readOnlyHint") is not True


@dataclass(frozen=True)
class AnnouncedTool:
    name: str
    description: str
    input_schema: dict[str, Any]
    annotations: dict[str, Any]


def do_sync_tools(s: Session, ctx: TenantContext, upstream: McpUpstream,
                  announced: list[AnnouncedTool]) -> list[McpTool]:
    """Fold what the upstream announced into the catalogue (see the module's docstring)."""
    rows = {t.name: t for t in s.scalars(select(McpTool).where(
        McpTool.upstream_id == upstream.id).with_for_update())}
    for tool in announced:
        digest = tool_digest(tool.name, tool.description, tool.input_schema, tool.annotations)
        flags = scan(tool.description, tool.input_schema)
        row = rows.get(tool.name)
        if row is None:
            row = McpTool(upstream_id=upstream.id, name=tool.name, description=tool.description,
                          input_schema=tool.input_schema, annotations=tool.annotations,
                          policy=upstream.new_tools, seen_digest=digest, flags=flags,
                          side_effecting=side_effecting_of(tool.annotations),
                          pinned_digest=digest if upstream.new_tools != "denied" else None)
            s.add(row)
            s.flush()
            rows[tool.name] = row
            audit.record(s, McpEvents.TOOL_DISCOVERED, actor=ctx.actor, target_type="mcp_tool",
                         target_id=row.id, details={"upstream": upstream.name, "tool": row.name,
                                                    "policy": row.policy, "flags": flags,
                                                    "digest": digest})
            continue
        if row.seen_digest == digest:
            continue
        row.description, row.input_schema = tool.description, tool.input_schema
        row.annotations, row.seen_digest, row.flags = tool.annotations, digest, flags
        if not row.side_effecting_override:
            row.side_effecting = side_effecting_of(tool.annotations)
        row.updated_at = now()
        if row.pinned_digest is not None and row.pinned_digest != digest \
                and not row.quarantined:
            row.quarantined = True
            audit.record(s, McpEvents.TOOL_QUARANTINED, actor=ctx.actor,
                         target_type="mcp_tool", target_id=row.id,
                         details={"upstream": upstream.name, "tool": row.name,
                                  "pinned_digest": row.pinned_digest, "seen_digest": digest,
                                  "flags": flags})
    upstream.synced_at = now()
    return [rows[t.name] for t in announced]


def list_tools(s: Session, upstream_id: int | None = None) -> list[tuple[McpTool, McpUpstream]]:
    query = select(McpTool, McpUpstream).join(McpUpstream, McpUpstream.id == McpTool.upstream_id)
    if upstream_id is not None:
        query = query.where(McpTool.upstream_id == upstream_id)
    return [(t, u) for t, u in s.execute(query.order_by(McpUpstream.name, McpTool.name))]


def access_tool(s: Session, tool_id: int) -> McpTool:
    row = s.get(McpTool, tool_id)
    if row is None:
        raise UpstreamNotFound("No such tool in the catalogue.")
    return row


def do_decide_tool(s: Session, ctx: TenantContext, tool_id: int, *, policy: str,
                   action_class: str | None = None,
                   side_effecting: bool | None = None) -> McpTool:
    """An Admin's decision on one tool, pinning it as the upstream last announced it."""
    row = access_tool(s, tool_id)
    if policy not in POLICIES:
        raise UpstreamInvalid(f"A tool is one of {', '.join(POLICIES)}.")
    name: str | None = None
    if policy == "restricted":
        name = classes.normal_name(action_class or "")
        if not name:
            raise UpstreamInvalid("Name the approval action class a restricted tool needs.")
        if classes.class_by_name(s, name) is None:
            classes.do_add_default_class(s, ctx, name)
    row.policy, row.action_class = policy, name
    row.pinned_digest, row.quarantined = row.seen_digest, False
    if side_effecting is not None:
        row.side_effecting, row.side_effecting_override = side_effecting, True
    row.decided_by, row.updated_at = ctx.actor.name, now()
    audit.record(s, McpEvents.TOOL_DECIDED, actor=ctx.actor, target_type="mcp_tool",
                 target_id=row.id, details={"tool": row.name, "policy": policy,
                                            "action_class": name, "digest": row.pinned_digest,
                                            "side_effecting": row.side_effecting})
    return row


# --- clients -----------------------------------------------------------------------------------


def client_agent(s: Session, ctx: TenantContext, *, api_key_id: int, key_name: str) -> Agent:
    """The agent an API key acts as at the MCP endpoint: made on its first request, in
    ``CLIENT_PHASE``; an Admin moves it on the Agents page like any other."""
    found = s.scalars(select(Agent).join(McpClient, McpClient.agent_id == Agent.id)
                      .where(McpClient.api_key_id == api_key_id)).first()
    if found is not None:
        return found
    agent = Agent(name=f"mcp: {key_name[:80]} (key {api_key_id})", phase=CLIENT_PHASE,
                  tools=[], created_by=ctx.actor.name)
    try:
        with s.begin_nested():
            s.add(agent)
            s.flush()
            s.add(McpClient(api_key_id=api_key_id, agent_id=agent.id))
            s.flush()
    except IntegrityError:  # a concurrent first request made it
        return client_agent(s, ctx, api_key_id=api_key_id, key_name=key_name)
    record_event(s, ctx, AgentEvents.CREATED, agent, mcp_key=api_key_id, phase=agent.phase)
    audit.record(s, McpEvents.CLIENT_CONNECTED, actor=ctx.actor, target_type="agent",
                 target_id=agent.id, details={"api_key": api_key_id})
    return agent


# --- history -----------------------------------------------------------------------------------

PAGE = 50


@dataclass(frozen=True)
class CallPage:
    rows: list[tuple[McpCall, str | None]]  # the call and its agent's name
    next_before_id: int | None


def list_calls(s: Session, *, agent_id: int | None = None, before_id: int | None = None,
               limit: int = PAGE) -> CallPage:
    """The most recent calls first (of one agent, or all), ``limit`` a page, older pages by
    ``before_id`` (keyset paging on the call's id)."""
    query = select(McpCall, Agent.name).outerjoin(Agent, Agent.id == McpCall.agent_id)
    if agent_id is not None:
        query = query.where(McpCall.agent_id == agent_id)
    if before_id is not None:
        query = query.where(McpCall.id < before_id)
    rows: list[tuple[McpCall, str | None]] = [
        (c, n) for c, n in s.execute(query.order_by(McpCall.id.desc()).limit(limit + 1))]
    more = len(rows) > limit
    rows = rows[:limit]
    return CallPage(rows, rows[-1][0].id if more and rows else None)


@dataclass(frozen=True)
class ConnectedClient:
    agent_id: int
    agent: str
    phase: str
    api_key_id: int
    since: datetime
    last_call: datetime | None
    calls_24h: int


def connected_clients(s: Session, *, now_at: datetime | None = None) -> list[ConnectedClient]:
    """Every API key that has acted as an agent at the endpoint, most recently active first,
    with its calls in the last 24 hours."""
    since = (now_at or now()) - timedelta(hours=24)
    last = (select(McpCall.agent_id, func.max(McpCall.at).label("last"),
                   func.count().filter(McpCall.at >= since).label("recent"))
            .group_by(McpCall.agent_id).subquery())
    rows = s.execute(
        select(McpClient, Agent, last.c.last, last.c.recent)
        .join(Agent, Agent.id == McpClient.agent_id)
        .outerjoin(last, last.c.agent_id == McpClient.agent_id))
    found = [ConnectedClient(agent.id, agent.name, agent.phase, client.api_key_id,
                             client.created_at, last_at, int(recent or 0))
             for client, agent, last_at, recent in rows]
    return sorted(found, key=lambda c: c.last_call or c.since, reverse=True)
