"""The gateway end to end: the real app under uvicorn, a provisioned tenant with an API key and
routes to a local LLM server that speaks every provider's wire protocol (tests/fakes/
llm_servers.py), and the official SDKs as clients."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from control_plane.models import Tenant, User
from control_plane.tenancy import api_keys, service
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.credentials.service import do_add_credential
from tenant_runtime.gateway import admin
from tests.conftest import make_settings
from tests.control_plane.tenancy.conftest import local_kek, primary_server  # noqa: F401
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user
from tests.fakes.llm_servers import LLMServer
from tests.live_server import Port, serve

# model name programs use → (provider, provider model, credential)
ROUTES = {
    "gpt-4o-mini": ("openai", "gpt-4o-mini", "openai"),
    "claude-haiku": ("anthropic", "claude-haiku-4-5", "anthropic"),
    "azure-4o": ("azure-openai", "prod-4o-deployment", "azure-openai"),
    "nova-lite": ("bedrock", "amazon.nova-lite-v1:0", "bedrock"),
    "llama-onprem": ("on-prem", "llama-3.3-70b", "on-prem"),
}


# For the tests of what reaches every process's key cache by notification: what they allow
# between a change's commit and its refusal (the notification delay is milliseconds,
# ops/BENCHMARKS.md; the rest is for a busy machine's HTTP calls), and the TTL their caches keep
# entries for, far beyond it, so that no entry ages out during a test: a refusal within the
# bound is then a notification's doing, never the TTL's.
NOTIFIED_WITHIN = 10.0
# what the routes wait for the local LLM server: far more than a busy machine makes it take (a
# test of timeouts sets a short one on its route, below the server's 3 s hang)
ROUTE_TIMEOUT_SECONDS = 10.0
KEY_CACHE_TTL_IN_TESTS = 600


@dataclass
class GatewayEnv:
    url: str
    key: str
    tenant_id: int
    ctx: TenantContext  # as the tenant's Owner
    llm: LLMServer
    owner_id: int
    routes: dict[str, int]


@pytest.fixture
def live_port() -> Iterator[Port]:
    """The live server's port, held from now (its number goes into the settings)."""
    with Port() as port:
        yield port


@pytest.fixture
def settings(live_port, tmp_path):
    return make_settings(public_url=live_port.url,
                         allowed_hosts=("127.0.0.1",), home=tmp_path / "home",
                         gateway_private_networks=("127.0.0.0/8",))  # the local LLM server


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    with LLMServer(hang_seconds=3.0) as server:
        yield server


def owner_context(services, tenant_id: int, owner_id: int) -> TenantContext:
    with services.session_factory() as s:
        owner = s.get(User, owner_id)
        return services.tenant_connections.context(
            s, s.get(Tenant, tenant_id), Actor("user", str(owner.id), owner.email, "Owner"))


def new_api_key(services, tenant_id: int, owner_id: int, *, name: str = "build bot",
                expires_in_days: int | None = None,
                scopes: tuple[str, ...] = ("gateway",)) -> str:
    with services.session_factory() as s, s.begin():
        owner = s.get(User, owner_id)
        access = service.access_tenant(s, tenant_id, user=owner)
        _, key = api_keys.do_create_api_key(s, access, name=name, acting_user=owner,
                                            scopes=scopes,
                                            expires_in_days=expires_in_days)
        return key


@pytest.fixture
def gw(services, db, database_url, primary_server, local_kek, llm,  # noqa: F811
       live_port) -> Iterator[GatewayEnv]:
    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "acme")
    assert [r["outcome"] for r in run_pending_jobs(services, database_url)] == ["succeeded"]
    ctx = owner_context(services, tenant_id, owner.id)
    route_ids = {}
    with ctx.session() as s, s.begin():
        credentials = {
            provider: do_add_credential(s, ctx, name=provider, provider=provider,
                                        secret=secret, contact_email=None).id
            for provider, secret in (("openai", llm.api_key), ("anthropic", llm.api_key),
                                     ("azure-openai", llm.api_key),
                                     ("bedrock", f"{llm.aws_access_key_id}:fake-secret"),
                                     ("on-prem", llm.api_key))}
        for name, (provider, model, credential) in ROUTES.items():
            endpoint = {"openai": f"{llm.base_url}/v1", "on-prem": f"{llm.base_url}/v1",
                        "anthropic": llm.base_url, "azure-openai": llm.base_url,
                        "bedrock": llm.base_url}[provider]
            route = admin.add_route(s, ctx, admin.RouteInput(
                model_name=name, provider=provider, provider_model=model, endpoint=endpoint,
                api_version="2024-10-21" if provider == "azure-openai" else None,
                region="us-east-1" if provider == "bedrock" else None,
                credential_id=credentials[credential], timeout_seconds=ROUTE_TIMEOUT_SECONDS))
            route_ids[name] = route.id
        blocked = admin.add_route(s, ctx, admin.RouteInput(
            model_name="gpt-4.1", provider="openai", provider_model="gpt-4.1",
            endpoint=f"{llm.base_url}/v1", credential_id=credentials["openai"], allowed=False))
        route_ids["gpt-4.1"] = blocked.id
    key = new_api_key(services, tenant_id, owner.id)
    with serve(services, live_port) as url:
        yield GatewayEnv(url, key, tenant_id, ctx, llm, owner.id, route_ids)
    services.tenant_connections.close()


def calls(env: GatewayEnv):
    from tenant_runtime.models import GatewayCall

    with env.ctx.session() as s:
        return list(s.scalars(select(GatewayCall).order_by(GatewayCall.id)))


def eventually(check: Callable[[], bool], *, within: float, what: str) -> float:
    """Poll ``check`` until it holds, for at most ``within`` seconds; the seconds it took. For
    what a process learns by notification (its key cache), never a fixed sleep."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(0.005)
    return time.monotonic() - started
