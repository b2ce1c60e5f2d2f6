"""A customer's KMS becomes unreachable under load, then comes back.

Tenant K's data key is wrapped by a key in AWS KMS (moto's server, reached through the real
boto3 SDK); tenant L's by the local key provider. Both are served by ``magistrate web`` as its
own process, its KMS endpoint (``MAGISTRATE_AWS_KMS_ENDPOINT``) pointed at the fake and its
data-key cache shortened to two seconds (``MAGISTRATE_DEK_CACHE_SECONDS``), so K's cached key
expires during the outage. Client threads call the gateway (``/v1/chat/completions``) with each
tenant's API key and load each tenant's credentials page signed in as its Owner; the page opens
a sealed value (the credential's contact e-mail), and a gateway call needs the sealed provider
credential, so both need the tenant's data key.

Injected: the KMS endpoint goes away for five seconds, longer than the cache, then returns on
the same port. Magistrate reaches the fake through a loopback port the test owns
(``KmsEndpoint``); stopping it closes the port and resets every connection through it, so a KMS
call in flight fails and new ones are refused, as when the KMS or the network path to it fails.
The fake itself stays up and keeps its keys (it listens on a port the OS picked, which it could
not take again after a stop).

What must hold:

- tenant L is not affected: every one of its requests answers 200;
- tenant K: until its cached data key expires, requests may still succeed; every request that
  starts after that, until the KMS is back, gets a clean refusal naming the customer-held key
  as unavailable: 503 in OpenAI's error shape on ``/v1``, an HTML page on the dashboard; never
  a 500, never a reset; K's overview page still answers, with a banner saying why;
- nothing leaves for K's provider while its key is unavailable (the provider credential is
  sealed): the provider receives exactly one request per gateway call answered 200, none while
  K is refused;
- nothing is written for a refused request: the product records a refusal for want of the key
  on neither audit chain (it is in the request log, with its status), so K has exactly one
  ``gateway.call`` event and one call row per call answered 200, and no audit event at all
  while it was refused;
- within 5 s of the KMS answering again, K's requests succeed, with the same Magistrate
  process (no restart);
- afterwards both tenants' audit chains and the platform's chain verify.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest
from sqlalchemy import func, select

from control_plane.audit import verify_chain
from control_plane.keys.aws import AwsKmsProvider
from control_plane.keys.local import LocalKeyProvider
from control_plane.models import PlatformAuditEvent
from control_plane.settings import Settings
from control_plane.web.app import build_services
from control_plane.web.services import Services
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.gateway.service import GatewayEvents
from tenant_runtime.models import AuditEvent, GatewayCall
from tests.chaos.infra import (
    Load,
    Outcome,
    Provisioned,
    WebProcess,
    chat,
    create_kek,
    get,
    owner_context,
    process_env,
    provision,
    write_figures,
)
from tests.conftest import TEST_SECRET_KEY, free_port, make_settings
from tests.control_plane.tenancy.conftest import primary_server  # noqa: F401
from tests.factories import make_user
from tests.fakes.aws_kms import ACCESS_KEY, SECRET_KEY, running_fake_aws_kms
from tests.fakes.llm_servers import LLMServer

pytestmark = pytest.mark.chaos

CACHE_SECONDS = 2
DOWN_SECONDS = 5.0
# after the cache: a call that passed the key check just before its expiry reaches the
# provider (and writes its audit event) within milliseconds; what was sent or written while K
# was refused is counted from this much later
SETTLE_SECONDS = 1.0
RECOVERY_LIMIT_SECONDS = 5.0
TENANTS = ("k", "l")
SLUGS = {"k": "kms-co", "l": "local-co"}
KINDS = ("gateway", "dashboard")


class KmsEndpoint:
    """The customer's KMS as Magistrate reaches it: a loopback port relaying each connection to
    the fake KMS. ``stop`` closes the port and resets every connection through it; ``start``
    opens the same port again."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname and parts.port
        self.upstream = (parts.hostname, parts.port)
        self.port = 0
        self._down = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._down.clear()
        self._spawn(self._accept, listener)

    def stop(self) -> None:
        self._down.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = [t for t in self._threads if t.is_alive()]
        assert not self._threads, "the KMS endpoint did not close"

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="kms-endpoint")
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while not self._down.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                try:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    client.close()
                    continue
                self._spawn(self._relay, client, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        other = {client: upstream, upstream: client}
        try:
            with selectors.DefaultSelector() as selector:
                for sock in other:
                    sock.settimeout(5)
                    selector.register(sock, selectors.EVENT_READ)
                while not self._down.is_set():
                    for key, _ in selector.select(timeout=0.05):
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        other[key.fileobj].sendall(data)  # type: ignore[index]
        except OSError:
            return
        finally:
            for sock in other:
                if self._down.is_set():  # a reset, not a polite close
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                sock.close()


@pytest.fixture
def web_port() -> int:
    return free_port()


@pytest.fixture
def settings(tmp_path: Path, web_port: int) -> Settings:
    return make_settings(home=tmp_path / "home", public_url=f"http://127.0.0.1:{web_port}",
                         allowed_hosts=("127.0.0.1",),
                         gateway_private_networks=("127.0.0.0/8",))  # the fake providers


def contact_of(slug: str) -> str:
    return f"ops@{slug}.example"


def kind_of(tenant: str, kind: str) -> str:
    return f"{tenant}-{kind}"


def test_a_customer_kms_down_under_load_refuses_its_tenant_only_and_recovers(
        services: Services, database_url: str, redis_url: str, settings: Settings,
        web_port: int, primary_server: int, tmp_path: Path) -> None:  # noqa: F811
    kek = create_kek(settings)
    with running_fake_aws_kms() as kms, LLMServer(api_key="sk-provider-k") as llm_k, \
            LLMServer(api_key="sk-provider-l") as llm_l:
        endpoint = KmsEndpoint(kms.endpoint_url)
        endpoint.start()
        # this process provisions through the fake directly; the web process goes through
        # the endpoint the test breaks
        svc = build_services(settings, database_url=database_url, redis_url=redis_url,
                             secret_key=TEST_SECRET_KEY, key_providers={
                                 "aws-kms": AwsKmsProvider(endpoint_url=kms.endpoint_url,
                                                           session=kms.session),
                                 "local": LocalKeyProvider(settings.home / "keys")})
        try:
            owner = make_user(svc.session_factory)
            tenants = {
                "k": provision(svc, database_url, llm_k, slug=SLUGS["k"], owner=owner,
                               key_provider="aws-kms", key_ref=kms.create_key(),
                               contact_email=contact_of(SLUGS["k"])),
                "l": provision(svc, database_url, llm_l, slug=SLUGS["l"], owner=owner,
                               key_provider="local", key_ref=kek,
                               contact_email=contact_of(SLUGS["l"])),
            }
            env = process_env(settings, database_url=database_url, redis_url=redis_url)
            env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
            env.update(MAGISTRATE_AWS_KMS_ENDPOINT=endpoint.url,
                       MAGISTRATE_DEK_CACHE_SECONDS=str(CACHE_SECONDS),
                       AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
            with WebProcess(env, web_port, tmp_path / "web.log") as web:
                assert web.process is not None
                pid = web.process.pid
                seen = outage(web, tenants, endpoint, llm_k)
                assert web.alive and web.process.pid == pid, "magistrate web restarted"
            figures = judge(seen, web.log())  # read once it exited: every request is logged
            figures["request_log"] = request_log_figures(web.log(), tenants, figures)
            figures["provider_requests"] = provider_figures(seen, llm_k, llm_l)
            figures["audit"] = {name: audit_figures(svc, name, tenant, seen)
                                for name, tenant in tenants.items()}
            with svc.session_factory() as s:
                figures["audit"]["platform_chain_problems"] = verify_chain(s)
                figures["audit"]["platform_events_during_outage"] = s.scalar(
                    select(func.count()).select_from(PlatformAuditEvent).where(
                        PlatformAuditEvent.occurred_at.between(seen["stopped_at"],
                                                               seen["back_at"])))
            write_figures("kms_down", figures)
            check_writes(figures)
        finally:
            svc.close()
            endpoint.stop()


def outage(web: WebProcess, tenants: dict[str, Provisioned], endpoint: KmsEndpoint,
           llm_k: LLMServer) -> dict[str, Any]:
    """Load on both tenants; the KMS endpoint down for DOWN_SECONDS, then back."""
    cookies = web.signed_in_cookies(tenants["k"].owner.email)  # the Owner of both
    load = Load(web.url)
    for name, tenant in tenants.items():
        load.add(kind_of(name, "gateway"), chat(tenant.api_key), threads=2)
        load.add(kind_of(name, "dashboard"), get(f"/tenants/{tenant.tenant_id}/credentials"),
                 cookies=cookies)
    seen: dict[str, Any] = {}
    with load, httpx.Client(base_url=web.url, timeout=20, cookies=cookies) as browser:
        for name in TENANTS:
            for kind in KINDS:
                load.wait_for(kind_of(name, kind), 5)
        seen["stopped_at"] = datetime.now(UTC)
        endpoint.stop()
        stopped = time.monotonic()
        time.sleep(CACHE_SECONDS + SETTLE_SECONDS)  # K's cached key has expired
        seen["refused_from_at"] = datetime.now(UTC)
        provider_at_refused_from = len(llm_k.received)
        seen["overview"] = browser.get(f"/tenants/{tenants['k'].tenant_id}")
        time.sleep(max(0.0, stopped + DOWN_SECONDS - time.monotonic()))
        seen["provider_while_refused"] = len(llm_k.received) - provider_at_refused_from
        seen["back_at"] = datetime.now(UTC)
        reopening = time.monotonic()
        endpoint.start()
        back = time.monotonic()
        load.wait_until_all_recovered(tuple(kind_of("k", k) for k in KINDS), back,
                                      RECOVERY_LIMIT_SECONDS + 1)
        time.sleep(1.0)  # and a moment of steady service after that
    seen.update(stopped=stopped, reopening=reopening, back=back,
                outcomes={kind_of(n, k): load.of(kind_of(n, k)) for n in TENANTS for k in KINDS})
    return seen


def answered(outcome: Outcome, slug: str) -> bool:
    """A 200 that did what the request is for: the model's answer, or the opened e-mail."""
    if outcome.status != 200:
        return False
    if outcome.kind.endswith("gateway"):
        return "You said:" in outcome.body
    return contact_of(slug) in outcome.body


def key_refusal(outcome: Outcome) -> bool:
    """A 503 naming the customer-held key as unavailable, in the shape its caller reads."""
    if outcome.status != 503 or "Traceback" in outcome.body:
        return False
    if outcome.kind.endswith("gateway"):  # OpenAI's error shape, which the SDK raises
        if not outcome.content_type.startswith("application/json"):
            return False
        error = json.loads(outcome.body).get("error", {})
        return (error.get("type"), error.get("code")) == ("api_error", "unavailable") and \
            error.get("message", "").startswith("Tenant key unavailable: the customer-held key")
    return (outcome.content_type.startswith("text/html") and "Unavailable" in outcome.body
            and "Tenant key unavailable: the customer-held key" in outcome.body)


def judge(seen: dict[str, Any], log: str) -> dict[str, Any]:
    stopped, reopening, back = seen["stopped"], seen["reopening"], seen["back"]
    expired = stopped + CACHE_SECONDS  # no key unwrapped before the stop outlives this
    figures: dict[str, Any] = {
        "kms": "aws-kms (moto), its endpoint closed and every connection reset",
        "down_seconds_requested": DOWN_SECONDS,
        "outage_seconds": round(back - stopped, 3),
        "dek_cache_seconds": CACHE_SECONDS,
        "recovery_limit_seconds": RECOVERY_LIMIT_SECONDS,
        "magistrate_restarted": False,
    }
    for name in TENANTS:
        per_kind: dict[str, Any] = {}
        for kind in KINDS:
            label = kind_of(name, kind)
            outcomes = seen["outcomes"][label]
            during = [o for o in outcomes if o.started <= back and o.ended >= stopped]
            refused = [o for o in outcomes if key_refusal(o)]
            others = [o for o in outcomes if not answered(o, SLUGS[name]) and not key_refusal(o)]
            per_kind[kind] = {
                "requests": len(outcomes), "status_200": sum(o.status == 200 for o in outcomes),
                "refused_503_key_unavailable": len(refused),
                "status_500": sum(o.status == 500 for o in outcomes),
                "other_status": sum(o.status not in (None, 200, 500, 503) for o in outcomes),
                "no_answer": sum(o.status is None for o in outcomes),
                "during_outage": len(during),
                "during_outage_status_200": sum(o.status == 200 for o in during)}
            assert not others, f"{label}: answers other than 200 or a key refusal: " + \
                "; ".join(f"{o.status} {o.error or o.body[:300]}" for o in others[:5])
            if name == "l":
                assert len(during) >= 3, f"{label}: too few requests met the outage"
                assert not refused, f"{label}: refused for want of another tenant's key"
            else:
                per_kind[kind].update(judge_k(label, outcomes, stopped, expired, reopening,
                                              back))
        figures[f"tenant_{name}"] = per_kind
    overview = seen["overview"]
    assert overview.status_code == 200, overview.text[:500]
    assert 'data-testid="key-banner"' in overview.text
    assert "Tenant key unavailable: the customer-held key" in overview.text
    figures["tenant_k"]["overview_during_outage_status"] = overview.status_code
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
    return figures


def judge_k(label: str, outcomes: list[Outcome], stopped: float, expired: float,
            reopening: float, back: float) -> dict[str, Any]:
    """K: served from the cache at most until it expires, then refused until the KMS is back
    (``reopening``: the endpoint starts; ``back``: it listens), then served again within the
    limit, and never refused outside the outage."""
    served_late = [o for o in outcomes if o.ok and expired <= o.started and o.ended <= reopening]
    assert not served_late, (f"{label}: {len(served_late)} answered 200 after its cached key "
                             f"expired, from {served_late[0].started - stopped:.2f} s after the "
                             "stop")
    refused = [o for o in outcomes if not o.ok]
    window = [o for o in refused if o.started >= expired and o.ended <= reopening]
    assert len(window) >= 3, f"{label}: too few requests met the expired key"
    stray = [o for o in refused if o.ended < stopped or o.started > back + RECOVERY_LIMIT_SECONDS]
    assert not stray, f"{label}: refused outside the outage, at " + ", ".join(
        f"{o.started - stopped:.2f} s" for o in stray[:5])
    first_ok = next((o for o in outcomes if o.ok and o.started >= back), None)
    assert first_ok is not None, f"{label}: nothing succeeded after the KMS came back"
    recovery = first_ok.ended - back
    assert recovery <= RECOVERY_LIMIT_SECONDS, f"{label}: recovered after {recovery:.2f} s"
    from_cache = [o for o in outcomes if o.ok and o.started >= stopped and o.ended <= reopening]
    latencies = [o.ended - o.started for o in window]
    return {
        "served_from_cache_after_stop": len(from_cache),
        "last_served_from_cache_seconds_after_stop": round(
            max(o.started for o in from_cache) - stopped, 3) if from_cache else None,
        "first_refusal_seconds_after_stop": round(min(o.started for o in refused) - stopped, 3),
        "refused_after_expiry": len(window),
        "refusal_latency_ms_median": round(1000 * statistics.median(latencies), 1),
        "refusal_latency_ms_max": round(1000 * max(latencies), 1),
        "recovery_seconds": round(recovery, 3),
    }


def request_log_figures(log: str, tenants: dict[str, Provisioned],
                        figures: dict[str, Any]) -> dict[str, Any]:
    """The request log has a line for each refusal, with its status and tenant, and a warning
    naming the unavailable key: the only records a refusal for want of the key leaves."""
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    requests = [r for r in records if r["logger"] == "magistrate.http" and "status" in r]
    refused = {name: sum(figures[f"tenant_{name}"][kind]["refused_503_key_unavailable"]
                         for kind in KINDS) for name in TENANTS}
    logged = {name: sum(r["status"] == 503 and r["tenant"] == tenant.tenant_id
                        for r in requests) for name, tenant in tenants.items()}
    assert logged == refused, (logged, refused)
    warned = sum(r["level"] == "WARNING" and "Tenant key unavailable: the customer-held key"
                 in r.get("message", "") for r in records)
    assert warned == sum(refused.values()), (warned, refused)
    return {**{f"tenant_{name}_503_lines": logged[name] for name in TENANTS},
            "key_unavailable_warnings": warned}


def provider_figures(seen: dict[str, Any], llm_k: LLMServer, llm_l: LLMServer) -> dict[str, Any]:
    """What reached each tenant's provider: one request per gateway call answered 200, and
    none from K while it was refused."""
    figures = {}
    for name, llm in (("k", llm_k), ("l", llm_l)):
        answered_200 = sum(o.status == 200 for o in seen["outcomes"][kind_of(name, "gateway")])
        figures[name] = {"gateway_200": answered_200, "received": len(llm.received)}
        assert len(llm.received) == answered_200, (name, figures[name])
    figures["k"]["received_while_refused"] = seen["provider_while_refused"]
    assert seen["provider_while_refused"] == 0, figures
    return figures


def audit_figures(svc: Services, name: str, tenant: Provisioned,
                  seen: dict[str, Any]) -> dict[str, Any]:
    answered_200 = sum(o.status == 200 for o in seen["outcomes"][kind_of(name, "gateway")])
    ctx = owner_context(svc, tenant.tenant_id, tenant.owner.id)
    with ctx.session() as s:
        outcomes = [e.details["outcome"] for e in s.scalars(
            select(AuditEvent).where(AuditEvent.event_type == GatewayEvents.CALL))]
        calls = s.scalar(select(func.count()).select_from(GatewayCall))
        while_refused = s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.occurred_at.between(seen["refused_from_at"], seen["back_at"])))
        result = verify_tenant_chain(s, tenant.tenant_id)
    return {"gateway_200_responses": answered_200,
            "gateway_call_events": len(outcomes),
            "gateway_call_events_ok": outcomes.count("ok"),
            "gateway_call_rows": calls,
            "events_while_refused": while_refused,
            "tenant_chain_ok": result.ok, "tenant_chain_rows": result.rows,
            "tenant_chain_problem": result.problem}


def check_writes(figures: dict[str, Any]) -> None:
    audit = figures["audit"]
    for name in TENANTS:
        seen = audit[name]
        assert seen["tenant_chain_ok"], (name, seen)
        assert seen["gateway_call_events"] == seen["gateway_call_events_ok"] == \
            seen["gateway_call_rows"] == seen["gateway_200_responses"], (name, seen)
    assert audit["k"]["events_while_refused"] == 0, audit["k"]
    assert audit["platform_chain_problems"] == []
    assert audit["platform_events_during_outage"] == 0, audit
