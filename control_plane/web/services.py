"""What a running web process holds: settings, database, Redis, signers. Built once by
``build_app`` and reached from handlers through ``services(request)``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from control_plane.auth.ratelimit import LoginRateLimiter
from control_plane.auth.sessions import CookieSigner
from control_plane.identity.oidc import OidcClient
from control_plane.keys.providers import KeyProvider
from control_plane.keys.registry import DataKeyCache
from control_plane.sealing import ControlSealer
from control_plane.settings import Settings
from control_plane.tenancy.connections import TenantConnections
from control_plane.tenancy.key_cache import KeyCache


@dataclass
class Services:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    redis: redis.Redis
    limiter: LoginRateLimiter
    signer: CookieSigner
    sealer: ControlSealer
    key_providers: Mapping[str, KeyProvider]
    dek_cache: DataKeyCache
    tenant_connections: TenantConnections
    oidc: OidcClient  # single sign-on: the providers' metadata and keys, cached
    # the gateway's key lookup: autocommit, no pre-ping (control_plane.db.make_hot_path_engine)
    hot_path_engine: Engine | None = None
    hot_path_sessions: sessionmaker[Session] | None = None
    # the gateway's checked keys, dropped on notification (control_plane/tenancy/key_cache.py);
    # None: MAGISTRATE_GATEWAY_KEY_CACHE_SECONDS=0, every call reads its key
    key_cache: KeyCache | None = None

    def close(self) -> None:
        if self.key_cache is not None:
            self.key_cache.close()
        self.tenant_connections.close()
        self.engine.dispose()
        if self.hot_path_engine is not None:
            self.hot_path_engine.dispose()
        self.redis.close()


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def redis_client(url: str) -> redis.Redis:
    """Short timeouts: a missing Redis must degrade quickly, never hang a request."""
    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0,
                                health_check_interval=30)
