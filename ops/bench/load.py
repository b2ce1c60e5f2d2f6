"""Benchmark: the dashboard's main pages and the gateway under 50 concurrent clients, on a
tenant with a history (100,000 audit events, 1,000 tasks).

Self-contained, like the other benchmarks: an embedded Postgres and Redis in a temporary folder,
the control plane and one provisioned tenant (``ops/bench/_stack.py``), the tenant configured
for the gateway as ``ops/bench/gateway.py`` does it (``standard`` redaction, an on-prem route
to a local OpenAI-compatible upstream, a price, a generous cap and limits, an API key), then:

1. **Seeding**, through the product's own code and timed: ``--tasks`` tasks created with
   ``do_create_task`` (each sealed and audited), then audit events appended with
   ``audit.record`` (the real chain: every event hashed onto the one before it) until the
   tenant's chain holds ``--audit-rows`` events; ``BATCH`` events a transaction. The events
   are a plausible history: mostly ``gateway.call`` events by a few API keys, task and approval
   events by a few people. The chain is verified afterwards with ``ops/verify_audit_chain.py``
   on the tenant's export.
2. ``magistrate web --workers N`` in its own process (default one per CPU), and the upstream
   in another.
3. **Dashboard**: ``--clients`` threads, each with its own ``httpx2.Client`` and its own
   session: it signs in through the real form (``GET /sign-in`` for the CSRF token bound to
   its anonymous cookie, ``POST /sign-in`` with the token and an ``Origin``), then requests the
   pages of ``PAGES`` in turn (each client starting at a different page), ``--requests`` each
   or for ``--duration`` seconds, with ``--think-ms`` between requests (default 0: back to
   back). Then again as people (``dashboard_people``): the same clients, each pausing a
   random think time between pages (exponential, mean ``--people-think-ms``, 1,000 ms by
   default; their first page after a random pause of up to one think time, so that 50 people
   do not click in the same instant). A request counts as an error unless it answers 200
   with the page's heading in the HTML (a redirect to the sign-in page, an error page or an
   exception are all errors). Before the timed phase each client requests every page once
   (warm-up); before that, one client alone requests each page ``--solo-requests`` times
   (``concurrency_1``: what a page costs without queueing, which is where a slow query
   shows).
4. **Gateway**: ``--clients`` clients, straight to the upstream and then through the gateway
   (``ops/bench/gateway.py``'s ``measure``), twice: with an upstream that answers at once
   (``instant_upstream``: the gateway's own cost, queueing included) and with one that takes
   ``--upstream-latency-ms`` to answer (``slow_upstream``, 300 ms by default: a realistic
   model). ``added_ms`` is gateway percentile minus direct percentile.

Figures: per page and overall p50, p95, p99 and max in ms, requests, errors and requests per
second; the CPU each process spent per dashboard request; seeding times; the machine's
busyness before each timed phase and its load average; ``met`` per target.

Targets (this 2-core machine): dashboard p99 ≤ 150 ms overall, gateway added p99 ≤ 15 ms,
0 errors; ``met`` judges both dashboard runs against the dashboard's target.

On queueing: with clients that send back to back, latency is clients ÷ throughput once the
server is saturated (see ops/BENCHMARKS.md, the gateway section); the people run is what 50
people at their screens ask of the dashboard.

Prints one JSON object on stdout (progress goes to stderr) and removes everything it started.
Run: ``.venv/bin/python ops/bench/load.py`` (a quick run: ``--requests 5 --gateway-requests 5
--audit-rows 20000 --quiet-wait 0``).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[2]
# the script's own folder holds mcp.py, which would shadow the mcp SDK the app imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from ops.bench import _stack  # noqa: E402
from ops.bench import gateway as gateway_bench  # noqa: E402
from ops.bench._stack import Stack, free_port, log, wait_for_quiet  # noqa: E402
from tenant_runtime import audit  # noqa: E402
from tenant_runtime.approvals.classes import ApprovalEvents  # noqa: E402
from tenant_runtime.audit_export import export_lines  # noqa: E402
from tenant_runtime.context import Actor, TenantContext  # noqa: E402
from tenant_runtime.gateway.service import GatewayEvents  # noqa: E402
from tenant_runtime.models import AuditEvent  # noqa: E402
from tenant_runtime.recommendations.models import Task  # noqa: E402
from tenant_runtime.recommendations.schemas import TaskInput  # noqa: E402
from tenant_runtime.recommendations.service import RecommendationEvents, do_create_task  # noqa: E402

CLIENTS = 50
REQUESTS = 40  # dashboard pages per client (2,000 at 50 clients)
GATEWAY_REQUESTS = 20  # gateway calls per client and phase (1,000 at 50 clients)
SOLO_REQUESTS = 10  # per page, one client
AUDIT_ROWS = 100_000
TASKS = 1_000
BATCH = 10_000  # audit events per seeding transaction
UPSTREAM_LATENCY_MS = 300.0
PEOPLE_THINK_MS = 1000.0  # the second dashboard run: a person reads a page about a second
TARGETS = {"dashboard_p99_ms": 150.0, "gateway_added_p99_ms": 15.0, "errors": 0}
LOGIN_LIMIT = "1000"  # every client signs in from 127.0.0.1: the per-address limit is raised
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
TEAMS = ("support", "finance", "sales", "operations", "engineering")


@dataclass(frozen=True)
class Page:
    name: str
    path: str
    heading: str  # the page's <h1>: a 200 without it is an error page in disguise


def pages(tenant_id: int, task_id: int, middle_seq: int) -> list[Page]:
    """The dashboard's main pages: home, tenants, a tenant, its audit timeline (newest page,
    an older page by cursor, filtered by event type), tasks, a task, approvals, gateway,
    agents, jobs."""
    t = f"/tenants/{tenant_id}"
    return [
        Page("home", "/", "<h1>Dashboard</h1>"),
        Page("tenants", "/tenants", "<h1>Tenants</h1>"),
        Page("tenant", t, "<h1>Bench load"),
        Page("audit", f"{t}/audit", "<h1>Audit log</h1>"),
        Page("audit_older_page", f"{t}/audit?before_seq={middle_seq}", "<h1>Audit log</h1>"),
        Page("audit_by_type", f"{t}/audit?event_type={ApprovalEvents.APPROVED}",
             "<h1>Audit log</h1>"),
        Page("tasks", f"{t}/tasks", "<h1>Tasks and recommendations</h1>"),
        Page("task", f"{t}/tasks/{task_id}", "<h1>Bench task"),
        Page("approvals", f"{t}/approvals", "<h1>Approvals</h1>"),
        Page("gateway", f"{t}/gateway", "<h1>LLM gateway</h1>"),
        Page("agents", f"{t}/agents", "<h1>Agents</h1>"),
        Page("jobs", "/jobs", "<h1>Jobs</h1>"),
    ]


# ------------------------------------------------------------------------------- seeding


def _task(n: int) -> TaskInput:
    return TaskInput.model_validate({
        "title": f"Bench task {n}: reconcile the weekly {TEAMS[n % 5]} report",
        "description": f"Every Monday someone in {TEAMS[n % 5]} copies figures from three "
                       f"exports into one sheet and checks them by hand (case {n}).",
        "team": TEAMS[n % 5], "tags": ["weekly", TEAMS[n % 5]],
        "signals": {"recurrence": {"occurrences": 4 + n % 9, "period": "month"},
                    "uniformity": round((n % 10) / 10, 1)}})


def _history_event(n: int) -> tuple[str, Actor, str, str, dict[str, Any]]:
    """The ``n``-th event of a plausible history: 9 in 10 gateway calls by one of three API
    keys, the rest approvals and task events by people."""
    if n % 10:
        key = n % 3 + 1
        return (GatewayEvents.CALL, Actor("api_key", str(key), f"agent key {key}"), "model",
                "bench-model",
                {"model": "bench-model", "provider": "on-prem", "provider_model": "bench-llm",
                 "tokens_in": 300 + n % 200, "tokens_out": 80 + n % 50,
                 "cost_micros": 93 + n % 40, "redactions": {"email": 1, "person": 2},
                 "latency_ms": 200 + n % 300, "outcome": "ok", "attempts": 1,
                 "fallback": False, "stream": n % 4 == 0, "api_key_id": str(key)})
    person = n % 7
    actor = Actor("user", str(100 + person), f"person{person}@example.com", "Member")
    if n % 20 == 0:
        return (ApprovalEvents.APPROVED, actor, "approval_request", f"req-{n}",
                {"action": "refund.issue", "granted": True})
    return (RecommendationEvents.TASK_CREATED, actor, "task", str(n),
            {"source": "form", "tags": ["weekly"], "signals": ["recurrence"]})


def seed(ctx: TenantContext, *, tasks: int, audit_rows: int) -> dict[str, Any]:
    """Tasks through ``do_create_task``, then audit events through ``audit.record`` until the
    chain holds ``audit_rows``; timed."""
    started = time.perf_counter()
    for first in range(0, tasks, 250):
        with ctx.session() as s, s.begin():
            for n in range(first, min(tasks, first + 250)):
                do_create_task(s, ctx, _task(n))
    tasks_seconds = time.perf_counter() - started
    with ctx.session() as s:
        present = int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0)
    log(f"seeded {tasks} tasks in {tasks_seconds:.1f} s; the chain holds {present} events")
    started = time.perf_counter()
    appended = 0
    while present + appended < audit_rows:
        batch = min(BATCH, audit_rows - present - appended)
        with ctx.session() as s, s.begin():
            for n in range(appended, appended + batch):
                event_type, actor, target_type, target_id, details = _history_event(n)
                audit.record(s, event_type, actor=actor, target_type=target_type,
                             target_id=target_id, details=details)
        appended += batch
        log(f"appended {appended} audit events ({time.perf_counter() - started:.1f} s)")
    audit_seconds = time.perf_counter() - started
    with ctx.session() as s:
        total = int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0)
        task_rows = int(s.scalar(select(func.count()).select_from(Task)) or 0)
    return {"tasks": task_rows, "tasks_seconds": round(tasks_seconds, 2),
            "audit_events": total, "audit_events_appended": appended,
            "audit_seconds": round(audit_seconds, 2),
            "audit_events_per_second": round(appended / audit_seconds) if appended else None,
            "events_per_transaction": BATCH}


def verify_chain(stack: Stack, ctx: TenantContext) -> str:
    """The tenant's export checked by the offline verifier: its last line, or FAILED."""
    path = stack.home / "load-export.jsonl"
    with ctx.session() as s, path.open("wb") as f:
        for line in export_lines(s, tenant_id=ctx.tenant_id, slug=ctx.slug):
            f.write(line)
    verified = subprocess.run([sys.executable, str(gateway_bench.VERIFIER), str(path)],
                              capture_output=True, text=True, timeout=600, check=False)
    path.unlink()
    last = (verified.stdout.strip().splitlines() or [""])[-1]
    return last if verified.returncode == 0 else f"FAILED: {last}"


# ------------------------------------------------------------------------------- dashboard


def sign_in(client: httpx2.Client, email: str, password: str) -> None:
    """Through the real form: the page gives the CSRF token bound to this client's anonymous
    cookie; the post sets the session cookie and redirects home."""
    form = client.get("/sign-in")
    found = CSRF_FIELD.search(form.text)
    if form.status_code != 200 or found is None:
        raise RuntimeError(f"the sign-in page answered {form.status_code} without a CSRF token")
    answer = client.post("/sign-in", data={"csrf_token": found.group(1), "email": email,
                                           "password": password, "next": "/"},
                         headers={"Origin": str(client.base_url).rstrip("/")})
    if answer.status_code != 303 or answer.headers.get("location") != "/":
        raise RuntimeError(f"signing in answered {answer.status_code}: {answer.text[:200]}")


def fetch(client: httpx2.Client, page: Page) -> str | None:
    """One page; None when it rendered, else what went wrong."""
    response = client.get(page.path)
    if response.status_code != 200:
        return f"{page.name}: {response.status_code} {response.headers.get('location', '')}"
    if page.heading not in response.text:
        return f"{page.name}: 200 without {page.heading!r}"
    return None


@dataclass
class PageRun:
    latencies: dict[str, list[float]]  # ms, per page name
    errors: list[str]
    seconds: float
    cpu: dict[str, float]


def browse(clients: list[httpx2.Client], plan: list[Page], *,
           requests: int, duration: float | None, think: float,
           processes: gateway_bench.Processes) -> PageRun:
    """Each client requests the pages of ``plan`` in turn, from its own starting page,
    ``requests`` times or until ``duration`` has passed."""
    barrier = threading.Barrier(len(clients) + 1)
    latencies: dict[str, list[float]] = {page.name: [] for page in plan}
    errors: list[str] = []
    lock = threading.Lock()

    def client(n: int, http: httpx2.Client) -> None:
        mine: list[tuple[str, float]] = []
        problems: list[str] = []
        pause = random.Random(n)  # noqa: S311 - think times, reproducible, not in step
        barrier.wait()
        if think:  # people arrive over one think time, not all in the same instant
            time.sleep(pause.uniform(0, think))
        deadline = None if duration is None else time.monotonic() + duration
        count = 0
        while (count < requests) if deadline is None else (time.monotonic() < deadline):
            page = plan[(n + count) % len(plan)]
            count += 1
            started = time.perf_counter()
            try:
                problem = fetch(http, page)
            except Exception as exc:  # noqa: BLE001 - counted, and the run goes on
                problem = f"{page.name}: {type(exc).__name__}: {exc}"
            elapsed = (time.perf_counter() - started) * 1000
            if problem is None:
                mine.append((page.name, elapsed))
            else:
                problems.append(problem)
            if think:  # exponential, of mean ``think``: arrivals a person at a time
                time.sleep(pause.expovariate(1 / think))
        with lock:
            for name, ms in mine:
                latencies[name].append(ms)
            errors.extend(problems)

    seconds, cpu = processes.run_threads(
        [threading.Thread(target=client, args=(n, http)) for n, http in enumerate(clients)],
        barrier)
    return PageRun(latencies, errors, seconds, cpu)


def page_figures(run: PageRun) -> dict[str, Any]:
    every = [ms for samples in run.latencies.values() for ms in samples]
    count = len(every) + len(run.errors)
    return {
        "overall": {**gateway_bench.distribution(every),
                    "per_second": round(len(every) / run.seconds, 1)},
        "pages": {name: gateway_bench.distribution(samples)
                  for name, samples in run.latencies.items()},
        "errors": len(run.errors),
        "error_examples": run.errors[:5],
        "seconds": round(run.seconds, 2),
        "cpu_ms_per_request": {name: round(seconds * 1000 / max(1, count), 3)
                               for name, seconds in run.cpu.items()},
    }


def dashboard(base_url: str, stack: Stack, plan: list[Page], args: argparse.Namespace,
              processes: gateway_bench.Processes) -> dict[str, Any]:
    clients = [httpx2.Client(base_url=base_url, timeout=60) for _ in range(args.clients)]
    try:
        started = time.perf_counter()
        for http in clients:
            sign_in(http, stack.owner_email, stack.owner_password)
        signed_in = time.perf_counter() - started
        log(f"{len(clients)} clients signed in ({signed_in:.1f} s)")
        solo = browse(clients[:1], plan, requests=args.solo_requests * len(plan),
                      duration=None, think=0, processes=processes)
        solo_figures = page_figures(solo)
        log("one client: " + ", ".join(f"{name} {d['p50']}"
                                       for name, d in solo_figures["pages"].items()) + " ms p50")
        warm = browse(clients, plan, requests=len(plan), duration=None, think=0,
                      processes=processes)
        busy = wait_for_quiet()
        loadavg = _loadavg()
        run = browse(clients, plan, requests=args.requests, duration=args.duration,
                     think=args.think_ms / 1000, processes=processes)
        people = None
        if args.people_think_ms:
            busy_people = wait_for_quiet()
            people = browse(clients, plan, requests=args.requests, duration=args.duration,
                            think=args.people_think_ms / 1000, processes=processes)
    finally:
        for http in clients:
            http.close()
    if people is not None:
        people_figures = page_figures(people)
        people_figures.update(clients=args.clients, think_ms=args.people_think_ms,
                              machine_busy_before=busy_people)
        log(f"dashboard, {args.clients} people (think {args.people_think_ms:g} ms): p50 "
            f"{people_figures['overall']['p50']} p99 {people_figures['overall']['p99']} ms, "
            f"{people_figures['overall']['per_second']}/s, {people_figures['errors']} errors")
    figures = page_figures(run)
    figures.update(clients=args.clients, think_ms=args.think_ms,
                   sign_in_seconds=round(signed_in, 2), machine_busy_before=busy,
                   loadavg_before=loadavg,
                   warm_up_errors=len(warm.errors) + len(solo.errors),
                   concurrency_1={"pages": {name: {k: d[k] for k in ("p50", "p95", "max")}
                                            for name, d in solo_figures["pages"].items()},
                                  "errors": solo_figures["errors"]})
    log(f"dashboard, {args.clients} clients: p50 {figures['overall']['p50']} p99 "
        f"{figures['overall']['p99']} ms, {figures['overall']['per_second']}/s, "
        f"{figures['errors']} errors")
    if people is not None:
        figures["people"] = people_figures
    return figures


# ------------------------------------------------------------------------------- gateway


def gateway_phase(ends: gateway_bench.Endpoints, args: argparse.Namespace,
                  latency_ms: float) -> dict[str, Any]:
    errors_before = len(ends.errors)
    loadavg = _loadavg()
    figures = gateway_bench.measure(ends, workload="chat", clients=args.clients,
                                    requests=args.gateway_requests, rounds=args.rounds)
    figures.update(upstream_latency_ms=latency_ms, loadavg_before=loadavg,
                   errors=len(ends.errors) - errors_before,
                   error_examples=ends.errors[errors_before:errors_before + 5])
    return figures


# ------------------------------------------------------------------------------- report


def _loadavg() -> str | None:
    path = Path("/proc/loadavg")
    return path.read_text().strip() if path.exists() else None


def _stop(children: list[Any]) -> None:
    for child in reversed(children):
        child.terminate()
    for child in reversed(children):
        if isinstance(child, subprocess.Popen):
            child.wait(timeout=30)
        else:
            child.join(timeout=30)
    children.clear()


def run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    log(f"starting Postgres on port {stack.pg.port} under {stack.home}")
    stack.start()
    redis_server = stack.start_redis()
    tenant_id = stack.add_tenant("bench-load", "Bench load")
    upstream_port, web_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    key = gateway_bench.configure_tenant(stack, tenant_id, upstream)
    owner = Actor("user", str(stack.owner_id), stack.owner_email, "Owner")
    ctx = stack.tenant_context(tenant_id, actor=owner, pool_size=1)
    seeding = seed(ctx, tasks=args.tasks, audit_rows=args.audit_rows)
    with ctx.session() as s:
        task_id = int(s.scalar(select(func.min(Task.id))) or 0)
        last_seq = int(s.scalar(select(func.max(AuditEvent.seq))) or 0)
    plan = pages(tenant_id, task_id, last_seq // 2)
    children: list[Any] = []
    web_process: subprocess.Popen[bytes] | None = None
    try:
        children.append(gateway_bench.start_upstream(upstream_port))
        web_process = gateway_bench.start_gateway(
            stack, web_port, args.web_workers, {"MAGISTRATE_LOGIN_MAX_PER_IP": LOGIN_LIMIT})
        children.append(web_process)
        base = f"http://127.0.0.1:{web_port}"
        log(f"upstream on {upstream_port}, web on {web_port}")
        postmaster = int((stack.pg.pgdata / "postmaster.pid").read_text().split()[0])
        assert redis_server.process is not None
        processes = gateway_bench.Processes({"web": (web_process.pid, True),
                                             "postgres": (postmaster, True),
                                             "redis": (redis_server.process.pid, False)})
        pages_figures = dashboard(base, stack, plan, args, processes)
        ends = gateway_bench.Endpoints(direct=f"{upstream}/v1", gateway=f"{base}/v1", key=key,
                                       processes=processes)
        instant = gateway_phase(ends, args, 0.0)
        upstream_process = children.pop(0)  # the same port, now answering slowly
        _stop([upstream_process])
        children.insert(0, gateway_bench.start_upstream(upstream_port,
                                                        args.upstream_latency_ms / 1000))
        slow = gateway_phase(ends, args, args.upstream_latency_ms)
    finally:
        _stop(children)
    chain = verify_chain(stack, ctx)
    log(f"audit chain after the run: {chain}")
    people = pages_figures.pop("people", None)
    errors = (pages_figures["errors"] + instant["errors"] + slow["errors"]
              + (people["errors"] if people else 0))
    dashboard_p99 = pages_figures["overall"]["p99"]
    return {
        "benchmark": "load",
        "seeding": seeding,
        "dashboard": pages_figures,
        "dashboard_people": people,
        "gateway": {
            "instant_upstream": instant,
            "slow_upstream": slow,
            "note": "instant_upstream: the upstream answers at once, so the figures are the "
                    "gateway's own cost with queueing; slow_upstream: the upstream takes "
                    f"{args.upstream_latency_ms:g} ms per answer, like a real model",
        },
        "errors": errors,
        "audit_chain": chain,
        "targets": TARGETS,
        "met": {
            "dashboard_p99_ms": dashboard_p99 <= TARGETS["dashboard_p99_ms"],
            "dashboard_people_p99_ms": None if people is None
            else people["overall"]["p99"] <= TARGETS["dashboard_p99_ms"],
            "gateway_added_p99_ms_instant_upstream":
                instant["added_ms"]["p99"] <= TARGETS["gateway_added_p99_ms"],
            "gateway_added_p99_ms_slow_upstream":
                slow["added_ms"]["p99"] <= TARGETS["gateway_added_p99_ms"],
            "errors": errors == 0 and chain.startswith("OK"),
        },
        "setup": {"clients": args.clients, "web_processes": args.web_workers,
                  "dashboard_requests_per_client": None if args.duration else args.requests,
                  "dashboard_duration_seconds": args.duration, "think_ms": args.think_ms,
                  "people_think_ms": args.people_think_ms,
                  "gateway_requests_per_client": args.gateway_requests,
                  "rounds": args.rounds, "pages": {p.name: p.path for p in plan},
                  "sign_in": "the real form, one session per client (the Owner); the "
                             f"per-address sign-in limit raised to {LOGIN_LIMIT} for the run",
                  "client": f"httpx2 {httpx2.__version__}, one Client per thread"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "postgres": stack.server_version(),
                    "postgres_settings": stack.server_settings(),
                    "platform": platform.platform(), "loadavg_at_end": _loadavg()},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=CLIENTS,
                        help=f"concurrent clients, dashboard and gateway (default {CLIENTS})")
    parser.add_argument("--requests", type=int, default=REQUESTS,
                        help=f"dashboard pages per client (default {REQUESTS})")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of dashboard load instead of --requests")
    parser.add_argument("--people-think-ms", type=float, default=PEOPLE_THINK_MS,
                        help="mean think time of the second dashboard run, clients as people "
                             f"(default {PEOPLE_THINK_MS:g}; 0: no such run)")
    parser.add_argument("--think-ms", type=float, default=0.0,
                        help="pause of each dashboard client between pages (default 0)")
    parser.add_argument("--gateway-requests", type=int, default=GATEWAY_REQUESTS,
                        help=f"gateway calls per client and phase (default {GATEWAY_REQUESTS})")
    parser.add_argument("--solo-requests", type=int, default=SOLO_REQUESTS,
                        help=f"requests of each page by one client (default {SOLO_REQUESTS})")
    parser.add_argument("--rounds", type=int, default=1,
                        help="gateway rounds per phase; the median is reported (default 1)")
    parser.add_argument("--upstream-latency-ms", type=float, default=UPSTREAM_LATENCY_MS,
                        help="the slow upstream's time to answer (default "
                             f"{UPSTREAM_LATENCY_MS:g})")
    parser.add_argument("--audit-rows", type=int, default=AUDIT_ROWS,
                        help=f"audit events in the tenant's chain (default {AUDIT_ROWS:,})")
    parser.add_argument("--tasks", type=int, default=TASKS,
                        help=f"tasks in the tenant (default {TASKS:,})")
    parser.add_argument("--web-workers", type=int, default=os.cpu_count() or 1,
                        help="`magistrate web --workers` (default: one per CPU)")
    _stack.add_quiet_wait(parser)
    args = parser.parse_args(argv)
    for name in ("clients", "requests", "gateway_requests", "solo_requests", "rounds",
                 "web_workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be a positive number of seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return _stack.run_benchmark(run, args)


if __name__ == "__main__":
    sys.exit(main())
