"""What the infrastructure-fault tests share: Postgres and Redis servers a test owns (so it may
stop and restart them), Magistrate's web app as its own process, a provisioned tenant with a
gateway route to a local fake provider, client threads that keep requests going and record
every outcome, and the figures each fault writes for ops/RELIABILITY.md.

Figures go to ``$MAGISTRATE_CHAOS_RESULTS/<name>.json`` when that variable is set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx

from control_plane.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServiceError
from control_plane.keys.local import LocalKeyProvider
from control_plane.models import Tenant, User
from control_plane.settings import Settings
from control_plane.tenancy import api_keys, service
from control_plane.web.services import Services
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.credentials.service import do_add_credential
from tenant_runtime.gateway import admin, config
from tests.conftest import TEST_SECRET_KEY
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import MadeUser, make_user, sign_in
from tests.fakes.llm_servers import LLMServer

RESULTS_ENV = "MAGISTRATE_CHAOS_RESULTS"
KEK = "chaos-kek"
MODEL = "gpt-4o-mini"
PROMPT = "Summarise the outage report in one line."


def write_figures(name: str, figures: dict[str, Any]) -> Path | None:
    """Write one fault's figures as ``<name>.json`` under ``$MAGISTRATE_CHAOS_RESULTS``."""
    folder = os.environ.get(RESULTS_ENV)
    if not folder:
        return None
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return path


@contextmanager
def scratch_home(prefix: str) -> Iterator[Path]:
    """A folder under the system temp dir: as root, the embedded Postgres runs as another user,
    which could not reach a folder under pytest's own (mode 0700) temp tree."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


# -- servers the test owns ----------------------------------------------------------------------

class OwnedPostgres(EmbeddedPostgres):
    """An embedded Postgres only this test uses, restartable on its port and data folder."""

    def stop_immediately(self) -> None:
        """``pg_ctl stop -m immediate``, the way a crash stops it: every backend ends at once,
        no checkpoint; the next start runs crash recovery."""
        result = self._bin("pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "-t",
                           "30", "stop", timeout=60)
        if result.returncode != 0:
            raise EmbeddedServiceError(f"pg_ctl stop -m immediate failed: {result.stderr}")

    def restart(self, down_seconds: float) -> tuple[float, float]:
        """``pg_ctl stop -m fast``, ``down_seconds`` with no server, then start again on the
        same port and data. Returns (monotonic time the stop began, time it accepts again)."""
        stopping = time.monotonic()
        self.stop()
        time.sleep(down_seconds)
        self.start()
        return stopping, time.monotonic()


class OwnedRedis(EmbeddedRedis):
    """An embedded Redis only this test uses; ``crash`` kills it without a chance to save."""

    def crash(self) -> None:
        assert self.process is not None, "this Redis was not started here"
        self.process.kill()
        self.process.wait(10)
        self.process = None


# -- Magistrate as a process --------------------------------------------------------------------

def process_env(settings: Settings, *, database_url: str, redis_url: str) -> dict[str, str]:
    """The environment of a ``magistrate`` process on these servers, with these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(
        MAGISTRATE_ENV="test", MAGISTRATE_HOME=str(settings.home),
        MAGISTRATE_DATABASE_URL=database_url, MAGISTRATE_REDIS_URL=redis_url,
        MAGISTRATE_SECRET_KEY=TEST_SECRET_KEY, MAGISTRATE_PUBLIC_URL=settings.public_url,
        MAGISTRATE_ALLOWED_HOSTS=",".join(settings.allowed_hosts),
        MAGISTRATE_GATEWAY_PRIVATE_NETWORKS=",".join(settings.gateway_private_networks),
        MAGISTRATE_LOGIN_MAX_PER_IP="1000", MAGISTRATE_LOG_LEVEL="INFO")
    return env


class WebProcess:
    """``python -m control_plane web`` on a loopback port; its log goes to a file."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env, self.port, self.log_path = env, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WebProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
                [sys.executable, "-m", "control_plane", "web", "--host", "127.0.0.1",
                 "--port", str(self.port)], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # its imports alone took 30 s on a machine this busy (load 10 on 2 cores)
            self._wait_until_serving(timeout=180)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_until_serving(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2) as client:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"magistrate web exited at start:\n{self.log()}")
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"magistrate web did not answer:\n{self.log()}")
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signed_in_cookies(self, email: str) -> httpx.Cookies:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            answer = sign_in(client, email)
            assert answer.status_code == 303, answer.text
            return httpx.Cookies(client.cookies)


# -- a tenant with a gateway route --------------------------------------------------------------

@dataclass
class Provisioned:
    tenant_id: int
    owner: MadeUser
    ctx: TenantContext  # as the tenant's Owner
    api_key: str


def owner_context(services: Services, tenant_id: int, owner_id: int) -> TenantContext:
    with services.session_factory() as s:
        owner = s.get(User, owner_id)
        assert owner is not None
        return services.tenant_connections.context(
            s, s.get(Tenant, tenant_id), Actor("user", str(owner.id), owner.email, "Owner"))


def create_kek(settings: Settings) -> str:
    LocalKeyProvider(settings.home / "keys").create_key(KEK)
    return KEK


def provision(services: Services, database_url: str, llm: LLMServer, *, slug: str = "acme",
              fallback: LLMServer | None = None, owner: MadeUser | None = None,
              key_provider: str = "local", key_ref: str = KEK,
              contact_email: str | None = None) -> Provisioned:
    """An Owner (``owner``, or a new ``owner@example.com``), a tenant on ``key_provider``'s key
    provisioned by the real job, a route ``gpt-4o-mini`` to ``llm`` (its credential with
    ``contact_email``, a sealed value the credentials page opens; with a fallback route to
    ``fallback`` when given), limits high enough for a load test, and an API key."""
    owner = owner or make_user(services.session_factory)
    tenant_id = create_tenant(services, owner.email, slug, key_provider=key_provider,
                              key_ref=key_ref)
    outcomes = [r["outcome"] for r in run_pending_jobs(services, database_url)]
    assert outcomes == ["succeeded"], outcomes
    ctx = owner_context(services, tenant_id, owner.id)
    with ctx.session() as s, s.begin():
        credential = do_add_credential(s, ctx, name="openai", provider="openai",
                                       secret=llm.api_key, contact_email=contact_email).id
        fallbacks: tuple[str, ...] = ()
        if fallback is not None:
            spare = do_add_credential(s, ctx, name="on-prem", provider="on-prem",
                                      secret=fallback.api_key, contact_email=None).id
            admin.add_route(s, ctx, admin.RouteInput(
                model_name="llama-onprem", provider="on-prem", provider_model="llama-3.3-70b",
                endpoint=f"{fallback.base_url}/v1", credential_id=spare, timeout_seconds=2))
            fallbacks = ("llama-onprem",)
        admin.add_route(s, ctx, admin.RouteInput(
            model_name=MODEL, provider="openai", provider_model=MODEL,
            endpoint=f"{llm.base_url}/v1", credential_id=credential, timeout_seconds=2,
            fallbacks=fallbacks))
        current = config.load_settings(s)
        admin.update_settings(s, ctx, admin.SettingsChange(
            redaction_profile=current.redaction_profile, custom_detectors=[], custom_terms=[],
            custom_patterns=[], monthly_cap_micros=admin.MAX_CAP_MICROS,
            requests_per_minute=1_000_000, tokens_per_minute=1_000_000_000))
    with services.session_factory() as s, s.begin():
        user = s.get(User, owner.id)
        access = service.access_tenant(s, tenant_id, user=user)
        _, key = api_keys.do_create_api_key(s, access, name="load", acting_user=user,
                                             scopes=["gateway"])
    return Provisioned(tenant_id, owner, ctx, key)


# -- load ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    kind: str
    started: float  # monotonic
    ended: float
    status: int | None  # None: no HTTP answer at all (a reset, a timeout)
    content_type: str = ""
    body: str = ""
    retry_after: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 400


Request = Callable[[httpx.Client], httpx.Response]


@dataclass
class Load:
    """Client threads, each with its own connection, sending one kind of request in a loop
    until stopped, ``pause`` seconds apart; every outcome is kept."""

    url: str
    pause: float = 0.02
    timeout: float = 20.0
    outcomes: list[Outcome] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, request: Request, *, threads: int = 1,
            cookies: httpx.Cookies | None = None) -> None:
        for n in range(threads):
            thread = threading.Thread(target=self._run, args=(kind, request, cookies),
                                      name=f"load-{kind}-{n}", daemon=True)
            self._threads.append(thread)

    def _run(self, kind: str, request: Request, cookies: httpx.Cookies | None) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout, cookies=cookies) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    answer = request(client)
                    outcome = Outcome(kind, started, time.monotonic(), answer.status_code,
                                      answer.headers.get("content-type", ""), answer.text,
                                      answer.headers.get("retry-after"))
                except httpx.HTTPError as exc:
                    outcome = Outcome(kind, started, time.monotonic(), None,
                                      error=f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.outcomes.append(outcome)
                self._stop.wait(self.pause)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)

    def of(self, kind: str) -> list[Outcome]:
        with self._lock:
            return sorted((o for o in self.outcomes if o.kind == kind), key=lambda o: o.started)

    def wait_for(self, kind: str, count: int, timeout: float = 30) -> None:
        """Until ``count`` successful outcomes of ``kind`` were recorded."""
        deadline = time.monotonic() + timeout
        while sum(o.ok for o in self.of(kind)) < count:
            assert time.monotonic() < deadline, f"fewer than {count} {kind} requests succeeded"
            time.sleep(0.05)


    def wait_until_all_recovered(self, kinds: tuple[str, ...], since: float,
                                 timeout: float) -> None:
        """Until a request of every kind that started after ``since`` succeeded (or
        ``timeout`` passed: the test's own assertions then say which kind did not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(any(o.ok and o.started >= since for o in self.of(kind)) for kind in kinds):
                return
            time.sleep(0.05)


def chat(api_key: str, model: str = MODEL) -> Request:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 50}

    def send(client: httpx.Client) -> httpx.Response:
        return client.post("/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {api_key}"})

    return send


def get(path: str, headers: dict[str, str] | None = None) -> Request:
    def send(client: httpx.Client) -> httpx.Response:
        return client.get(path, headers=headers)

    return send


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    """Attempted, succeeded and failed requests, and the failures by status."""
    failed = [o for o in outcomes if not o.ok]
    return {"attempted": len(outcomes), "succeeded": len(outcomes) - len(failed),
            "failed": len(failed),
            "status_503": sum(o.status == 503 for o in failed),
            "status_500": sum(o.status == 500 for o in failed),
            "other_status": sum(o.status not in (None, 500, 503) for o in failed),
            "no_answer": sum(o.status is None for o in failed)}
