"""From a control-plane tenant row to a ``TenantContext``: an engine on the tenant's own
database as its ``_app`` role, and a sealer whose data key comes from the customer's KMS
through the in-memory cache. Built once per request or job, at the edge.

Audit retention alone runs as the tenant's ``_owner`` role (``owner_context``): the service
role cannot remove audit rows at all, the owner only up to a signed checkpoint."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db import make_engine, make_session_factory
from control_plane.keys.providers import KeyProvider, KeyUnavailable
from control_plane.keys.registry import DataKeyCache, provider_for
from control_plane.models import Tenant, TenantKey
from control_plane.sealing import ControlSealer
from control_plane.settings import Settings
from control_plane.tenancy.api_keys import GatewayPrincipal, TenantKeyRecord
from control_plane.tenancy.database import url_for
from control_plane.tenancy.provisioning import tenant_secrets
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.exceptions import TenantKeyUnavailable
from tenant_runtime.gateway.egress import EgressPolicy
from tenant_runtime.sealing import TenantSealer


def egress_policy(settings: Settings) -> EgressPolicy:
    """The operator's limits on where tenants' gateway routes may reach (egress.py)."""
    return EgressPolicy.parse(ambient_identity=settings.gateway_ambient_identity,
                              private_networks=settings.gateway_private_networks)


TENANT_POOL_SIZE = 8


class TenantConnections:
    def __init__(self, *, sealer: ControlSealer, providers: Mapping[str, KeyProvider],
                 dek_cache: DataKeyCache, max_engines: int = 100,
                 egress: EgressPolicy | None = None) -> None:
        self.sealer = sealer
        self.egress = egress or EgressPolicy()
        self.providers = providers
        self.dek_cache = dek_cache
        self.max_engines = max_engines
        self._engines: OrderedDict[int, Engine] = OrderedDict()
        self._factories: dict[int, sessionmaker[Session]] = {}
        self._lock = threading.Lock()

    def app_url(self, tenant: Tenant) -> str:
        secrets = tenant_secrets(self.sealer, tenant)
        return url_for(secrets.admin_url, database=tenant.db_name, user=tenant.app_role,
                       password=secrets.app_password)

    def owner_url(self, tenant: Tenant) -> str:
        secrets = tenant_secrets(self.sealer, tenant)
        return url_for(secrets.admin_url, database=tenant.db_name, user=tenant.owner_role,
                       password=secrets.owner_password)

    def engine(self, tenant: Tenant) -> Engine:
        with self._lock:
            engine = self._engines.get(tenant.id)
            if engine is not None:
                self._engines.move_to_end(tenant.id)
                return engine
        # kept connections: enough for a busy tenant's concurrent requests (the gateway's calls
        # hold one for each of their two short transactions), so connections are not opened and
        # closed per request under load; PgBouncer in front of the server in production
        # no ping before each checkout (a round trip on the gateway's hot path, twice a
        # call): after a Postgres restart the first statement on a dead connection fails, the
        # pool drops all its connections at once, and the next request reconnects
        engine = make_engine(self.app_url(tenant), pool_size=TENANT_POOL_SIZE, pre_ping=False)
        with self._lock:
            # a concurrent first request for this tenant may have registered its engine
            # meanwhile: keep that one, so no engine (and its pooled connections) is orphaned
            registered = self._engines.get(tenant.id)
            if registered is None:
                self._engines[tenant.id] = engine
                while len(self._engines) > self.max_engines:
                    old_id, old = self._engines.popitem(last=False)
                    self._factories.pop(old_id, None)
                    old.dispose()
            else:
                self._engines.move_to_end(tenant.id)
        if registered is not None:
            engine.dispose()  # never connected: nothing to close but the empty pool
            return registered
        return engine

    def forget(self, tenant_id: int) -> None:
        """Drop the pooled connections and cached data keys of a tenant."""
        with self._lock:
            engine = self._engines.pop(tenant_id, None)
            self._factories.pop(tenant_id, None)
        if engine is not None:
            engine.dispose()
        self.dek_cache.forget(tenant_id)

    def close(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
            self._factories.clear()
        for engine in engines:
            engine.dispose()

    def sealer_for(self, s: Session, tenant: Tenant) -> TenantSealer:
        return self.sealer_of(tenant.id, [
            TenantKeyRecord(k.version, k.provider, k.key_ref, k.wrapped_dek,
                            k.retired_at is not None)
            for k in s.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant.id))])

    def sealer_of(self, tenant_id: int, records: Iterable[TenantKeyRecord]) -> TenantSealer:
        """A sealer over the tenant's data-key records (as ``sealer_for`` reads them): the
        newest unretired version seals; every version opens, unwrapped through the cache."""
        keys = {k.version: k for k in records}
        if not keys:
            raise TenantKeyUnavailable("This tenant has no data key yet.")
        current = max(v for v, k in keys.items() if not k.retired) if any(
            not k.retired for k in keys.values()) else max(keys)
        wrapped = {v: (k.provider, k.key_ref, k.wrapped_dek) for v, k in keys.items()}

        def key_for(version: int) -> bytes:
            if version not in wrapped:
                raise TenantKeyUnavailable(f"Data key version {version} is not known.")
            provider_name, key_ref, blob = wrapped[version]

            def unwrap() -> bytes:
                provider = provider_for(self.providers, provider_name)
                return provider.unwrap(blob, tenant_id=str(tenant_id), key_ref=key_ref)

            try:
                return self.dek_cache.get(tenant_id, version, unwrap)
            except KeyUnavailable as exc:
                raise TenantKeyUnavailable(
                    f"Tenant key unavailable: the customer-held key cannot be used "
                    f"({exc.provider}: {exc.reason}). Nothing was read or written.") from None

        return TenantSealer(str(tenant_id), current, key_for)

    def session_factory(self, tenant: Tenant) -> sessionmaker[Session]:
        engine = self.engine(tenant)
        with self._lock:
            factory = self._factories.get(tenant.id)
            if factory is None or factory.kw.get("bind") is not engine:
                factory = self._factories[tenant.id] = make_session_factory(engine)
            return factory

    def gateway_context(self, s: Session, principal: GatewayPrincipal,
                        actor: Actor) -> TenantContext:
        """``context`` for a checked gateway key, from what the key's check read: no further
        query unless this process has no engine for the tenant yet."""
        with self._lock:
            engine = self._engines.get(principal.tenant_id)
            factory = self._factories.get(principal.tenant_id)
            if engine is not None:
                self._engines.move_to_end(principal.tenant_id)
        if engine is None or factory is None or factory.kw.get("bind") is not engine:
            tenant = s.get(Tenant, principal.tenant_id)
            if tenant is None:  # deleted since the key's check
                raise TenantKeyUnavailable("This tenant is gone.")
            factory = self.session_factory(tenant)
        return TenantContext(
            tenant_id=principal.tenant_id, slug=principal.tenant_slug, session_factory=factory,
            sealer=self.sealer_of(principal.tenant_id, principal.tenant_keys), actor=actor,
            egress=self.egress)

    @contextmanager
    def owner_context(self, s: Session, tenant: Tenant, actor: Actor
                      ) -> Iterator[TenantContext]:
        """A context on the tenant's database as its ``_owner`` role, for the one thing the
        service role may not do: audit retention (``prune_audit_events``, which only the owner
        may call). One connection, closed when the block ends; never pooled with the service
        role's engines, so no request ever runs as the owner."""
        engine = make_engine(self.owner_url(tenant), pool_size=1, pre_ping=False)
        try:
            yield TenantContext(tenant_id=tenant.id, slug=tenant.slug,
                                session_factory=make_session_factory(engine),
                                sealer=self.sealer_for(s, tenant), actor=actor,
                                egress=self.egress)
        finally:
            engine.dispose()

    def context(self, s: Session, tenant: Tenant, actor: Actor) -> TenantContext:
        return TenantContext(
            tenant_id=tenant.id, slug=tenant.slug,
            session_factory=self.session_factory(tenant),
            sealer=self.sealer_for(s, tenant), actor=actor, egress=self.egress,
        )
