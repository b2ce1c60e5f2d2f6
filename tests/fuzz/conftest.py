"""One provisioned tenant for the whole fuzz module: an Owner signed in (a session cookie and its
CSRF token, for the session-only operations), an API key (``mg_…``, for ``/api`` and ``/v1``),
and gateway routes to a local LLM server that speaks OpenAI's and Anthropic's wire protocols
(tests/fakes/llm_servers.py), so well-formed gateway calls reach a provider and come back.

Module-scoped, because provisioning a tenant database is the slow part and the operations only
add rows to it; the control-plane tables are emptied first, as the ``services`` fixture does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from sqlalchemy import update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from control_plane.keys.local import LocalKeyProvider
from control_plane.models import User
from control_plane.tenancy import api_keys
from control_plane.tenancy.servers import ensure_primary_server
from control_plane.tenancy.service import access_tenant, do_add_member
from control_plane.web.app import build_app, build_services
from control_plane.web.services import Services
from tenant_runtime.agents import service as agents
from tenant_runtime.approvals import classes
from tenant_runtime.approvals import service as approvals
from tenant_runtime.credentials.service import do_add_credential
from tenant_runtime.gateway import admin, config
from tenant_runtime.models import GatewaySettings
from tests.conftest import RESET_SQL, RESTART_TENANT_IDS, TEST_SECRET_KEY, make_settings
from tests.control_plane.gateway.conftest import new_api_key, owner_context
from tests.control_plane.tenancy.conftest import drop_tenant_leftovers
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import csrf_token, make_user, sign_in
from tests.fakes.llm_servers import LLMServer

# cases per operation and mode in test_schemathesis.py; raise it for a long run
FUZZ_EXAMPLES = int(os.environ.get("MAGISTRATE_FUZZ_EXAMPLES") or 25)
# the model names a program uses → (provider, the provider's model id)
MODELS = {"gpt-4o-mini": ("openai", "gpt-4o-mini"),
          "claude-haiku": ("anthropic", "claude-haiku-4-5")}
EMBEDDING_MODEL = "text-embedding-3-large"  # a route of its own, for /v1/embeddings


@dataclass
class ApiEnv:
    services: Services
    app: Starlette
    tenant_id: int
    api_key: str
    session_cookie: tuple[str, str]  # (name, value)
    csrf_token: str
    llm: LLMServer
    agent_id: int
    request_id: str  # an approved request for an unrestricted action, not executed yet
    owner_id: int
    owner_membership_id: int = 0  # the session user's own (the last Owner: never removed)
    spare_membership_id: int = 0  # a Viewer's, which a generated DELETE may remove

    def auth_for(self, security: list[dict[str, list[str]]]) -> tuple[dict[str, str],
                                                                      dict[str, str]]:
        """Headers and cookies that authenticate an operation as its spec says: the API key
        where the operation takes one, else the signed-in session with its CSRF token."""
        schemes = {name for requirement in security for name in requirement}
        if "apiKey" in schemes:
            return {"Authorization": f"Bearer {self.api_key}"}, {}
        name, value = self.session_cookie
        return {"X-CSRF-Token": self.csrf_token}, {name: value}


@pytest.fixture(scope="module")
def api_env(tmp_path_factory, database_url, redis_url, pg_server_url) -> Iterator[ApiEnv]:
    home = tmp_path_factory.mktemp("fuzz-home")
    settings = make_settings(home=home, gateway_private_networks=("127.0.0.0/8",))
    LocalKeyProvider(home / "keys").create_key("test-kek")
    flush = redis.Redis.from_url(redis_url)
    flush.flushdb()
    flush.close()
    services = build_services(settings, database_url=database_url, redis_url=redis_url,
                              secret_key=TEST_SECRET_KEY)
    with services.engine.begin() as conn:
        conn.exec_driver_sql(RESET_SQL)
        conn.exec_driver_sql(RESTART_TENANT_IDS)
    drop_tenant_leftovers(pg_server_url)
    with services.session_factory() as s, s.begin():
        ensure_primary_server(s, url=pg_server_url, sealer=services.sealer)
    with LLMServer() as llm:
        try:
            owner = make_user(services.session_factory)
            tenant_id = create_tenant(services, owner.email, "acme", key_ref="test-kek")
            outcomes = [r["outcome"] for r in run_pending_jobs(services, database_url)]
            assert outcomes == ["succeeded"], outcomes
            ctx = owner_context(services, tenant_id, owner.id)
            with ctx.session() as s, s.begin():
                for name, (provider, model) in {
                        **MODELS, EMBEDDING_MODEL: ("openai", EMBEDDING_MODEL)}.items():
                    credential = do_add_credential(s, ctx, name=name, provider=provider,
                                                   secret=llm.api_key, contact_email=None)
                    endpoint = f"{llm.base_url}/v1" if provider == "openai" else llm.base_url
                    admin.add_route(s, ctx, admin.RouteInput(
                        model_name=name, provider=provider, provider_model=model,
                        endpoint=endpoint, credential_id=credential.id, timeout_seconds=5))
                # generated calls ask for up to 200,000 tokens each: room for all of them
                config.load_settings(s)
                s.execute(update(GatewaySettings).values(requests_per_minute=100_000,
                                                         tokens_per_minute=100_000_000))
                config.bump(s)
                for name, restricted in (("report.send", False), ("deploy.production", True)):
                    classes.do_add_action_class(s, ctx, classes.ClassInput(
                        name=name, restricted=restricted))
                request_id = str(approvals.request_action(s, ctx, "report.send", {"id": 7},
                                                          via="api").id)
                agent_id = agents.create_placeholder(s, ctx, name="triage bot", task_id=None).id
                # what an approved promotion does: off → shadow, where runs are recorded
                promoted = agents.apply_promotion(s, ctx, {"agent_id": agent_id, "from": "off"})
                assert promoted is not None and promoted.phase == "shadow"
            key = new_api_key(services, tenant_id, owner.id,  # every scope: past the key
                              scopes=tuple(api_keys.SCOPES))
            app = build_app(services)
            browser = TestClient(app, base_url="http://testserver")  # no lifespan: ours
            try:
                assert sign_in(browser, owner.email).status_code == 303
                token = csrf_token(browser, "/tenants")
                cookie = next((c.name, c.value) for c in browser.cookies.jar
                              if c.name == settings.session_cookie_name)
            finally:
                browser.close()
            spare = make_user(services.session_factory, "spare@example.com", is_owner=False)
            with services.session_factory() as s, s.begin():
                me = s.get(User, owner.id)
                mine = access_tenant(s, tenant_id, user=me)
                spare_id = do_add_member(s, mine, email=spare.email, role="Viewer",
                                         acting_user=me).id
                owner_membership = mine.membership.id
            yield ApiEnv(services, app, tenant_id, key, cookie, token, llm, agent_id,
                         request_id, owner.id, owner_membership, spare_id)
        finally:
            services.close()
            drop_tenant_leftovers(pg_server_url)
