"""The official MCP conformance suite (npm ``@modelcontextprotocol/conformance``, pinned in
ops/conformance/) runs its server scenarios against Magistrate's endpoint, in front of the
reference upstream (tests/tenant_runtime/mcp/reference.py), everything of it allowed.

The suite's client sends no credential, so a one-line hop in front of Magistrate adds the
tenant key's ``Authorization`` header (as a configured MCP client does) and passes everything
else through untouched, streaming answers as they come (a call's stream carries the
upstream's elicitation request before the call's answer). The set of scenarios that pass is
asserted exactly: a regression fails, and so does a fix that is not recorded here and in
ops/MCP_CONFORMANCE.md, where every
expected failure is explained.

Node.js is Debian's (installed by .ci/run); without it the test is skipped, except in CI (or
with MAGISTRATE_REQUIRE_NODE=1), where it fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.requests import Request
from starlette.responses import StreamingResponse

from tests.live_server import serve_app
from tests.tenant_runtime.mcp.helpers import (
    endpoint,
    list_names,
    run,
    serve_magistrate,
)
from tests.tenant_runtime.mcp.reference import make_reference

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SUITE = Path(__file__).resolve().parents[3] / "ops" / "conformance"
HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding"}

# scenario -> why it fails through Magistrate (ops/MCP_CONFORMANCE.md says the same)
EXPECTED_FAILURES = {
    "dns-rebinding-protection": "only the installation's public origin is served, not a "
                                "localhost Origin",
}
# passes: the suite calls tools and prompts by their bare names and reads resources by their
# bare URIs, which resolve to the one upstream (ref) that offers them; with sessions, the
# upstream's log notifications, elicitation and sampling requests reach the suite's client,
# and subscriptions are held at the upstream
EXPECTED_PASSES = {"server-initialize", "ping", "tools-list", "tools-call-simple-text",
                   "tools-call-image", "tools-call-audio", "tools-call-embedded-resource",
                   "tools-call-mixed-content", "tools-call-error", "tools-call-with-progress",
                   "server-sse-multiple-streams", "resources-list", "resources-read-text",
                   "resources-read-binary", "resources-templates-read", "prompts-list",
                   "prompts-get-simple", "prompts-get-with-args",
                   "prompts-get-embedded-resource", "prompts-get-with-image",
                   "completion-complete", "tools-call-with-logging", "tools-call-sampling",
                   "tools-call-elicitation", "elicitation-sep1034-defaults",
                   "elicitation-sep1330-enums", "resources-subscribe", "resources-unsubscribe",
                   "logging-set-level"}


def node_or_skip() -> str:
    node = shutil.which("node")
    required = os.environ.get("CI") == "true" or os.environ.get("MAGISTRATE_REQUIRE_NODE") == "1"
    if node is None:
        if required:
            pytest.fail("Node.js is required in CI for the MCP conformance suite; .ci/run "
                        "installs Debian's nodejs and npm")
        pytest.skip("Node.js is not installed (CI installs it and runs this test)")
    if not (SUITE / "node_modules" / ".bin" / "conformance").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to install the pinned conformance suite")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SUITE, check=True,
                       capture_output=True, timeout=300)
    return node


def key_adding_hop(target: str, key: str) -> Any:
    """An ASGI app passing every request to ``target`` with the key's Authorization added,
    streaming the answer back as it comes; its client is closed at shutdown."""
    client = httpx2.AsyncClient(timeout=60)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        request = Request(scope, receive)
        headers = {k: v for k, v in request.headers.items() if k not in HOP_HEADERS}
        answer = await client.send(client.build_request(
            request.method, target, headers={**headers, "authorization": f"Bearer {key}"},
            content=await request.body()), stream=True)
        out = {k: v for k, v in answer.headers.items()
               if k not in HOP_HEADERS and k != "content-encoding"}

        async def body() -> Any:
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:
                await answer.aclose()

        await StreamingResponse(body(), status_code=answer.status_code, headers=out)(
            scope, receive, send)

    return app


SUMMARY = re.compile(r"^([✓✗]) ([a-z0-9-]+): (\d+) passed, (\d+) failed$", re.MULTILINE)


def scenario_results(stdout: str) -> dict[str, bool]:
    """scenario -> the suite's verdict, from its summary (``✓ name: 1 passed, 0 failed``)."""
    return {m[2]: m[1] == "✓" for m in SUMMARY.finditer(stdout)}


def test_the_conformance_suite_passes_its_server_scenarios_through_magistrate(
        services, team, tmp_path):
    from tenant_runtime.mcp import service
    from tenant_runtime.mcp.models import McpTool

    node = node_or_skip()
    server = make_reference()
    key = team.api_key("conformance", who="owner", scopes=("mcp",))
    # stateful, SSE answers: a call's notifications and requests travel with it
    with serve_app(server.streamable_http_app(stateless_http=False, json_response=False)
                   ) as up_url:
        with serve_magistrate(services) as base:
            ctx = team.ctx("admin")
            with ctx.session() as s, s.begin():
                service.do_add_upstream(s, ctx, service.UpstreamInput(
                    name="ref", url=f"{up_url}/mcp", new_tools="allowed"))
            run(list_names, endpoint(base, team), key)
            with ctx.session() as s, s.begin():
                assert s.query(McpTool).count() >= 13
            with team.system().session() as s, s.begin():
                from sqlalchemy import update

                from tenant_runtime.agents.models import Agent
                s.execute(update(Agent).values(phase="autonomous"))
            with serve_app(key_adding_hop(endpoint(base, team), key)) as hop_url:
                done = subprocess.run(
                    [node, "--import", str(SUITE / "node20.mjs"),
                     str(SUITE / "node_modules" / ".bin" / "conformance"), "server",
                     "--url", f"{hop_url}/mcp", "--verbose"],
                    cwd=tmp_path, capture_output=True, text=True, timeout=240)
    (tmp_path / "stdout.txt").write_text(done.stdout + done.stderr)
    results = scenario_results(done.stdout)
    summary = "\n".join(f"{'PASS' if ok else 'FAIL'} {name}" for name, ok in sorted(
        results.items()))
    (tmp_path / "summary.txt").write_text(summary)
    print(summary)
    assert results, done.stdout[-3000:] + done.stderr[-3000:]
    failing = {name for name, ok in results.items() if not ok}
    assert failing == set(EXPECTED_FAILURES), summary
    assert set(results) - failing == EXPECTED_PASSES, summary
