"""The official MCP conformance suite's authorization scenarios for clients, with Magistrate's
upstream connector as the client under test.

For each scenario the suite starts its own MCP server and authorization server and runs a
command with the server's URL as its last argument and the client credentials it expects in
``MCP_CONFORMANCE_CONTEXT`` (JSON: ``client_id`` and ``client_secret``, or ``client_id``,
``private_key_pem`` and ``signing_algorithm``). The command here is a few lines of Python that
hand both to a driver in this test process, which does what an Admin and an agent would:
registers the URL as an upstream of the test tenant with an ``oauth`` credential (token
endpoint left empty: discovered), then, as the official SDK client at Magistrate's endpoint,
lists the tools (Magistrate connects to the upstream, fetching a token) and calls the suite's
``test-tool`` through Magistrate. The suite judges what reached its servers.

Every authorization scenario the suite lists is run; a scenario without client credentials in
its context gets an unregistered client id (the suite's authorization server takes any client
at its token endpoint unless the scenario says otherwise). The set of results is asserted
exactly, as the server scenarios' test does; ops/MCP_CONFORMANCE.md has the table and says why
each failing scenario fails."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from typing import Any

import anyio.to_thread
import pytest
from sqlalchemy import update
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tenant_runtime.agents.models import Agent
from tenant_runtime.mcp import service
from tests.conftest import make_settings
from tests.live_server import Port, serve_app
from tests.tenant_runtime.mcp.helpers import endpoint, mcp_client, text_of
from tests.tenant_runtime.mcp.test_conformance import SUITE, node_or_skip

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# scenario -> why it fails with Magistrate as the client (ops/MCP_CONFORMANCE.md says the same)
CODE_FLOW = "needs the authorization code flow (a person at a browser) and dynamic registration"
EXPECTED_FAILURES = {
    "auth/metadata-default": CODE_FLOW,
    "auth/metadata-var1": CODE_FLOW,
    "auth/metadata-var2": CODE_FLOW,
    "auth/metadata-var3": CODE_FLOW,
    "auth/basic-cimd": CODE_FLOW + " (a client ID metadata document)",
    "auth/scope-from-www-authenticate": "judged at the authorization request; also answers "
                                        "403 insufficient_scope (no step-up here)",
    "auth/scope-from-scopes-supported": "judged at the authorization request",
    "auth/scope-omitted-when-undefined": "judged at the authorization request",
    "auth/scope-step-up": "judged at the authorization request; no step-up on 403",
    "auth/scope-retry-limit": "judged at the authorization request",
    "auth/token-endpoint-auth-basic": CODE_FLOW,
    "auth/token-endpoint-auth-post": CODE_FLOW + "; the method is the Admin's choice",
    "auth/token-endpoint-auth-none": CODE_FLOW + "; a public client has no secret",
    "auth/2025-03-26-oauth-metadata-backcompat": "the metadata's issuer is not the origin "
                                                 "it was found at (RFC 8414 3.3): refused",
    "auth/2025-03-26-oauth-endpoint-fallback": "no metadata at all: Magistrate does not guess "
                                               "/token (name the token endpoint instead)",
    "auth/offline-access-scope": CODE_FLOW,
    "auth/offline-access-not-supported": CODE_FLOW,
    "auth/cross-app-access-complete-flow": "the enterprise token exchange (SEP-990) is not "
                                           "a credential kind",
}
EXPECTED_PASSES = {"auth/client-credentials-basic", "auth/client-credentials-jwt",
                   "auth/pre-registration", "auth/resource-mismatch"}
NO_CLIENT = "magistrate-unregistered"  # what a scenario without client credentials gets
VERDICT = re.compile(r"Passed: (\d+)/(\d+), (\d+) failed, (\d+) warnings")

COMMAND = (f"{sys.executable} -c \"import json, os, sys, urllib.request; "
           "body = json.dumps({{'url': sys.argv[-1], 'context': json.loads("
           "os.environ.get('MCP_CONFORMANCE_CONTEXT', '{{}}'))}}).encode(); "
           "answer = urllib.request.urlopen(urllib.request.Request("
           "'http://127.0.0.1:{port}/run', body, {{'Content-Type': 'application/json'}}), "
           "timeout=60); print(answer.read().decode())\"")


@pytest.fixture
def settings(tmp_path):
    # the suite's servers listen on localhost
    return make_settings(home=tmp_path / "home",
                         gateway_private_networks=("127.0.0.0/8", "::1/128"))


def driver(team: Any, base: str, key: str) -> Starlette:
    """Registers the suite's server as an upstream and uses it through Magistrate."""
    names = (f"suite{n}" for n in itertools.count())

    def register(url: str, context: dict[str, Any]) -> str:
        name = next(names)
        jwt = "private_key_pem" in context
        ctx = team.ctx("admin")
        with ctx.session() as s, s.begin():
            service.do_add_upstream(s, ctx, service.UpstreamInput(
                name=name, url=url, credential_kind="oauth", new_tools="allowed",
                client_id=context.get("client_id", NO_CLIENT),
                credential=context["private_key_pem"] if jwt else context.get(
                    "client_secret", NO_CLIENT),
                auth_method="private_key_jwt" if jwt else "client_secret_basic"))
        return name

    def autonomous() -> None:
        with team.system().session() as s, s.begin():
            s.execute(update(Agent).values(phase="autonomous"))

    async def run(request: Request) -> Response:
        asked = await request.json()
        name = await anyio.to_thread.run_sync(register, asked["url"], asked["context"])
        async with mcp_client(endpoint(base, team), key) as session:
            tools = sorted(t.name for t in (await session.list_tools()).tools)
        await anyio.to_thread.run_sync(autonomous)
        async with mcp_client(endpoint(base, team), key) as session:
            result = await session.call_tool(f"{name}{service.SEPARATOR}test-tool", {})
        ok = f"{name}{service.SEPARATOR}test-tool" in tools and not result.is_error
        return JSONResponse({"tools": tools, "result": text_of(result)},
                            status_code=200 if ok else 502)

    return Starlette(routes=[Route("/run", run, methods=["POST"])])


def auth_scenarios(node: str, cwd: Any) -> list[str]:
    listed = subprocess.run([node, "--import", str(SUITE / "node20.mjs"),
                             str(SUITE / "node_modules" / ".bin" / "conformance"), "list"],
                            cwd=cwd, capture_output=True, text=True, timeout=60, check=True)
    return re.findall(r"^  - (auth/[a-z0-9-]+) ", listed.stdout, re.MULTILINE)


def test_the_conformance_suite_passes_its_client_credentials_scenarios_on_the_upstream_side(
        team, base, key, tmp_path):
    node = node_or_skip()
    port = Port()
    results: dict[str, bool] = {}
    with serve_app(driver(team, base, key), port):
        for scenario in auth_scenarios(node, tmp_path):
            done = subprocess.run(
                [node, "--import", str(SUITE / "node20.mjs"),
                 str(SUITE / "node_modules" / ".bin" / "conformance"), "client",
                 "--scenario", scenario, "--command", COMMAND.format(port=port.number),
                 "--timeout", "60000"],
                cwd=tmp_path, capture_output=True, text=True, timeout=180)
            (tmp_path / f"{scenario.replace('/', '_')}.txt").write_text(
                done.stdout + done.stderr)
            verdict = VERDICT.search(done.stdout + done.stderr)
            print(scenario, done.returncode, verdict and verdict.group(0))
            # resource-mismatch passes by the client's refusal (the suite allows its error)
            results[scenario] = verdict is not None and verdict[3] == "0" \
                and verdict[4] == "0" and "OVERALL: PASSED" in done.stdout + done.stderr
    summary = json.dumps(results, indent=1)
    assert {s for s, ok in results.items() if ok} == EXPECTED_PASSES, summary
    assert {s for s, ok in results.items() if not ok} == set(EXPECTED_FAILURES), summary
