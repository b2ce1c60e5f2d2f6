"""The decision on one ``tools/call`` (DESIGN.md, "Tools (MCP)"), in this order:

0. **name**: ``<upstream>__<tool>``, or a bare tool name that exactly one upstream offers
   (``resolve_tool``); from then on the call is that upstream's tool under its full name, so
   every step below (and the rate limit's counter, and the audit event) is the same whichever
   name the agent used; an ambiguous bare name is refused, naming the candidates;
1. **catalogue**: an unknown, ``denied`` or quarantined tool is refused;
2. **phase** of the calling agent: ``off`` refuses every call; in ``shadow`` a side-effecting
   call is not forwarded, it is recorded as a shadow run (what would have been done) and the
   agent is told so; read-only calls go through;
3. **rate limit** per agent and per tool (the edge's limiter);
4. **approval**: a ``restricted`` tool (its action class), or a side-effecting tool of an agent
   in ``assist`` (action class ``mcp.tool_call``), needs an approved request bound to the
   upstream, the tool, the agent and the digest of the exact arguments, asked for by the human
   behind the agent (the API key's creator, who therefore cannot approve it: approvals'
   ``decide``), unexpired and not yet used; it is consumed (exactly once) before the call is
   forwarded. Without one, a request is opened (or the open one named again) and the agent gets
   an ``isError`` result naming its id;
5. **redaction** of the arguments for an ``external`` upstream; placeholders are restored in
   the result (server.py).

Everything that ends the call here writes its audit event in the same transaction as the
decision; a forwarded call's event is written once the upstream answered (``record_call``).
Events hold the agent, upstream, tool, outcome, latency, the arguments' digest and the approval
id, never arguments or results."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from tenant_runtime import audit
from tenant_runtime.agents import service as agents
from tenant_runtime.agents.models import Agent
from tenant_runtime.approvals import classes
from tenant_runtime.approvals import service as approvals
from tenant_runtime.approvals.arguments import do_seal_arguments
from tenant_runtime.approvals.models import ApprovalRequest
from tenant_runtime.context import TenantContext
from tenant_runtime.gateway import config
from tenant_runtime.mcp import service
from tenant_runtime.mcp.models import McpCall, McpTool, McpUpstream
from tenant_runtime.mcp.oauth import UpstreamCredential
from tenant_runtime.redaction.arguments import redact_arguments
from tenant_runtime.redaction.placeholders import Restorer

ASSIST_ACTION = "mcp.tool_call"
MAX_SHADOW_TEXT = 4000

# outcomes, as audited
FORWARDED = "forwarded"
UNKNOWN = "unknown_tool"
DENIED = "denied"
QUARANTINED = "quarantined"
PHASE_OFF = "agent_off"
SHADOWED = "shadowed"
PENDING = "approval_pending"
RATE_LIMITED = "rate_limited"
UPSTREAM_ERROR = "upstream_error"
UPSTREAM_NO_TOKEN = "upstream_no_token"  # noqa: S105 - an outcome: its authorization server gave none
AMBIGUOUS = "ambiguous_name"
CANCELLED = "cancelled"  # the client cancelled the call in flight (notifications/cancelled)


@dataclass(frozen=True)
class Caller:
    """The API key at the MCP endpoint, resolved by the control plane."""

    api_key_id: int
    key_name: str


@dataclass
class Plan:
    """What to do with one call: ``refusal`` set means answer it with an error result and do
    not forward; otherwise forward ``arguments`` to ``tool`` at ``url``."""

    public_name: str
    digest: str
    agent_id: int | None = None
    upstream: str | None = None
    tool: str | None = None
    outcome: str = FORWARDED
    refusal: str | None = None
    structured: dict[str, Any] | None = None
    approval_id: str | None = None
    url: str = ""
    credential: UpstreamCredential = field(default_factory=UpstreamCredential, repr=False)
    arguments: dict[str, Any] = field(default_factory=dict, repr=False)
    restorer: Restorer | None = field(default=None, repr=False)
    redacted: int = 0
    api_key_id: int | None = None
    kind: str = "tool"
    result_digest: str | None = None

    @property
    def forward(self) -> bool:
        return self.refusal is None


def arguments_digest(arguments: dict[str, Any]) -> str:
    blob = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def split_name(public_name: str) -> tuple[str, str]:
    upstream, _, tool = public_name.partition(service.SEPARATOR)
    return upstream, tool


def resolve_tool(s: Any, public_name: str) -> list[tuple[McpTool, McpUpstream]]:
    """The catalogue rows a name at the endpoint may mean. ``<upstream>__<tool>`` means that
    tool when there is one. Otherwise the name is taken as a bare tool name: the tools of that
    name this agent could see in ``tools/list`` (``visible``), or, when none is, the one hidden
    tool of that name (a denied or quarantined tool, which then meets its own refusal in
    ``plan_call``, as by its full name). One row: the call goes on; more: the name is
    ambiguous; none: unknown. Resolution only names the row; every rule is ``plan_call``'s."""
    query = select(McpTool, McpUpstream).join(McpUpstream, McpUpstream.id == McpTool.upstream_id)
    upstream_name, tool_name = split_name(public_name)
    found = s.execute(query.where(McpUpstream.name == upstream_name,
                                  McpTool.name == tool_name)).first()
    if found is not None:
        return [(found[0], found[1])]
    bare = [(t, u) for t, u in s.execute(query.where(McpTool.name == public_name))]
    shown = [(t, u) for t, u in bare if visible(t)]
    return shown or (bare if len(bare) == 1 else [])


def visible(row: McpTool) -> bool:
    """Listed at the endpoint: decided allowed or restricted, not quarantined."""
    return row.policy in ("allowed", "restricted") and not row.quarantined \
        and row.pinned_digest == row.seen_digest


def _details(plan: Plan, latency_ms: int | None = None) -> dict[str, Any]:
    return {"agent_id": plan.agent_id, "upstream": plan.upstream, "tool": plan.tool,
            "outcome": plan.outcome, "latency_ms": latency_ms,
            "arguments_digest": plan.digest, "approval_id": plan.approval_id,
            "redacted": plan.redacted,
            **({"result_digest": plan.result_digest} if plan.result_digest else {})}


EVENTS = {"tool": service.McpEvents.TOOL_CALLED, "resource": service.McpEvents.RESOURCE_READ,
          "prompt": service.McpEvents.PROMPT_GOT,
          "completion": service.McpEvents.COMPLETION_ASKED,
          "subscription": service.McpEvents.RESOURCE_SUBSCRIBED}
NAMED = {"resource": "resource", "prompt": "prompt", "completion": "ref",
         "subscription": "resource"}  # the name's key
ROW_KIND = {"subscription": "resource"}  # the history's kind: a subscription reads a resource


def record(s: Any, ctx: TenantContext, plan: Plan, latency_ms: int | None = None) -> None:
    """The one record of a request at the endpoint: its hash-chained audit event and its row
    in the history (``McpCall``), both without arguments or results."""
    details = _details(plan, latency_ms)
    if plan.kind != "tool":
        details = {NAMED[plan.kind]: details.pop("tool"), **details}
    audit.record(s, EVENTS[plan.kind], actor=ctx.actor, target_type="agent",
                 target_id=plan.agent_id, details=details)
    s.add(McpCall(agent_id=plan.agent_id, api_key_id=plan.api_key_id,
                  kind=ROW_KIND.get(plan.kind, plan.kind),
                  upstream=plan.upstream, name=(plan.tool or plan.public_name)[:2000],
                  outcome=plan.outcome, latency_ms=latency_ms, approval_id=plan.approval_id,
                  arguments_digest=plan.digest))


def _refuse(s: Any, ctx: TenantContext, plan: Plan, outcome: str, sentence: str) -> Plan:
    plan.outcome, plan.refusal = outcome, sentence
    record(s, ctx, plan)
    return plan


def _approval(s: Any, ctx: TenantContext, plan: Plan, action: str, now: datetime,
              upstream: McpUpstream, arguments: dict[str, Any]) -> str | None:
    """Consume a usable approval for exactly this call and return its id; or open (or name
    again) a pending one, set the refusal, and return None. A request it opens carries the
    arguments, sealed, for its approvers (approvals/arguments.py): for an ``external``
    upstream, the redacted form that would be sent."""
    payload = {"upstream": plan.upstream, "tool": plan.tool, "agent_id": plan.agent_id,
               "arguments_digest": plan.digest}
    _, requester, _ = approvals.requester_of(ctx.actor)
    found = list(s.scalars(
        select(ApprovalRequest)
        .where(ApprovalRequest.action == action, ApprovalRequest.payload == payload,
               ApprovalRequest.requested_by_type == "user",
               ApprovalRequest.requested_by_id == requester)
        .order_by(ApprovalRequest.created_at.desc()).limit(20)))
    for req in found:
        if req.state == "approved" and req.expires_at > now and req.executed_at is None:
            approvals.consume(s, ctx, req.id, now=now, via="mcp")
            return str(req.id)
    pending = next((r for r in found if r.state == "pending" and r.expires_at > now), None)
    if pending is None:
        if classes.class_by_name(s, action) is None:
            classes.do_add_default_class(s, ctx, action)
        pending = approvals.request_action(s, ctx, action, payload, via="api", now=now)
        shown, _, redactions = _outgoing(s, ctx, upstream, arguments)
        do_seal_arguments(ctx, pending, shown, redacted=upstream.redaction == "external",
                          redactions=redactions)
    plan.approval_id = str(pending.id)
    where = f"/tenants/{ctx.tenant_id}/approvals/{pending.id}"
    plan.structured = {"approval": {"id": str(pending.id), "state": "pending", "action": action,
                                    "where": where,
                                    "expires_at": pending.expires_at.isoformat()}}
    plan.outcome = PENDING
    plan.refusal = (f"{plan.public_name} needs an approval before it runs: approval request "
                    f"{pending.id} ({action}) is pending at {where}. Someone other than the "
                    "person behind this agent must approve it; then repeat this exact call "
                    "(the same arguments) once.")
    return None


def _outgoing(s: Any, ctx: TenantContext, upstream: McpUpstream, arguments: dict[str, Any],
              after: Restorer | None = None) -> tuple[dict[str, Any], Restorer | None, int]:
    """The arguments as they leave for ``upstream``: redacted with the tenant's profile for an
    ``external`` one (with the restorer for its answer and the count of values replaced),
    as they are otherwise. ``after``: the restorer of the call this value belongs to."""
    if upstream.redaction != "external":
        return arguments, after, 0
    profile = config.profile_of(ctx, config.load_settings(s))
    redacted, restorer, counts = redact_arguments(arguments, profile, after=after)
    return redacted, restorer, sum(counts.values())


def _forward(s: Any, ctx: TenantContext, plan: Plan, upstream: McpUpstream,
             arguments: dict[str, Any]) -> None:
    """Ready the plan to go: the upstream's address and credential, the arguments as they
    leave (``_outgoing``)."""
    plan.url = upstream.url
    plan.credential = service.upstream_credential(ctx, upstream)
    plan.arguments, plan.restorer, plan.redacted = _outgoing(s, ctx, upstream, arguments)


def plan_call(ctx: TenantContext, caller: Caller, public_name: str, arguments: dict[str, Any],
              *, limit: Callable[[int, str], str | None] | None = None,
              now: datetime | None = None) -> Plan:
    """Decide one call (see the module's docstring). ``limit(agent_id, public_name)`` answers
    a sentence when the call is over a rate limit."""
    now = now or datetime.now(UTC)
    plan = Plan(public_name=public_name, digest=arguments_digest(arguments),
                api_key_id=caller.api_key_id)
    with ctx.session() as s, s.begin():
        agent = service.client_agent(s, ctx, api_key_id=caller.api_key_id,
                                     key_name=caller.key_name)
        plan.agent_id = agent.id
        candidates = resolve_tool(s, public_name)
        if not candidates:
            return _refuse(s, ctx, plan, UNKNOWN, f"There is no tool named {public_name!r} "
                           "here; tools/list names the tools this agent may call.")
        if len(candidates) > 1:
            names = sorted(f"{u.name}{service.SEPARATOR}{t.name}" for t, u in candidates)
            refused = _refuse(s, ctx, plan, AMBIGUOUS, f"{len(names)} upstreams offer a tool "
                              f"named {public_name!r}; call it by its full name: "
                              f"{', '.join(names)}.")
            refused.structured = {"candidates": names}
            return refused
        row, upstream = candidates[0]
        # from here on the call is known by its full name, whichever name the agent used
        public_name = plan.public_name = f"{upstream.name}{service.SEPARATOR}{row.name}"
        plan.upstream, plan.tool = upstream.name, row.name
        if row.quarantined or (row.policy != "denied" and row.pinned_digest != row.seen_digest):
            return _refuse(s, ctx, plan, QUARANTINED, f"{public_name} is quarantined: its "
                           "upstream changed its name, description or schema since an Admin "
                           "allowed it. An Admin must review it again.")
        if row.policy == "denied":
            return _refuse(s, ctx, plan, DENIED, f"{public_name} is not allowed for this "
                           "tenant's agents.")
        phase = s.scalar(select(Agent.phase).where(Agent.id == agent.id))
        if phase == "off":
            return _refuse(s, ctx, plan, PHASE_OFF, f"This agent ({agent.name}) is off: it may "
                           "call no tools until an Admin moves it to shadow.")
        if phase == "shadow" and row.side_effecting:
            text = json.dumps({"tool": public_name, "arguments": arguments},
                              ensure_ascii=False)[:MAX_SHADOW_TEXT]
            agents.record_run(s, ctx, agent.id, proposed=text,
                              actual="not forwarded: the agent is in shadow", agreed=False)
            refused = _refuse(s, ctx, plan, SHADOWED, f"{public_name} changes things, and this "
                              "agent is in shadow: the call was recorded as a shadow run (what "
                              "it would have done) and not forwarded.")
            refused.structured = {"shadow": True, "forwarded": False}
            return refused
        if limit is not None:
            over = limit(agent.id, public_name)
            if over is not None:
                return _refuse(s, ctx, plan, RATE_LIMITED, over)
        action = (row.action_class or ASSIST_ACTION) if row.policy == "restricted" else (
            ASSIST_ACTION if phase == "assist" and row.side_effecting else None)
        if action is not None:
            approval_id = _approval(s, ctx, plan, action, now, upstream, arguments)
            if approval_id is None:
                record(s, ctx, plan)
                return plan
            plan.approval_id = approval_id
        _forward(s, ctx, plan, upstream, arguments)
    return plan


def record_call(ctx: TenantContext, plan: Plan, *, outcome: str, latency_ms: int) -> None:
    """The audit event of a forwarded call, once the upstream answered (or failed)."""
    plan.outcome = outcome
    with ctx.session() as s, s.begin():
        record(s, ctx, plan, latency_ms)


def record_client_asked(ctx: TenantContext, plan: Plan, *, kind: str, outcome: str,
                        origin: str) -> None:
    """The audit event of one request sent to the agent's client during ``plan``'s call
    (relay.py): ``kind`` ``elicitation`` or ``sampling``, ``origin`` the upstream that asked
    (``upstream``) or Magistrate telling of a pending approval (``approval``), ``outcome``
    the client's answer (``accept``, ``decline``, ``cancel``, ``answered``) or why there was
    none (``error``, ``timeout``). Never the message or the answer."""
    pending = (plan.structured or {}).get("approval") or {}
    with ctx.session() as s, s.begin():
        audit.record(s, service.McpEvents.CLIENT_ASKED, actor=ctx.actor, target_type="agent",
                     target_id=plan.agent_id,
                     details={"kind": kind, "origin": origin, "outcome": outcome,
                              "upstream": plan.upstream, "tool": plan.tool,
                              "approval_id": plan.approval_id or pending.get("id")})


def outgoing(ctx: TenantContext, plan: Plan, value: dict[str, Any]) -> dict[str, Any]:
    """``value`` as it may leave for ``plan``'s upstream: what the agent's client answers an
    upstream's elicitation or sampling request passes the same redaction as the call's
    arguments (``_outgoing``: for an ``external`` upstream only), with placeholders of its
    own, which the call's restorer then restores in the result as well."""
    with ctx.session() as s, s.begin():
        upstream = s.scalars(select(McpUpstream).where(McpUpstream.name == plan.upstream)
                             ).first()
        if upstream is None:
            return value
        redacted, plan.restorer, _ = _outgoing(s, ctx, upstream, value, after=plan.restorer)
        return redacted


# --- resources and prompts ----------------------------------------------------------------------

RESOURCE_SCHEME = "magistrate"  # magistrate://<upstream>/<the upstream's own URI>


def public_uri(upstream_name: str, uri: str) -> str:
    """A resource's URI at Magistrate's endpoint: the upstream's name, then its own URI, so
    two upstreams' ``file:///readme`` do not collide."""
    return f"{RESOURCE_SCHEME}://{upstream_name}/{uri}"


def split_uri(public: str) -> tuple[str, str]:
    prefix = f"{RESOURCE_SCHEME}://"
    if not public.startswith(prefix):
        return "", ""
    upstream, _, uri = public[len(prefix):].partition("/")
    return upstream, uri


def template_matches(template: str, uri: str) -> bool:
    """Whether ``uri`` is one of a resource template's URIs (RFC 6570: ``{x}`` is one path
    segment, ``{+x}`` and ``{#x}`` anything, the other operators anything after their
    character)."""
    pattern, at = "", 0
    for found in re.finditer(r"\{([+#./;?&]?)[^{}]+\}", template):
        pattern += re.escape(template[at:found.start()])
        pattern += "[^/?#]+" if not found.group(1) else ".*"
        at = found.end()
    return re.fullmatch(pattern + re.escape(template[at:]), uri) is not None


def full_name(kind: str, upstream_name: str, name: str) -> str:
    """A resource's URI (or template), or a prompt's name, at Magistrate's endpoint."""
    if kind in ("resource", "template"):
        return public_uri(upstream_name, name)
    return f"{upstream_name}{service.SEPARATOR}{name}"


def plan_read(ctx: TenantContext, caller: Caller, kind: str, upstream_name: str, name: str,
              public_name: str, arguments: dict[str, Any], *,
              limit: Callable[[int, str], str | None] | None = None,
              candidates: list[str] | None = None, record_as: str | None = None) -> Plan:
    """Decide one resource read (``kind="resource"``, ``name`` the upstream's URI) or prompt
    get (``kind="prompt"``): the upstream must be registered, the agent not ``off``, under its
    rate limit. Reads and prompts change nothing, so the phase gates no further; an external
    upstream gets a prompt's arguments redacted, and the answer's placeholders are restored.
    ``candidates``: for a bare URI or name, the upstreams found offering it (server.py); more
    than one is refused as ambiguous, naming them. ``record_as="completion"``: a completion
    of one of the prompt's (or resource template's) arguments, decided as a read of it and
    recorded as a completion; ``record_as="subscription"``: a resource subscription, decided
    as a read of the resource and recorded as ``mcp.resource_subscribed``."""
    plan = Plan(public_name=public_name, digest=arguments_digest(arguments),
                api_key_id=caller.api_key_id, kind=record_as or kind)
    what = "resource" if kind == "resource" else "prompt"
    with ctx.session() as s, s.begin():
        agent = service.client_agent(s, ctx, api_key_id=caller.api_key_id,
                                     key_name=caller.key_name)
        plan.agent_id, plan.tool = agent.id, name
        if candidates is not None and len(candidates) > 1:
            names = sorted(full_name(kind, c, name) for c in candidates)
            return _refuse(s, ctx, plan, AMBIGUOUS, f"{len(names)} upstreams offer the {what} "
                           f"{public_name!r}; ask for it by its full name: {', '.join(names)}.")
        upstream = s.scalars(select(McpUpstream).where(McpUpstream.name == upstream_name)
                             ).first() if upstream_name and name else None
        if upstream is None:
            return _refuse(s, ctx, plan, UNKNOWN, f"There is no {what} {public_name!r} here; "
                           f"{'resources/list' if what == 'resource' else 'prompts/list'} "
                           f"names the {what}s this agent may use.")
        plan.upstream = upstream.name
        phase = s.scalar(select(Agent.phase).where(Agent.id == agent.id))
        if phase == "off":
            return _refuse(s, ctx, plan, PHASE_OFF, f"This agent ({agent.name}) is off: it may "
                           f"use no {what}s until an Admin moves it to shadow.")
        if limit is not None:
            over = limit(agent.id, public_name)
            if over is not None:
                return _refuse(s, ctx, plan, RATE_LIMITED, over)
        _forward(s, ctx, plan, upstream, arguments)
    return plan
