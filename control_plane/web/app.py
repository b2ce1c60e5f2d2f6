"""The Starlette application: dashboard, (later) JSON API and gateway, behind one security edge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from control_plane.api import agents as agents_api
from control_plane.api import approvals as approvals_api
from control_plane.api import mcp as mcp_api
from control_plane.api import members as member_api
from control_plane.api import openapi
from control_plane.auth import routes as auth_routes
from control_plane.auth.ratelimit import LoginRateLimiter
from control_plane.auth.sessions import CookieSigner
from control_plane.backups import routes as backup_routes
from control_plane.console import routes as console_routes
from control_plane.db import make_engine, make_hot_path_engine, make_session_factory
from control_plane.exceptions import MagistrateError
from control_plane.gateway import api as gateway_api
from control_plane.gateway import responses as gateway_responses
from control_plane.identity import routes as identity_routes
from control_plane.identity.oidc import OidcClient
from control_plane.keys.providers import KeyProvider
from control_plane.keys.registry import DataKeyCache, build_key_providers
from control_plane.mcp_oauth import routes as mcp_oauth_routes
from control_plane.models import Tenant
from control_plane.scim import routes as scim_routes
from control_plane.sealing import ControlSealer
from control_plane.settings import Settings
from control_plane.tenancy import audit_routes, export_routes
from control_plane.tenancy import routes as tenant_routes
from control_plane.tenancy import service as tenancy
from control_plane.tenancy.area_jobs import enqueue_tenant_job
from control_plane.tenancy.connections import TenantConnections, egress_policy
from control_plane.tenancy.key_cache import KeyCache
from control_plane.users import routes as user_routes
from control_plane.web import dashboard
from control_plane.web import jobs as jobs_routes
from control_plane.web import metrics as metrics_routes
from control_plane.web.errors import (
    DATABASE_UNAVAILABLE,
    handle_database_unavailable,
    handle_error,
)
from control_plane.web.security import SecurityMiddleware
from control_plane.web.services import Services, redis_client
from control_plane.web.serving import freeze_startup_heap, watch_loop_lag
from control_plane.web.templating import STATIC_DIR, render
from tenant_runtime.exceptions import TenantError


def build_services(settings: Settings, *, database_url: str, redis_url: str,
                   secret_key: str, key_providers: Mapping[str, KeyProvider] | None = None
                   ) -> Services:
    engine = make_engine(database_url)
    hot_path_engine = make_hot_path_engine(database_url)
    client = redis_client(redis_url)
    sealer = ControlSealer(secret_key)
    providers = key_providers if key_providers is not None else build_key_providers(
        home=settings.home, production=settings.is_production, aws_region=settings.aws_region,
        aws_endpoint_url=settings.aws_kms_endpoint, gcp_endpoint=settings.gcp_kms_endpoint)
    dek_cache = DataKeyCache(ttl_seconds=settings.dek_cache_seconds,
                             max_uses=settings.dek_cache_uses)
    egress = egress_policy(settings)
    return Services(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        hot_path_engine=hot_path_engine,
        hot_path_sessions=make_session_factory(hot_path_engine),
        key_cache=KeyCache(database_url, ttl_seconds=settings.gateway_key_cache_seconds)
        if settings.gateway_key_cache_seconds else None,
        redis=client,
        limiter=LoginRateLimiter(client, max_per_ip=settings.login_max_per_ip,
                                 max_per_account=settings.login_max_per_account,
                                 window_seconds=settings.login_window_seconds,
                                 max_backoff_seconds=settings.login_max_backoff_seconds),
        signer=CookieSigner(secret_key),
        sealer=sealer,
        key_providers=providers,
        dek_cache=dek_cache,
        tenant_connections=TenantConnections(sealer=sealer, providers=providers,
                                             dek_cache=dek_cache,
                                             egress=egress),
        oidc=OidcClient(egress, allow_http=not settings.is_production),
    )


def app_from_environment() -> Starlette:
    """The app of one of ``magistrate web --workers N``'s processes, from the endpoints the
    command resolved and put in the environment."""
    import os

    from tenant_runtime.observability import tracing

    settings = Settings.from_env()
    # (metrics: the process inherits the folder `magistrate web` chose, PROMETHEUS_MULTIPROC_DIR)
    tracing.configure(settings.otlp_endpoint, service_name="magistrate-web",
                      sample_ratio=settings.trace_sample_ratio)
    svc = build_services(settings, database_url=os.environ["MAGISTRATE_DATABASE_URL"],
                         redis_url=os.environ["MAGISTRATE_REDIS_URL"],
                         secret_key=os.environ["MAGISTRATE_SECRET_KEY"])
    return build_app(svc)


def build_app(svc: Services) -> Starlette:
    mcp_routes = mcp_api.make_routes()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        freeze_startup_heap()  # what the process built to serve, out of the collector's way
        watching = asyncio.ensure_future(watch_loop_lag("web"))
        try:
            async with mcp_api.running(mcp_api.endpoint_of(mcp_routes), svc), \
                    gateway_api.calls_on_this_loop(app,
                                                   enabled=svc.settings.gateway_on_event_loop):
                yield
        finally:
            watching.cancel()
        svc.close()

    app = Starlette(
        debug=False,  # never show tracebacks to users, whatever MAGISTRATE_DEBUG says
        # the gateway's routes first: the router tries routes in order (a regular expression
        # each), and the gateway's calls are the most frequent requests by far. No other
        # route answers a gateway path and method (tests/control_plane/gateway/test_routing.py)
        routes=[
            *gateway_api.routes,
            *gateway_responses.routes,
            *dashboard.routes,
            *auth_routes.routes,
            *identity_routes.routes,
            *scim_routes.routes,
            *user_routes.routes,
            *tenant_routes.routes,
            *backup_routes.routes,
            *member_api.routes,
            *export_routes.routes,
            *audit_routes.routes,
            *agents_api.routes,
            *approvals_api.routes,
            *mcp_routes,
            *mcp_oauth_routes.routes,
            *openapi.routes,
            *jobs_routes.routes,
            *metrics_routes.routes,
            *console_routes.routes,
            Mount("/static", app=StaticFiles(directory=str(STATIC_DIR)), name="static"),
        ],
        middleware=[Middleware(SecurityMiddleware, settings=svc.settings, signer=svc.signer)],
        exception_handlers={MagistrateError: handle_error, HTTPException: handle_error,
                            TenantError: handle_error,
                            **dict.fromkeys(DATABASE_UNAVAILABLE, handle_database_unavailable)},
        lifespan=lifespan,
    )
    app.state.services = svc
    app.state.render = render  # for tenant areas, which do not import the control plane
    app.state.enqueue_tenant_job = partial(enqueue_tenant_job, svc)  # likewise
    app.state.signal_upload_max_bytes = svc.settings.signal_upload_max_mb * 1024 * 1024
    app.state.tenant_members = partial(tenant_members, svc)  # likewise (personas)
    return app


def tenant_members(svc: Services, tenant_id: int) -> list[tuple[str, str, str]]:
    """A tenant's members as (user id, email, role), for tenant areas (the personas page)."""
    with svc.session_factory() as s:
        tenant = s.get(Tenant, tenant_id)
        return [] if tenant is None else [(str(user.id), user.email, membership.role)
                                          for membership, user in tenancy.members(s, tenant)]
