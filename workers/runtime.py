"""What jobs need to open their own unit of work: the settings, the control-plane database, the
secret key's sealer and the key providers, configured once by the worker process.

RQ runs each job in a forked work horse; the engine is created per process (never shared across
a fork)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db import make_engine, make_session_factory
from control_plane.keys.providers import KeyProvider
from control_plane.keys.registry import DataKeyCache, build_key_providers
from control_plane.sealing import ControlSealer
from control_plane.settings import Settings


@dataclass
class WorkerEnv:
    settings: Settings
    database_url: str
    secret_key: str
    key_providers: Mapping[str, KeyProvider]
    sealer: ControlSealer
    dek_cache: DataKeyCache
    _engine: Engine | None = field(default=None, repr=False)
    _pid: int = 0

    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            self._engine = make_engine(self.database_url, pool_size=2)
            self._pid = os.getpid()
        return self._engine


_env: WorkerEnv | None = None


def configure(settings: Settings, *, database_url: str, secret_key: str,
              key_providers: Mapping[str, KeyProvider] | None = None) -> WorkerEnv:
    global _env
    if _env is not None and _env._engine is not None:
        _env._engine.dispose()  # a reconfigured process (tests, CLI) must not leak connections
    providers = key_providers if key_providers is not None else build_key_providers(
        home=settings.home, production=settings.is_production, aws_region=settings.aws_region,
        aws_endpoint_url=settings.aws_kms_endpoint, gcp_endpoint=settings.gcp_kms_endpoint)
    _env = WorkerEnv(settings, database_url, secret_key, providers, ControlSealer(secret_key),
                     DataKeyCache(ttl_seconds=settings.dek_cache_seconds,
                                  max_uses=settings.dek_cache_uses))
    return _env


def env() -> WorkerEnv:
    if _env is None:
        raise RuntimeError("the worker runtime was not configured")
    return _env


def session_factory() -> sessionmaker[Session]:
    return make_session_factory(env().engine())


@contextmanager
def job_session() -> Iterator[Session]:
    with session_factory()() as s:
        yield s
