"""Redis goes away while Magistrate serves load, then comes back.

The test owns the Redis it kills (``SIGKILL``: no chance to save) and serves the real app on
it over HTTP (uvicorn on a loopback port), with a provisioned tenant whose gateway route leads
to a local fake provider. While client threads call the gateway and the signed-in dashboard:

- gateway calls keep succeeding: rate limits fail open to the in-process limiter;
- the dashboard keeps serving (sessions live in Postgres) and a new sign-in works (its rate
  limit fails open too);
- "Verify now" asked for three times records three jobs that wait, ``pending``, in the
  Postgres outbox, and the dispatcher leaves them there while Redis is down;
- when Redis returns, the dispatcher sends each of them and an RQ worker runs each exactly
  once: nothing is lost, nothing runs twice.

The app and the worker run in this process (a web process and a worker process each cost
many seconds of start-up on a busy CI machine, and nothing here depends on them being
separate); tests/chaos/test_postgres_restart.py runs ``magistrate web`` as its own process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import httpx2 as httpx
import pytest
import redis
from rq import Queue, SimpleWorker
from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer
from sqlalchemy import select

from control_plane.jobs import QUEUE, JobKinds, dispatch_pending
from control_plane.models import Job
from control_plane.web.app import build_services
from tests.chaos.infra import (
    Load,
    OwnedRedis,
    chat,
    counts,
    create_kek,
    get,
    provision,
    write_figures,
)
from tests.conftest import TEST_SECRET_KEY, free_port, make_settings
from tests.control_plane.tenancy.conftest import primary_server  # noqa: F401
from tests.control_plane.tenancy.helpers import configure_worker
from tests.factories import csrf_from, sign_in
from tests.fakes.llm_servers import LLMServer
from tests.live_server import Port, serve

pytestmark = pytest.mark.chaos

OUTAGE_SECONDS = 2.0
VERIFICATIONS = 3


@pytest.fixture
def web_port() -> Iterator[Port]:
    with Port() as port:
        yield port


@pytest.fixture
def settings(tmp_path, web_port):
    return make_settings(home=tmp_path / "home", public_url=web_port.url,
                         allowed_hosts=("127.0.0.1",),
                         gateway_private_networks=("127.0.0.0/8",))  # the fake provider


def verify_jobs(services) -> list[Job]:
    with services.session_factory() as s:
        return list(s.scalars(select(Job).where(Job.kind == JobKinds.VERIFY_AUDIT)
                              .order_by(Job.id)))


def test_redis_down_under_load_loses_nothing(services, database_url, settings, web_port,
                                             primary_server, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING)
    create_kek(settings)
    with LLMServer() as llm:
        tenant = provision(services, database_url, llm)
        own = OwnedRedis(tmp_path / "redis", free_port())
        own.start()
        app = build_services(settings, database_url=database_url, redis_url=own.url(),
                             secret_key=TEST_SECRET_KEY)
        client = redis.Redis.from_url(own.url(), socket_connect_timeout=0.5, socket_timeout=1)
        try:
            with serve(app, web_port) as url:
                figures = outage(services, url, tenant, own, client, caplog)
            after_outage(services, database_url, client, figures)
        finally:
            client.close()
            app.close()
            own.stop()


def signed_in(url: str, email: str) -> httpx.Cookies:
    with httpx.Client(base_url=url, timeout=10) as browser:
        answer = sign_in(browser, email)
        assert answer.status_code == 303, answer.text
        return httpx.Cookies(browser.cookies)


def outage(services, url: str, tenant, own: OwnedRedis, client: redis.Redis,
           caplog) -> dict:
    page = f"/tenants/{tenant.tenant_id}"
    cookies = signed_in(url, tenant.owner.email)
    load = Load(url)
    load.add("gateway", chat(tenant.api_key), threads=2)
    load.add("dashboard", get(page), cookies=cookies)
    with load, httpx.Client(base_url=url, timeout=20, cookies=cookies) as browser:
        load.wait_for("gateway", 5)
        load.wait_for("dashboard", 3)
        own.crash()
        down = time.monotonic()
        # an Owner asks for "Verify now" three times while Redis is gone
        for _ in range(VERIFICATIONS):
            token = csrf_from(browser.get(page).text)
            answer = browser.post(f"{page}/audit/verify", data={"csrf_token": token})
            assert answer.status_code == 303, answer.text
        signed_in(url, tenant.owner.email)  # a new sign-in works, too
        pending_during = [j.state for j in verify_jobs(services)]
        sent_during = dispatch_pending(services.session_factory, client)
        still_pending = [j.state for j in verify_jobs(services)]
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down)))
        own.start()
        up = time.monotonic()
        load.wait_for("gateway", sum(o.ok for o in load.of("gateway")) + 5)
    log = caplog.text
    gateway, dashboard = load.of("gateway"), load.of("dashboard")
    during = [o for o in gateway if down <= o.started <= up]
    assert len(during) >= 5, "too few gateway calls met the outage to say anything"
    assert [o for o in gateway if not o.ok] == [], "gateway calls failed while Redis was down"
    assert [o for o in dashboard if not o.ok] == [], "dashboard pages failed while Redis was down"
    assert any(down <= o.started <= up for o in dashboard)
    assert "Redis unreachable for gateway rate limits" in log  # the fallback was taken
    assert "gateway rate limits are shared again" in log  # and left when Redis returned
    assert "jobs wait in the outbox" in log
    assert pending_during == ["pending"] * VERIFICATIONS
    assert sent_during == 0 and still_pending == ["pending"] * VERIFICATIONS
    return {
        "outage_seconds": round(up - down, 3),
        "gateway": {**counts(gateway), "during_outage": len(during)},
        "dashboard": {**counts(dashboard),
                      "during_outage": sum(down <= o.started <= up for o in dashboard)},
        "jobs_enqueued_during_outage": len(pending_during),
        "jobs_pending_during_outage": still_pending.count("pending"),
        "jobs_dispatched_during_outage": sent_during,
    }


def after_outage(services, database_url: str, client: redis.Redis, figures: dict) -> None:
    """Redis is back: the dispatcher sends every waiting job, a worker runs each exactly once."""
    sent_after = dispatch_pending(services.session_factory, client)
    configure_worker(services, database_url)
    queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    SimpleWorker([queue], connection=client, serializer=JSONSerializer).work(burst=True)
    jobs = verify_jobs(services)
    finished = FinishedJobRegistry(QUEUE, connection=client, serializer=JSONSerializer)
    ran = sorted(finished.get_job_ids())
    figures.update({
        "jobs_dispatched_after": sent_after,
        "jobs_succeeded": sum(j.state == "succeeded" for j in jobs),
        "job_attempts": [j.attempts for j in jobs],
        "rq_runs": len(ran),
        "lost": sum(j.state != "succeeded" for j in jobs),
    })
    write_figures("redis_down", figures)
    assert sent_after == VERIFICATIONS
    assert [(j.state, j.attempts) for j in jobs] == [("succeeded", 1)] * VERIFICATIONS, [
        (j.state, j.attempts, j.last_error) for j in jobs]
    assert all(j.result and j.result["ok"] for j in jobs), [j.result for j in jobs]
    assert ran == sorted(f"magistrate-job-{j.id}-0" for j in jobs)  # one RQ run each
    assert queue.count == 0
