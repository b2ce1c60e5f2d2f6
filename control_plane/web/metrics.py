"""``GET /metrics``: every metric of ``tenant_runtime/observability/metrics.py`` in Prometheus's
text format, for a scraper holding ``MAGISTRATE_METRICS_TOKEN``; and the edge's request count
by route template (``RouteTemplates``), never by raw path.

Access: no token configured, the route does not exist (404, as for any unknown address); a
request without ``Authorization: Bearer <token>`` or with another token gets 401. Tokens are
compared as SHA-256 digests with ``secrets.compare_digest``, so the time taken says nothing of
the token, its length included. The Host check does not apply (``HOST_CHECK_EXEMPT_PATHS``): a
scraper reaches each process by its address, and the token is the credential.

What needs a query is read when scraped, in the scrape's own short transaction: the job outbox
by state (how many, and the age of the oldest) and the RQ queue's length. The rest are counters
and histograms the code paths update as they go; with several processes on one machine, the
files they write are added up here (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from rq import Queue
from sqlalchemy import func, select
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Scope

from control_plane.db import utcnow
from control_plane.jobs import QUEUE
from control_plane.models import Job
from control_plane.web.services import Services, services
from tenant_runtime.observability import metrics

log = logging.getLogger("magistrate.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPEN_STATES = ("pending", "dispatched", "running")
UNMATCHED = "unmatched"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def token_matches(expected: str, authorization: str | None) -> bool:
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return False
    return secrets.compare_digest(_digest(presented.strip()), _digest(expected))


class JobQueueCollector(Collector):
    """The job outbox and the RQ queue, read at scrape time."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("magistrate_jobs", "Jobs in the outbox not yet finished, by "
                                 "state (pending, dispatched, running).", labels=["state"])
        oldest = GaugeMetricFamily("magistrate_jobs_oldest_age_seconds", "Age of the oldest "
                                   "unfinished job in each state.", labels=["state"])
        queued = GaugeMetricFamily("magistrate_rq_queue_length", "Messages waiting in the RQ "
                                   "queue for a worker.", labels=["queue"])
        rows: dict[str, tuple[int, Any]] = {}
        try:
            with self.svc.session_factory() as s:
                rows = {state: (count, first) for state, count, first in s.execute(
                    select(Job.state, func.count(), func.min(Job.created_at))
                    .where(Job.state.in_(OPEN_STATES)).group_by(Job.state))}
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it can read
            log.warning("metrics: the job outbox could not be read (%s)", type(exc).__name__)
        now = utcnow()
        for state in OPEN_STATES:
            count, first = rows.get(state, (0, None))
            jobs.add_metric([state], count)
            oldest.add_metric([state], (now - first).total_seconds() if first else 0.0)
        yield jobs
        yield oldest
        try:
            queued.add_metric([QUEUE], Queue(QUEUE, connection=self.svc.redis).count)
        except Exception as exc:  # noqa: BLE001
            log.warning("metrics: the RQ queue could not be read (%s)", type(exc).__name__)
        yield queued


class _ThisProcess(Collector):
    """This process's own samples (no multiprocess folder: one process, as in the tests) of
    our metrics only, as in multiprocess mode (no interpreter or process metrics)."""

    def collect(self) -> Iterator[Metric]:
        for metric in metrics.ALL:
            yield from metric.collect()


def registry_for(svc: Services) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    folder = metrics.multiprocess_dir()
    if folder is not None:
        MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    registry.register(JobQueueCollector(svc))
    return registry


def scrape(request: Request) -> Response:
    svc = services(request)
    token = svc.settings.metrics_token
    if token is None:
        raise HTTPException(404)
    if not token_matches(token.reveal(), request.headers.get("authorization")):
        return PlainTextResponse(
            "Send the metrics token as 'Authorization: Bearer <token>' (the value of "
            "MAGISTRATE_METRICS_TOKEN).\n", status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    return Response(generate_latest(registry_for(svc)), media_type=CONTENT_TYPE)


routes = [Route("/metrics", scrape, methods=["GET"])]


# ------------------------------------------------------------------ requests by route template

class RouteTemplates:
    """The route template of a request the router has matched, from the endpoint it left in
    the scope: one dictionary look-up. Endpoints served by several templates, and requests
    that matched nothing, are named by matching the routes again (rare)."""

    def __init__(self) -> None:
        self._routes: list[BaseRoute] | None = None
        self._by_endpoint: dict[int, str | None] = {}

    def _index(self, routes: list[BaseRoute]) -> None:
        self._routes = routes
        for endpoint, template in _templates(routes, ""):
            key = id(endpoint)
            known = self._by_endpoint.get(key, template)
            self._by_endpoint[key] = template if known == template else None

    def of(self, scope: Scope) -> str:
        if self._routes is None:
            app = scope.get("app")
            self._index(list(getattr(getattr(app, "router", None), "routes", [])))
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        template = self._by_endpoint.get(id(endpoint))
        if template is not None:
            return template
        return _match(self._routes or [], scope, "") or metrics.OTHER


def _templates(routes: list[BaseRoute], prefix: str) -> Iterator[tuple[object, str]]:
    for route in routes:
        if isinstance(route, Mount):
            inner = route.routes
            if inner:
                yield from _templates(list(inner), prefix + route.path)
            yield route.app, prefix + route.path + "/{path}"
        elif isinstance(route, Route):
            yield route.endpoint, prefix + route.path
        else:
            path = getattr(route, "path", None)
            endpoint = getattr(route, "endpoint", None) or getattr(route, "app", None)
            if isinstance(path, str) and endpoint is not None:
                yield endpoint, prefix + path


def _match(routes: list[BaseRoute], scope: Scope, prefix: str) -> str | None:
    from starlette.routing import Match

    probe = {**scope, "type": "http", "path": scope.get("path", ""),
             "root_path": scope.get("root_path", "")}
    for route in routes:
        match, _ = route.matches(probe)
        if match == Match.FULL:
            return prefix + str(getattr(route, "path", "")) + (
                "/{path}" if isinstance(route, Mount) else "")
    return None


def count_request(templates: RouteTemplates, scope: Scope, status: int) -> None:
    """One answered request, by route template, method and status (the edge calls this)."""
    method = scope.get("method", "GET")
    metrics.HTTP_REQUESTS.labels(
        templates.of(scope), method if method in _METHODS else metrics.OTHER, str(status)).inc()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
