"""Governed MCP: a tenant's agents reach their tools through Magistrate.

Owners and Admins register upstream MCP servers (``models.McpUpstream``); their tools land in
a catalogue (``models.McpTool``) where each is allowed, denied or restricted; Magistrate serves
one MCP endpoint per tenant (``server.py``) that aggregates the upstreams' tools, prefixed by the
upstream's short name, and decides every ``tools/call`` in ``gate.py``: catalogue policy and
quarantine, the calling agent's phase, named approvals, redaction for external upstreams, a
rate limit, and one audit event per call.

    models.py     tables: upstreams, tools (the catalogue), clients (an API key acting as an agent)
    scan.py       the description scan for hidden instructions
    service.py    registering upstreams, syncing and deciding the catalogue (do_*, access_*)
    upstream.py   talking to an upstream with the official SDK over the egress-checked client
    gate.py       the decision on one tools/call, before and after the upstream
    server.py     the MCP server (the SDK's low-level Server) behind the endpoint
    routes.py     the dashboard page
"""
