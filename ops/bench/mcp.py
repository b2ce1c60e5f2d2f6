"""Benchmark: what governed MCP adds to a ``tools/call``, with all governance on.

Self-contained: an embedded Postgres and Redis in a temporary folder, the control plane and one
provisioned tenant (``ops/bench/_stack.py``); then, each in a process of its own:

- the upstream: a real MCP server (the official SDK's ``MCPServer``, Streamable HTTP, stateless,
  JSON answers) with one read-only tool ``echo(text)``;
- Magistrate: ``python -m control_plane web`` (as ``magistrate web`` runs it), the operator
  letting tenants reach ``127.0.0.0/8``.

The tenant registers the upstream (``bench``, bearer credential, redaction ``external`` so the
arguments are redacted and the result restored: the text carries an e-mail address), an Admin
allows ``echo``, and an API key with the ``mcp`` scope acts as the agent (phase ``shadow``: a
read-only tool goes through). Rate limits are set high enough never to refuse.

Load: the official SDK client (``streamable_http_client`` + ``ClientSession``), ``CLIENTS``
concurrent sessions each making ``CALLS`` calls back to back after a warm-up, first to the
upstream directly, then through Magistrate (``bench__echo``); then the same with one session.
Figures: latency distributions (ms) of each, ``added_ms`` (governed − direct, percentile by
percentile), calls per second of each, ``errors`` (must be 0: an error result, an exception, or
a result that is not the original text), and ``checks``: one ``mcp.tool_called`` event with
outcome ``forwarded`` per governed call; the upstream never saw the e-mail address.

Prints one JSON object on stdout (progress on stderr) and removes everything it started.
Run: ``.venv/bin/python ops/bench/mcp.py`` (``--calls``, ``--clients`` for a quick run).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parents[2]
# run as a script, this folder comes first on the path, and this file would be found as the
# ``mcp`` package (the SDK) the app imports: take the folder off, put the repository on
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from control_plane.tenancy import api_keys  # noqa: E402
from control_plane.tenancy.service import access_tenant  # noqa: E402
from ops.bench import _stack  # noqa: E402
from ops.bench._stack import Stack, free_port, log, percentile  # noqa: E402
from ops.bench.gateway import UPSTREAM_NETWORK, start_gateway, wait_until  # noqa: E402
from tenant_runtime.context import Actor  # noqa: E402
from tenant_runtime.gateway.egress import EgressPolicy  # noqa: E402
from tenant_runtime.mcp import service  # noqa: E402
from tenant_runtime.mcp.models import McpTool  # noqa: E402
from tenant_runtime.models import AuditEvent  # noqa: E402

CLIENTS = 4
CALLS = 100
WARMUP = 10
UPSTREAM_KEY = "bench-upstream-secret"
TEXT = "Please reply to jane.doe@example.com about invoice 4411."


def serve_upstream(port: int, seen: Any) -> None:
    """The upstream MCP server, in its own process; ``seen`` counts arguments that held the
    raw e-mail address."""
    import logging

    import uvicorn
    from mcp.server.mcpserver import MCPServer
    from mcp_types import ToolAnnotations

    logging.getLogger("mcp").setLevel(logging.WARNING)
    server = MCPServer("bench-upstream")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def echo(text: str) -> str:
        """Echo the text back."""
        if "jane.doe@example.com" in text:
            with seen.get_lock():
                seen.value += 1
        return text

    uvicorn.run(server.streamable_http_app(stateless_http=True, json_response=True),
                host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def _session_calls(url: str, headers: dict[str, str], tool: str, calls: int,
                         latencies: list[float], errors: list[str]) -> None:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=headers, timeout=60) as http, \
            streamable_http_client(url, http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        for n in range(WARMUP + calls):
            started = time.perf_counter()
            try:
                result = await session.call_tool(tool, {"text": TEXT})
                text = " ".join(getattr(c, "text", "") for c in result.content)
                if result.is_error or text != TEXT:
                    errors.append(text[:200])
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                errors.append(type(exc).__name__)
            if n >= WARMUP:
                latencies.append((time.perf_counter() - started) * 1000)


def measure(url: str, headers: dict[str, str], tool: str, *, clients: int,
            calls: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(_session_calls(url, headers, tool, calls, latencies, errors)
                               for _ in range(clients)))
        return time.perf_counter() - started

    seconds = asyncio.run(main())
    return {"latency_ms": distribution(latencies), "calls": len(latencies),
            "calls_per_second": round(len(latencies) / seconds, 1), "errors": len(errors),
            "error_samples": errors[:3]}


def distribution(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    return {"p50": round(statistics.median(samples), 2),
            "p95": round(percentile(samples, 0.95), 2),
            "p99": round(percentile(samples, 0.99), 2), "max": round(max(samples), 2)}


def added(direct: dict[str, Any], governed: dict[str, Any]) -> dict[str, float]:
    return {q: round(governed["latency_ms"][q] - direct["latency_ms"][q], 2)
            for q in ("p50", "p95", "p99") if q in direct["latency_ms"]}


def configure(stack: Stack, tenant_id: int, upstream_url: str) -> tuple[str, Any]:
    ctx = dataclasses.replace(
        stack.tenant_context(tenant_id, actor=Actor("user", str(stack.owner_id),
                                                    stack.owner_email, "Owner"), pool_size=1),
        egress=EgressPolicy.parse(ambient_identity=False, private_networks=(UPSTREAM_NETWORK,)))
    with ctx.session() as s, s.begin():
        service.do_add_upstream(s, ctx, service.UpstreamInput(
            name="bench", url=upstream_url, credential_kind="bearer", credential=UPSTREAM_KEY,
            redaction="external", new_tools="denied"))
    with stack.session_factory() as s, s.begin():
        owner = stack.owner(s)
        _, key = api_keys.do_create_api_key(s, access_tenant(s, tenant_id, user=owner),
                                            name="bench agent", acting_user=owner,
                                            scopes=["mcp"])
    return key, ctx


def run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    log("starting Postgres, Redis and the control plane")
    stack.start()
    stack.start_redis()
    tenant_id = stack.add_tenant("bench", "Bench")
    upstream_port, web_port = free_port(), free_port()
    spawn = multiprocessing.get_context("spawn")
    seen = spawn.Value("i", 0)
    upstream = spawn.Process(
        target=serve_upstream, args=(upstream_port, seen), daemon=True)
    upstream.start()
    upstream_url = f"http://127.0.0.1:{upstream_port}/mcp"
    web = start_gateway(stack, web_port, workers=args.web_workers, extra_env={
        "MAGISTRATE_MCP_CALLS_PER_MINUTE": "100000000",
        "MAGISTRATE_MCP_TOOL_CALLS_PER_MINUTE": "100000000"})
    try:
        wait_until(lambda: httpx2.post(upstream_url, json={}, timeout=1).status_code < 500,
                   "the upstream", upstream.is_alive)
        key, ctx = configure(stack, tenant_id, upstream_url)
        endpoint = f"http://127.0.0.1:{web_port}/mcp/bench"
        headers = {"Authorization": f"Bearer {key}"}
        # the first tools/list folds the upstream's tools into the catalogue; allow echo
        measure(endpoint, headers, "bench__echo", clients=1, calls=0)
        asyncio.run(_list(endpoint, headers))
        with ctx.session() as s, s.begin():
            tool = s.scalars(select(McpTool).where(McpTool.name == "echo")).one()
            service.do_decide_tool(s, ctx, tool.id, policy="allowed")
        direct_headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
        report: dict[str, Any] = {"benchmark": "mcp", "clients": args.clients,
                                  "calls_per_client": args.calls,
                                  "web_workers": args.web_workers}
        for label, clients in (("concurrent", args.clients), ("concurrency_1", 1)):
            _stack.wait_for_quiet()
            log(f"{label}: direct")
            direct = measure(upstream_url, direct_headers, "echo", clients=clients,
                             calls=args.calls)
            _stack.wait_for_quiet()
            log(f"{label}: through Magistrate")
            governed = measure(endpoint, headers, "bench__echo", clients=clients,
                               calls=args.calls)
            report[label] = {"direct": direct, "governed": governed,
                             "added_ms": added(direct, governed)}
        with ctx.session() as s:
            forwarded = s.scalar(select(func.count()).select_from(AuditEvent).where(
                AuditEvent.event_type == service.McpEvents.TOOL_CALLED,
                AuditEvent.details["outcome"].astext == "forwarded"))
        governed_calls = sum(report[k]["governed"]["calls"] for k in ("concurrent",
                                                                       "concurrency_1"))
        warmups = WARMUP * (args.clients + 1)
        report["checks"] = {
            "audit_events_forwarded": forwarded,
            "one_event_per_governed_call": forwarded == governed_calls + warmups,
            "upstream_saw_raw_email_only_from_direct_calls":
                seen.value == sum(report[k]["direct"]["calls"] for k in
                                  ("concurrent", "concurrency_1")) + warmups,
        }
        report["errors"] = sum(report[k][side]["errors"] for k in ("concurrent",
                                                                   "concurrency_1")
                               for side in ("direct", "governed"))
        return report
    finally:
        web.terminate()
        web.wait(timeout=30)
        upstream.terminate()
        upstream.join(timeout=10)


async def _list(url: str, headers: dict[str, str]) -> None:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=headers, timeout=60) as http, \
            streamable_http_client(url, http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=CALLS, help="calls per client and phase")
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--web-workers", type=int, default=1)
    parser.add_argument("--quiet-wait", type=float, default=_stack.QUIET_WAIT_SECONDS)
    args = parser.parse_args()
    return _stack.run_benchmark(run, args)


if __name__ == "__main__":
    sys.exit(main())
